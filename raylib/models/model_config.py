"""ModelConfig: the FusionModel's dimensions and choices, defined once (torch-free).

Its defaults are the training defaults: TrainConfig holds one, so jobs/train.py and jobs/tune.py
take their model flags (and their help) from here; the modules (attention, FBP) take every size
from it, and a checkpoint stores all its fields, so a model is rebuilt from the file alone
whatever the defaults are today.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raylib.labels import NUM_CLASSES
from raylib.models import FUSIONS, MODALITIES, POOLINGS


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a FusionModel; saved inside each checkpoint."""

    # set by the store a model trains on, not by flags
    visual_dim: int = field(default=128, metadata={"flag": False})  # dlib's face embedding, the embedded default backbone
    visual_attention: str = field(default="transformer", metadata={"help": "visual pooling", "choices": list(POOLINGS)})
    audio_attention: str = field(default="transformer", metadata={"help": "audio pooling", "choices": list(POOLINGS)})
    fusion: str = field(default="fbp", metadata={"help": "cross-modal fusion", "choices": list(FUSIONS)})
    modalities: str = field(default="av", metadata={"help": "av, visual or audio alone", "choices": list(MODALITIES)})
    # 1: speech spectrogram, 3: log-Mel with deltas (the store's audio mode)
    audio_channels: int = field(default=1, metadata={"flag": False})
    attention_hidden: int = field(default=64, metadata={"help": "hidden size m of the transformer attention"})  # docs/method.md, section 4
    fbp_k: int = field(default=5, metadata={"help": "FBP window k"})
    fbp_o: int = field(default=128, metadata={"help": "FBP output dimension o"})
    dropout: float = field(default=0.2, metadata={"help": "dropout (FBP and classifier)"})
    power_norm: bool = field(default=False, metadata={"help": "signed square root before FBP's l2 step"})
    # standardise each visual feature dimension with statistics of the training frames before the
    # attention (raylib.models.fusion): without it the visual branch did not fit real features
    visual_input_norm: bool = field(default=True, metadata={"flag": False})
    # the model reads speaker-normalised features (raylib.speaker_norm): whatever scores it
    # normalises the rows it scores by their speakers first
    speaker_norm: bool = field(default=False, metadata={
        "help": "standardise each speaker's features (each visual dimension, each spectrogram bin) with that "
                "speaker's own statistics over the store, labels unused, before training and scoring "
                "(raylib.speaker_norm; needs the store's speaker column; clips without one form one group)"})
    num_classes: int = field(default=NUM_CLASSES, metadata={"flag": False})

    def __post_init__(self):
        for name, value, allowed in (("visual_attention", self.visual_attention, POOLINGS),
                                     ("audio_attention", self.audio_attention, POOLINGS),
                                     ("fusion", self.fusion, FUSIONS), ("modalities", self.modalities, MODALITIES)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


MODEL_DEFAULTS = ModelConfig()
