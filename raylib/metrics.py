"""Classification metrics: accuracy, unweighted average recall (UAR), per-class recall, confusion."""

from __future__ import annotations

import numpy as np

from raylib.labels import NUM_CLASSES


def confusion_matrix(y_true, y_pred, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """[K, K] int64 counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each class, NaN for classes absent from the true labels."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def summarize(y_true, y_pred, num_classes: int = NUM_CLASSES) -> dict:
    """accuracy, uar (mean recall over the classes present), per-class recall, confusion matrix."""
    return summarize_confusion(confusion_matrix(y_true, y_pred, num_classes))


def summarize_confusion(cm: np.ndarray) -> dict:
    """summarize's figures from a confusion matrix (one summed over shards scored apart)."""
    recall = per_class_recall(cm)
    n = cm.sum()
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "uar": float(np.nanmean(recall)) if np.isfinite(recall).any() else 0.0,
        "recall": recall,
        "confusion": cm,
    }


def pick_best(candidates: list[dict], metric: str, earliest: str = "epoch") -> int | None:
    """Index of the candidate (a dict of metrics) with the highest finite `metric`; among ties the
    one with the lowest `earliest` (the earliest epoch), then the first listed. None when no
    candidate reported the metric."""
    best = None
    for i, c in enumerate(candidates):
        value = c.get(metric)
        if value is None or not np.isfinite(value):
            continue
        key = (float(value), -float(c.get(earliest, 0) or 0))
        if best is None or key > best[0]:
            best = (key, i)
    return None if best is None else best[1]


def keep_score(value: float, best_before: float) -> float:
    """The score a checkpoint is kept by: the selection metric when it beats every earlier epoch,
    one lower when it only ties or trails one. Ray keeps the later of equal scores; this keeps the
    earliest epoch of a tie, the one pick_best chooses."""
    return float(value) if value > best_before else float(value) - 1.0
