"""What runs on each Ray Train worker of jobs/pretrain.py: the classifier (backbone + softmax
head), augmentation, the learning-rate schedule, evaluation, checkpoints, and the epoch loop."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time

import numpy as np
from torch import nn

from raylib import storage, tracking
from raylib.errors import WeightsError
from raylib.labels import EMOTIONS, NUM_CLASSES
from raylib.metrics import summarize
from raylib.pretrain.config import BACKBONE_FILE, HEAD_FILE, META_FILE, STATE_FILE, PretrainConfig

# ---- model -------------------------------------------------------------------------------------

def build_classifier(cfg: PretrainConfig, feature_dim: int = 0):
    """Backbone + softmax head (fine-tuning), or the head alone on features of feature_dim (probe).
    The backbone is initialised from cfg.init through the strict loader, or randomly by name."""
    import torch

    from raylib.models.backbones import SPECS, architecture
    from raylib.models.weight_files import RANDOM
    from raylib.models.weights import load_into, read_checkpoint

    if cfg.linear_probe:
        return Classifier(nn.Identity(), feature_dim, 0.0)
    torch.manual_seed(cfg.seed)
    backbone = architecture(cfg.backbone, cfg.side() if cfg.backbone == "ir50" else None)
    if cfg.init != RANDOM:
        state, _ = read_checkpoint(cfg.init)
        load_into(backbone, state, cfg.init, cfg.backbone, SPECS[cfg.backbone].head_prefixes)
    return Classifier(backbone, SPECS[cfg.backbone].dim, cfg.dropout)


class Classifier(nn.Module):
    """backbone (chips -> [B, D]) then dropout and a linear softmax layer over the 7 emotions."""

    def __init__(self, backbone: nn.Module, dim: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, NUM_CLASSES))

    def forward(self, x):
        return self.head(self.backbone(x))


def augment(x, generator, max_rotation: float, max_scale: float, max_shift: float, max_contrast: float = 0.0):
    """Random horizontal flip, rotation (degrees), scale and shift of model inputs [B, 3, s, s];
    with max_contrast, each image's contrast around its mean and its brightness change too."""
    import torch
    import torch.nn.functional as Fn

    b = x.shape[0]

    def uniform(limit):
        return (torch.rand(b, generator=generator) * 2 - 1) * limit

    angle, scale = uniform(math.radians(max_rotation)), 1 + uniform(max_scale)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / scale * flip, -torch.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / scale * flip, torch.cos(angle) / scale
    theta[:, 0, 2], theta[:, 1, 2] = uniform(2 * max_shift), uniform(2 * max_shift)
    grid = Fn.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    x = Fn.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if max_contrast:
        contrast = (1 + uniform(max_contrast)).view(b, 1, 1, 1).to(x.device, x.dtype)
        shift = uniform(max_contrast).view(b, 1, 1, 1).to(x.device, x.dtype)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + shift
    return x


def channels_last(x, device):
    """x (a model or a [B, C, H, W] batch) in channels-last memory order on GPU, where IR50's bf16
    training step runs that way 1.8x faster (BENCHMARKS.md); as it is on CPU and for features."""
    import torch

    if device.type != "cuda" or (isinstance(x, torch.Tensor) and x.dim() != 4):
        return x
    return x.to(memory_format=torch.channels_last) if isinstance(x, nn.Module) else x.contiguous(memory_format=torch.channels_last)


def lr_at(progress: float, base: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 0 over progress in [0, 1]."""
    if progress < warmup:
        return base * (progress + 1e-3) / warmup
    p = (progress - warmup) / max(1 - warmup, 1e-9)
    return base * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def make_optimizer(cfg: PretrainConfig, params):
    import torch

    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


# ---- evaluation --------------------------------------------------------------------------------

def evaluate(model, batches, device, prefix: str) -> tuple[dict, np.ndarray]:
    """({prefix}_accuracy, _uar, _loss, _recall_<label>}, confusion) of model over (x, y) batches."""
    import torch

    model.eval()
    preds, labels, loss, n = [], [], 0.0, 0
    with torch.no_grad():
        for batch in batches:
            x, y = channels_last(batch["x"].to(device), device), batch["label_index"].to(device)
            with autocast(device):
                logits = model(x).float()
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            preds.append(logits.argmax(1).cpu().numpy()), labels.append(y.cpu().numpy())
            n += len(y)
    if not n:
        return {}, np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    m = summarize(np.concatenate(labels), np.concatenate(preds))
    out = {f"{prefix}_accuracy": m["accuracy"], f"{prefix}_uar": m["uar"], f"{prefix}_loss": loss / n}
    out.update({f"{prefix}_recall_{name}": float(r) for name, r in zip(EMOTIONS, m["recall"]) if np.isfinite(r)})
    return out, m["confusion"]


def autocast(device):
    """bf16 autocast on GPU, a no-op on CPU."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# ---- checkpoints -------------------------------------------------------------------------------

def plain_tensors(module) -> dict:
    """module's state as CPU tensors in the default memory order (a GPU run trains channels-last)."""
    import torch

    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in module.state_dict().items()}


