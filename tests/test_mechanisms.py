"""Mechanism checks on generated feature stores (no video): does each part do its job?

1. Label = XOR of an audio factor and a visual factor: a linear classifier on [a : v] cannot
   represent it, FBP's bilinear term can -> FBP must beat concatenation.
2. A few frames of many carry the label (and a marker that says so), the rest are distractors:
   attention can pick the informative frames, plain averaging dilutes them -> each attention must
   beat the mean.
Both train in-process with the training loop's own epoch function, from Parquet written with the
store's schema and read back through the store's reader and collate.
"""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raylib.batches import collate

from raylib.store import COLUMNS
from raylib.models import ATTENTIONS
from raylib.models.fusion import ModelConfig, build_model
from raylib.prediction import val_metrics
from raylib.schema import to_table
from raylib.train.loop import train_epoch
from raylib.store import read_store

SPLITS = {"train": 240, "val": 120}


def write_store(root, make_row, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in SPLITS.items():
        rows = [make_row(rng, i) | {"clip_id": f"{split}{i}", "uri": f"gen://{split}/{i}", "split": split,
                                    "dataset": "generated", "status": "ok"} for i in range(n)]
        (root / split).mkdir(parents=True)
        pq.write_table(to_table(rows), str(root / split / "part-0.parquet"))
    return str(root)


def fit(store, model_cfg, epochs, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train = read_store(store, COLUMNS, split="train")
    val = read_store(store, COLUMNS, split="val")
    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(train.num_rows)
        shuffled = train.take(order)
        train_epoch(model, opt, (collate(shuffled.slice(i, 16)) for i in range(0, train.num_rows, 16)))
    return val_metrics(model.eval(), val)["val_accuracy"]


def xor_row(rng, i):
    a, v = int(rng.integers(2)), int(rng.integers(2))
    spec = rng.normal(0, 1, (1, 200, 70)).astype(np.float32)
    rows = slice(20, 50) if a == 0 else slice(130, 160)  # the audio factor: where the energy band is
    spec[0, rows] += 4.0
    frames = rng.normal(0, 1, (6, 8)).astype(np.float32)
    frames[:, 0] += 3.0 if v else -3.0  # the visual factor: the sign of one feature
    return {"label": ("Angry", "Disgust")[a ^ v], "visual_features": frames, "audio": spec,
            "timestamps": np.arange(6, dtype=np.float32), "face_found": np.ones(6, bool)}


@pytest.mark.slow
def test_fbp_beats_concatenation_when_the_label_is_a_product(tmp_path):
    store = write_store(tmp_path, xor_row)
    common = dict(visual_dim=8, visual_attention="self", audio_attention="self", attention_hidden=16, dropout=0.0)
    concat = fit(store, ModelConfig(fusion="concat", **common), epochs=8)
    fbp = fit(store, ModelConfig(fusion="fbp", fbp_k=4, fbp_o=32, **common), epochs=8)
    print(f"XOR of audio and visual factors: concat {concat:.3f}, fbp {fbp:.3f} (chance 0.5)")
    assert fbp >= 0.9
    assert fbp >= concat + 0.25


def sparse_row(rng, i):
    label = int(rng.integers(3))
    frames = rng.normal(0, 1.0, (16, 8)).astype(np.float32)
    frames[:, 7] = 0.0
    frames[:, 1 + rng.integers(0, 3, 16)] += 2.5  # distractors: a random class direction per frame
    for k in rng.choice(16, 2, replace=False):  # two informative frames, marked in dimension 7
        frames[k] = rng.normal(0, 0.3, 8)
        frames[k, 1 + label] += 2.5
        frames[k, 7] = 3.0
    return {"label": ("Angry", "Disgust", "Fear")[label], "visual_features": frames,
            "timestamps": np.arange(16, dtype=np.float32), "face_found": np.ones(16, bool)}


def test_each_attention_beats_plain_averaging_when_few_frames_matter(tmp_path):
    store = write_store(tmp_path, sparse_row)
    acc = {}
    for name in ("mean",) + ATTENTIONS:
        cfg = ModelConfig(visual_dim=8, visual_attention=name, modalities="visual", attention_hidden=16, dropout=0.0)
        acc[name] = fit(store, cfg, epochs=25, lr=1e-2)
    print("few informative frames of 16: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()) + " (chance 0.33)")
    for name in ATTENTIONS:
        assert acc[name] >= acc["mean"] + 0.15, acc
