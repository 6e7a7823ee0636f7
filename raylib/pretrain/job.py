"""Face-backbone pretraining on expression images (Table 1): Ray Data decoding, Ray Train fine-tuning.

    image records (raylib.images: class folders or a manifest)
        |  ray.data.from_items
        v
    decode_batch     tasks: read, decode, frame the chip like extraction (--align: dlib), then
        |            either the backbone's input x [3, s, s] (fine-tuning) or the chip (probe)
        v            (1 row in, 1 row out; an unreadable image is a row with ok=False, counted)
    [EmbedStage]     --linear-probe only: actor holding the frozen encoder; x = its feature [D],
        |            exactly what extraction stores for that chip
        v
    TorchTrainer     DDP workers (pretrain_loop.py; gloo on CPU, nccl + bf16 autocast on GPU): augmentation
                     (flip, small rotations, scales, shifts; contrast optionally) on x, cross-entropy (class-balanced
                     optionally), cosine schedule fitted to --epochs or --time-limit-min; rank 0
                     each epoch: val/test accuracy, UAR, per-class recall, a checkpoint with
                     backbone.pt (tensors only, the keys build_backbone loads strictly), head.pt
                     and backbone.json; the best checkpoint is kept; metrics to MLflow.
A lost worker restarts the group from the last checkpoint (--max-failures); --resume-from goes on
from a checkpoint folder.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace

import numpy as np

from raylib import plots, storage, tracking
from raylib.errors import exception_line
from raylib.images import decode_image, image_chip, list_images, model_input
from raylib.labels import LABEL_INDEX, NUM_CLASSES
from raylib.media.image import CHIP_SIZE
from raylib.pretrain.config import (
    BACKBONE_FILE,
    HEAD_FILE,
    META_FILE,
    PRETRAIN_BACKBONES,
    PROBE_BACKBONES,
    PretrainConfig,
)
from raylib.pretrain.loop import train_loop_per_worker
from raylib.runtime import cpu_actor_pool

DECODE_BATCH = 64

__all__ = ["PROBE_BACKBONES", "PretrainConfig", "decode_batch", "run_pretrain"]


# ---- data --------------------------------------------------------------------------------------

def decode_batch(batch: dict, spec_name: str, input_size: int, align: bool, keep_chips: bool) -> dict:
    """Rows (uri, label, split, ...) -> rows with x (model input [3, s, s] float32, or the chip
    [224, 224, 3] uint8 when keep_chips), label_index, face_found, ok, error. One row out per row
    in; an unreadable image is a row with ok=False and its error."""
    from raylib.models.backbones import SPECS

    chips, found, ok, errors = [], [], [], []
    for uri in batch["uri"]:
        try:
            chip, face = image_chip(decode_image(storage.read_bytes(str(uri))), align)
            chips.append(chip), found.append(face), ok.append(True), errors.append("")
        except Exception as e:  # a bad file fails its row only
            chips.append(np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.uint8))
            found.append(False), ok.append(False), errors.append(exception_line(e))
    chips = np.stack(chips)
    x = chips if keep_chips else model_input(chips, SPECS[spec_name], input_size).numpy()
    return {"uri": np.asarray(batch["uri"]), "split": np.asarray(batch["split"]), "x": x,
            "label_index": np.asarray([LABEL_INDEX[str(v)] for v in batch["label"]], np.int64),
            "face_found": np.asarray(found), "ok": np.asarray(ok), "error": np.asarray(errors)}


def build_encoder(backbone: str, weights: str, input_size: int = 0, device: str = "cpu"):
    """The extraction's encoder for backbone/weights, at input_size when one is given (a model
    fine-tuned at a small size is probed at that size)."""
    from raylib.models.backbones import build_backbone

    return build_backbone(backbone, weights, device=device, input_size=input_size or None)


class EmbedStage:
    """Holds the frozen encoder; each call replaces the chips x by its features [D] float32."""

    def __init__(self, backbone: str, weights: str, input_size: int = 0):
        import torch

        self.encoder = build_encoder(backbone, weights, input_size, "cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: dict) -> dict:
        import torch

        chips = torch.from_numpy(np.asarray(batch["x"])).permute(0, 3, 1, 2)
        return {**batch, "x": self.encoder.embed(chips).cpu().numpy().astype(np.float32)}


def subsample(records: list, per_class: int, seed: int) -> list:
    """At most per_class records per (split, label), drawn with a fixed seed."""
    if not per_class:
        return records
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r.split, r.label), []).append(r)
    out = []
    for key in sorted(groups):
        g = groups[key]
        out.extend(g[i] for i in sorted(rng.permutation(len(g))[:per_class]))
    return out


# ---- the driver --------------------------------------------------------------------------------

def default_run_name(cfg: PretrainConfig) -> str:
    init = "random" if cfg.init == "random" else os.path.splitext(os.path.basename(cfg.init.rstrip("/")))[0]
    kind = "probe" if cfg.linear_probe else "finetune"
    return f"{cfg.backbone}-{init}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_datasets(cfg: PretrainConfig, records: list) -> tuple[dict, list[dict], int]:
    """Decoded (and, for the probe, embedded) Ray datasets per split, the skipped files
    [{uri, error}], and the feature dimension (probe) or 0."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = not cfg.quiet
    # listings come sorted by class: shuffle once here so that every block, and so every batch
    # drawn through the workers' local shuffle buffers, mixes the classes
    order = np.random.default_rng(cfg.seed).permutation(len(records))
    ds = ray.data.from_items([records[i].to_dict() for i in order],
                             override_num_blocks=max(1, min(len(records) // 256, 200)))
    ds = ds.map_batches(decode_batch, batch_size=DECODE_BATCH, num_cpus=cfg.decode_cpus,
                        fn_kwargs={"spec_name": cfg.backbone if cfg.backbone in PRETRAIN_BACKBONES else "resnet18",
                                   "input_size": cfg.side() if cfg.backbone in PRETRAIN_BACKBONES else 224,
                                   "align": cfg.align, "keep_chips": cfg.linear_probe})
    dim = 0
    if cfg.linear_probe:
        # a pool of 1 to one encoder per CPU, like extraction's feature actors: on CPU the
        # embedding is the slow part (dlib's ~60 ms an image), and one actor leaves cores idle
        ds = ds.map_batches(EmbedStage, batch_size=DECODE_BATCH, num_cpus=cfg.decode_cpus,
                            fn_constructor_kwargs={"backbone": cfg.backbone, "weights": cfg.init,
                                                   "input_size": cfg.input_size},
                            compute=cpu_actor_pool(len(records), DECODE_BATCH))
    ds = ds.materialize()  # decoded once: every epoch reads these blocks
    skipped = ds.filter(expr="ok == False").select_columns(["uri", "error"]).take_all()
    good = ds.filter(expr="ok == True").select_columns(["x", "label_index", "split"]).materialize()
    if cfg.linear_probe:
        dim = int(np.asarray(good.take(1)[0]["x"]).shape[-1])
    splits = {s: good.filter(expr=f"split == '{s}'").select_columns(["x", "label_index"]).materialize()
              for s in ("train", "val", "test") if any(r.split == s for r in records)}
    return splits, skipped, dim


def run_pretrain(cfg: PretrainConfig, parent_run_id: str | None = None) -> dict:
    """Fine-tune (or linear-probe) a backbone with Ray Train; returns {run_id, best_checkpoint,
    backbone_weights, best metrics, skipped, images_per_s, ...}."""
    from raylib.models.weight_files import weights_digest

    local = {k: os.path.abspath(getattr(cfg, k)) for k in ("input", "output", "init", "resume_from")
             if getattr(cfg, k) and getattr(cfg, k) not in ("random", "packaged") and not storage.is_remote(getattr(cfg, k))}
    cfg = replace(cfg, **local)  # workers do not share the driver's working directory
    listing = list_images(cfg.input, cfg.dataset_format)
    records = subsample(listing.records, cfg.max_per_class, cfg.seed)
    counts = Counter(r.split for r in records)
    if not counts["train"] or not counts["val"]:
        raise ValueError(f"{cfg.input} needs a train and a val split ({listing.summary()})")
    init_digest = weights_digest(cfg.backbone, cfg.init)  # fails early on a missing checkpoint
    run_name = cfg.run_name or default_run_name(cfg)
    tags = {"dataset": cfg.input, "kind": "linear-probe" if cfg.linear_probe else "finetune",
            "init_digest": init_digest, "images": listing.summary()}
    run_id = tracking.start_run(cfg.experiment, run_name, tracking.config_params(cfg), tags, parent_run_id,
                                tracking.PURPOSES["pretrain"])
    try:
        t0 = time.perf_counter()
        splits, skipped, dim = build_datasets(cfg, records)
        decode_s = time.perf_counter() - t0
        for s in skipped[:20]:
            print(f"pretrain: skipped {s['uri']}: {s['error']}", file=sys.stderr, flush=True)
        if skipped:
            print(f"pretrain: skipped {len(skipped)} unreadable image(s) of {len(records)}", file=sys.stderr, flush=True)
        trainer = make_trainer(cfg, run_name, run_id, splits, dim, records)
        t1 = time.perf_counter()
        result = trainer.fit()
    except Exception:
        tracking.end_run(run_id, "FAILED")
        raise
    best_ckpt, best = max(result.best_checkpoints, key=lambda cm: cm[1].get(cfg.select_metric, -1))
    path = best_ckpt.path
    path = storage.uri_of(path, cfg.output)
    weights = cfg.init if cfg.linear_probe else storage.join(path, BACKBONE_FILE)
    digest = weights_digest(cfg.backbone, weights)
    summary = {"run_id": run_id, "run_name": run_name, "best_checkpoint": path, "backbone_weights": weights,
               "backbone_digest": digest, "best_epoch": int(best["epoch"]),
               "images": listing.summary() + (f"; used {len(records)} (--max-per-class {cfg.max_per_class})"
                                              if len(records) < len(listing.records) else ""),
               "skipped": skipped, "decode_s": round(decode_s, 1), "train_s": round(time.perf_counter() - t1, 1),
               **{k: v for k, v in best.items() if k.startswith(("val_", "test_", "train_", "data_"))}}
    _log_outcome(run_id, summary, best_ckpt)
    tracking.end_run(run_id)
    return summary


def make_trainer(cfg: PretrainConfig, run_name: str, run_id: str, splits: dict, dim: int, records: list):
    """The TorchTrainer of a pretraining run: its workers, the decoded splits (train split across
    workers), class weights from the train counts (absent classes weigh 0)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    train_counts = np.bincount([LABEL_INDEX[r.label] for r in records if r.split == "train"], minlength=NUM_CLASSES)
    present = train_counts > 0
    class_weights = np.where(present, train_counts.sum() / np.maximum(train_counts, 1) / max(present.sum(), 1), 0.0)
    steps = math.ceil(splits["train"].count() / cfg.num_workers / cfg.batch_size)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": asdict(cfg), "run_id": run_id, "tracking_uri": tracking.tracking_uri(),
                           "feature_dim": dim, "class_weights": class_weights.tolist(),
                           "steps_per_epoch": steps, "splits": list(splits)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        datasets=splits,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=cfg.output,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=cfg.select_metric,
                                                         checkpoint_score_order="max")),
    )


def _log_outcome(run_id: str, summary: dict, checkpoint) -> None:
    """Best metrics, confusion matrices (PNG), the backbone file and its digest to the MLflow run."""
    client = tracking.client()
    tracking.log_metrics(run_id, {f"best_{k}": v for k, v in summary.items()
                                  if k.startswith(("val_accuracy", "val_uar", "test_accuracy", "test_uar"))},
                         summary["best_epoch"])
    with checkpoint.as_directory() as d:
        meta = json.load(open(os.path.join(d, META_FILE)))
        with tempfile.TemporaryDirectory() as out:
            for split, cm in meta["confusion"].items():
                cm = np.asarray(cm)
                acc = np.trace(cm) / max(cm.sum(), 1)
                tracking.log_artifact(run_id, plots.confusion_png(
                    cm, os.path.join(out, f"confusion_{split}.png"), f"{split} (best epoch): accuracy {acc:.3f}"))
        for name in (BACKBONE_FILE, HEAD_FILE, META_FILE):
            if os.path.exists(os.path.join(d, name)):
                tracking.log_artifact(run_id, os.path.join(d, name), "backbone")
    for key in ("best_checkpoint", "backbone_weights", "backbone_digest"):
        client.set_tag(run_id, key, tracking.public(summary[key]))
