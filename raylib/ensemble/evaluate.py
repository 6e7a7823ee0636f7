"""Evaluation: checkpoints or MLflow runs -> an ensemble's scores (raylib.ensemble.scoring) on a store's
split -> metrics, predictions. Predictions (clip_id, uri, label, prediction, one score per
class) are written as Parquet and CSV; metrics and the confusion matrix go to MLflow.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from raylib import plots, storage, tracking
from raylib.checkpoints import load_checkpoint, model_from_checkpoint
from raylib.ensemble.scoring import (
    REWEIGHTS,
    RUN_ID,
    apply_weights,
    check_fits,
    class_weights,
    load_members,
    mean_probs,
    resolve_checkpoint,
)
from raylib.errors import TrackingError
from raylib.labels import EMOTIONS
from raylib.metrics import summarize
from raylib.prediction import FRAMES_EXPR, metrics_from_counts, reads_frames, rows_for, speaker_rows, val_counts
from raylib.runtime import check_capacity, init_ray
from raylib.speaker_norm import stats_for, store_stats
from raylib.store import COLUMNS, data_files, read_store, single_recipe, store_description, usable
from raylib.train.config import store_info

PREDICTOR_CPUS = 0.5  # per StorePredictor actor
READ_TASK_CPUS = 1.0  # Ray Data's reservation for one task reading the store


@dataclass(frozen=True)
class EvaluateConfig:
    """Every knob of jobs/evaluate.py."""

    checkpoints: str = field(default="", metadata={"help": "comma-separated checkpoint folders/model.pt files "
                                                           "or MLflow run ids (runs:/<id>); their mean is the ensemble"})
    cv_run: str = field(default="", metadata={"help": "MLflow parent run of jobs/train.py --folds: each fold's "
                                                      "checkpoint scored on that fold's held-out speakers, then "
                                                      "pooled (instead of --checkpoints and --split)"})
    store: str = field(default="data/demo/features", metadata={"help": "feature store"})
    split: str = field(default="val", metadata={"help": "split to evaluate", "choices": ["train", "val", "test"]})
    reweight: str = field(default="none", metadata={"help": "class re-weighting of the scores", "choices": list(REWEIGHTS)})
    output: str = field(default="data/demo/predictions", metadata={"help": "folder for predictions.parquet/.csv (local or s3://)"})
    experiment: str = field(default="emotion-evaluation", metadata={"help": "MLflow experiment"})
    batch_size: int = field(default=32, metadata={"help": "clips per forward pass"})
    predictor_actors: int = field(default=1, metadata={"help": "Ray actors holding the models (each scores a share of the split)"})

    def __post_init__(self):
        if not [c for c in self.checkpoints.split(",") if c.strip()] and not self.cv_run:
            raise ValueError("--checkpoints: give at least one checkpoint or MLflow run id (or --cv-run)")


def describe_member(ref: str) -> str:
    """One ensemble member for the evaluation run's description: an MLflow run by name and link, a
    checkpoint by its public URI."""
    m = RUN_ID.match(ref.strip())
    if not m:
        return f"checkpoint `{tracking.public(ref.strip())}`"
    run = tracking.client().get_run(m.group(2))
    return f"MLflow run [{run.info.run_name}]({tracking.ui_link(run.info.experiment_id, run.info.run_id)}) (its logged checkpoint)"


def description(cfg: EvaluateConfig, refs: list[str], clips: int) -> str:
    """What an evaluation run scored: the members, the ensemble rule, the store and its kind."""
    rule = ("the mean of the members' class probabilities" if len(refs) > 1 else "one model's class probabilities")
    if cfg.reweight != "none":
        rule += f", re-weighted per class ({cfg.reweight} weights)"
    kind = store_description(cfg.store)["kind"]
    return (f"Evaluation of {'an ensemble of ' + str(len(refs)) + ' models' if len(refs) > 1 else 'one model'} on "
            f"the {cfg.split} split of store `{tracking.public(cfg.store)}` ({kind}, {clips} clips). Prediction: {rule}, "
            f"its arg max.\n\nMembers:\n" + "\n".join(f"{i + 1}. {describe_member(r)}" for i, r in enumerate(refs)))


def ensemble_probs(checkpoints: list[str], table, batch_size: int = 32, info: dict | None = None,
                   store: str = "", stats: dict | None = None) -> np.ndarray:
    """Mean of the class probabilities of each checkpoint's model on the rows of table; with the
    store's info, every checkpoint is checked against its features before any is run. stats:
    speaker statistics for models trained on speaker-normalised features (raylib.speaker_norm)."""
    paths = [resolve_checkpoint(ref) for ref in checkpoints]
    if info is not None:
        for ref, path in zip(checkpoints, paths):
            check_fits(load_checkpoint(path), ref, info, f"the store {store}")
    return mean_probs([model_from_checkpoint(path)[0] for path in paths], table, batch_size, stats)


class StorePredictor:
    """Holds the ensemble's models (loaded once per actor); maps a batch of store rows (pyarrow)
    to their predictions: clip_id, uri, label, label_index, prediction, score_<Emotion>."""

    def __init__(self, checkpoints: list[str], weights, batch_size: int, stats: dict | None = None):
        self.models = load_members(checkpoints)
        self.weights, self.batch_size, self.stats = weights, batch_size, stats

    def __call__(self, table):
        import pyarrow as pa

        probs = apply_weights(mean_probs(self.models, table, self.batch_size, self.stats), self.weights)
        return pa.table({"clip_id": table.column("clip_id"), "uri": table.column("uri"),
                         "label": table.column("label"), "label_index": table.column("label_index"),
                         "prediction": pa.array([EMOTIONS[p] for p in probs.argmax(axis=1)]),
                         **{f"score_{n}": pa.array(probs[:, i].astype(np.float32)) for i, n in enumerate(EMOTIONS)}})


def read_store_file(uri: str):
    """One Parquet file (local or URI) as a table."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def predict_store(cfg: EvaluateConfig, refs: list[str], weights, files: list[str], frames: bool = False,
                  stats: dict | None = None):
    """Batch inference over store shards with Ray Data: read the shards in parallel, score them
    in a pool of StorePredictor actors (only rows with frames when `frames`; rows speaker-normalised
    with stats for the models that need it); the predictions (a few numbers per clip) come back
    as one Arrow table."""
    import pyarrow as pa
    import ray

    init_ray()
    check_capacity(f"--predictor-actors {cfg.predictor_actors}", cfg.predictor_actors, {"CPU": PREDICTOR_CPUS},
                   "lower --predictor-actors", beside=("reading the store", {"CPU": READ_TASK_CPUS}))
    fs, _ = storage.filesystem(cfg.store)
    ds = ray.data.read_parquet(files, columns=COLUMNS + ["label"] + (["speaker"] if stats else []), filesystem=fs if storage.is_remote(cfg.store) else None)
    ds = ds.filter(expr="status != 'error'" + (f" and {FRAMES_EXPR}" if frames else ""))
    ds = ds.map_batches(StorePredictor, fn_constructor_kwargs={"checkpoints": refs, "weights": weights,
                                                               "batch_size": cfg.batch_size, "stats": stats},
                        batch_format="pyarrow", batch_size=cfg.batch_size, num_cpus=PREDICTOR_CPUS,
                        compute=ray.data.ActorPoolStrategy(size=cfg.predictor_actors))
    tables = ray.get(ds.to_arrow_refs())
    return pa.concat_tables(tables).sort_by("uri") if tables else None


