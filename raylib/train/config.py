"""What a training run is given: TrainConfig (every knob of jobs/train.py) and store_info (what
a feature store holds for training: feature sizes, class counts, its one recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import pyarrow.compute as pc

from raylib.errors import StoreError
from raylib.folds import fold_plan, speaker_split
from raylib.labels import EMOTIONS
from raylib.models.model_config import ModelConfig
from raylib.prediction import rows_for
from raylib.store import RECIPE_KEYS, read_store, single_recipe, usable

OPTIMIZERS = ("adam", "adamw", "sgd")
SELECT_METRICS = ("val_uar", "val_accuracy")
LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of jobs/train.py; defaults train on the demo store in about a minute. The model's
    knobs are a ModelConfig (defined once there); the store fills in its feature sizes."""

    store: str = field(default="data/demo/features", metadata={"help": "feature store written by jobs/extract.py (local or s3://)"})
    output: str = field(default="data/demo/runs", metadata={"help": "where checkpoints go (local folder or s3://)"})
    experiment: str = field(default="emotion-fusion", metadata={"help": "MLflow experiment"})
    run_name: str = field(default="", metadata={"help": "MLflow run name (default: visual/audio/fusion and a time stamp)"})
    # the model's knobs (attentions, fusion, modalities, sizes): flags of their own (raylib.config)
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"inline": {}})
    optimizer: str = field(default="adam", metadata={"help": "optimiser", "choices": list(OPTIMIZERS)})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    lr_schedule: str = field(default="cosine", metadata={"help": "cosine: from --lr down to 0 over the epochs; constant",
                                                         "choices": list(LR_SCHEDULES)})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay"})
    visual_lr_scale: float = field(default=10.0, metadata={
        "help": "a --modalities visual model's learning rate over --lr (a head over frozen frame features: on the "
                "default schedule it did not fit real features at --lr; docs/method.md, section 4)"})
    epochs: int = field(default=12, metadata={"help": "epochs"})
    batch_size: int = field(default=8, metadata={"help": "clips per batch and worker"})
    seed: int = field(default=0, metadata={"help": "random seed (model init, the order files are read in each "
                                                   "epoch, the shuffle buffer)"})
    shuffle_buffer: int = field(default=1024, metadata={"help": "rows each worker shuffles in memory (capped at its share "
                                                                "of the train split: then each epoch is a full shuffle "
                                                                "of that share)"})
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, nccl"})
    cpus_per_worker: float = field(default=0.5, metadata={"help": "CPUs reserved per worker"})
    worker_resource: str = field(default="", metadata={"help": "custom Ray resource the workers require, e.g. "
                                                               "gpu_node (cluster.yaml); '' : any node"})
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts from the last checkpoint"})
    select_metric: str = field(default="val_uar", metadata={"help": "metric that picks the best checkpoint", "choices": list(SELECT_METRICS)})
    resume_from: str = field(default="", metadata={"help": "checkpoint folder or model.pt to continue from"})
    folds: int = field(default=0, metadata={"help": "speaker-independent cross-validation over the store's speaker "
                                                    "column (all splits): one model per fold of speakers, its epoch "
                                                    "picked on an inner split of its training speakers, scored once "
                                                    "on the fold's held-out speakers (test_* metrics; one MLflow "
                                                    "parent run with mean +- sd, a child per fold). 0: train on the "
                                                    "train split, pick on val"})
    fold: int = field(default=-1, metadata={"help": "with --folds: train this fold only (0-based); -1: every fold"})
    quiet: bool = field(default=False, metadata={"help": "no per-epoch lines, no progress bars, no JSON summary"})

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 1 or self.lr <= 0 or self.visual_lr_scale <= 0:
            raise ValueError("--epochs, --batch-size, --num-workers must be >= 1, --lr and --visual-lr-scale > 0")
        if self.shuffle_buffer < 1:
            raise ValueError("--shuffle-buffer must be >= 1 (rows)")
        if self.folds == 1 or self.folds < 0:
            raise ValueError("--folds must be 0 (no cross-validation) or >= 2")
        if self.fold >= max(self.folds, 0) or self.fold < -1:
            raise ValueError(f"--fold must be -1 (every fold) or 0..{self.folds - 1} with --folds {self.folds}"
                             if self.folds else "--fold needs --folds")

    def shuffle_rows(self, train_rows: int) -> int:
        """Rows of each worker's local shuffle buffer for a train split of train_rows: shuffle_buffer,
        or the worker's whole share when that is smaller. A row holds ~80 KB of spectrogram per second
        of clip plus the frame features: 1024 rows of 2-3 s clips are ~0.2-0.3 GB per worker."""
        return min(self.shuffle_buffer, max(1, -(-train_rows // self.num_workers)))

    def model_config(self, visual_dim: int, audio_channels: int) -> ModelConfig:
        """The ModelConfig this run builds, for a store of visual_dim features and audio_channels."""
        return replace(self.model, visual_dim=visual_dim, audio_channels=audio_channels)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A TrainConfig from asdict() of one (a checkpoint's train_config, a trial's base); also
        from a checkpoint written before the model's knobs were a ModelConfig (flat keys)."""
        names = {f.name for f in fields(ModelConfig)}
        model = {**{k: v for k, v in d.items() if k in names}, **(d.get("model") or {})}
        return cls(**{k: v for k, v in d.items() if k not in names and k != "model"}, model=ModelConfig(**model))


def speakers_of(store: str) -> np.ndarray:
    """The speaker of each labelled row with features; StoreError when the store has no speaker
    column (written before schema 3) or names no speaker."""
    try:
        table = usable(read_store(store, ["label_index", "status", "speaker"]))
    except (KeyError, ValueError) as e:  # pyarrow: a column the shards lack
        if "speaker" not in str(e):
            raise
        raise StoreError(f"feature store {store} has no speaker column (written by an older version): extract "
                         f"into a new --output to cross-validate by speaker") from None
    speakers = np.array(table.column("speaker").to_pylist(), dtype=object)
    if not any(speakers):
        raise StoreError(f"feature store {store} names no speakers: --folds needs a speaker per clip (the ravdess "
                         f"and cremad layouts give it; a manifest gives it in a speaker column)")
    return speakers


def fold_of(cfg: TrainConfig):
    """The raylib.folds Fold this run trains (None without --folds or for the whole plan)."""
    return fold_plan(speakers_of(cfg.store), cfg.folds)[cfg.fold] if cfg.folds and cfg.fold >= 0 else None


def store_info(store: str, modalities: str = "", fold=None) -> dict:
    """visual_dim, audio_channels, class counts of train, and the recipe of a store; with a model's
    modalities, of the rows that model can take (`skipped`: labelled rows without frames that a
    visual branch leaves out); with a raylib.folds Fold, train and val are its train and select
    speakers (test_rows: its held-out speakers). StoreError when the store mixes recipes (its
    features would not be comparable); ValueError when no row is left."""
    table = read_store(store, ["label_index", "status", "visual_dim", "audio_shape", "split", *RECIPE_KEYS,
                               *(["speaker"] if fold is not None else [])])
    recipe = single_recipe(store, table)
    if fold is not None:  # the fold's roles stand in for the stored split
        import pyarrow as pa

        roles = speaker_split(np.array(table.column("speaker").to_pylist(), dtype=object), fold)
        table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(roles.tolist(), pa.string()))
    labelled = usable(table)
    if labelled.num_rows == 0:
        raise ValueError(f"feature store {store} has no labelled rows with features")
    ok = rows_for(labelled, modalities) if modalities else labelled
    if ok.num_rows == 0:
        raise ValueError(f"feature store {store} holds no clips with frames (its {labelled.num_rows} labelled clips "
                         f"are audio files): --modalities {modalities} reads visual features; train on them "
                         f"with --modalities audio")
    # Arrow compute throughout: a million-clip store never becomes Python objects here
    split = ok.column("split")
    train_labels = ok.filter(pc.equal(split, "train")).column("label_index").to_numpy(zero_copy_only=False)
    counts = np.bincount(train_labels.astype(np.int64), minlength=len(EMOTIONS))
    shapes = ok.column("audio_shape").drop_null()
    shapes = shapes.filter(pc.greater(pc.list_value_length(shapes), 0))
    return {"visual_dim": int(pc.max(ok.column("visual_dim")).as_py() or 0),
            "audio_channels": int(shapes[0][0].as_py()) if len(shapes) else 1,
            "train_counts": counts.tolist(), "train_rows": int(len(train_labels)),
            "val_rows": int(pc.sum(pc.equal(split, "val")).as_py() or 0),
            "test_rows": int(pc.sum(pc.equal(split, "test")).as_py() or 0), "provenance": recipe,
            "skipped": labelled.num_rows - ok.num_rows}


def require_splits(store: str, info: dict) -> None:
    """StoreError, before any training, when the store (store_info) has no labelled train or val
    clips: without val rows no epoch is scored and the "best" checkpoint would be arbitrary."""
    if not info["train_rows"]:
        raise StoreError(f"feature store {store} has no labelled train clips with features")
    if not info["val_rows"]:
        raise StoreError(f"feature store {store} has no labelled val clips, so no epoch can be scored: give the "
                         f"manifest a split column with val rows (or use an adapter with a val split: afew, "
                         f"ravdess, cremad) and extract into a new --output")
