"""Checkpoint loading: local path or any fsspec URI (s3://...), tensors only, strict key match.

`torch.load(..., weights_only=True)` refuses pickled code. Common wrappers are unwrapped
({"state_dict": ...}, {"model": ...}, DataParallel's "module." prefix). Keys that do not match the
architecture are an error listing them; the one exception is a classification head that the
backbone declares droppable (e.g. ResNet's fc), which is dropped and reported.
"""

from __future__ import annotations

import hashlib
import io
import pickle

import torch
from torch import nn

from raylib import storage
from raylib.errors import WeightsError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "backbone")
MAX_LISTED = 12


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def read_blob(uri: str) -> tuple[bytes, str]:
    """(the file's bytes, their sha256) from a local path or URI; WeightsError when missing."""
    try:
        blob = storage.read_bytes(uri)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint {uri} not found") from None
    return blob, hashlib.sha256(blob).hexdigest()


def read_checkpoint(uri: str) -> tuple[dict, str]:
    """(tensor state dict, sha256 of the file) from a local path or URI; WeightsError on failure."""
    blob, digest = read_blob(uri)
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise WeightsError(f"checkpoint {uri} refused: it holds pickled objects other than tensors "
                           f"(weights_only=True). Re-save it as a plain state_dict. [{first}]") from None
    except Exception as e:
        raise WeightsError(f"checkpoint {uri} is not a readable torch file: {e}") from None
    return unwrap(obj, uri), digest


def unwrap(obj, uri: str = "checkpoint") -> dict:
    """The tensor dict inside common checkpoint wrappers, without a 'module.' prefix."""
    for _ in range(3):  # e.g. {"epoch": 120, "state_dict": {"module.body...": tensor}}
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None) if isinstance(obj, dict) else None
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{uri}: no state_dict of tensors found (top-level keys: "
                           f"{_listing(obj.keys()) if isinstance(obj, dict) else type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_into(model: nn.Module, state: dict, uri: str, name: str, droppable_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Load state strictly into model; returns dropped head keys; WeightsError lists mismatches."""
    expected = model.state_dict()
    dropped = [k for k in state if k not in expected and k.startswith(droppable_prefixes)]
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys in {name} checkpoint {uri}: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys in {name} checkpoint {uri}: {_listing(unexpected)}")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in state and state[k].shape != expected[k].shape]
    if shapes:
        problems.append(f"shape mismatch in {name} checkpoint {uri}: {_listing(shapes)}")
    if problems:
        raise WeightsError("; ".join(problems))
    model.load_state_dict(state, strict=True)
    return dropped
