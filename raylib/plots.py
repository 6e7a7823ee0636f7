"""Every figure the jobs write: confusion matrix, attention weights, the Table-2 heat map.

Rules all of them keep: axes that show weights start at 0 and never use an offset
(`1e-6+2e-1`), discrete items (frames, time columns, classes) get integer ticks, every panel
names what it shows, and each figure carries a one-line caption.
"""

from __future__ import annotations

import os

import numpy as np

from raylib.labels import EMOTIONS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_axis(axis) -> None:
    """Plain numbers on a continuous axis: no offset, no scientific notation."""
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)


def _integer_ticks(axis, n: int, first: int = 1) -> None:
    """Ticks at item centres 0..n-1 labelled first..first+n-1 (at most ~12 labels)."""
    step = max(1, int(np.ceil(n / 12)))
    positions = list(range(0, n, step))
    axis.set_ticks(positions, [str(p + first) for p in positions])


def confusion_png(cm: np.ndarray, path: str, title: str = "confusion matrix", labels=EMOTIONS) -> str:
    """Row-normalised confusion matrix with counts, as a PNG."""
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, np.maximum(rows, 1))
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
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


ATTENTION_CAPTION = ("Attention weights of one model on validation clips (one per class where the split has it): "
                     "frame weights under each face (dashed: uniform 1/n), audio weights per time column.")


def attention_figure(clips: list[dict], caption: str = ATTENTION_CAPTION):
    """The attention figure (matplotlib Figure), one row per clip: face thumbnails, frame weights
    as bars on a weight scale from 0, audio weights over pool5 time columns from 0.

    Each clip dict: title, thumbnails [N, h, w, 3] uint8 (or None), visual [N] weights (or None),
    audio [W] weights per time column (or None)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(clips), 3, figsize=(15, 2.4 * len(clips) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1.3, 1, 1]})
    for row, clip in zip(axes, clips):
        faces, bars, audio = row
        weights = None if clip.get("visual") is None else np.asarray(clip["visual"], np.float64)
        n = 0 if weights is None else len(weights)
        thumbs = clip.get("thumbnails")
        if thumbs is not None and len(thumbs):
            faces.imshow(np.concatenate(list(thumbs[:n or len(thumbs)]), axis=1))
        faces.set_axis_off()
        faces.set_title(clip["title"], fontsize=10, loc="left")
        if n:
            bars.bar(np.arange(n), weights, width=0.7, color="tab:red")
            bars.axhline(1.0 / n, color="grey", lw=0.8, ls="--")
            bars.set_ylim(0, max(float(weights.max()), 1.0 / n) * 1.15)
            bars.set_xlim(-0.5, n - 0.5)
            _integer_ticks(bars.xaxis, n)
        _plain_axis(bars.yaxis)
        bars.set_xlabel("frame")
        bars.set_ylabel("weight")
        bars.set_title("frame weights", fontsize=10)
        if clip.get("audio") is not None and len(clip["audio"]):
            a = np.asarray(clip["audio"], np.float64)
            audio.plot(np.arange(len(a)), a, color="tab:blue", marker=".")
            audio.axhline(1.0 / len(a), color="grey", lw=0.8, ls="--")
            audio.set_ylim(0, max(float(a.max()), 1.0 / len(a)) * 1.15)
            audio.set_xlim(-0.5, len(a) - 0.5)
            _integer_ticks(audio.xaxis, len(a))
        else:
            audio.text(0.5, 0.5, "no audio branch", ha="center", va="center", transform=audio.transAxes)
        _plain_axis(audio.yaxis)
        audio.set_xlabel("time column (audio CNN output)")
        audio.set_ylabel("weight")
        audio.set_title("audio weights (summed over frequency)", fontsize=10)
    fig.text(0.01, 0.005, caption, fontsize=9, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


def attention_png(clips: list[dict], path: str, caption: str = ATTENTION_CAPTION) -> str:
    """attention_figure saved as a PNG."""
    plt = _pyplot()
    fig = attention_figure(clips, caption)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def heatmap_png(cells: list[dict], visual: list[str], audio: list[str], fusions: list[str], path: str,
                metrics: tuple[str, ...] = ("val_uar", "val_accuracy"), caption: str = "") -> str:
    """Table 2 as heat maps: one row per metric (the selection metric first), one column per
    fusion; cells are the best trial of each (visual, audio, fusion), in percent."""
    plt = _pyplot()
    names = {"val_uar": "val UAR", "val_accuracy": "val accuracy"}
    panel = (max(3.4, 1.6 + 1.2 * len(audio)), 1.4 + 0.8 * len(visual))  # inches, sized by the grid
    fig, axes = plt.subplots(len(metrics), len(fusions), squeeze=False, layout="constrained",
                             figsize=(panel[0] * len(fusions) + 1.0, panel[1] * len(metrics) + 0.4))
    for row, metric in zip(axes, metrics):
        for ax, fusion in zip(row, fusions):
            grid = np.full((len(visual), len(audio)), np.nan)
            for c in cells:
                if c["fusion"] == fusion and np.isfinite(c.get(metric, np.nan)):
                    grid[visual.index(c["visual"]), audio.index(c["audio"])] = 100 * c[metric]
            image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
            ax.set_xticks(range(len(audio)), [a.capitalize() for a in audio])
            ax.set_yticks(range(len(visual)), [v.capitalize() for v in visual])
            ax.set_xlabel("audio attention")
            ax.set_ylabel("visual attention")
            ax.set_title(f"{fusion}: best {names.get(metric, metric)} (%)", fontsize=10)
            for i in range(len(visual)):
                for j in range(len(audio)):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center",
                                color="white" if grid[i, j] < 60 else "black")
        fig.colorbar(image, ax=list(row), shrink=0.8, label="%")
    if caption:  # below the panels; bbox_inches="tight" keeps it in the file
        fig.text(0.01, 0, caption, fontsize=9, ha="left", va="top")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def table1_png(rows: list[dict], path: str, metric: str = "test_accuracy") -> str:
    """Table 1 as a heat map: linear-probe score (%) per feature x dataset."""
    plt = _pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    features = list(dict.fromkeys(r["feature"] for r in rows))
    grid = np.full((len(features), len(datasets)), np.nan)
    for r in rows:
        if not r.get("error"):
            grid[features.index(r["feature"]), datasets.index(r["dataset"])] = 100 * r.get(metric, r.get("val_accuracy", np.nan))
    fig, ax = plt.subplots(figsize=(2 + 2 * len(datasets), 1 + 0.6 * len(features)))
    ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(datasets)), [os.path.basename(d.rstrip("/")) for d in datasets])
    ax.set_yticks(range(len(features)), features)
    for i in range(len(features)):
        for j in range(len(datasets)):
            ax.text(j, i, "-" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}", ha="center", va="center", color="w")
    ax.set_title(f"Table 1: linear probe, {metric.replace('_', ' ')} (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