def check_split(cfg: EvaluateConfig, refs: list[str]) -> tuple[bool, int, dict | None]:
    """Before any work, on the split's small columns: the rows the checkpoints can take (a model
    with a visual branch skips rows without frames) and that each checkpoint fits their features.
    Returns (whether the models read frames, rows skipped, the store's speaker statistics when a
    model reads speaker-normalised features); ValueError or WeightsError otherwise."""
    recipe = single_recipe(cfg.store)  # a store mixing recipes has features no one model fits
    small = usable(read_store(cfg.store, ["status", "label_index", "visual_dim", "audio_shape"], split=cfg.split),
                   labelled=False)
    if small.num_rows == 0:
        raise ValueError(f"no clips with features in split {cfg.split!r} of {cfg.store}")
    states = [(ref, load_checkpoint(resolve_checkpoint(ref))) for ref in refs]
    modalities = [state["model_config"].get("modalities", "av") for _, state in states]
    fit = rows_for(small, *modalities)
    if fit.num_rows == 0:
        raise ValueError(f"split {cfg.split!r} of {cfg.store} holds no clips with frames ({small.num_rows} audio "
                         f"files): the checkpoints read visual features; evaluate a --modalities audio model on it")
    shapes = [s for s in fit.column("audio_shape").to_pylist() if s]
    info = {"visual_dim": max(fit.column("visual_dim").to_pylist()), "provenance": recipe,
            "audio_channels": shapes[0][0] if shapes else 1}
    for ref, state in states:
        check_fits(state, ref, info, f"the store {cfg.store}")
    stats = None
    if any(state["model_config"].get("speaker_norm") for _, state in states):
        stats = store_stats(cfg.store)  # every speaker of the store, features only
    return reads_frames(*modalities), small.num_rows - fit.num_rows, stats


