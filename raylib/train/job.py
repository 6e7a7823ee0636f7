"""Distributed fusion training, the driver: one Ray Train TorchTrainer run (DDP; gloo on CPU,
nccl on GPU) and its MLflow run.

    feature store /train  --Ray Data, split across workers-->  train_loop_per_worker (raylib/train/loop.py)
    rank 0 each epoch: val metrics (accuracy, UAR, per-class recall) on /val, a checkpoint
        (model + optimizer + epoch + configs) to the storage URI, metrics to MLflow
    the driver: one line per epoch (read back from MLflow), then the best checkpoint's metrics,
        plots and model (raylib/train/artifacts.py)
The best checkpoint by the selection metric is kept; a lost worker restarts the group from the
last checkpoint (FailureConfig); --resume-from continues a finished or interrupted run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import asdict, replace

import numpy as np

from raylib import folds as cv, storage, tracking
from raylib.checkpoints import model_from_checkpoint
from raylib.metrics import pick_best
from raylib.prediction import FRAMES_COLUMN, metrics_from_counts, reads_frames, speaker_rows, val_counts
from raylib.runtime import check_capacity, init_ray, placement, sigint_raises
from raylib.schema import SCHEMA_VERSION
from raylib.speaker_norm import normalized_columns, stats_for, store_stats
from raylib.store import COLUMNS, data_files
from raylib.train.artifacts import log_run_artifacts
from raylib.train.config import TrainConfig, fold_of, require_splits, speakers_of, store_info
from raylib.train.loop import KEEP_SCORE, epoch_metrics, train_loop_per_worker

READ_CPUS = 0.25  # per Ray Data task reading the store for training
DATA_CPUS = 0.5  # all of Ray Data's reading for one training run
LIST_CPUS = 1.0  # Ray Data's task listing the store's files (it does not take READ_CPUS): beside the workers

__all__ = ["TrainConfig", "best_checkpoint", "check_workers_fit", "run_train", "store_info", "worker_resources"]


class EpochLines(threading.Thread):
    """Prints one line per finished epoch of an MLflow run while it trains (rank 0 logs each
    epoch there, wherever the workers run): epoch, train loss, val accuracy, UAR, seconds."""

    def __init__(self, run_id: str, epochs: int, prefix: str = "train", poll_s: float = 1.0):
        super().__init__(daemon=True)
        self.run_id, self.epochs, self.prefix, self.poll_s = run_id, epochs, prefix, poll_s
        self.seen: set[int] = set()
        self.t0 = time.perf_counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.poll_s):
            self.print_new()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)
        self.print_new()

    def print_new(self) -> None:
        try:
            history = {name: tracking.metric_history(self.run_id, name) for name in ("train_loss", "val_accuracy", "val_uar")}
        except Exception:  # the store is busy or unreachable for a moment: try again next poll
            return
        for epoch in sorted(set(history["val_uar"]) - self.seen):
            if epoch not in history["train_loss"] or epoch not in history["val_accuracy"]:
                continue
            self.seen.add(epoch)
            print(f"{self.prefix}: epoch {epoch + 1}/{self.epochs}  loss {history['train_loss'][epoch]:.3f}  "
                  f"val accuracy {history['val_accuracy'][epoch]:.3f}  UAR {history['val_uar'][epoch]:.3f}  "
                  f"({time.perf_counter() - self.t0:.0f} s)", flush=True)


def epoch_logger(run_id: str, uri: str):
    """A Ray Train callback, run by the training controller, that logs each epoch to MLflow after
    its checkpoint is stored: an epoch is in the run's history once, even when a worker is lost
    between its last step and its checkpoint and the restarted group runs it again."""
    from ray.train import UserCallback

    class EpochLogger(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is None or not metrics or "epoch" not in metrics[0]:
                return
            os.environ["MLFLOW_TRACKING_URI"] = uri

            tracking.log_metrics(run_id, epoch_metrics(metrics[0]), int(metrics[0]["epoch"]))

    return EpochLogger()


def worker_resources(cfg: TrainConfig) -> dict:
    """Ray resources of one training worker (the GPU comes from use_gpu)."""
    return {"CPU": cfg.cpus_per_worker, **placement(cfg.worker_resource)}


def check_workers_fit(cfg: TrainConfig, runs: int = 1, trial_cpus: float = 0.0) -> None:
    """ClusterError when the cluster can never run cfg's workers together with the store's reading,
    for `runs` training runs at once (a sweep's concurrent trials, each driven by a Tune trial
    holding trial_cpus)."""
    what = f"--num-workers {cfg.num_workers}"
    more = ""
    if runs > 1:
        what, more = f"{runs} trials at once (--max-concurrent-trials) x {what}", "--max-concurrent-trials, "
    fix = {"CPU": f"lower {more}--num-workers or --cpus-per-worker",
           "GPU": f"lower {more}--num-workers, or run without --use-gpu"}
    if cfg.worker_resource:
        fix[cfg.worker_resource] = "start such nodes, or change --worker-resource"
    check_capacity(what, cfg.num_workers * runs, {**worker_resources(cfg), "GPU": 1.0 if cfg.use_gpu else 0.0}, fix,
                   beside=("reading the store" + (" and the trials" if trial_cpus else ""),
                           {"CPU": (LIST_CPUS + trial_cpus) * runs}))


def best_checkpoint(checkpoints: list, metric: str):
    """The (checkpoint, metrics) pair of Ray's kept checkpoints with the best `metric`; of a tie,
    the earliest epoch (raylib.metrics.pick_best)."""
    i = pick_best([m for _, m in checkpoints], metric)
    if i is None:
        raise ValueError(f"no checkpoint of the run reported {metric}")
    return checkpoints[i]


def short_name(visual: str, audio: str, fusion: str, modalities: str = "av") -> str:
    """visual/audio/fusion (e.g. transformer/self/fbp), the branch appended when only one trains."""
    return f"{visual}/{audio}/{fusion}" + ("" if modalities == "av" else f"/{modalities}")


def storage_name(run_name: str, run_id: str) -> str:
    """The run's folder under --output: its name made path-safe plus its MLflow run id, so that
    runs sharing a name (the trials of two sweeps) never share, or resume from, a folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in run_name).strip("-") or "run"
    return f"{safe}-{run_id[:8]}"


