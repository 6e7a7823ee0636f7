"""Distributed fusion training: Ray Train TorchTrainer (DDP; gloo on CPU, nccl on GPU).

    feature store /train  --Ray Data, split across workers-->  collate (pad + mask)
        --> FusionModel(visual attention, audio attention, fusion) --> cross-entropy
    rank 0 each epoch: val metrics (accuracy, UAR, per-class recall) on /val, a checkpoint
        (model + optimizer + epoch + configs) to the storage URI, metrics to MLflow
The best checkpoint by the selection metric is kept; a lost worker restarts the group from the
last checkpoint (FailureConfig); --resume-from continues a finished or interrupted run.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from raylib import storage
from raylib.checkpoints import CHECKPOINT_FILE, load_checkpoint, model_config_of, model_from_checkpoint, save_checkpoint
from raylib.labels import EMOTIONS
from raylib.models import FUSIONS, MODALITIES, POOLINGS

READ_CPUS = 0.25  # per Ray Data task reading the store for training
DATA_CPUS = 0.5  # all of Ray Data's reading for one training run
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of jobs/train.py; defaults train on the demo store in about a minute."""

    store: str = field(default="data/demo/features", metadata={"help": "feature store written by jobs/extract.py (local or s3://)"})
    output: str = field(default="data/demo/runs", metadata={"help": "where checkpoints go (local folder or s3://)"})
    experiment: str = field(default="emotion-fusion", metadata={"help": "MLflow experiment"})
    run_name: str = field(default="", metadata={"help": "run name (default: attention/fusion and a time stamp)"})
    visual_attention: str = field(default="transformer", metadata={"help": "visual pooling", "choices": list(POOLINGS)})
    audio_attention: str = field(default="transformer", metadata={"help": "audio pooling", "choices": list(POOLINGS)})
    fusion: str = field(default="fbp", metadata={"help": "cross-modal fusion", "choices": list(FUSIONS)})
    modalities: str = field(default="av", metadata={"help": "av, visual or audio alone", "choices": list(MODALITIES)})
    optimizer: str = field(default="adam", metadata={"help": "optimiser", "choices": list(OPTIMIZERS)})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay"})
    epochs: int = field(default=12, metadata={"help": "epochs"})
    batch_size: int = field(default=8, metadata={"help": "clips per batch and worker"})
    fbp_k: int = field(default=5, metadata={"help": "FBP window k"})
    fbp_o: int = field(default=128, metadata={"help": "FBP output dimension o"})
    attention_hidden: int = field(default=64, metadata={"help": "hidden size m of the transformer attention"})
    dropout: float = field(default=0.2, metadata={"help": "dropout (FBP and classifier)"})
    power_norm: bool = field(default=False, metadata={"help": "signed square root before FBP's l2 step"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, nccl"})
    cpus_per_worker: float = field(default=0.5, metadata={"help": "CPUs reserved per worker"})
    worker_resource: str = field(default="", metadata={"help": "custom Ray resource the workers require, e.g. "
                                                               "gpu_node (cluster.yaml); '' : any node"})
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts from the last checkpoint"})
    select_metric: str = field(default="val_uar", metadata={"help": "metric that picks the best checkpoint", "choices": ["val_uar", "val_accuracy"]})
    resume_from: str = field(default="", metadata={"help": "checkpoint folder or model.pt to continue from"})
    quiet: bool = field(default=False, metadata={"help": "less output"})

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 1 or self.lr <= 0:
            raise ValueError("--epochs, --batch-size, --num-workers must be >= 1 and --lr > 0")

    def model_config(self, visual_dim: int, audio_channels: int):
        from raylib.models.fusion import ModelConfig

        return ModelConfig(visual_dim=visual_dim, visual_attention=self.visual_attention,
                           audio_attention=self.audio_attention, fusion=self.fusion, modalities=self.modalities,
                           audio_channels=audio_channels, attention_hidden=self.attention_hidden,
                           fbp_k=self.fbp_k, fbp_o=self.fbp_o, dropout=self.dropout, power_norm=self.power_norm)


# ---- store -------------------------------------------------------------------------------------

def store_info(store: str) -> dict:
    """visual_dim, audio_channels, class counts of train, and the recipe of a store; StoreError
    when the store mixes recipes (its features would not be comparable)."""
    from raylib.batches import usable
    from raylib.store import RECIPE_KEYS, read_store, single_recipe

    table = read_store(store, ["label_index", "status", "visual_dim", "audio_shape", "split", *RECIPE_KEYS])
    recipe = single_recipe(store, table)
    ok = usable(table)
    if ok.num_rows == 0:
        raise ValueError(f"feature store {store} has no labelled rows with features")
    rows = ok.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    shapes = [r["audio_shape"] for r in rows if r["audio_shape"]]
    counts = np.bincount([r["label_index"] for r in train], minlength=len(EMOTIONS))
    return {"visual_dim": max(r["visual_dim"] for r in rows), "audio_channels": shapes[0][0] if shapes else 1,
            "train_counts": counts.tolist(), "train_rows": len(train),
            "val_rows": sum(r["split"] == "val" for r in rows), "provenance": recipe}


# ---- evaluation (shared with jobs/evaluate.py) -------------------------------------------------

def predict(model, table, batch_size: int = 32, device="cpu", keep_weights: int = 0):
    """Class probabilities [N, 7] of store rows, and attention weights of the first keep_weights."""
    import torch

    from raylib.batches import collate, model_inputs

    model.eval()
    probs, weights = [], []
    with torch.no_grad():
        for start in range(0, table.num_rows, batch_size):
            batch = collate(table.slice(start, batch_size))
            logits, w = model(*model_inputs(batch, device))
            probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
            if len(weights) < keep_weights:
                for i in range(len(logits)):
                    weights.append({k: v[i].cpu().numpy() for k, v in w.items()})
    return (np.concatenate(probs) if probs else np.zeros((0, len(EMOTIONS)), np.float32)), weights[:keep_weights]


def val_metrics(model, table, device="cpu") -> dict:
    """val_loss, val_accuracy, val_uar and val_recall_<label> of a model on labelled rows."""
    from raylib.metrics import summarize

    probs, _ = predict(model, table, device=device)
    labels = table.column("label_index").to_numpy()
    m = summarize(labels, probs.argmax(1))
    out = {"val_loss": float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + 1e-12))),
           "val_accuracy": m["accuracy"], "val_uar": m["uar"]}
    for name, r in zip(EMOTIONS, m["recall"]):
        if np.isfinite(r):
            out[f"val_recall_{name}"] = float(r)
    return out


