"""The store's rules read back from real Parquet shards: one recipe, one row per clip, error rows
dropped for a retry; training and evaluation refuse a store that mixes recipes."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from raylib.errors import StoreError
from raylib.schema import SCHEMA_VERSION, to_table
from raylib.store import (RECIPE_KEYS, describe_recipe, drop_rows, read_store, single_recipe, store_state)

RECIPE = {"backbone": "dlib_resnet", "weights": "packaged", "weights_digest": "ab" * 32, "enhancement": "basic",
          "audio_mode": "spectrogram", "frames": "uniform:4", "code_version": "0.1.0"}


def row(cid, status="ok", split="train", label="Happy", dim=8, **recipe):
    feats = np.ones((2, dim), np.float32) if status != "error" else None
    return {"clip_id": cid, "uri": f"/clips/{cid}.mp4", "label": label, "split": split, "dataset": "manifest",
            "status": status, "error": "not a readable video" if status == "error" else None,
            "visual_features": feats, "audio": np.zeros((1, 200, 3), np.float32) if feats is not None else None,
            **RECIPE, **recipe}


def write(store, name, rows, split="train"):
    os.makedirs(os.path.join(store, split), exist_ok=True)
    pq.write_table(to_table(rows), os.path.join(store, split, name))


def test_state_splits_usable_and_failed_clips_and_reads_the_recipe(tmp_path):
    store = str(tmp_path)
    write(store, "part-a.parquet", [row("a"), row("b", "error"), row("c", "no_face")])
    write(store, "part-b.parquet", [row("d", split="val"), row("e", "error", split="val")], split="val")
    state = store_state(store)
    assert state.usable == {"a", "c", "d"} and set(state.failed) == {"b", "e"} and state.files == 2
    assert state.failed["b"]["file"].endswith("train/part-a.parquet")
    assert state.failed["e"] == {"file": os.path.join(store, "val", "part-b.parquet"), "uri": "/clips/e.mp4",
                                 "error": "not a readable video"}
    assert state.recipes == [{k: RECIPE[k] for k in RECIPE_KEYS}]


def test_dropping_error_rows_rewrites_or_removes_their_shards(tmp_path):
    store = str(tmp_path)
    write(store, "part-a.parquet", [row("a"), row("b", "error")])
    write(store, "part-b.parquet", [row("e", "error", split="val")], split="val")
    metadata = pq.read_schema(os.path.join(store, "train", "part-a.parquet")).metadata
    state = store_state(store)
    by_file = {}
    for cid, f in state.failed.items():
        by_file.setdefault(f["file"], set()).add(cid)
    assert drop_rows(store, by_file) == 2
    assert read_store(store, ["clip_id"]).column("clip_id").to_pylist() == ["a"]
    assert not os.path.exists(os.path.join(store, "val", "part-b.parquet"))  # nothing left in it
    assert pq.read_schema(os.path.join(store, "train", "part-a.parquet")).metadata == metadata
    assert not [f for _, _, fs in os.walk(store) for f in fs if f.startswith(".tmp-")]


def test_a_clip_stored_twice_is_an_error_naming_it(tmp_path):
    store = str(tmp_path)
    write(store, "part-a.parquet", [row("a"), row("b")])
    write(store, "part-b.parquet", [row("a", "error")])
    with pytest.raises(StoreError, match=r"holds 1 clip\(s\) twice: a \("):
        store_state(store)


def many_shards(store, shards=120, rows=8):
    """shards train shards of rows clips each; clip s-r is an error row when (s * rows + r) % 7 == 0.
    Returns (usable ids, {failed id: shard path})."""
    usable, failed = set(), {}
    for s in range(shards):
        batch = []
        for r in range(rows):
            cid, bad = f"{s}-{r}", (s * rows + r) % 7 == 0
            batch.append(row(cid, "error" if bad else ("no_face" if r == 1 else "ok"), dim=2))
            if bad:
                failed[cid] = os.path.join(store, "train", f"part-{s:04d}.parquet")
            else:
                usable.add(cid)
        write(store, f"part-{s:04d}.parquet", batch)
    return usable, failed


def test_state_of_many_shards_names_every_failed_clip_with_its_shard(tmp_path):
    store = str(tmp_path)
    usable, failed = many_shards(store)
    state = store_state(store)
    assert state.files == 120 and state.schema_versions == {SCHEMA_VERSION}
    assert state.usable == usable and len(usable) == 960 - len(failed)
    assert {cid: f["file"] for cid, f in state.failed.items()} == failed
    assert all(f["uri"] == f"/clips/{cid}.mp4" and f["error"] == "not a readable video" for cid, f in state.failed.items())
    assert state.recipes == [{k: RECIPE[k] for k in RECIPE_KEYS}]


def test_clips_stored_twice_among_many_shards_are_all_counted(tmp_path):
    store = str(tmp_path)
    many_shards(store)
    write(store, "part-extra.parquet", [row("5-3"), row("0-0", "error"), row("new")], split="val")
    with pytest.raises(StoreError) as info:
        store_state(store)
    msg = str(info.value)
    assert msg.startswith(f"the store {store} holds 2 clip(s) twice: ")
    extra = os.path.join(store, "val", "part-extra.parquet")
    assert f"0-0 ({os.path.join(store, 'train', 'part-0000.parquet')}, {extra})" in msg
    assert f"5-3 ({os.path.join(store, 'train', 'part-0005.parquet')}, {extra})" in msg


def test_state_on_s3_fetches_footers_and_small_columns_not_whole_shards(s3_bucket, monkeypatch):
    import s3fs

    from raylib import storage

    fs, _ = storage.filesystem(s3_bucket)
    rng = np.random.default_rng(0)
    for s in range(3):  # ~1 MB of incompressible features per shard, as real shards hold
        rows = [{**row(f"{s}-{r}", "error" if r == 0 else "ok"), "visual_features": rng.random((16, 2048), np.float32)}
                for r in range(8)]
        rows[0]["visual_features"] = None
        with fs.open(f"{s3_bucket}/train/part-{s}.parquet", "wb") as f:
            pq.write_table(to_table(rows), f)
    size = sum(fs.size(p) for p in fs.find(s3_bucket))
    fetched = []
    real = s3fs.core.S3File._fetch_range
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", lambda self, a, b: fetched.append(b - a) or real(self, a, b))
    state = store_state(s3_bucket)
    assert state.usable == {f"{s}-{r}" for s in range(3) for r in range(1, 8)}
    assert state.failed["1-0"]["file"] == f"{s3_bucket.removeprefix('s3://')}/train/part-1.parquet"
    assert size > 3_000_000 and sum(fetched) < 3 * 100_000, (size, fetched)


def mixed_store(tmp_path):
    store = str(tmp_path / "mixed")
    write(store, "part-a.parquet", [row("a"), row("b", split="val")])
    write(store, "part-b.parquet", [row("c", dim=16, backbone="ir50", weights_digest="cd" * 32, frames="uniform:16")])
    return store


def test_a_store_mixing_recipes_is_refused_naming_them(tmp_path):
    store = mixed_store(tmp_path)
    with pytest.raises(StoreError) as info:
        single_recipe(store)
    msg = str(info.value)
    assert msg.startswith(f"the store {store} mixes 2 feature recipes (")
    assert "backbone=dlib_resnet weights=abababababab enhance=basic audio=spectrogram frames=uniform:4" in msg
    assert "backbone=ir50 weights=cdcdcdcdcdcd enhance=basic audio=spectrogram frames=uniform:16" in msg
    assert msg.endswith("extract again into a new --output")
    assert single_recipe(str(tmp_path / "empty")) is None
    assert describe_recipe({**RECIPE, "weights_digest": "random+" + "ef" * 32}).startswith(
        "backbone=dlib_resnet weights=random+efefefefefef ")


def test_training_and_evaluation_refuse_a_mixed_store(tmp_path):
    from raylib.ensemble.evaluate import EvaluateConfig, run_evaluate
    from raylib.train.config import store_info

    store = mixed_store(tmp_path)
    with pytest.raises(StoreError, match="mixes 2 feature recipes"):
        store_info(store)
    with pytest.raises(StoreError, match="mixes 2 feature recipes"):
        run_evaluate(EvaluateConfig(store=store, checkpoints=str(tmp_path / "model.pt"), output=str(tmp_path / "e")))
    one = str(tmp_path / "one")
    write(one, "part-a.parquet", [row("a"), row("b", label="Sad")])
    info = store_info(one)
    assert info["provenance"] == {k: RECIPE[k] for k in RECIPE_KEYS} and info["visual_dim"] == 8


def test_a_checkpoint_that_does_not_fit_the_store_fails_before_any_work(tmp_path, monkeypatch, capsys):
    import torch

    from raylib.checkpoints import save_checkpoint
    from conftest import _load_job
    from raylib.models.fusion import ModelConfig, build_model
    from raylib.train.config import TrainConfig

    store = str(tmp_path / "store")
    write(store, "part-a.parquet", [row("a", split="val"), row("b", split="val", label=None)], split="val")
    model_cfg = ModelConfig(visual_dim=512)
    model = build_model(model_cfg)
    (tmp_path / "ckpt").mkdir()
    ckpt = save_checkpoint(str(tmp_path / "ckpt"), model, torch.optim.Adam(model.parameters()), 0, 0.0, model_cfg,
                           TrainConfig(store="/data/ir50-store"), {})
    evaluate = _load_job("evaluate")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert evaluate.main(["--store", store, "--checkpoints", ckpt, "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"evaluate: error: checkpoint {ckpt} takes 512-d visual features and 1 audio channel(s) (trained on "
                   f"the store /data/ir50-store); the store {store} has 8-d and 1 (backbone=dlib_resnet "
                   f"weights=abababababab enhance=basic audio=spectrogram frames=uniform:4): use features extracted "
                   f"the way its training store was"]
    assert not os.path.exists(tmp_path / "out")
    assert evaluate.main(["--store", store, "--checkpoints", "0" * 32, "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # (above it, MLflow's own log lines as it creates the new store's tables)
    assert err[-1].startswith(f"evaluate: error: MLflow run {'0' * 32} has no checkpoint to load (MlflowException: "
                              f"Run with id={'0' * 32} not found)")


def test_a_shard_keeps_dictionaries_for_its_strings_only_and_reads_back_the_same_values(tmp_path):
    """write_shard's Parquet options: the float lists (features, spectrograms) are stored
    byte-stream-split without a dictionary (Parquet's default built one per column chunk and gave
    it up: slower, larger), the string columns with one, and every value reads back as written."""
    from raylib.extract.graph import write_shard

    rng = np.random.default_rng(0)
    rows = [{**row(f"c{i}"), "visual_features": rng.standard_normal((3, 8)).astype(np.float32),
             "audio": rng.standard_normal((1, 20, 5)).astype(np.float32), "has_audio": True} for i in range(4)]
    batch = {k: np.asarray([r[k] for r in rows] if k not in ("visual_features", "audio", "error")
                           else _objects([r[k] for r in rows])) for k in rows[0]}
    out = write_shard(batch, str(tmp_path), {k: RECIPE[k] for k in RECIPE})
    (path,) = set(out["file"])
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    dictionary = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    assert encodings["clip_id"] & dictionary and encodings["backbone"] & dictionary
    for floats in ("audio.list.element", "visual_features.list.element.list.element"):
        assert not encodings[floats] & dictionary and "BYTE_STREAM_SPLIT" in encodings[floats]
    table = pq.read_table(path)
    ids = table.column("clip_id").to_pylist()
    assert sorted(ids) == [r["clip_id"] for r in rows]
    for r in rows:
        j = ids.index(r["clip_id"])
        np.testing.assert_array_equal(np.asarray(table.column("audio")[j].as_py(), np.float32), r["audio"].ravel())
        np.testing.assert_array_equal(np.asarray(table.column("visual_features")[j].as_py(), np.float32),
                                      r["visual_features"])


def _objects(values):
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col
