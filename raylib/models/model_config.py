"""ModelConfig: the FusionModel's dimensions and choices, defined once (torch-free).

Its defaults are the training defaults: jobs/train.py and jobs/tune.py take their model flags'
defaults from here, the modules (attention, FBP) take every size from it, and a checkpoint stores
all its fields, so a model is rebuilt from the file alone whatever the defaults are today.
"""

from __future__ import annotations

from dataclasses import dataclass

from raylib.labels import NUM_CLASSES
from raylib.models import FUSIONS, MODALITIES, POOLINGS


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a FusionModel; saved inside each checkpoint."""

    visual_dim: int = 128  # dlib's face embedding, the embedded default backbone
    visual_attention: str = "transformer"
    audio_attention: str = "transformer"
    fusion: str = "fbp"
    modalities: str = "av"
    audio_channels: int = 1  # 1: speech spectrogram, 3: log-Mel with deltas
    attention_hidden: int = 64  # m of the transformer attention (docs/method.md, section 4)
    fbp_k: int = 5
    fbp_o: int = 128
    dropout: float = 0.2  # FBP and classifier
    power_norm: bool = False
    # standardise each visual feature dimension with statistics of the training frames before the
    # attention (raylib.models.fusion): without it the visual branch did not fit real features
    visual_input_norm: bool = True
    # the model reads speaker-normalised features (raylib.speaker_norm): whatever scores it
    # normalises the rows it scores by their speakers first
    speaker_norm: bool = False
    num_classes: int = NUM_CLASSES

    def __post_init__(self):
        for name, value, allowed in (("visual_attention", self.visual_attention, POOLINGS),
                                     ("audio_attention", self.audio_attention, POOLINGS),
                                     ("fusion", self.fusion, FUSIONS), ("modalities", self.modalities, MODALITIES)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


MODEL_DEFAULTS = ModelConfig()
