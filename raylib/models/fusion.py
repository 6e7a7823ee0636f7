"""Cross-modal fusion (docs/method.md, section 2: Eq. 8-9) and the assembled FusionModel.

FusionModel(visual attention, audio attention, fusion) maps per-frame visual features and an
audio spectrogram to logits over the 7 labels; `modalities` "visual" or "audio" keeps one branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as Fn
from torch import nn

from raylib.labels import NUM_CLASSES
from raylib.models import FUSIONS, MODALITIES, POOLINGS
from raylib.models.attention import build_attention
from raylib.models.audio_cnn import AudioAlexNet


class Concat(nn.Module):
    """[a : v]."""

    def __init__(self, audio_dim: int, visual_dim: int):
        super().__init__()
        self.out_dim = audio_dim + visual_dim

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, v], dim=-1)


class FactorizedBilinearPooling(nn.Module):
    """z = SumPool(U~^T a o V~^T v, k), dropout before pooling, optional signed sqrt, l2.   (Eq. 8-9)"""

    def __init__(self, audio_dim: int, visual_dim: int, k: int = 5, o: int = 256,
                 dropout: float = 0.1, power_norm: bool = False):
        super().__init__()
        self.k, self.o, self.power_norm = k, o, power_norm
        self.U = nn.Linear(audio_dim, k * o)
        self.V = nn.Linear(visual_dim, k * o)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = o

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        joint = self.dropout(self.U(a) * self.V(v))  # [B, k*o]
        z = joint.view(-1, self.o, self.k).sum(dim=-1)  # sum over windows of k consecutive dims
        if self.power_norm:
            z = torch.sign(z) * torch.sqrt(z.abs() + 1e-12)
        return Fn.normalize(z, dim=-1)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a FusionModel; saved inside each checkpoint."""

    visual_dim: int = 128
    visual_attention: str = "transformer"
    audio_attention: str = "transformer"
    fusion: str = "fbp"
    modalities: str = "av"
    audio_channels: int = 1  # 1: speech spectrogram, 3: log-Mel with deltas
    attention_hidden: int = 128  # m of the transformer attention
    fbp_k: int = 5
    fbp_o: int = 256
    dropout: float = 0.3
    power_norm: bool = False
    num_classes: int = NUM_CLASSES

    def __post_init__(self):
        for name, value, allowed in (("visual_attention", self.visual_attention, POOLINGS),
                                     ("audio_attention", self.audio_attention, POOLINGS),
                                     ("fusion", self.fusion, FUSIONS), ("modalities", self.modalities, MODALITIES)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


class FusionModel(nn.Module):
    """Visual attention over frame features + audio attention over AlexNet pool5 vectors -> fusion -> FC."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        fused_dim = 0
        if cfg.modalities in ("av", "visual"):
            self.visual_attention = build_attention(cfg.visual_attention, cfg.visual_dim, cfg.attention_hidden)
            fused_dim = self.visual_attention.out_dim
        if cfg.modalities in ("av", "audio"):
            self.audio_cnn = AudioAlexNet(cfg.audio_channels)
            self.audio_attention = build_attention(cfg.audio_attention, self.audio_cnn.out_dim, cfg.attention_hidden)
            fused_dim = self.audio_attention.out_dim
        if cfg.modalities == "av":
            a_dim, v_dim = self.audio_attention.out_dim, self.visual_attention.out_dim
            self.fusion = (Concat(a_dim, v_dim) if cfg.fusion == "concat" else
                           FactorizedBilinearPooling(a_dim, v_dim, cfg.fbp_k, cfg.fbp_o, cfg.dropout, cfg.power_norm))
            fused_dim = self.fusion.out_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(fused_dim, cfg.num_classes)

    def forward(self, visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None,
                audio: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None):
        """visual [B, n, d] + mask [B, n]; audio [B, C, F, T] + lengths [B] -> (logits [B, 7], weights)."""
        weights = {}
        if self.cfg.modalities in ("av", "visual"):
            v, weights["visual"] = self.visual_attention(visual, visual_mask)
        if self.cfg.modalities in ("av", "audio"):
            items, mask = self.audio_cnn(audio, audio_lengths)
            a, weights["audio"] = self.audio_attention(items, mask)
        if self.cfg.modalities == "av":
            fused = self.fusion(a, v)
        else:
            fused = v if self.cfg.modalities == "visual" else a
        return self.classifier(self.dropout(fused)), weights


def build_model(cfg: ModelConfig | dict) -> FusionModel:
    """FusionModel from a ModelConfig or its dict (as saved in checkpoints)."""
    return FusionModel(cfg if isinstance(cfg, ModelConfig) else ModelConfig(**cfg))
