"""IR-50 (ArcFace backbone of face.evoLVe's `model_irse.IR_50`), 512-d, inputs 112 or 224.

Module names and order reproduce face.evoLVe's state_dict keys exactly (input_layer.*,
body.<i>.shortcut_layer.*, body.<i>.res_layer.*, output_layer.*), so its published checkpoints
and emotion-fine-tuned IR50 checkpoints load with strict=True.
"""

from __future__ import annotations

from torch import nn

from raylib.models import FIXED_INPUT_SIZES

IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))  # (in, depth, units)
IR50_DIM = 512
IR50_SIZES = FIXED_INPUT_SIZES["ir50"]
OUTPUT_LINEAR = "output_layer.3.weight"  # [512, 512 * (S/16)^2]: the one weight the input side S shapes


def input_size_of(in_features: int) -> int | None:
    """The input side S whose output linear takes in_features = 512 * (S/16)^2; None if no S in
    IR50_SIZES does (112 -> 25088, 224 -> 100352)."""
    return next((s for s in IR50_SIZES if 512 * (s // 16) ** 2 == in_features), None)


class Flatten(nn.Module):
    def forward(self, x):
        return x.reshape(x.size(0), -1)


class BottleneckIR(nn.Module):
    """Improved residual unit: BN-conv-PReLU-conv(stride)-BN, plus a (projected) shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
    """[B, 3, S, S] normalised RGB (S = 112 or 224) -> [B, 512] embedding."""

    def __init__(self, input_size: int = 112):
        super().__init__()
        if input_size not in IR50_SIZES:
            raise ValueError(f"IR50 input size must be 112 or 224, got {input_size}")
        self.input_size = input_size
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_channel, depth, count in IR50_STAGES:
            units.append(BottleneckIR(in_channel, depth, 2))
            units.extend(BottleneckIR(depth, depth, 1) for _ in range(count - 1))
        self.body = nn.Sequential(*units)
        side = input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), Flatten(),
                                          nn.Linear(512 * side * side, IR50_DIM), nn.BatchNorm1d(IR50_DIM))

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))
