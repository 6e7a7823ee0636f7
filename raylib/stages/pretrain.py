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
    TorchTrainer     DDP workers (gloo on CPU, nccl + bf16 autocast on GPU): augmentation
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
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from torch import nn

from raylib import storage
from raylib.labels import EMOTIONS, LABEL_INDEX, NUM_CLASSES

PRETRAIN_BACKBONES = ("ir50", "resnet18", "vggface")
PROBE_BACKBONES = (*PRETRAIN_BACKBONES, "dlib_resnet")
STATE_FILE = "pretrain.pt"  # model + optimizer + epoch + best: what a restart or --resume-from reads
BACKBONE_FILE = "backbone.pt"  # what jobs/extract.py --weights loads
HEAD_FILE = "head.pt"
META_FILE = "backbone.json"  # = raylib.models.backbones.PRETRAIN_META
DECODE_BATCH = 64
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class PretrainConfig:
    """Every knob of jobs/pretrain.py; defaults fine-tune ResNet18 from random init on CPU."""

    input: str = field(default="data/faces", metadata={"help": "image folders <root>/<split>/<class>/ or a .csv/.parquet "
                                                                 "manifest (local or s3://); comma-separated for --table1-features"})
    dataset_format: str = field(default="auto", metadata={"help": "input layout", "choices": ["auto", "folders", "manifest"]})
    output: str = field(default="data/pretrain", metadata={"help": "where checkpoints go (local folder or s3://)"})
    experiment: str = field(default="face-pretrain", metadata={"help": "MLflow experiment"})
    run_name: str = field(default="", metadata={"help": "run name (default: backbone, init and a time stamp)"})
    backbone: str = field(default="resnet18", metadata={"help": "face backbone (dlib_resnet: --linear-probe only)",
                                                        "choices": list(PROBE_BACKBONES)})
    init: str = field(default="random", metadata={"help": "checkpoint path/URI to start from, 'random' by name, "
                                                          "'packaged' for dlib_resnet"})
    input_size: int = field(default=0, metadata={"help": "backbone input side in px (0: the backbone's, as extraction)"})
    align: bool = field(default=False, metadata={"help": "run extraction's dlib alignment on each image (in-the-wild "
                                                         "photos); whole image when no face"})
    linear_probe: bool = field(default=False, metadata={"help": "freeze the backbone, train only the softmax on its features"})
    epochs: int = field(default=10, metadata={"help": "epochs (the cosine schedule's length)"})
    time_limit_min: float = field(default=0.0, metadata={"help": "fit the schedule into this many minutes of training "
                                                                 "and stop there (0: no limit)"})
    batch_size: int = field(default=64, metadata={"help": "images per batch and worker"})
    optimizer: str = field(default="sgd", metadata={"help": "optimiser", "choices": list(OPTIMIZERS)})
    lr: float = field(default=0.05, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay"})
    warmup: float = field(default=0.03, metadata={"help": "share of the schedule spent warming up"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    dropout: float = field(default=0.2, metadata={"help": "dropout before the softmax layer"})
    augment: bool = field(default=True, metadata={"help": "random flip, rotation, scale and shift of the chips"})
    max_rotation: float = field(default=10.0, metadata={"help": "augmentation: max rotation, degrees"})
    max_scale: float = field(default=0.1, metadata={"help": "augmentation: max relative scale change"})
    max_shift: float = field(default=0.08, metadata={"help": "augmentation: max shift, fraction of the side"})
    max_contrast: float = field(default=0.0, metadata={"help": "augmentation: max relative contrast and brightness "
                                                                 "change per image (0: none)"})
    class_balance: bool = field(default=False, metadata={"help": "weight the loss by inverse class frequency"})
    max_per_class: int = field(default=0, metadata={"help": "use at most this many images per class and split (0: all)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, nccl, bf16 autocast"})
    cpus_per_worker: float = field(default=0.5, metadata={"help": "CPUs reserved per worker"})
    threads_per_worker: int = field(default=1, metadata={"help": "torch threads per CPU worker"})
    decode_cpus: float = field(default=0.5, metadata={"help": "CPUs per decoding task"})
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts from the last checkpoint"})
    select_metric: str = field(default="val_uar", metadata={"help": "metric that picks the best checkpoint",
                                                            "choices": ["val_uar", "val_accuracy"]})
    resume_from: str = field(default="", metadata={"help": "checkpoint folder to continue from"})
    table1_features: str = field(default="", metadata={"help": "Table-1 grid: comma-separated backbone:weights "
                                                               "features, each linear-probed on every --input"})
    quiet: bool = field(default=False, metadata={"help": "less output"})

    def __post_init__(self):
        if min(self.epochs, self.batch_size, self.num_workers) < 1 or self.lr <= 0:
            raise ValueError("--epochs, --batch-size, --num-workers must be >= 1 and --lr > 0")
        if self.backbone == "dlib_resnet" and not (self.linear_probe or self.table1_features):
            raise ValueError("dlib_resnet cannot be fine-tuned here (it is a dlib model): use --linear-probe")
        if self.input_size and self.backbone == "vggface" and self.input_size != 224:
            raise ValueError("vggface takes 224 px inputs only (its fc6 is sized for 7 x 7 maps)")
        if self.input_size and self.backbone == "ir50" and self.input_size not in (112, 224):
            raise ValueError("ir50 takes 112 or 224 px inputs only")

    def side(self) -> int:
        from raylib.models.backbones import SPECS

        return self.input_size or SPECS[self.backbone].input_size


# ---- data --------------------------------------------------------------------------------------

def decode_batch(batch: dict, spec_name: str, input_size: int, align: bool, keep_chips: bool) -> dict:
    """Rows (uri, label, split, ...) -> rows with x (model input [3, s, s] float32, or the chip
    [224, 224, 3] uint8 when keep_chips), label_index, face_found, ok, error. One row out per row
    in; an unreadable image is a row with ok=False and its error."""
    from raylib.images import decode_image, image_chip, model_input
    from raylib.media.faces import CHIP_SIZE
    from raylib.models.backbones import SPECS
    from raylib.stages.preprocess import exception_line

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


# ---- model -------------------------------------------------------------------------------------

def build_classifier(cfg: PretrainConfig, feature_dim: int = 0):
    """Backbone + softmax head (fine-tuning), or the head alone on features of feature_dim (probe).
    The backbone is initialised from cfg.init through the strict loader, or randomly by name."""
    import torch

    from raylib.models.backbones import SPECS, architecture
    from raylib.models.weights import RANDOM, load_into, read_checkpoint

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

    from raylib.metrics import summarize

    model.eval()
    preds, labels, loss, n = [], [], 0.0, 0
    with torch.no_grad():
        for batch in batches:
            x, y = batch["x"].to(device), batch["label_index"].to(device)
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

def save_pretrain_checkpoint(directory: str, core, optimizer, epoch: int, best: float, cfg: PretrainConfig,
                             metrics: dict, confusion: dict, seconds: float = 0.0) -> None:
    """pretrain.pt (resume state), backbone.pt (tensors only, the loaders' keys), head.pt, backbone.json."""
    import torch

    torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                "seconds": seconds}, os.path.join(directory, STATE_FILE))
    if not cfg.linear_probe:
        torch.save({k: v.detach().cpu().clone() for k, v in core.backbone.state_dict().items()},
                   os.path.join(directory, BACKBONE_FILE))
    torch.save({k: v.detach().cpu().clone() for k, v in core.head.state_dict().items()}, os.path.join(directory, HEAD_FILE))
    meta = {"backbone": cfg.backbone, "input_size": cfg.side(), "init": storage.public_uri(cfg.init),
            "linear_probe": cfg.linear_probe, "align": cfg.align, "dataset": storage.public_uri(cfg.input),
            "epoch": epoch, "labels": list(EMOTIONS), "metrics": {k: float(v) for k, v in metrics.items()},
            "confusion": {k: v.tolist() for k, v in confusion.items()}}
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load_state(uri: str) -> dict:
    """The resume state (pretrain.pt) of a checkpoint folder, local or URI."""
    import io

    import torch

    from raylib.errors import WeightsError

    path = uri if uri.endswith(".pt") else storage.join(uri, STATE_FILE)
    try:
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"pretrain checkpoint {path} not found") from None


