"""MLflow: the embedded default store, run set-up, config logging without secrets, plots.

When MLFLOW_TRACKING_URI is unset, runs go to an embedded store under ./mlflow (SQLite database
mlflow/mlflow.db, artifacts in mlflow/artifacts), which `make mlflow-ui` (mlflow/server.sh) shows.
Otherwise the given server is used.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from raylib.labels import EMOTIONS
from raylib.storage import public_uri

# Nothing leaves the machine unasked: MLflow's usage telemetry is off unless a user turns it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EMBEDDED_DIR = "mlflow"
# the embedded store of a checkout, which `make mlflow-ui` serves
REPO_STORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), EMBEDDED_DIR, "mlflow.db")
SECRET_WORDS = re.compile(r"(secret|password|token|credential|access_key|private)", re.IGNORECASE)


def embedded_uri(root: str = EMBEDDED_DIR) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(root, 'mlflow.db'))}"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store under ./mlflow."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri()


def ui_command() -> str:
    """The command that shows the runs of the store in use."""
    uri = tracking_uri()
    if uri == f"sqlite:///{REPO_STORE}":
        return "make mlflow-ui   (then open http://127.0.0.1:5000)"
    if uri.startswith("sqlite:"):
        return f"MLFLOW_BACKEND_STORE_URI={uri} bash mlflow/server.sh   (then open http://127.0.0.1:5000)"
    return f"open {uri} in a browser"


def experiment_id(name: str) -> str:
    """Id of experiment `name` in the store in use, created (with its artifact folder) if needed."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # a file store: artifacts beside the database, not in ./mlruns
        root = os.path.join(os.path.dirname(uri[len("sqlite:///"):] if uri.startswith("sqlite:////")
                                            else os.path.abspath(uri[len("sqlite:///"):])), "artifacts")
        os.makedirs(root, exist_ok=True)
        location = "file://" + os.path.join(root, name)
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def public(value):
    """A config value fit for logging: URIs lose user:password@, secret-looking values are masked."""
    return public_uri(value) if isinstance(value, str) else value


def config_params(cfg, prefix: str = "") -> dict[str, str]:
    """Flat {name: str(value)} of a dataclass config; fields named like secrets are left out."""
    out = {}
    for f in dataclasses.fields(cfg):
        if SECRET_WORDS.search(f.name):
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(config_params(value, prefix=f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = str(public(value))[:500]
    return out


def start_run(experiment: str, run_name: str, params: dict, tags: dict | None = None,
              parent_run_id: str | None = None) -> str:
    """Create a run (child of parent_run_id if given) with params and tags; returns its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    all_tags = {k: str(public(v)) for k, v in (tags or {}).items()}
    all_tags["mlflow.runName"] = run_name
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(experiment), tags=all_tags, run_name=run_name)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def log_metrics(run_id: str, metrics: dict, step: int) -> None:
    """Log finite scalar metrics at step."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    import time

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and np.isfinite(v)]
    if items:
        MlflowClient(tracking_uri()).log_batch(run_id, metrics=items)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri()).set_terminated(run_id, status)


def log_artifact(run_id: str, path: str, artifact_path: str | None = None) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri()).log_artifact(run_id, path, artifact_path)


def confusion_png(cm: np.ndarray, path: str, title: str = "confusion matrix", labels=EMOTIONS) -> str:
    """Row-normalised confusion matrix with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, np.maximum(rows, 1))
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def attention_png(clips: list[dict], path: str) -> str:
    """Per clip: frame weights as bars under the face thumbnails, audio weights over time.

    Each clip dict: title, thumbnails [N, h, w, 3] uint8 (or None), visual [N] weights,
    audio [W] weights per time column (or None)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(clips), 2, figsize=(12, 2.6 * len(clips)), squeeze=False)
    for row, clip in zip(axes, clips):
        ax = row[0]
        weights = np.asarray(clip.get("visual") if clip.get("visual") is not None else [])
        n = len(weights)
        if clip.get("thumbnails") is not None and n:  # faces on top, their weights as bars below
            strip = np.concatenate(list(clip["thumbnails"][:n]), axis=1)
            ax.imshow(strip, extent=(0, n, 0.45, 1.0), aspect="auto")
        ax.bar(np.arange(n) + 0.5, 0.4 * weights / max(weights.max(), 1e-9) if n else [], width=0.6,
               color="tab:red")
        ax.axhline(0.4 / max(n, 1) / max(weights.max(), 1e-9) if n else 0, color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, max(n, 1))
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_xlabel("frame")
        ax.set_title(f"{clip['title']}: frame weights (dashed: uniform)")
        ax = row[1]
        if clip.get("audio") is not None:
            ax.plot(np.asarray(clip["audio"]), color="tab:blue", marker=".")
        ax.set_xlabel("pool5 time column")
        ax.set_title("audio weights over time (summed over frequency)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
