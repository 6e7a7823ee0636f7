"""Feature enhancement (docs/method.md: the enhancement step, Table 3) as batched tensor ops on the encoder's device.

Views of each aligned chip: rotations x scales x {original, flipped} (18 with the presets).
  basic     one feature per frame                                   -> d
  mean      F-Mean: mean over the 18 views (VIEWS_PAPER)            -> d
  meanstd   F-MeanStd: [mean : std] over the views                  -> 2d
  meanstd2  F-MeanStd-2: same with VIEWS_WIDE                       -> 2d
  normfft   F-NormFFT: FFT of the basic feature, [real : imag], unit l2 norm   -> 2d
  ar-mean   F-AR-Mean: [F-Mean of encoder 1 : F-Mean of encoder 2]  -> 2d
Choices where the paper is silent: std is the population std (0 when all views agree); the FFT
runs over the feature dimension and the [real : imag] vector is l2-normalised; views are
resampled bilinearly with border padding; scale s > 1 zooms in.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as Fn

from raylib.models import ENHANCEMENTS


@dataclass(frozen=True)
class ViewSet:
    """Rotation angles (degrees) x scales x flips."""

    rotations: tuple[float, ...] = (-2.0, 0.0, 2.0)
    scales: tuple[float, ...] = (1.0, 1.03, 1.07)
    flips: tuple[bool, ...] = (False, True)

    def views(self) -> list[tuple[float, float, bool]]:
        return list(itertools.product(self.rotations, self.scales, self.flips))

    def __len__(self) -> int:
        return len(self.rotations) * len(self.scales) * len(self.flips)


VIEWS_PAPER = ViewSet()  # F-Mean / F-MeanStd
VIEWS_WIDE = ViewSet((-15.0, 0.0, 15.0), (0.75, 1.0, 1.25))  # F-MeanStd-2


def make_views(chips: torch.Tensor, viewset: ViewSet = VIEWS_PAPER) -> torch.Tensor:
    """chips [B, 3, H, W] uint8 -> views [B, V, 3, H, W] uint8, in ViewSet.views() order."""
    chips = torch.as_tensor(chips)
    b = chips.shape[0]
    x = chips.float()
    out = []
    for angle, scale, flip in viewset.views():
        if angle == 0.0 and scale == 1.0:  # exact, no resampling
            out.append(torch.flip(chips, dims=[-1]) if flip else chips)
            continue
        a = math.radians(angle)
        # theta maps output to input coordinates: zoom by 1/scale, rotate, mirror x when flipped
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]) / scale
        if flip:
            theta[:, 0] = -theta[:, 0]
        grid = Fn.affine_grid(theta.to(x).expand(b, 2, 3), list(x.shape), align_corners=False)
        v = Fn.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out.append(v.round().clamp(0, 255).to(torch.uint8))
    return torch.stack(out, dim=1)


def view_features(encoder, chips: torch.Tensor, viewset: ViewSet, batch_size: int = 256) -> torch.Tensor:
    """Encoder features of every view: [B, V, D] float32."""
    views = make_views(torch.as_tensor(chips).to(encoder.device), viewset)
    b, v = views.shape[:2]
    flat = views.reshape(b * v, *views.shape[2:])
    feats = torch.cat([encoder.embed(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)])
    return feats.reshape(b, v, -1)


def norm_fft(features: torch.Tensor) -> torch.Tensor:
    """[N, d] -> [N, 2d]: FFT over the feature dimension, [real : imag], l2-normalised."""
    spectrum = torch.fft.fft(features.float(), dim=-1)
    return Fn.normalize(torch.cat([spectrum.real, spectrum.imag], dim=-1), dim=-1)


def enhanced_dim(mode: str, dim: int, second_dim: int | None = None) -> int:
    """Output dimension of an enhancement mode for encoder dimension dim."""
    if mode in ("basic", "mean"):
        return dim
    if mode in ("meanstd", "meanstd2", "normfft"):
        return 2 * dim
    if mode == "ar-mean":
        return dim + (second_dim if second_dim is not None else dim)
    raise ValueError(f"unknown enhancement {mode!r}; expected one of {', '.join(ENHANCEMENTS)}")


def enhance(encoder, chips: torch.Tensor, mode: str = "basic", second_encoder=None) -> torch.Tensor:
    """Per-frame features [N, D'] of aligned chips [N, 3, H, W] uint8 under an enhancement mode."""
    enhanced_dim(mode, encoder.dim)  # validates the name
    if mode == "basic":
        return encoder.embed(torch.as_tensor(chips))
    if mode == "normfft":
        return norm_fft(encoder.embed(torch.as_tensor(chips)))
    if mode == "ar-mean":
        if second_encoder is None:
            raise ValueError("enhancement ar-mean needs a second backbone (e.g. the RAF-DB-trained one)")
        return torch.cat([view_features(encoder, chips, VIEWS_PAPER).mean(1),
                          view_features(second_encoder, chips, VIEWS_PAPER).mean(1)], dim=-1)
    feats = view_features(encoder, chips, VIEWS_WIDE if mode == "meanstd2" else VIEWS_PAPER)
    mean = feats.mean(dim=1)
    if mode == "mean":
        return mean
    return torch.cat([mean, feats.std(dim=1, unbiased=False)], dim=-1)
