"""Audio CNN (docs/method.md, section 1): AlexNet's convolutional trunk up to its last max-pool.

The pool5 map [B, 256, H, W] is read as n = H * W feature vectors of C = 256 dims, with a mask
that drops the positions computed from padded time only. Inputs: the log speech spectrogram
[B, 1, 200, T] or the log-Mel stack [B, 3, 40, T] (raylib.media.audio.INPUT_SHAPES), time
zero-padded to the longest clip.

Choices (the method is silent; docs/method.md, section 4):
- the input is standardised per frequency bin (and channel) with statistics of the training
  data (a batch norm over the real time steps), not per clip, so loudness stays a cue;
- every convolution is followed by batch norm (the AlexNet trunk trained from scratch without it
  shrinks its output to ~0.02 at initialisation and does not fit real speech);
- after every layer the time steps past each clip's end are zeroed, so a clip's features are
  those it has alone, whatever it is batched with (a convolution then sees zeros past the end, as
  its own zero padding would give);
- inputs whose frequency axis is shorter than MIN_FREQ_BINS (the 40-band log-Mel) are resized to
  it along frequency, and clips shorter than MIN_FRAMES are zero-padded in time, so AlexNet's
  pooling always has at least one output position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as Fn
from torch import nn

from raylib.media.audio import input_shape

AUDIO_FEATURE_DIM = 256
MIN_FREQ_BINS = 200
MIN_FRAMES = 67  # smallest T for which AlexNet's trunk leaves one pool5 column

# AlexNet's trunk (torchvision's `features`): ("conv", in, out, kernel, stride, pad) or ("pool", kernel, stride)
_TRUNK = (("conv", 64, 11, 4, 2), ("pool", 3, 2), ("conv", 192, 5, 1, 2), ("pool", 3, 2),
          ("conv", 384, 3, 1, 1), ("conv", 256, 3, 1, 1), ("conv", 256, 3, 1, 1), ("pool", 3, 2))


def _out_length(n: torch.Tensor, kernel: int, stride: int, pad: int) -> torch.Tensor:
    return torch.div(n + 2 * pad - kernel, stride, rounding_mode="floor") + 1


def pool5_length(frames: torch.Tensor) -> torch.Tensor:
    """Number of pool5 time positions for inputs of `frames` time steps (elementwise)."""
    n = frames.clone()
    for layer in _TRUNK:
        k, s, p = layer[2:5] if layer[0] == "conv" else (layer[1], layer[2], 0)
        n = _out_length(n, k, s, p)
    return n.clamp_min(0)


def time_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] bool: True on each clip's first lengths[b] time steps."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose statistics come from the real time steps only; padding stays zero."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W], mask [B, W] -> normalised x, zero where mask is False."""
        m = mask[:, None, None, :].to(x.dtype)
        if not self.training:
            return super().forward(x) * m
        count = m.sum() * x.shape[2]
        if count < 2:  # no clip of the batch has audio: nothing to learn the statistics from
            return x * m
        mean = (x * m).sum(dim=(0, 2, 3)) / count
        var = (((x - mean[None, :, None, None]) * m) ** 2).sum(dim=(0, 2, 3)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            rate = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, rate)
            self.running_var.lerp_(var * count / (count - 1), rate)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]) * m


class AudioAlexNet(nn.Module):
    """AlexNet trunk with batch norm on a C-channel spectrogram image, masked past each clip's end."""

    def __init__(self, in_channels: int = 1):
        super().__init__()

        self.in_channels, self.freq_bins = input_shape(in_channels)
        # one (mean, std) per bin, averaged over every training batch: the input's distribution
        # does not move during training, so its statistics need not forget
        self.input_norm = MaskedBatchNorm2d(self.in_channels * self.freq_bins, momentum=None)
        self.convs, self.norms, self.layers = nn.ModuleList(), nn.ModuleList(), []
        channels = in_channels
        for layer in _TRUNK:
            if layer[0] == "conv":
                _, out, k, s, p = layer
                self.convs.append(nn.Conv2d(channels, out, kernel_size=k, stride=s, padding=p, bias=False))
                self.norms.append(MaskedBatchNorm2d(out))
                channels = out
                self.layers.append(("conv", k, s, p))
            else:
                self.layers.append(("pool", layer[1], layer[2], 0))
        self.out_dim = AUDIO_FEATURE_DIM

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """spec [B, C, F, T] (time zero-padded), lengths [B] real frames -> ([B, n, 256], mask [B, n])."""
        b, c, f, t = spec.shape
        if (c, f) != (self.in_channels, self.freq_bins):
            raise ValueError(f"audio input has {c} channel(s) x {f} bins; this model takes "
                             f"{self.in_channels} x {self.freq_bins}")
        x = self.input_norm(spec.reshape(b, c * f, 1, t), time_mask(lengths, t)).reshape(b, c, f, t)
        if f < MIN_FREQ_BINS:
            x = Fn.interpolate(x, size=(MIN_FREQ_BINS, t), mode="bilinear", align_corners=False)
        if t < MIN_FRAMES:
            x = Fn.pad(x, (0, MIN_FRAMES - t))
        n = torch.where(lengths > 0, lengths.clamp_min(MIN_FRAMES), torch.zeros_like(lengths))
        convs, norms = iter(self.convs), iter(self.norms)
        for kind, k, s, p in self.layers:
            n = _out_length(n, k, s, p).clamp_min(0)
            if kind == "conv":
                x = next(convs)(x)
                x = torch.relu(next(norms)(x, time_mask(n, x.shape[3])))
            else:  # a window straddling the clip's end must not leak into the next layer
                x = Fn.max_pool2d(x, kernel_size=k, stride=s)
                x = x * time_mask(n, x.shape[3])[:, None, None, :]
        _, ch, h, w = x.shape
        mask = time_mask(n.clamp(max=w), w)[:, None, :].expand(b, h, w).reshape(b, h * w)
        vectors = x.permute(0, 2, 3, 1).reshape(b, h * w, ch)  # n = H * W vectors, row-major
        return vectors, mask


def recalibrate_norms(model: nn.Module, batches) -> int:
    """Replace the running statistics of the batch norms that follow the weights (not the input's,
    which averages all of training) by their exact average over `batches` (lists of forward
    arguments), the model's weights unchanged. Without it the statistics trail the weights of
    the last steps, and in eval mode a whole split can collapse onto one class. Returns the number
    of batch norms recalibrated."""
    norms = [m for m in model.modules() if isinstance(m, MaskedBatchNorm2d) and m.momentum is not None]
    if not norms or not batches:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches given
    frozen = [m for m in model.modules() if isinstance(m, MaskedBatchNorm2d) and m not in norms]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in frozen]
    model.train()
    with torch.no_grad():
        for args in batches:
            model(*args)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    for m, (mean, var, n) in zip(frozen, saved):  # the input's statistics are left as they were
        m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(n)
    model.train(was_training)
    return len(norms)