def default_run_name(cfg: TrainConfig) -> str:
    return f"{short_name(cfg.model.visual_attention, cfg.model.audio_attention, cfg.model.fusion, cfg.model.modalities)}" \
           f"-{time.strftime('%Y%m%d-%H%M%S')}"


def run_train(cfg: TrainConfig, parent_run_id: str | None = None, callbacks: list | None = None,
              log_artifacts: bool = True, progress: bool = True, source: str = "jobs/train.py") -> dict:
    """Train one model with Ray Train; returns {run_id, best_checkpoint, best metrics, ...}. With
    --folds and no --fold, every fold under one parent run (run_cv); with --fold, that fold: train
    and val are its speakers' rows, and the best checkpoint is scored on its held-out speakers.

    progress: one line per epoch on stdout (never with cfg.quiet); source: the job named as the
    MLflow run's source."""
    if cfg.folds and cfg.fold < 0:
        return run_cv(cfg, parent_run_id, callbacks, log_artifacts, progress, source)
    cfg, fold, info = plan_run(cfg)
    model_cfg = cfg.model_config(info["visual_dim"], info["audio_channels"])
    run_name, run_id = open_run(cfg, fold, info, parent_run_id, source)
    trainer = make_trainer(cfg, model_cfg, fold, info, run_name, run_id, callbacks)
    t0 = time.perf_counter()
    lines = EpochLines(run_id, cfg.epochs) if progress and not cfg.quiet else None
    if lines:
        lines.start()
    with tracking.ending_runs(run_id):
        try:
            with sigint_raises():
                result = trainer.fit()
        finally:
            if lines:
                lines.stop()
        return finish_run(cfg, run_id, run_name, result, time.perf_counter() - t0, log_artifacts, fold)


def plan_run(cfg: TrainConfig):
    """Before any run is opened: (cfg with local paths made absolute, the fold or None, store_info
    of the rows the run trains on); the splits and the workers checked against the store and Ray."""
    tracking.check_reachable()
    local = {k: os.path.abspath(getattr(cfg, k)) for k in ("store", "output", "resume_from")
             if getattr(cfg, k) and not storage.is_remote(getattr(cfg, k))}
    cfg = replace(cfg, **local)  # workers do not share the driver's working directory
    fold = fold_of(cfg)
    info = store_info(cfg.store, cfg.model.modalities, fold)
    if info["skipped"] and not cfg.quiet:
        print(f"train: skipping {info['skipped']} labelled clip(s) without frames (audio files): --modalities "
              f"{cfg.model.modalities} reads visual features", file=sys.stderr, flush=True)
    require_splits(cfg.store, info)
    init_ray(quiet=cfg.quiet)  # a no-op where Ray runs already (a sweep's trial, a test)
    check_workers_fit(cfg)
    return cfg, fold, info


