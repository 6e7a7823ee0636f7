"""What a finished training run leaves in MLflow besides its metrics: the confusion matrix and
per-class table on val, the attention plot (one val clip per class), the MLflow model linked to
the metrics of the checkpoint it is, and the tensors-only checkpoint evaluation loads."""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from raylib import plots, tracking
from raylib.checkpoints import CHECKPOINT_FILE, model_config_of, model_from_checkpoint, save_checkpoint
from raylib.labels import EMOTIONS
from raylib.metrics import summarize
from raylib.prediction import predict, rows_for
from raylib.schema import thumbnails_array
from raylib.speaker_norm import stats_for
from raylib.store import COLUMNS, read_store, usable
from raylib.train.config import TrainConfig


def one_per_class(label_indices) -> list[int]:
    """Row numbers of the first row of each class present, in label order."""
    first: dict[int, int] = {}
    for row, label in enumerate(label_indices):
        first.setdefault(int(label), row)
    return [first[k] for k in sorted(first)]


def audio_over_time(weights):
    """Audio attention weights [H * W] (pool5, row-major) -> [W] per time column, or None."""
    if weights is None:
        return None
    import torch

    from raylib.models.audio_cnn import MIN_FREQ_BINS, pool5_length

    rows = int(pool5_length(torch.tensor(MIN_FREQ_BINS)))  # the audio CNN sees >= 200 frequency rows
    w = np.asarray(weights)
    return w.reshape(rows, -1).sum(axis=0) if w.size % rows == 0 else w


def model_name(run_name: str) -> str:
    """The logged model's name: its run's name in the characters MLflow allows in one."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-") or "model"


def log_attention(run_id: str, model, picked, stats: dict | None, epoch: int, folder: str) -> None:
    """The attention plot of the picked val clips (one per class) to the run: frame weights over
    the clip's thumbnails and audio weights per time column."""
    picked_probs, weights = predict(model, picked, keep_weights=picked.num_rows, stats=stats)
    clips = [{"title": f"{EMOTIONS[r['label_index']]} ({os.path.basename(r['uri'])}), "
                       f"predicted {EMOTIONS[int(p.argmax())]}",
              "thumbnails": thumbnails_array(r), "visual": w.get("visual"), "audio": audio_over_time(w.get("audio"))}
             for r, w, p in zip(picked.to_pylist(), weights, picked_probs)]
    if clips:
        caption = (f"Attention weights of the checkpoint of epoch {epoch} on {len(clips)} val clips, one per "
                   "class present: frame weights (dashed: uniform 1/n) and audio weights per time column.")
        tracking.log_artifact(run_id, plots.attention_png(clips, os.path.join(folder, "attention_weights.png"), caption))


def log_run_artifacts(run_id: str, checkpoint_path: str, store: str, checkpoint=None) -> None:
    """Confusion matrix PNG, per-class table, attention plot on val, and the model, to the run.

    The MLflow model is logged at the checkpoint's epoch, so MLflow links it to that epoch's metrics."""
    import mlflow

    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model, state = model_from_checkpoint(d)
    else:
        model, state = model_from_checkpoint(checkpoint_path)
    stats = stats_for(model, store)
    val = usable(read_store(store, COLUMNS + ["thumbnails"] + (["speaker"] if stats else []), split="val"))
    val = rows_for(val, state["model_config"]["modalities"])  # the rows this model has inputs for
    if val.num_rows == 0:
        return
    probs, _ = predict(model, val, stats=stats)
    labels = val.column("label_index").to_numpy()
    m = summarize(labels, probs.argmax(1))
    epoch = int(state["epoch"])
    with tempfile.TemporaryDirectory() as d:
        tracking.log_artifact(run_id, plots.confusion_png(
            m["confusion"], os.path.join(d, "confusion_matrix.png"),
            f"val ({val.num_rows} clips), epoch {epoch}: accuracy {m['accuracy']:.2f}, UAR {m['uar']:.2f}"))
        table = os.path.join(d, "per_class.md")
        with open(table, "w") as f:
            f.write("| class | support | recall |\n|---|---|---|\n")
            for name, support, r in zip(EMOTIONS, m["confusion"].sum(1), m["recall"]):
                f.write(f"| {name} | {support} | {'-' if not np.isfinite(r) else f'{r:.3f}'} |\n")
        tracking.log_artifact(run_id, table)
        log_attention(run_id, model, val.take(one_per_class(labels)), stats, epoch, d)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    with mlflow.start_run(run_id=run_id) as run:
        # the MLflow model (pickled module, for mlflow.pytorch.load_model), linked to its epoch's metrics
        # and named after its run (transformer-transformer-fbp) ...
        mlflow.pytorch.log_model(model, name=model_name(run.info.run_name), pip_requirements=["torch"],
                                 serialization_format="pickle", step=epoch)
    with tempfile.TemporaryDirectory() as d:  # ... and the tensors-only checkpoint evaluate.py loads
        save_checkpoint(d, model, None, epoch, float(state["best"]),
                        model_config_of(state), TrainConfig.from_dict(state["train_config"]), state.get("metrics", {}))
        tracking.log_artifact(run_id, os.path.join(d, CHECKPOINT_FILE), "checkpoint")
    # the checkpoint as a teammate reaches it (the best_checkpoint tag is where the job wrote it)
    tracking.set_tags(run_id, {"mlflow_checkpoint": f"runs:/{run_id}"})
