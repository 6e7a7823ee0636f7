"""Training checkpoints: tensors and plain values only (model, optimizer, epoch, best score, the
model and training configs, metrics), so `torch.load(..., weights_only=True)` reads them and a
model is rebuilt from the file alone. Written by training, read by training (restarts, resume)
and by evaluation; local paths or URIs."""

from __future__ import annotations

import io
import os
from dataclasses import asdict

from raylib import storage
from raylib.errors import WeightsError

CHECKPOINT_FILE = "model.pt"


def save_checkpoint(directory: str, model, optimizer, epoch: int, best: float, model_cfg, train_cfg, metrics) -> str:
    """model.pt in directory: tensors and plain values only, loadable with weights_only=True."""
    import torch

    path = os.path.join(directory, CHECKPOINT_FILE)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else {},
                "epoch": epoch, "best": best, "model_config": asdict(model_cfg),
                "train_config": asdict(train_cfg), "metrics": {k: float(v) for k, v in metrics.items()}}, path)
    return path


def load_checkpoint(uri: str) -> dict:
    """A checkpoint written by save_checkpoint, from a folder or model.pt (local or URI)."""
    import torch

    if not uri.endswith(".pt"):
        uri = storage.join(uri, CHECKPOINT_FILE)
    try:
        blob = storage.read_bytes(uri)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise WeightsError(f"checkpoint {uri} not found") from None
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"checkpoint {uri} refused or unreadable: {str(e).splitlines()[0][:200]}") from None
    if "model" not in state or "model_config" not in state:
        raise WeightsError(f"{uri} is not a training checkpoint (keys: {', '.join(sorted(state)[:10])})")
    return state


def load_model_state(model, state: dict, uri: str) -> None:
    """Load a checkpoint's model tensors strictly; WeightsError in one line when the checkpoint
    was written for another layout of the model (e.g. the audio CNN before batch norm)."""
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:240]
        raise WeightsError(f"checkpoint {uri} does not fit this version's model ({detail}); "
                           "retrain it with this version") from None


def model_from_checkpoint(uri: str):
    """(FusionModel in eval mode, checkpoint dict)."""
    from raylib.models.fusion import build_model

    state = load_checkpoint(uri)
    model = build_model(state["model_config"])
    load_model_state(model, state, uri)
    return model.eval(), state


def model_config_of(state: dict):
    """The ModelConfig stored in a checkpoint."""
    from raylib.models.fusion import ModelConfig

    return ModelConfig(**state["model_config"])


def checkpoint_of_epoch(run_folder: str, epoch: int) -> str | None:
    """The checkpoint folder under a training run's folder (local or URI) that holds `epoch`; None
    when that epoch's checkpoint was not kept (or not written)."""
    for path in storage.list_files(run_folder, "/" + CHECKPOINT_FILE):
        uri = storage.uri_of(path, run_folder)
        try:
            if int(load_checkpoint(uri)["epoch"]) == epoch:
                return uri.rsplit("/", 1)[0]
        except WeightsError:  # a checkpoint cut short when its trial was stopped
            continue
    return None
