"""An ensemble of trained models, shared by evaluation (raylib.ensemble.evaluate) and prediction
(raylib.ensemble.predict): its members (checkpoints or MLflow runs), the check that each takes a
store's features, and its scores.

Ensemble = mean of the models' class probabilities. Optional class re-weighting of the scores
(docs/method.md, section 3): "train" computes w_c proportional to sqrt(n_c) from the training counts of
the store (the paper's rule; it is silent on the exact form, we normalise the weights to sum 1),
"afew" uses the paper's AFEW vector.
"""

from __future__ import annotations

import re
import tempfile

import numpy as np

from raylib import tracking
from raylib.checkpoints import model_from_checkpoint
from raylib.errors import WeightsError
from raylib.labels import EMOTIONS
from raylib.models import AUDIO_MODALITIES, VISUAL_MODALITIES
from raylib.prediction import predict, takes
from raylib.schema import STATUS_ERROR
from raylib.store import describe_recipe

AFEW_WEIGHTS = (0.15, 0.097, 0.129, 0.185, 0.138, 0.082, 0.215)  # the published AFEW vector (docs/method.md, section 3), label order
REWEIGHTS = ("none", "train", "afew")
RUN_ID = re.compile(r"^(runs:/)?([0-9a-f]{32})/?$")  # an MLflow run id, bare or as runs:/<id>


def class_weights(mode: str, train_counts=None) -> np.ndarray | None:
    """[7] weights for re-weighting, None for "none"."""
    if mode == "none":
        return None
    if mode == "afew":
        return np.asarray(AFEW_WEIGHTS, np.float64)
    if mode == "train":
        root = np.sqrt(np.asarray(train_counts, np.float64))
        if root.sum() == 0:
            raise ValueError("re-weighting by training counts needs a train split with labels")
        return root / root.sum()
    raise ValueError(f"unknown re-weighting {mode!r}; expected one of {', '.join(REWEIGHTS)}")


def apply_weights(probs: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Scores multiplied by class weights and renormalised per clip."""
    if weights is None:
        return probs
    scored = probs * weights[None, :]
    return scored / np.maximum(scored.sum(axis=1, keepdims=True), 1e-12)


def resolve_checkpoint(ref: str) -> str:
    """A checkpoint path/URI, or an MLflow run id whose logged checkpoint is downloaded."""
    m = RUN_ID.match(ref.strip())
    if not m:
        return ref.strip()
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        return mlflow.artifacts.download_artifacts(run_id=m.group(2), artifact_path="checkpoint/model.pt",
                                                   dst_path=tempfile.mkdtemp(prefix="ckpt-"))
    except Exception as e:  # MlflowException for an unknown run, OSError for a missing artifact
        raise WeightsError(f"MLflow run {m.group(2)} has no checkpoint to load "
                           f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None


def load_members(refs: list[str]) -> list:
    """The members' models, loaded from their checkpoints (paths, URIs or MLflow runs)."""
    return [model_from_checkpoint(resolve_checkpoint(ref))[0] for ref in refs]


def check_fits(state: dict, ref: str, info: dict, what: str) -> None:
    """WeightsError, before any work, when a checkpoint's model does not take the store's features."""
    cfg = state["model_config"]
    want = (int(cfg.get("visual_dim", 0)), int(cfg.get("audio_channels", 1)))
    have = (int(info["visual_dim"]), int(info["audio_channels"]))
    modalities = cfg.get("modalities", "av")  # a branch the model lacks takes anything
    if (modalities in VISUAL_MODALITIES and want[0] != have[0]) or \
            (modalities in AUDIO_MODALITIES and want[1] != have[1]):
        trained_on = (state.get("train_config") or {}).get("store", "?")
        raise WeightsError(f"checkpoint {ref} takes {want[0]}-d visual features and {want[1]} audio channel(s) "
                           f"(trained on the store {trained_on}); {what} has {have[0]}-d and {have[1]} "
                           f"({describe_recipe(info['provenance'])}): use features extracted the way its training store was")


def mean_probs(models: list, table, batch_size: int = 32, stats: dict | None = None) -> np.ndarray:
    """[N, 7] mean of the models' class probabilities on store-format rows (stats: speaker
    statistics for models trained on speaker-normalised features, raylib.speaker_norm)."""
    return sum(predict(m, table, batch_size, stats=stats)[0] for m in models) / len(models)


def score_rows(table, models, weights) -> np.ndarray:
    """[N, 7] ensemble probabilities (re-weighted) of store-format rows; NaN rows for rows
    without features, and for rows without frames when a model reads visual features."""
    out = np.full((table.num_rows, len(EMOTIONS)), np.nan, np.float32)
    ok = np.asarray([s != STATUS_ERROR for s in table.column("status").to_pylist()], bool)
    ok &= takes(table, *(m.cfg.modalities for m in models))
    if ok.any():
        out[ok] = apply_weights(mean_probs(models, table.filter(ok)), weights)
    return out
