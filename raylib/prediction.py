"""A model's class probabilities and validation metrics over feature-store rows.

Shared by training (rank 0 scores val each epoch, the run's artifacts) and evaluation
(checkpoints and ensembles); plain PyTorch on one device, no Ray.
"""

from __future__ import annotations

import numpy as np

from raylib.labels import EMOTIONS
from raylib.metrics import confusion_matrix, summarize_confusion
from raylib.models import VISUAL_MODALITIES
from raylib.speaker_norm import SpeakerNormError, normalize
from raylib.store import COLUMNS, read_store, usable

# Rows without frames (audio files, status "audio_only"; visual_dim 0) give a visual branch
# nothing to attend to: models with one skip them rather than read an empty input.
FRAMES_COLUMN = "visual_dim"
FRAMES_EXPR = f"{FRAMES_COLUMN} > 0"  # the same rule as a Ray Data filter expression
NO_FRAMES = "no frames (an audio file): the models read visual features; use a --modalities audio model"


def reads_frames(*modalities: str) -> bool:
    """Whether any model of these modalities has a visual branch."""
    return any(m in VISUAL_MODALITIES for m in modalities)


def takes(table, *modalities: str) -> np.ndarray:
    """[N] bool: the store rows every model of these modalities has an input for."""
    if not reads_frames(*modalities):
        return np.ones(table.num_rows, bool)
    return np.asarray(table.column("visual_dim").to_numpy(), np.int64) > 0


def rows_for(table, *modalities: str):
    """The store rows every model of these modalities has an input for (see takes)."""
    return table.filter(takes(table, *modalities)) if reads_frames(*modalities) else table


def speaker_rows(store: str, speakers, *modalities: str):
    """The labelled rows with features of these speakers (a cross-validation fold's held-out
    speakers, raylib.folds) that models of these modalities take, in the columns models read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = usable(read_store(store, [*COLUMNS, "speaker"]))
    table = table.filter(pc.is_in(table.column("speaker"), pa.array([str(s) for s in speakers], pa.string())))
    return rows_for(table, *modalities).select([*COLUMNS, "speaker"])


def model_rows(model, table, stats):
    """The rows as the model reads them: speaker-normalised with stats (raylib.speaker_norm) when
    the model was trained so, as they are otherwise."""
    if not model.cfg.speaker_norm:
        return table

    if stats is None:
        raise SpeakerNormError("the model reads speaker-normalised features (trained with --speaker-norm) and was "
                               "given no speaker statistics")
    return normalize(table, stats)


def predict(model, table, batch_size: int = 32, device="cpu", keep_weights: int = 0, stats: dict | None = None):
    """Class probabilities [N, 7] of store rows, and attention weights of the first keep_weights.
    stats: each speaker's feature statistics (raylib.speaker_norm), needed by a model trained on
    speaker-normalised features (the rows then carry their speaker column)."""
    import torch

    from raylib.batches import collate, model_inputs

    model.eval()
    probs, weights = [], []
    with torch.no_grad():
        for start in range(0, table.num_rows, batch_size):
            batch = collate(model_rows(model, table.slice(start, batch_size), stats), model.cfg.audio_channels)
            logits, w = model(*model_inputs(batch, device))
            probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
            if len(weights) < keep_weights:
                for i in range(len(logits)):
                    weights.append({k: v[i].cpu().numpy() for k, v in w.items()})
    return (np.concatenate(probs) if probs else np.zeros((0, len(EMOTIONS)), np.float32)), weights[:keep_weights]


def val_counts(model, table, device="cpu", stats: dict | None = None) -> np.ndarray:
    """What val metrics are made of, summable over shards scored apart: the confusion matrix
    (7 x 7, flattened) then the summed log loss and the number of rows (stats: see predict)."""
    probs, _ = predict(model, table, device=device, stats=stats)
    labels = table.column("label_index").to_numpy().astype(np.int64)
    cm = confusion_matrix(labels, probs.argmax(1)) if len(labels) else np.zeros((len(EMOTIONS),) * 2, np.int64)
    loss = float(-np.sum(np.log(probs[np.arange(len(labels)), labels] + 1e-12))) if len(labels) else 0.0
    return np.concatenate([cm.ravel().astype(np.float64), [loss, float(len(labels))]])


def metrics_from_counts(counts: np.ndarray) -> dict:
    """val_loss, val_accuracy, val_uar, val_recall_<label> and val_clips from (summed) val_counts."""
    k = len(EMOTIONS)
    n = float(counts[k * k + 1])
    if not n:
        return {"val_accuracy": 0.0, "val_uar": 0.0, "val_clips": 0}
    m = summarize_confusion(np.asarray(counts[: k * k]).reshape(k, k))
    out = {"val_loss": float(counts[k * k] / n), "val_accuracy": m["accuracy"], "val_uar": m["uar"],
           "val_clips": int(n)}
    for name, r in zip(EMOTIONS, m["recall"]):
        if np.isfinite(r):
            out[f"val_recall_{name}"] = float(r)
    return out


def val_metrics(model, table, device="cpu", stats: dict | None = None) -> dict:
    """val_loss, val_accuracy, val_uar, val_recall_<label> and val_clips of a model on labelled rows."""
    return metrics_from_counts(val_counts(model, table, device, stats))
