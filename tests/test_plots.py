"""Figures that tell the truth: no offset axes, integer ticks for discrete items, a weight scale."""

import argparse
import re

import numpy as np

from raylib import plots
from raylib.config import HelpFormatter, add_arguments


def clip(n_frames=5, n_columns=5, spread=1e-6):
    rng = np.random.default_rng(0)
    frames = 1.0 / n_frames + spread * rng.standard_normal(n_frames)
    columns = 1.0 / n_columns + spread * rng.standard_normal(n_columns)  # all 0.2 +- 1e-6
    return {"title": "Angry (a.mp4)", "thumbnails": np.zeros((n_frames, 16, 16, 3), np.uint8),
            "visual": frames, "audio": columns}


def drawn(fig):
    fig.canvas.draw()
    return [ax for ax in fig.axes if ax.axison]


def test_nearly_uniform_attention_weights_show_no_offset_and_start_at_zero():
    fig = plots.attention_figure([clip(), clip(8, 12)])
    axes = drawn(fig)
    assert len(axes) == 4  # frame bars and audio weights of two clips; the face strips have no axes
    for ax in axes:
        assert ax.yaxis.get_offset_text().get_text() == ""  # never "1e-6+2e-1"
        assert ax.xaxis.get_offset_text().get_text() == ""
        assert ax.get_ylim()[0] == 0 and ax.get_ylabel() == "weight"
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert labels and all("e" not in t for t in labels)


def test_frames_and_time_columns_get_integer_ticks():
    fig = plots.attention_figure([clip(5, 5)])
    for ax in drawn(fig):
        ticks = ax.get_xticks()
        assert np.allclose(ticks, np.round(ticks)) and len(ticks) <= 12
        assert all(t.get_text().isdigit() for t in ax.get_xticklabels())


def test_the_figure_has_a_caption():
    fig = plots.attention_figure([clip()], caption="one val clip per class")
    assert "one val clip per class" in [t.get_text() for t in fig.texts]


def test_heat_map_shows_the_selection_metric_and_accuracy(tmp_path):
    import matplotlib.pyplot as plt

    cells = [{"visual": "self", "audio": "transformer", "fusion": f, "val_accuracy": 0.5, "val_uar": 0.4}
             for f in ("concat", "fbp")]
    seen = []
    original = plt.Figure.savefig

    def keep(fig, *a, **k):
        seen.append([ax.get_title() for ax in fig.axes])
        return original(fig, *a, **k)

    plt.Figure.savefig = keep
    try:
        plots.heatmap_png(cells, ["self"], ["transformer"], ["concat", "fbp"], str(tmp_path / "t.png"),
                          ("val_uar", "val_accuracy"))
    finally:
        plt.Figure.savefig = original
    titles = [t for t in seen[0] if t]
    assert titles[:2] == ["concat: best val UAR (%)", "fbp: best val UAR (%)"]
    assert "concat: best val accuracy (%)" in titles


def test_help_shows_each_default_once_and_no_empty_default():
    from raylib.extract.config import ExtractConfig
    from raylib.train.config import TrainConfig
    from raylib.train.sweep import TuneConfig

    for cls in (ExtractConfig, TrainConfig, TuneConfig):
        text = " ".join(add_arguments(argparse.ArgumentParser(formatter_class=HelpFormatter), cls).format_help().split())
        assert "(default: )" not in text
        assert not re.search(r"\(default: [^)]*\) \(default:", text)  # never twice for one flag
        assert cls is not TrainConfig or "(default: transformer)" in text
