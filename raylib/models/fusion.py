"""Cross-modal fusion (docs/method.md, section 2: Eq. 8-9) and the assembled FusionModel.

FusionModel(visual attention, audio attention, fusion) maps per-frame visual features and an
audio spectrogram to logits over the 7 labels; `modalities` "visual" or "audio" keeps one branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from raylib.models.attention import build_attention
from raylib.models.audio_cnn import AudioAlexNet, MaskedBatchNorm2d
from raylib.models.model_config import ModelConfig  # defined torch-free, where the training configs read it


class Concat(nn.Module):
    """[a : v]."""

    def __init__(self, audio_dim: int, visual_dim: int):
        super().__init__()
        self.out_dim = audio_dim + visual_dim

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, v], dim=-1)


class FactorizedBilinearPooling(nn.Module):
    """z = SumPool(U~^T a o V~^T v, k), dropout before pooling, optional signed sqrt, l2.   (Eq. 8-9)

    The l2-normalised z is then scaled by sqrt(o) (docs/method.md, section 4), the scale the frame
    features get: the classifier after it is the same family of functions, but its logits no
    longer grow only as fast as its weights (with unit-norm z they start near 0 and crawl)."""

    def __init__(self, audio_dim: int, visual_dim: int, *, k: int, o: int, dropout: float, power_norm: bool):
        super().__init__()
        self.k, self.o, self.power_norm = k, o, power_norm
        self.U = nn.Linear(audio_dim, k * o)
        self.V = nn.Linear(visual_dim, k * o)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = o
        self.out_scale = float(o) ** 0.5

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        joint = self.dropout(self.U(a) * self.V(v))  # [B, k*o]
        z = joint.view(-1, self.o, self.k).sum(dim=-1)  # sum over windows of k consecutive dims
        if self.power_norm:
            z = torch.sign(z) * torch.sqrt(z.abs() + 1e-12)
        return Fn.normalize(z, dim=-1) * self.out_scale


class FrameNorm(nn.Module):
    """Each dimension of the frame features standardised with the mean and variance of the real
    training frames (padding ignored, stays zero), then a learnt scale and shift.

    Why (docs/method.md, section 4; the method is silent): a face embedding's frames share a large
    common component, and what tells emotions apart is a small spread around it in a few
    dimensions. Fed as they are, the classifier's logits move by that small spread only, and the
    visual branch stopped at 0.23-0.30 train accuracy on 192 real clips where a logistic
    regression on standardised features fits them all. The statistics average every training
    batch (momentum None): the stored features do not change during training."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = MaskedBatchNorm2d(dim, momentum=None)

    def forward(self, f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """f [B, n, d], mask [B, n] -> [B, n, d]."""
        return self.norm(f.transpose(1, 2).unsqueeze(2), mask).squeeze(2).transpose(1, 2)


class FusionModel(nn.Module):
    """Visual attention over frame features + audio attention over AlexNet pool5 vectors -> fusion -> FC."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        fused_dim = 0
        if cfg.modalities in ("av", "visual"):
            self.visual_norm = FrameNorm(cfg.visual_dim) if cfg.visual_input_norm else None
            self.visual_attention = build_attention(cfg.visual_attention, cfg.visual_dim, cfg.attention_hidden)
            fused_dim = self.visual_attention.out_dim
        if cfg.modalities in ("av", "audio"):
            self.audio_cnn = AudioAlexNet(cfg.audio_channels)
            self.audio_attention = build_attention(cfg.audio_attention, self.audio_cnn.out_dim, cfg.attention_hidden)
            fused_dim = self.audio_attention.out_dim
        if cfg.modalities == "av":
            a_dim, v_dim = self.audio_attention.out_dim, self.visual_attention.out_dim
            self.fusion = (Concat(a_dim, v_dim) if cfg.fusion == "concat" else
                           FactorizedBilinearPooling(a_dim, v_dim, k=cfg.fbp_k, o=cfg.fbp_o, dropout=cfg.dropout,
                                                     power_norm=cfg.power_norm))
            fused_dim = self.fusion.out_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(fused_dim, cfg.num_classes)

    def param_groups(self, visual_lr_scale: float = 1.0) -> list[dict]:
        """The parameters as optimiser groups, each with its "lr_scale" (the schedule's rate times
        it; raylib.train.loop.set_lr). A visual-only model (FrameNorm, attention and
        classifier over frozen frame features) learns at visual_lr_scale; an AV or audio model at
        1 throughout. docs/method.md, section 4: on the default schedule the visual branch alone did
        not fit real features at the rate that suits the audio CNN, and in the AV model the
        scaled visual branch scored lower on held-out speakers (BENCHMARKS.md)."""
        visual = list(self.parameters()) if self.cfg.modalities == "visual" else []
        ids = {id(p) for p in visual}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [g for g in ({"params": visual, "lr_scale": float(visual_lr_scale)}, {"params": rest, "lr_scale": 1.0})
                if g["params"]]

    def forward(self, visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None,
                audio: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None):
        """visual [B, n, d] + mask [B, n]; audio [B, C, F, T] + lengths [B] -> (logits [B, 7], weights)."""
        weights = {}
        if self.cfg.modalities in ("av", "visual"):
            if self.visual_norm is not None:
                visual = self.visual_norm(visual, visual_mask)
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