# ---- the loop on each worker -------------------------------------------------------------------

def make_optimizer(name: str, params, lr: float, weight_decay: float):
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def train_epoch(model, optimizer, batches, device="cpu") -> tuple[float, int, int]:
    """One pass of cross-entropy training over collated batches: (loss sum, correct, samples)."""
    import torch

    from raylib.batches import model_inputs

    model.train()
    loss_sum, correct, total = 0.0, 0, 0
    for batch in batches:
        labels = batch["labels"].to(device)
        logits, _ = model(*model_inputs(batch, device))
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return loss_sum, correct, total


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: config = {"train": TrainConfig dict, "model": ModelConfig dict, "run_id"}."""
    import ray.train
    import ray.train.torch
    import torch

    from raylib import tracking
    from raylib.batches import COLUMNS, collate, usable
    from raylib.models.fusion import ModelConfig, build_model
    from raylib.store import read_store

    cfg = TrainConfig(**config["train"])
    model_cfg = ModelConfig(**config["model"])
    if config.get("tracking_uri"):  # workers run elsewhere: the embedded store's path comes resolved
        os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.seed)
    if not cfg.use_gpu:
        torch.set_num_threads(1)
    model = build_model(model_cfg)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    start_epoch, best = 0, -1.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure, or a resumed run
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d)
    elif config.get("resume_from"):
        state = load_checkpoint(config["resume_from"])
    else:
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best"])
        if checkpoint is not None and rank == 0 and config.get("run_id"):
            # the same MLflow run goes on: its history shows where the worker group restarted
            tracking.log_metrics(config["run_id"], {"restarted_at_epoch": start_epoch}, start_epoch)
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    val = usable(read_store(cfg.store, COLUMNS, split="val")) if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        batches = (collate(arrow) for arrow in shard.iter_batches(
            batch_size=cfg.batch_size, batch_format="pyarrow", local_shuffle_buffer_size=4 * cfg.batch_size,
            local_shuffle_seed=cfg.seed + epoch))
        loss_sum, correct, total = train_epoch(model, optimizer, batches, device)
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(total, 1), "train_accuracy": correct / max(total, 1),
                   "train_samples_per_s_per_worker": total / max(seconds, 1e-9)}
        if rank == 0:
            metrics.update(val_metrics(core, val, device) if val.num_rows else {"val_accuracy": 0.0, "val_uar": 0.0})
            best = max(best, metrics.get(cfg.select_metric, 0.0))
            metrics["best_" + cfg.select_metric] = best
            if config.get("run_id"):
                tracking.log_metrics(config["run_id"], {k: v for k, v in metrics.items() if k != "epoch"}, epoch)
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(d, core, optimizer, epoch, best, model_cfg, cfg, metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


# ---- the driver --------------------------------------------------------------------------------

def worker_resources(cfg: TrainConfig) -> dict:
    """Ray resources of one training worker (the GPU comes from use_gpu)."""
    from raylib.runtime import placement

    return {"CPU": cfg.cpus_per_worker, **placement(cfg.worker_resource)}


def default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.visual_attention}-{cfg.audio_attention}-{cfg.fusion}-{cfg.modalities}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_train(cfg: TrainConfig, parent_run_id: str | None = None, callbacks: list | None = None,
              log_artifacts: bool = True) -> dict:
    """Train one model with Ray Train; returns {run_id, best_checkpoint, best metrics, ...}."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from raylib import tracking
    from raylib.schema import SCHEMA_VERSION
    from raylib.store import data_files

    local = {k: os.path.abspath(getattr(cfg, k)) for k in ("store", "output", "resume_from")
             if getattr(cfg, k) and not storage.is_remote(getattr(cfg, k))}
    cfg = replace(cfg, **local)  # workers do not share the driver's working directory
    info = store_info(cfg.store)
    model_cfg = cfg.model_config(info["visual_dim"], info["audio_channels"])
    run_name = cfg.run_name or default_run_name(cfg)
    tags = {"store": cfg.store, "schema_version": SCHEMA_VERSION, **{f"store.{k}": v for k, v in info["provenance"].items()}}
    run_id = tracking.start_run(cfg.experiment, run_name, tracking.config_params(cfg), tags, parent_run_id)
    fs, _ = storage.filesystem(cfg.store)
    files = data_files(cfg.store, "train")
    if not files:
        raise ValueError(f"feature store {cfg.store} has no train split")
    from raylib.batches import COLUMNS

    # fractional CPUs: on a small machine the workers' reservations must leave room for reading
    train_ds = ray.data.read_parquet(files, columns=COLUMNS, num_cpus=READ_CPUS,
                                     filesystem=fs if storage.is_remote(cfg.store) else None)
    train_ds = train_ds.filter(expr="label_index >= 0 and status != 'error'", num_cpus=READ_CPUS)
    output = cfg.output
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(cfg), "model": asdict(model_cfg), "run_id": run_id,
                           "tracking_uri": tracking.tracking_uri(), "resume_from": cfg.resume_from},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=worker_resources(cfg)),
        datasets={"train": train_ds},
        # reading is capped at DATA_CPUS so that it never competes with the workers' reservations
        dataset_config=ray.train.DataConfig(execution_options=ray.data.ExecutionOptions(
            resource_limits=ray.data.ExecutionResources(cpu=DATA_CPUS))),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=output, callbacks=callbacks or None,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=cfg.select_metric,
                                                         checkpoint_score_order="max")),
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception:
        tracking.end_run(run_id, "FAILED")
        raise
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(cfg.select_metric, -1))
    path = best_ckpt.path  # a path inside the storage filesystem: give it back its scheme
    if storage.is_remote(output) and "://" not in path:
        path = output.split("://", 1)[0] + "://" + path.lstrip("/")
    summary = {"run_id": run_id, "run_name": run_name, "best_checkpoint": path,
               "best_epoch": int(best_metrics["epoch"]), "elapsed_s": round(time.perf_counter() - t0, 1),
               **{k: v for k, v in best_metrics.items() if k.startswith(("val_", "train_"))}}
    if log_artifacts:
        log_run_artifacts(run_id, summary["best_checkpoint"], cfg.store, best_ckpt)
    tracking.log_metrics(run_id, {"best_val_accuracy": summary.get("val_accuracy", 0.0),
                                  "best_val_uar": summary.get("val_uar", 0.0)}, summary["best_epoch"])
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking.tracking_uri()).set_tag(run_id, "best_checkpoint", tracking.public(summary["best_checkpoint"]))
    tracking.end_run(run_id)
    return summary