def save_pretrain_checkpoint(directory: str, core, optimizer, epoch: int, best: float, cfg: PretrainConfig,
                             metrics: dict, confusion: dict, seconds: float = 0.0) -> None:
    """pretrain.pt (resume state), backbone.pt (tensors only, the loaders' keys), head.pt, backbone.json."""
    import torch

    torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                "seconds": seconds}, os.path.join(directory, STATE_FILE))
    if not cfg.linear_probe:
        torch.save(plain_tensors(core.backbone), os.path.join(directory, BACKBONE_FILE))
    torch.save(plain_tensors(core.head), os.path.join(directory, HEAD_FILE))
    meta = {"backbone": cfg.backbone, "input_size": cfg.side(), "init": storage.public_uri(cfg.init),
            "linear_probe": cfg.linear_probe, "align": cfg.align, "dataset": storage.public_uri(cfg.input),
            "epoch": epoch, "labels": list(EMOTIONS), "metrics": {k: float(v) for k, v in metrics.items()},
            "confusion": {k: v.tolist() for k, v in confusion.items()}}
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load_state(uri: str) -> dict:
    """The resume state (pretrain.pt) of a checkpoint folder, local or URI."""
    import torch

    path = uri if uri.endswith(".pt") else storage.join(uri, STATE_FILE)
    try:
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"pretrain checkpoint {path} not found") from None


# ---- the loop on each worker -------------------------------------------------------------------

def restore(cfg: PretrainConfig, model, optimizer) -> tuple[int, float, float]:
    """Load Ray Train's last checkpoint (a restart) or --resume-from into model and optimizer;
    returns (first epoch to run, best metric so far, training seconds spent)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:  # a restart after a failure
        with checkpoint.as_directory() as d:
            state = load_state(d)
    elif cfg.resume_from:
        state = load_state(cfg.resume_from)
    if state is None:
        return 0, -1.0, 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]) + 1, float(state["best"]), float(state.get("seconds", 0.0))


def train_epoch(cfg: PretrainConfig, model, optimizer, batches, device, gen, epoch: int, steps: int,
                spent: float, weights=None) -> dict:
    """One pass over this worker's batches; the learning rate follows the cosine schedule over
    epochs or, with --time-limit-min, over the time budget, whichever is further along."""
    import torch

    model.train()
    limit_s = cfg.time_limit_min * 60
    t0 = tw = time.perf_counter()
    wait, total = 0.0, 0
    # summed on the device and read once per epoch: a read per step would wait for the GPU each step
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    for i, batch in enumerate(batches):
        wait += time.perf_counter() - tw
        x, y = batch["x"].to(device), batch["label_index"].to(device)
        if cfg.augment and not cfg.linear_probe:
            x = augment(x, gen, cfg.max_rotation, cfg.max_scale, cfg.max_shift, cfg.max_contrast)
        x = channels_last(x, device)
        progress = (epoch + min(i / steps, 1.0)) / cfg.epochs
        if limit_s:
            progress = max(progress, (spent + time.perf_counter() - t0) / limit_s)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(min(progress, 1.0), cfg.lr, cfg.warmup)
        with autocast(device):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, weight=weights, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
        tw = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, "train_loss": float(loss_sum) / max(total, 1), "train_accuracy": int(correct) / max(total, 1),
            "train_images_per_s_per_worker": total / max(seconds, 1e-9),
            "data_wait_share": wait / max(seconds, 1e-9), "train_seconds": spent + seconds}


def score_splits(core, splits: list[str], device, metrics: dict) -> dict:
    """Rank 0's scores of the val and test splits it holds whole: their metrics added to metrics;
    returns their confusion matrices."""
    import ray.train

    confusion = {}
    for split in ("val", "test"):
        it = ray.train.get_dataset_shard(split) if split in splits else None
        if it is not None:
            m, confusion[split] = evaluate(core, it.iter_torch_batches(batch_size=256), device, split)
            metrics.update(m)
    return confusion


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: config = {"cfg": PretrainConfig dict, "run_id", "tracking_uri", "feature_dim",
    "class_weights", "steps_per_epoch", "splits"}. Rank 0 scores val and test after each epoch,
    logs to MLflow and reports the checkpoint; every worker stops when the time budget is spent."""
    import ray.train
    import ray.train.torch
    import torch

    cfg = PretrainConfig(**config["cfg"])
    if config.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    rank = ray.train.get_context().get_world_rank()
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.threads_per_worker)
    model = build_classifier(cfg, config.get("feature_dim", 0))
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    start_epoch, best, spent = restore(cfg, model, optimizer)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(channels_last(model, device))
    core = model.module if hasattr(model, "module") else model
    weights = torch.tensor(config["class_weights"], dtype=torch.float32, device=device) if cfg.class_balance else None
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    steps = max(int(config.get("steps_per_epoch", 1)), 1)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.epochs):
        batches = shard.iter_torch_batches(batch_size=cfg.batch_size, local_shuffle_buffer_size=8 * cfg.batch_size,
                                           local_shuffle_seed=cfg.seed * 1000 + epoch * 10 + rank, drop_last=False)
        metrics = train_epoch(cfg, model, optimizer, batches, device, gen, epoch, steps, spent, weights)
        spent = metrics["train_seconds"]
        done = torch.tensor([spent / (cfg.time_limit_min * 60) if cfg.time_limit_min else 0.0])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MAX)  # every worker stops together
        last = epoch == cfg.epochs - 1 or (cfg.time_limit_min and float(done) >= 1.0)
        if rank == 0:
            confusion = score_splits(core, config["splits"], device, metrics)
            best = max(best, metrics.get(cfg.select_metric, 0.0))
            metrics["best_" + cfg.select_metric] = best
            if config.get("run_id"):
                tracking.log_metrics(config["run_id"], {k: v for k, v in metrics.items() if k != "epoch"}, epoch)
            with tempfile.TemporaryDirectory() as d:
                save_pretrain_checkpoint(d, core, optimizer, epoch, best, cfg, metrics, confusion, spent)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if last:
            break