def open_run(cfg: TrainConfig, fold, info: dict, parent_run_id: str | None, source: str) -> tuple[str, str]:
    """The run's MLflow run, started with its params and the store's tags: (run name, run id)."""
    run_name = cfg.run_name or default_run_name(cfg)
    if cfg.run_name and not parent_run_id and not cfg.resume_from:
        tracking.require_new_run_name(cfg.experiment, run_name, "choose another --run-name, or go on from its "
                                                                "checkpoint with --resume-from")
    tags = {"store": cfg.store, "schema_version": SCHEMA_VERSION, **fold_tags(fold), **{f"store.{k}": v for k, v in info["provenance"].items()},
            "store.skipped_without_frames": str(info["skipped"]), **tracking.source_tags(source)}
    return run_name, tracking.start_run(cfg.experiment, run_name, tracking.config_params(cfg), tags, parent_run_id,
                                        tracking.PURPOSES["train"])


def train_dataset(cfg: TrainConfig, fold, stats: dict | None):
    """The Ray dataset of the rows the workers train on: labelled rows with features (with frames
    where the model reads them), of the fold's train speakers under --folds, speaker-normalised
    with stats under --speaker-norm.

    Fractional CPUs: on a small machine the workers' reservations must leave room for reading.
    Shuffling: the files in a new seeded order each epoch (Ray reseeds FileShuffleConfig with the
    dataset's execution count, and Train re-executes the dataset every epoch), so workers get other
    files each epoch; each worker then shuffles its rows in a buffer (raylib/train/loop.py). A global
    random_shuffle or randomize_block_order would hold the whole split before the first batch."""
    import ray
    from ray.data.expressions import col

    fs, _ = storage.filesystem(cfg.store)
    files = data_files(cfg.store, "train" if fold is None else None)
    if not files:
        raise ValueError(f"feature store {cfg.store} has no train split")
    with_speaker = fold is not None or stats is not None
    ds = ray.data.read_parquet(files, columns=COLUMNS + (["speaker"] if with_speaker else []), num_cpus=READ_CPUS,
                               shuffle=ray.data.FileShuffleConfig(seed=cfg.seed),
                               filesystem=fs if storage.is_remote(cfg.store) else None)
    keep = (col("label_index") >= 0) & (col("status") != "error")
    if reads_frames(cfg.model.modalities):
        keep = keep & (col(FRAMES_COLUMN) > 0)
    if fold is not None:
        keep = keep & col("speaker").is_in(list(fold.train))
    ds = ds.filter(expr=keep, num_cpus=READ_CPUS)
    if stats is not None:
        return ds.map_batches(normalized_columns, fn_args=(stats, COLUMNS), batch_format="pyarrow", num_cpus=READ_CPUS)
    return ds.select_columns(COLUMNS) if fold is not None else ds


def make_trainer(cfg: TrainConfig, model_cfg, fold, info: dict, run_name: str, run_id: str, callbacks: list | None):
    """The TorchTrainer of the run: its workers, their dataset, checkpoints kept and failures survived."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    # each speaker's statistics over the whole store, features only (raylib.speaker_norm)
    stats = store_stats(cfg.store) if cfg.model.speaker_norm else None
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(cfg), "model": asdict(model_cfg), "run_id": run_id,
                           "tracking_uri": tracking.tracking_uri(), "resume_from": cfg.resume_from,
                           "shuffle_rows": cfg.shuffle_rows(info["train_rows"]),
                           "val_speakers": list(fold.select) if fold else [], "speaker_stats": stats},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=worker_resources(cfg)),
        datasets={"train": train_dataset(cfg, fold, stats)},
        # reading is capped at DATA_CPUS so that it never competes with the workers' reservations
        dataset_config=ray.train.DataConfig(execution_options=ray.data.ExecutionOptions(
            resource_limits=ray.data.ExecutionResources(cpu=DATA_CPUS))),
        run_config=ray.train.RunConfig(
            name=storage_name(run_name, run_id), storage_path=cfg.output,
            callbacks=[epoch_logger(run_id, tracking.tracking_uri()), *(callbacks or [])],
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=KEEP_SCORE,
                                                         checkpoint_score_order="max")),
    )


def fold_tags(fold) -> dict:
    """A fold's speakers as MLflow tags (none without cross-validation)."""
    if fold is None:
        return {}
    return {"cv.fold": str(fold.index), "cv.train_speakers": ",".join(fold.train),
            "cv.select_speakers": ",".join(fold.select), "cv.test_speakers": ",".join(fold.test)}


def test_counts(cfg: TrainConfig, checkpoint: str, fold) -> "np.ndarray":
    """raylib.prediction.val_counts of a checkpoint on the fold's held-out speakers' rows."""
    model, _ = model_from_checkpoint(checkpoint)
    return val_counts(model, speaker_rows(cfg.store, fold.test, cfg.model.modalities), stats=stats_for(model, cfg.store))


