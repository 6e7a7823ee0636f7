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
    cm = confusion_matrix(y_true, y_pred, num_classes)
    recall = per_class_recall(cm)
    n = cm.sum()
    return {
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "uar": float(np.nanmean(recall)) if np.isfinite(recall).any() else 0.0,
        "recall": recall,
        "confusion": cm,
    }
