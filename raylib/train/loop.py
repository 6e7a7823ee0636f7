"""The Ray Train worker loop: each worker trains FusionModel (DDP) on its shard of the store's
train split; each epoch every worker scores its share of val (the counts are summed across
workers), and rank 0 reports the metrics with a checkpoint (the controller logs them to MLflow
once the checkpoint is stored: train.epoch_logger).

    shard of /train --iter_batches--> collate (pad + mask) --> FusionModel --> cross-entropy
    each epoch: rank 0 recalibrates batch norms --> every worker scores its share of /val -->
        all_reduce(confusion matrix, loss) --> rank 0: val metrics + checkpoint -->
        ray.train.report --> (controller) MLflow, step = epoch
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

import numpy as np

from raylib import tracking
from raylib.checkpoints import load_checkpoint, load_model_state, save_checkpoint
from raylib.metrics import keep_score
from raylib.prediction import metrics_from_counts, rows_for, val_counts
from raylib.schema import SCHEMA
from raylib.store import COLUMNS, data_files, read_files, usable
from raylib.train.config import TrainConfig

# clips of the epoch's last batches over which rank 0 recomputes the batch-norm statistics
# before it scores val and saves the checkpoint (raylib.models.audio_cnn.recalibrate_norms)
RECALIBRATION_CLIPS = 256

KEEP_SCORE = "keep_score"  # what Ray keeps checkpoints by (raylib.metrics.keep_score); not logged


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def train_epoch(model, optimizer, batches, device="cpu", keep: list | None = None) -> tuple[float, int, int]:
    """One pass of cross-entropy training over collated batches: (loss sum, correct, samples).
    keep: receives the forward arguments of the last batches, RECALIBRATION_CLIPS clips at most."""
    import torch

    from raylib.batches import model_inputs

    model.train()
    loss_sum, correct, total = 0.0, 0, 0
    for batch in batches:
        labels = batch["labels"].to(device)
        inputs = model_inputs(batch, device)
        if keep is not None:
            keep.append(inputs)
            while sum(len(k[0]) for k in keep) > RECALIBRATION_CLIPS:
                keep.pop(0)
        logits, _ = model(*inputs)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return loss_sum, correct, total


def set_lr(optimizer, cfg: TrainConfig, epoch: int) -> None:
    """Each parameter group's rate for an epoch: lr_at times the group's lr_scale
    (FusionModel.param_groups)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, epoch) * group.get("lr_scale", 1.0)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of an epoch: cosine from --lr down to 0 over --epochs, or constant."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def val_share(store: str, rank: int, world: int, speakers: tuple = (), keep_speaker: bool = False):
    """This worker's share of the val split (with speakers: the rows of those speakers in any
    split, a cross-validation fold's selection speakers; keep_speaker: with the speaker column, for
    speaker normalisation): whole files in turn (rank r reads files
    r, r + world, ...), or, when there are fewer files than workers, a slice of every file's rows.
    Workers score their shares at once and sum the counts (all_summed): no process holds the whole
    split."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = [*COLUMNS, "speaker"] if speakers or keep_speaker else COLUMNS
    files = data_files(store, None if speakers else "val")
    if len(files) >= world:
        tables = read_files(store, files[rank::world], columns)
    else:
        table = pa.concat_tables(read_files(store, files, columns)) if files else SCHEMA.empty_table().select(columns)
        start, stop = rank * table.num_rows // world, (rank + 1) * table.num_rows // world
        tables = [table.slice(start, stop - start)]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table().select(columns)
    if speakers:
        table = table.filter(pc.is_in(table.column("speaker"), pa.array(list(speakers), pa.string())))
    return table.select([*COLUMNS, "speaker"] if keep_speaker else COLUMNS)


def share_buffers(model) -> None:
    """Rank 0's buffers (batch-norm statistics) to every worker; nothing with one worker."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def all_summed(counts, device):
    """The element-wise sum of every worker's counts (numpy float64), on every worker."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return counts
    t = torch.as_tensor(counts, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return np.asarray(t.cpu().numpy(), dtype=np.float64)


def epoch_metrics(metrics: dict) -> dict:
    """What MLflow gets of an epoch's reported metrics: not the epoch (the step), the checkpoint
    score, or best_* (logged once, at the best epoch, when the run ends)."""
    return {k: v for k, v in metrics.items() if k not in ("epoch", KEEP_SCORE) and not k.startswith("best_")}


def label_mix(batches, distinct: list[int]):
    """Passes collated batches through, appending each one's number of distinct labels to distinct:
    how well shuffled the data arrives (a batch of one class gives a one-sided gradient)."""
    for batch in batches:
        distinct.append(len(set(batch["labels"].tolist())))
        yield batch


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: config = {"train": TrainConfig dict, "model": ModelConfig dict, "run_id"}."""
    import ray.train
    import ray.train.torch
    import torch

    from raylib.models.fusion import ModelConfig, build_model

    cfg = TrainConfig.from_dict(config["train"])
    model_cfg = ModelConfig(**config["model"])
    if config.get("tracking_uri"):  # workers run elsewhere: the embedded store's path comes resolved
        os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(1)
    model = build_model(model_cfg)
    optimizer = make_optimizer(cfg.optimizer, model.param_groups(cfg.visual_lr_scale), cfg.lr, cfg.weight_decay)
    start_epoch, best = resume(model, optimizer, config, rank)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    stats = config.get("speaker_stats")  # raylib.speaker_norm: the train rows come normalised already
    val = rows_for(usable(val_share(cfg.store, rank, ctx.get_world_size(), tuple(config.get("val_speakers", ())),
                                    keep_speaker=stats is not None)), cfg.model.modalities)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.epochs):
        metrics = run_epoch(model, optimizer, shard, val, config, epoch, rank, device)
        if rank == 0:
            metrics[KEEP_SCORE] = keep_score(metrics.get(cfg.select_metric, 0.0), best)
            best = max(best, metrics.get(cfg.select_metric, 0.0))
            metrics["best_" + cfg.select_metric] = best
            # MLflow gets the epoch from the controller once its checkpoint is stored (EpochLogger in
            # train.py): logged here, an epoch whose checkpoint a lost worker prevented would be
            # logged again by the restarted group
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(d, core, optimizer, epoch, best, model_cfg, cfg, metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def resume(model, optimizer, config: dict, rank: int) -> tuple[int, float]:
    """Load the last checkpoint of this run (a restart after a failure) or --resume-from into the
    model and optimiser: (the epoch to start at, the best score so far); (0, -1.0) for a new run."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure, or a resumed run
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d)
    elif config.get("resume_from"):
        state = load_checkpoint(config["resume_from"])
    else:
        return 0, -1.0
    load_model_state(model, state, config.get("resume_from") or "the last checkpoint")
    if state.get("optimizer"):
        scales = [g["lr_scale"] for g in optimizer.param_groups]  # this run's, not the checkpoint's
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # a checkpoint written before the visual branch had its own group
            print(f"train: the optimiser state of the checkpoint does not fit this model's parameter groups "
                  f"({e}); the optimiser starts afresh", file=sys.stderr, flush=True)
        for g, scale in zip(optimizer.param_groups, scales):
            g["lr_scale"] = scale
    start_epoch = int(state["epoch"]) + 1
    if checkpoint is not None and rank == 0 and config.get("run_id"):
        # the same MLflow run goes on: its history shows where the worker group restarted
        tracking.log_metrics(config["run_id"], {"restarted_at_epoch": start_epoch}, start_epoch)
    return start_epoch, float(state["best"])


def run_epoch(model, optimizer, shard, val, config: dict, epoch: int, rank: int, device) -> dict:
    """One epoch on this worker's shard, then val scored over every worker's share: the epoch's
    metrics (train loss and accuracy, throughput, val scores summed across workers)."""
    from raylib.batches import collate
    from raylib.models.audio_cnn import recalibrate_norms

    cfg = TrainConfig.from_dict(config["train"])
    core = model.module if hasattr(model, "module") else model
    t0 = time.perf_counter()
    distinct: list[int] = []
    batches = label_mix((collate(arrow, core.cfg.audio_channels) for arrow in shard.iter_batches(
        batch_size=cfg.batch_size, batch_format="pyarrow",
        local_shuffle_buffer_size=config.get("shuffle_rows") or cfg.shuffle_buffer,
        local_shuffle_seed=cfg.seed + epoch)), distinct)
    set_lr(optimizer, cfg, epoch)
    kept: list | None = [] if rank == 0 else None
    loss_sum, correct, total = train_epoch(model, optimizer, batches, device, kept)
    seconds = time.perf_counter() - t0
    metrics = {"epoch": epoch, "train_loss": loss_sum / max(total, 1), "train_accuracy": correct / max(total, 1),
               "train_samples_per_s_per_worker": total / max(seconds, 1e-9),
               "train_batch_distinct_labels": sum(distinct) / max(len(distinct), 1),
               "train_clips": int(all_summed([float(total)], device)[0])}  # every worker's clips of the epoch
    if rank == 0:
        recalibrate_norms(core, kept)
    share_buffers(core)  # rank 0's recalibrated statistics, for every worker's share of val
    metrics.update(metrics_from_counts(all_summed(val_counts(core, val, device, config.get("speaker_stats")), device)))
    return metrics