def test_metrics(counts) -> dict:
    """test_accuracy, test_uar, test_recall_<label>, test_clips of summed val_counts."""
    return {"test_" + k[len("val_"):]: v for k, v in metrics_from_counts(counts).items()}


def run_cv(cfg: TrainConfig, parent_run_id: str | None = None, callbacks: list | None = None,
           log_artifacts: bool = True, progress: bool = True, source: str = "jobs/train.py") -> dict:
    """Speaker-independent k-fold cross-validation (raylib.folds) of one configuration: one MLflow
    parent run, a child run per fold (run_train with --fold), each fold's best checkpoint scored
    on its held-out speakers. The parent gets the per-fold mean and sd of test accuracy and UAR
    and the pooled figures (every fold's test clips counted once)."""

    tracking.check_reachable()
    plan = cv.fold_plan(speakers_of(cfg.store), cfg.folds)
    run_name = cfg.run_name or default_run_name(cfg) + f"-cv{cfg.folds}"
    if cfg.run_name and not parent_run_id:
        tracking.require_new_run_name(cfg.experiment, run_name, "choose another --run-name")
    tags = {"store": cfg.store, "cv.folds": str(cfg.folds), **tracking.source_tags(source),
            **{f"cv.fold{f.index}.test_speakers": ",".join(f.test) for f in plan}}
    parent = tracking.start_run(cfg.experiment, run_name, tracking.config_params(cfg), tags, parent_run_id,
                                tracking.PURPOSES["train"])
    results, pooled = [], None
    with tracking.ending_runs(parent):
        for f in plan:
            if progress and not cfg.quiet:
                print(f"train: fold {f.index + 1}/{len(plan)}: train on speakers {', '.join(f.train)}, pick the "
                      f"epoch on {', '.join(f.select)}, test on {', '.join(f.test)}", flush=True)
            summary = run_train(replace(cfg, fold=f.index, run_name=f"{run_name}/fold{f.index}"), parent, callbacks,
                                log_artifacts, progress, source)
            results.append(summary)
            counts = np.asarray(summary.pop("test_counts"), np.float64)
            pooled = counts if pooled is None else pooled + counts
        per_fold = {m: cv.summarize(r[m] for r in results) for m in ("test_accuracy", "test_uar")}
        metrics = {f"cv_{m}_{k}": v for m, s in per_fold.items() for k, v in s.items()}
        metrics.update({f"cv_pooled_{k}": v for k, v in test_metrics(pooled).items()})
        tracking.log_metrics(parent, metrics, 0)
        tracking.end_run(parent)
    return {"run_id": parent, "run_name": run_name, "folds": results, **metrics,
            "pooled_confusion": np.asarray(pooled[:-2]).reshape(7, 7).astype(int).tolist()}


def finish_run(cfg: TrainConfig, run_id: str, run_name: str, result, elapsed_s: float, log_artifacts: bool,
               fold=None) -> dict:
    """The summary of a fitted run; logs its best checkpoint's metrics (and artifacts) and ends it;
    with a fold, also its scores on the fold's held-out speakers (test_*)."""
    best_ckpt, best_metrics = best_checkpoint(result.best_checkpoints, cfg.select_metric)
    path = best_ckpt.path  # a path inside the storage filesystem: give it back its scheme
    path = storage.uri_of(path, cfg.output)
    summary = {"run_id": run_id, "run_name": run_name, "best_checkpoint": path,
               "best_epoch": int(best_metrics["epoch"]), "elapsed_s": round(elapsed_s, 1),
               **{k: v for k, v in best_metrics.items() if k.startswith(("val_", "train_"))}}
    # the best checkpoint's metrics, once each, at its epoch (where the logged model links them)
    tracking.log_metrics(run_id, {"best_val_accuracy": summary.get("val_accuracy", 0.0),
                                  "best_val_uar": summary.get("val_uar", 0.0)}, summary["best_epoch"])
    if fold is not None:  # scored once, by the checkpoint the selection speakers picked
        counts = test_counts(cfg, summary["best_checkpoint"], fold)
        summary.update(test_metrics(counts), test_counts=counts.tolist(), fold=fold.index, test_speakers=list(fold.test))
        tracking.log_metrics(run_id, {k: v for k, v in summary.items() if k.startswith("test_")
                                      and isinstance(v, (int, float))}, summary["best_epoch"])
    if log_artifacts:
        log_run_artifacts(run_id, summary["best_checkpoint"], cfg.store, best_ckpt)
    client = tracking.client()
    client.set_tag(run_id, "best_checkpoint", tracking.public(summary["best_checkpoint"]))
    client.set_tag(run_id, "best_epoch", str(summary["best_epoch"]))
    tracking.end_run(run_id)
    return summary