def evaluate_cv(cfg: EvaluateConfig) -> dict:
    """The folds of a cross-validation run (jobs/train.py --folds) scored again, each fold's logged
    checkpoint on its own held-out speakers (its tag cv.test_speakers) of cfg.store, in this
    process: {folds: [{fold, run_id, test_speakers, accuracy, uar, clips}], accuracy, uar, clips
    (pooled)}. StoreError / TrackingError in one line when the run is not such a parent."""
    tracking.check_reachable()
    client = tracking.client()
    try:
        parent = client.get_run(cfg.cv_run)
    except Exception as e:  # MlflowException: no such run
        raise TrackingError(f"--cv-run {cfg.cv_run}: no such MLflow run ({type(e).__name__})") from None
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{cfg.cv_run}'")
    children = sorted((r for r in children if "cv.fold" in r.data.tags), key=lambda r: int(r.data.tags["cv.fold"]))
    if not children or "cv.folds" not in parent.data.tags:
        raise TrackingError(f"--cv-run {cfg.cv_run} is not the parent run of a jobs/train.py --folds run (no fold "
                            f"child runs)")
    folds, pooled = [], None
    for run in children:
        speakers = run.data.tags["cv.test_speakers"].split(",")
        model, state = model_from_checkpoint(resolve_checkpoint(run.info.run_id))
        counts = val_counts(model, speaker_rows(cfg.store, speakers, state["model_config"].get("modalities", "av")),
                            stats=stats_for(model, cfg.store))
        m = metrics_from_counts(counts)
        folds.append({"fold": int(run.data.tags["cv.fold"]), "run_id": run.info.run_id, "test_speakers": speakers,
                      "accuracy": m["val_accuracy"], "uar": m["val_uar"], "clips": m["val_clips"]})
        pooled = counts if pooled is None else pooled + counts
    m = metrics_from_counts(pooled)
    return {"cv_run": cfg.cv_run, "folds": folds, "accuracy": m["val_accuracy"], "uar": m["val_uar"],
            "clips": m["val_clips"]}


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Evaluate the ensemble on cfg.split (Ray Data batch inference, predict_store); writes the
    predictions, computes the metrics from what was written; logs an MLflow run."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    tracking.check_reachable()
    refs = [c.strip() for c in cfg.checkpoints.split(",") if c.strip()]
    frames, skipped, stats = check_split(cfg, refs)
    weights = class_weights(cfg.reweight, store_info(cfg.store)["train_counts"] if cfg.reweight == "train" else None)
    out = predict_store(cfg, refs, weights, data_files(cfg.store, cfg.split), frames, stats)
    parquet_uri = storage.join(cfg.output, "predictions.parquet")
    csv_uri = storage.join(cfg.output, "predictions.csv")
    with storage.atomic_write(parquet_uri) as f:
        pq.write_table(out, f)
    with storage.atomic_write(csv_uri) as f:
        pacsv.write_csv(out, f)
    written = read_store_file(parquet_uri)  # the metrics are those of what was written
    labels = written.column("label_index").to_numpy()
    preds = np.asarray([EMOTIONS.index(p) for p in written.column("prediction").to_pylist()])
    labelled = labels >= 0
    metrics = summarize(labels[labelled], preds[labelled]) if labelled.any() else None
    table = written

    run_id = tracking.start_run(cfg.experiment, f"evaluate-{cfg.split}-{len(refs)}-models",
                                tracking.config_params(cfg), {"store": cfg.store, "kind": "evaluation",
                                                              **tracking.source_tags("jobs/evaluate.py")},
                                purpose=tracking.PURPOSES["evaluate"])
    tracking.describe(run_id, description(cfg, refs, table.num_rows))
    summary = {"run_id": run_id, "link": tracking.run_link(run_id), "clips": table.num_rows, "models": len(refs), "split": cfg.split,
               "skipped_without_frames": skipped,
               "predictions_parquet": parquet_uri, "predictions_csv": csv_uri}
    with tracking.ending_runs(run_id):  # an interrupted evaluation's run ends KILLED
        if metrics:
            summary.update(accuracy=metrics["accuracy"], uar=metrics["uar"],
                           recall={n: (None if not np.isfinite(r) else float(r)) for n, r in zip(EMOTIONS, metrics["recall"])})
            # the names training logs its scores under (Val/UAR, Val_recall/<class>, ...)
            tracking.log_metrics(run_id, {f"{cfg.split}_accuracy": metrics["accuracy"], f"{cfg.split}_uar": metrics["uar"],
                                          **{f"{cfg.split}_recall_{n}": r for n, r in zip(EMOTIONS, metrics["recall"])}}, 0)
            with tempfile.TemporaryDirectory() as d:
                tracking.log_artifact(run_id, plots.confusion_png(metrics["confusion"], os.path.join(d, "confusion_matrix.png"),
                                                                     f"{cfg.split}: accuracy {metrics['accuracy']:.2f}, UAR {metrics['uar']:.2f}"))
        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, "predictions.csv")
            pacsv.write_csv(out, local)
            tracking.log_artifact(run_id, local)
    tracking.end_run(run_id)
    summary["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return summary
