"""Audio CNN (docs/method.md, section 1): AlexNet's convolutional trunk up to its last max-pool.

The pool5 map [B, 256, H, W] is read as n = H * W feature vectors of C = 256 dims, with a mask
that drops the positions computed from padded time only. Inputs: the speech spectrogram
[B, 1, 200, T] or the log-Mel stack [B, 3, 40, T]. Choice (the paper is silent): inputs whose
frequency axis is shorter than MIN_FREQ_BINS (the 40-band log-Mel) are resized to it along
frequency, and clips shorter than MIN_FRAMES are zero-padded in time, so AlexNet's pooling
always has at least one output position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

AUDIO_FEATURE_DIM = 256
MIN_FREQ_BINS = 200
MIN_FRAMES = 67  # smallest T for which AlexNet's trunk leaves one pool5 column

# (kernel, stride, padding) of every layer that changes the time axis, in order
_TIME_LAYERS = ((11, 4, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 0))


def pool5_length(frames: torch.Tensor) -> torch.Tensor:
    """Number of pool5 time positions for inputs of `frames` time steps (elementwise)."""
    n = frames.clone()
    for k, s, p in _TIME_LAYERS:
        n = torch.div(n + 2 * p - k, s, rounding_mode="floor") + 1
    return n.clamp_min(0)


class AudioAlexNet(nn.Module):
    """AlexNet trunk (torchvision layout of `features`) on a C-channel spectrogram image."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.out_dim = AUDIO_FEATURE_DIM

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """spec [B, C, F, T] (time zero-padded), lengths [B] real frames -> ([B, n, 256], mask [B, n])."""
        if spec.shape[2] < MIN_FREQ_BINS:
            spec = Fn.interpolate(spec, size=(MIN_FREQ_BINS, spec.shape[3]), mode="bilinear", align_corners=False)
        if spec.shape[3] < MIN_FRAMES:
            spec = Fn.pad(spec, (0, MIN_FRAMES - spec.shape[3]))
        fmap = self.features(spec)  # [B, 256, H, W]
        b, c, h, w = fmap.shape
        valid_w = pool5_length(lengths.clamp_min(MIN_FRAMES)).clamp(max=w)
        valid_w = torch.where(lengths > 0, valid_w, torch.zeros_like(valid_w))  # no audio: no items
        col_mask = torch.arange(w, device=spec.device)[None, :] < valid_w[:, None]  # [B, W]
        mask = col_mask[:, None, :].expand(b, h, w).reshape(b, h * w)
        vectors = fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)  # n = H * W vectors, row-major
        return vectors, mask