def log_run_artifacts(run_id: str, checkpoint_path: str, store: str, checkpoint=None, attention_clips: int = 4) -> None:
    """Confusion matrix PNG, per-class table, attention plot on val, and the model, to the run."""
    import mlflow

    from raylib import tracking
    from raylib.batches import COLUMNS, usable
    from raylib.metrics import summarize
    from raylib.schema import thumbnails_array
    from raylib.store import read_store

    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model, state = model_from_checkpoint(d)
    else:
        model, state = model_from_checkpoint(checkpoint_path)
    val = usable(read_store(store, COLUMNS + ["thumbnails"], split="val"))
    if val.num_rows == 0:
        return
    probs, weights = predict(model, val, keep_weights=attention_clips)
    labels = val.column("label_index").to_numpy()
    m = summarize(labels, probs.argmax(1))
    with tempfile.TemporaryDirectory() as d:
        tracking.log_artifact(run_id, tracking.confusion_png(m["confusion"], os.path.join(d, "confusion_matrix.png"),
                                                             f"val: accuracy {m['accuracy']:.2f}, UAR {m['uar']:.2f}"))
        table = os.path.join(d, "per_class.md")
        with open(table, "w") as f:
            f.write("| class | support | recall |\n|---|---|---|\n")
            for name, support, r in zip(EMOTIONS, m["confusion"].sum(1), m["recall"]):
                f.write(f"| {name} | {support} | {'-' if not np.isfinite(r) else f'{r:.3f}'} |\n")
        tracking.log_artifact(run_id, table)
        rows = val.slice(0, len(weights)).to_pylist()
        clips = [{"title": f"{EMOTIONS[r['label_index']]} ({os.path.basename(r['uri'])})",
                  "thumbnails": thumbnails_array(r), "visual": w.get("visual"), "audio": audio_over_time(w.get("audio"))}
                 for r, w in zip(rows, weights)]
        if clips:
            tracking.log_artifact(run_id, tracking.attention_png(clips, os.path.join(d, "attention_weights.png")))
    mlflow.set_tracking_uri(tracking.tracking_uri())
    with mlflow.start_run(run_id=run_id):
        # the MLflow model (pickled module, for mlflow.pytorch.load_model) ...
        mlflow.pytorch.log_model(model, name="model", pip_requirements=["torch"], serialization_format="pickle")
    with tempfile.TemporaryDirectory() as d:  # ... and the tensors-only checkpoint evaluate.py loads
        save_checkpoint(d, model, None, int(state["epoch"]), float(state["best"]),
                        model_config_of(state), TrainConfig(**state["train_config"]), state.get("metrics", {}))
        tracking.log_artifact(run_id, os.path.join(d, CHECKPOINT_FILE), "checkpoint")


def audio_over_time(weights):
    """Audio attention weights [H * W] (pool5, row-major) -> [W] per time column, or None."""
    if weights is None:
        return None
    import torch

    from raylib.models.audio_cnn import MIN_FREQ_BINS, pool5_length

    rows = int(pool5_length(torch.tensor(MIN_FREQ_BINS)))  # the audio CNN sees >= 200 frequency rows
    w = np.asarray(weights)
    return w.reshape(rows, -1).sum(axis=0) if w.size % rows == 0 else w