# ---- the loop on each worker -------------------------------------------------------------------

def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: config = {"cfg": PretrainConfig dict, "run_id", "tracking_uri", "feature_dim",
    "class_weights", "steps_per_epoch"}."""
    import ray.train
    import ray.train.torch
    import torch

    from raylib import tracking

    cfg = PretrainConfig(**config["cfg"])
    if config.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    rank = ray.train.get_context().get_world_rank()
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.threads_per_worker)
    model = build_classifier(cfg, config.get("feature_dim", 0))
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    start_epoch, best, spent = 0, -1.0, 0.0
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:  # a restart after a failure
        with checkpoint.as_directory() as d:
            state = load_state(d)
    elif cfg.resume_from:
        state = load_state(cfg.resume_from)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, spent = int(state["epoch"]) + 1, float(state["best"]), float(state.get("seconds", 0.0))
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    weights = torch.tensor(config["class_weights"], dtype=torch.float32, device=device) if cfg.class_balance else None
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    steps = max(int(config.get("steps_per_epoch", 1)), 1)
    shard = ray.train.get_dataset_shard("train")
    limit_s = cfg.time_limit_min * 60
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        wait = 0.0
        loss_sum, correct, total = 0.0, 0, 0
        tw = time.perf_counter()
        for i, batch in enumerate(shard.iter_torch_batches(
                batch_size=cfg.batch_size, local_shuffle_buffer_size=8 * cfg.batch_size,
                local_shuffle_seed=cfg.seed * 1000 + epoch * 10 + rank, drop_last=False)):
            wait += time.perf_counter() - tw
            x, y = batch["x"].to(device), batch["label_index"].to(device)
            if cfg.augment and not cfg.linear_probe:
                x = augment(x, gen, cfg.max_rotation, cfg.max_scale, cfg.max_shift, cfg.max_contrast)
            progress = (epoch + min(i / steps, 1.0)) / cfg.epochs
            if limit_s:
                progress = max(progress, (spent + time.perf_counter() - t0) / limit_s)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(min(progress, 1.0), cfg.lr, cfg.warmup)
            with autocast(device):
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y, weight=weights,
                                                     label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
            tw = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        spent += seconds
        done = torch.tensor([spent / limit_s if limit_s else 0.0])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MAX)  # every worker stops together
        last = epoch == cfg.epochs - 1 or (limit_s and float(done) >= 1.0)
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(total, 1), "train_accuracy": correct / max(total, 1),
                   "train_images_per_s_per_worker": total / max(seconds, 1e-9),
                   "data_wait_share": wait / max(seconds, 1e-9), "train_seconds": spent}
        if rank == 0:
            confusion = {}
            for split in ("val", "test"):
                it = ray.train.get_dataset_shard(split) if split in config["splits"] else None
                if it is not None:
                    m, confusion[split] = evaluate(core, it.iter_torch_batches(batch_size=256), device, split)
                    metrics.update(m)
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
        ds = ds.map_batches(EmbedStage, batch_size=DECODE_BATCH, num_cpus=cfg.decode_cpus,
                            fn_constructor_kwargs={"backbone": cfg.backbone, "weights": cfg.init,
                                                   "input_size": cfg.input_size},
                            compute=ray.data.ActorPoolStrategy(size=1))
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
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from raylib import tracking
    from raylib.images import list_images
    from raylib.models.weights import weights_digest

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
    run_id = tracking.start_run(cfg.experiment, run_name, tracking.config_params(cfg), tags, parent_run_id)
    try:
        t0 = time.perf_counter()
        splits, skipped, dim = build_datasets(cfg, records)
        decode_s = time.perf_counter() - t0
        for s in skipped[:20]:
            print(f"pretrain: skipped {s['uri']}: {s['error']}", file=sys.stderr, flush=True)
        if skipped:
            print(f"pretrain: skipped {len(skipped)} unreadable image(s) of {len(records)}", file=sys.stderr, flush=True)
        train_counts = np.bincount([LABEL_INDEX[r.label] for r in records if r.split == "train"], minlength=NUM_CLASSES)
        present = train_counts > 0
        class_weights = np.where(present, train_counts.sum() / np.maximum(train_counts, 1) / max(present.sum(), 1), 0.0)
        steps = math.ceil(splits["train"].count() / cfg.num_workers / cfg.batch_size)
        trainer = TorchTrainer(
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
        t1 = time.perf_counter()
        result = trainer.fit()
    except Exception:
        tracking.end_run(run_id, "FAILED")
        raise
    best_ckpt, best = max(result.best_checkpoints, key=lambda cm: cm[1].get(cfg.select_metric, -1))
    path = best_ckpt.path
    if storage.is_remote(cfg.output) and "://" not in path:
        path = cfg.output.split("://", 1)[0] + "://" + path.lstrip("/")
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


def _log_outcome(run_id: str, summary: dict, checkpoint) -> None:
    """Best metrics, confusion matrices (PNG), the backbone file and its digest to the MLflow run."""
    from mlflow.tracking import MlflowClient

    from raylib import plots, tracking

    client = MlflowClient(tracking.tracking_uri())
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
