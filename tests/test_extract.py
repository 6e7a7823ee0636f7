"""The extraction job on a real local Ray (2 CPUs) over real generated and real CREMA-D clips."""

import json
import os
import shutil

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from conftest import FPS
from raylib.labels import EMOTIONS
from raylib.models.backbones import build_backbone
from raylib.sample import face_photo, render_frames, speech_like, write_clip
from raylib.schema import SCHEMA, SCHEMA_VERSION, audio_array, visual_array
from raylib.sources import clip_id
from raylib.store import read_store, stored_clip_ids
from raylib.extract.config import ExtractConfig, FeatureRecipe
from raylib.extract.job import run_extract
from raylib.extract.preprocess import PreprocessConfig, preprocess_clip

DEFAULT = FeatureRecipe()  # the default recipe: mini_xception, packaged weights

pytestmark = pytest.mark.slow

FRAMES = "uniform:4"


def face_clip(path, seed, width=1.0, audio=True, slope=0.3):
    rng = np.random.default_rng(seed)
    frames = render_frames(face_photo(), 40, 320, 240, width, rng)
    write_clip(path, frames, speech_like(1.6, 16000, slope, rng) if audio else None, FPS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, bad_files, clips):
    """AFEW layout: 3 good face clips, and one clip of each bad kind, with the expected status."""
    root = tmp_path_factory.mktemp("afew")
    expected = {}

    def put(rel, status, src=None, make=None):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if src:
            shutil.copy(src, path)
        else:
            make(str(path))
        expected[str(path)] = status

    put("Train/Happy/good_0.mp4", "ok", make=lambda p: face_clip(p, 0))
    put("Train/Sad/good_1.avi", "ok", make=lambda p: face_clip(p, 1, width=0.85))
    put("Val/Angry/good_2.mp4", "ok", make=lambda p: face_clip(p, 2, slope=-0.3))
    put("Train/Fear/mute.mp4", "no_audio", make=lambda p: face_clip(p, 3, audio=False))
    put("Train/Disgust/faceless.avi", "no_face", src=clips["avi"])
    put("Train/Neutral/corrupt.mp4", "error", src=bad_files["corrupt"])
    put("Train/Neutral/empty.mp4", "error", src=bad_files["zero_byte"])
    put("Train/Surprise/notes.mp4", "error", src=bad_files["text"])
    put("Val/Sad/cut.avi", "truncated", src=bad_files["truncated_avi"])
    # 16 x 16 pixels: a library raises (PIL TypeError or dlib RuntimeError), a failure outside the media layer's own
    put("Train/Happy/tiny.mp4", "error", make=lambda p: write_clip(p, np.full((10, 16, 16, 3), 128, np.uint8), None, FPS))
    return str(root), expected


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """One local Ray with 2 CPUs for the module (started after the S3 env is in place)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def store(local_ray, dataset, tmp_path_factory):
    root, _ = dataset
    out = str(tmp_path_factory.mktemp("store"))
    cfg = ExtractConfig(input=root, output=out, quiet=True, max_failure_rate=0.5, shard_size=4,
                        recipe=FeatureRecipe(frames=FRAMES))
    return out, cfg, run_extract(cfg)


def test_one_machine_runs_decoding_in_the_feature_actors_and_stores_what_the_split_stages_store(store, dataset,
                                                                                                 tmp_path):
    """The module's store came from the one-machine graph (a Ray of one node, CPU features); with
    --cpu-actors the stages run apart, as on a cluster. Both store the same rows, feature for feature."""
    from raylib.extract.graph import one_machine

    out, cfg, summary = store
    assert one_machine(cfg)
    for other in ({"cpu_actors": 1}, {"gpu_actors": 1}, {"cpu_resource": "decode_node"}, {"feature_resource": "gpu_node"}):
        assert not one_machine(ExtractConfig(**{**cfg.__dict__, **other}))
    assert summary["graph"] == "one_machine"
    root, expected = dataset
    good = [u for u, st in expected.items() if st == "ok"]
    manifest = tmp_path / "ok.csv"
    manifest.write_text("uri,label\n" + "".join(f"{u},{os.path.basename(os.path.dirname(u))}\n" for u in good))
    split = str(tmp_path / "split")
    s = run_extract(ExtractConfig(input=str(manifest), output=split, quiet=True, cpu_actors=1,
                                  recipe=FeatureRecipe(frames=FRAMES)))
    assert s["clips_processed"] == len(good) and s["feature_actors"] == 1 and s["graph"] == "split"
    fused_rows = {r["uri"]: r for r in read_store(out).to_pylist()}
    for r in read_store(split).to_pylist():
        f = fused_rows[r["uri"]]
        assert r["status"] == f["status"] == "ok"
        np.testing.assert_allclose(visual_array(r), visual_array(f), atol=1e-5)
        np.testing.assert_allclose(audio_array(r), audio_array(f), atol=1e-6)


def test_rows_columns_dtypes_and_statuses(store, dataset):
    out, _, summary = store
    _, expected = dataset
    table = read_store(out)
    assert table.num_rows == len(expected)
    assert table.schema.equals(SCHEMA, check_metadata=False)  # plain Arrow types, no extension types
    assert table.schema.metadata[b"raylib.schema_version"] == SCHEMA_VERSION.encode()
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert {u: r["status"] for u, r in rows.items()} == expected
    for uri, r in rows.items():
        assert r["clip_id"] == clip_id(uri)
        assert r["backbone"] == DEFAULT.backbone == "mini_xception" and len(r["weights_digest"]) == 64 and r["frames"] == FRAMES
        if r["status"] == "error":
            assert r["error"] and r["num_frames"] == 0 and r["visual_features"] == []
            continue
        assert r["num_frames"] == 4 and visual_array(r).shape == (4, 128)
        assert len(r["face_found"]) == 4 and len(r["frame_timestamps"]) == 4
        assert len(r["face_count"]) == 4 and all(c >= int(f) for c, f in zip(r["face_count"], r["face_found"]))
        if r["status"] in ("ok", "no_audio"):
            assert all(r["face_found"]) and r["face_count"] == [1, 1, 1, 1]  # one person in the generated clips
        if r["status"] == "no_face":
            assert not any(r["face_found"])
        spec = audio_array(r)
        assert (spec is None) == (r["status"] == "no_audio")
        if spec is not None:
            assert spec.shape[:2] == (1, 200) and spec.dtype == np.float32
    assert {r["split"] for r in rows.values()} == {"train", "val"}
    assert summary["status_counts"] == {"error": 4, "no_audio": 1, "no_face": 1, "ok": 3, "truncated": 1}
    assert summary["failures"] == 4 and summary["clips_stored"] == 10
    tiny = rows[os.path.join(dataset[0], "Train/Happy/tiny.mp4")]
    # decord hands back 6-channel frames for it, which a library downstream refuses: its clip fails, not the job
    assert tiny["error"].startswith(("TypeError: Cannot handle this data type", "RuntimeError: Unsupported image type"))


def test_features_equal_the_library_called_directly(store, dataset):
    out, _, _ = store
    root, _ = dataset
    uri = os.path.join(root, "Train/Happy/good_0.mp4")
    row = next(r for r in read_store(out).to_pylist() if r["uri"] == uri)
    direct = preprocess_clip(uri, PreprocessConfig(frames=FRAMES))
    enc = build_backbone(DEFAULT.backbone, DEFAULT.weights)
    feats = enc.embed(torch.from_numpy(direct["chips"]).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(visual_array(row), feats, atol=1e-6)
    np.testing.assert_array_equal(audio_array(row), direct["audio"])
    np.testing.assert_array_equal(row["face_found"], direct["face_found"])


def test_store_reads_with_plain_pandas_and_summary_is_beside_it(store):
    import pandas as pd

    out, _, _ = store
    df = pd.read_parquet(out)
    assert len(df) == 10 and df["clip_id"].is_unique
    summary = json.load(open(os.path.join(out, "_summary.json")))
    assert summary["clips_processed"] == 10 and summary["failure_rate"] == pytest.approx(4 / 10)


def parquet_files(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                  if f.endswith(".parquet") and "/_" not in os.path.join(d, f)[len(out):])


def test_rerun_retries_only_error_rows_and_keeps_one_row_per_clip(store, dataset):
    out, cfg, first = store
    _, expected = dataset
    before = {r["clip_id"]: r for r in read_store(out).to_pylist()}
    again = run_extract(cfg)
    assert again["clips_processed"] == 4 and again["clips_retried"] == 4 and again["clips_already_stored"] == 6
    after = read_store(out).to_pylist()
    assert len(after) == 10 and len({r["clip_id"] for r in after}) == 10  # one row per clip, for any reader
    assert {r["uri"]: r["status"] for r in after} == expected
    for r in after:  # rows with features were left as they were
        if r["status"] != "error":
            assert r["visual_features"] == before[r["clip_id"]]["visual_features"]
    runs = sorted(os.listdir(os.path.join(out, "_runs")))
    assert len(runs) == 2 and runs[0].startswith(first["run_id"]) and runs[1].startswith(again["run_id"])
    latest = json.load(open(os.path.join(out, "_summary.json")))
    assert latest["run_id"] == again["run_id"] and len(latest["failed_clips"]) == 4
    assert json.load(open(os.path.join(out, "_runs", runs[0])))["clips_processed"] == 10  # the first run's is kept
    assert run_extract(cfg)["clips_retried"] == 4 and read_store(out, ["clip_id"]).num_rows == 10


def test_another_recipe_is_refused_with_both_recipes(store, capsys):
    from jobs_extract import main

    out, cfg, _ = store
    files = parquet_files(out)
    for flag, value, shown in (("--frames", "uniform:3", "frames=uniform:3"), ("--enhance", "mean", "enhance=mean"),
                               ("--audio", "logmel", "audio=logmel")):
        assert main(["--input", cfg.input, "--output", out, "--quiet", "--frames", FRAMES, flag, value]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"extract: error: the store {out} holds features made with "
                                                   f"backbone={DEFAULT.backbone} weights=")
        assert f"frames={FRAMES}, this run would make " in err[0] and shown in err[0].split("would make")[1]
    assert parquet_files(out) == files


def test_too_many_failures_fail_the_job_with_one_line(local_ray, dataset, tmp_path, capsys):
    from jobs_extract import main

    root, _ = dataset
    rc = main(["--input", root, "--output", str(tmp_path / "s"), "--frames", "uniform:2", "--quiet",
               "--max-failure-rate", "0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("extract: error: 4 of 10 clips failed (40% > --max-failure-rate 10%)")
    assert len(stored_clip_ids(str(tmp_path / "s"))) == 10  # the rows are stored all the same
    # what a scheduler's automatic retry does: the failed clips are retried, fail again, and so does the job
    rc = main(["--input", root, "--output", str(tmp_path / "s"), "--frames", "uniform:2", "--quiet",
               "--max-failure-rate", "0.1"])
    assert rc == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("extract: error: 4 of 10 clips failed")
    summary = json.load(open(tmp_path / "s" / "_summary.json"))
    assert summary["clips_retried"] == 4 and len(summary["failed_clips"]) == 4
    assert len(os.listdir(tmp_path / "s" / "_runs")) == 2


def test_empty_or_missing_input_is_one_clear_line(local_ray, dataset, tmp_path, capsys):
    from jobs_extract import main

    (tmp_path / "empty").mkdir()
    assert main(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o"), "--quiet"]) == 1
    assert "no video or audio files" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "absent"), "--output", str(tmp_path / "o"), "--quiet"]) == 1
    assert "not found" in capsys.readouterr().err
    root, _ = dataset
    assert main(["--input", root, "--output", str(tmp_path / "o"), "--backbone", "ir50",
                 "--weights", str(tmp_path / "w.pth"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == f"extract: error: checkpoint {tmp_path / 'w.pth'} not found"


def test_weights_that_do_not_fit_fail_the_job_with_the_key_listing(local_ray, dataset, tmp_path, capsys):
    from jobs_extract import main

    from raylib.models.backbones import resnet18_trunk

    state = resnet18_trunk().state_dict()
    state["layer1.0.conv1.weights"] = state.pop("layer1.0.conv1.weight")
    torch.save(state, tmp_path / "r18.pth")
    root, _ = dataset
    assert main(["--input", root, "--output", str(tmp_path / "o"), "--backbone", "resnet18",
                 "--weights", str(tmp_path / "r18.pth"), "--frames", "uniform:1", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("extract: error: extraction failed: WeightsError: missing keys in resnet18 checkpoint")
    assert "layer1.0.conv1.weight" in err


def test_cremad_clips_through_the_job(local_ray, cremad_clips, tmp_path):
    summary = run_extract(ExtractConfig(input=os.path.dirname(cremad_clips[0]), dataset_format="cremad",
                                        output=str(tmp_path / "cremad"), quiet=True,
                                        recipe=FeatureRecipe(frames="uniform:3")))
    assert summary["status_counts"] == {"ok": 6}
    table = read_store(str(tmp_path / "cremad"))
    assert sorted(table.column("label").to_pylist()) == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad"]
    assert table.column("speaker").to_pylist() == [os.path.basename(u)[:4] for u in table.column("uri").to_pylist()]
    assert all(len(f) == 3 for f in table.column("visual_features").to_pylist())


def test_s3_input_and_output_through_moto(local_ray, s3_bucket, dataset):
    import pyarrow.parquet as pq
    import s3fs

    from raylib import storage

    root, expected = dataset
    fs, _ = storage.filesystem(s3_bucket)
    good = [u for u, s in expected.items() if s in ("ok", "no_audio")]
    for uri in good:
        fs.put(uri, f"{s3_bucket}/videos/{os.path.relpath(uri, root)}".removeprefix("s3://"))
    out = f"{s3_bucket}/features"
    summary = run_extract(ExtractConfig(input=f"{s3_bucket}/videos", output=out, quiet=True,
                                        recipe=FeatureRecipe(frames="uniform:2")))
    assert summary["clips_processed"] == len(good) and summary["failures"] == 0
    # read back with plain pyarrow over s3fs, as a user would
    s3 = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    table = pq.read_table(out.removeprefix("s3://"), filesystem=s3)
    assert sorted(table.column("uri").to_pylist()) == sorted(f"{s3_bucket}/videos/{os.path.relpath(u, root)}" for u in good)
    assert not [p for p in s3.find(out.removeprefix("s3://")) if ".tmp-" in p]
    assert run_extract(ExtractConfig(input=f"{s3_bucket}/videos", output=out, quiet=True,
                                     recipe=FeatureRecipe(frames="uniform:2")))["clips_processed"] == 0


def test_clip_that_fails_then_succeeds_ends_as_one_ok_row(local_ray, dataset, tmp_path):
    import pandas as pd

    root, _ = dataset
    (tmp_path / "clips").mkdir()
    shutil.copy(os.path.join(root, "Train/Happy/good_0.mp4"), tmp_path / "clips" / "a.mp4")
    (tmp_path / "manifest.csv").write_text("uri,label\nclips/a.mp4,Happy\nclips/late.mp4,Sad\n")
    cfg = ExtractConfig(input=str(tmp_path / "manifest.csv"), output=str(tmp_path / "s"), quiet=True,
                        max_failure_rate=1.0, recipe=FeatureRecipe(frames="uniform:2"))
    first = run_extract(cfg)
    assert first["status_counts"] == {"error": 1, "ok": 1} and first["failed_clips"][0]["error"] == "file not found"
    shutil.copy(os.path.join(root, "Val/Angry/good_2.mp4"), tmp_path / "clips" / "late.mp4")  # the file arrives
    second = run_extract(cfg)
    assert second["clips_retried"] == 1 and second["status_counts"] == {"ok": 1} and second["failures"] == 0
    df = pd.read_parquet(tmp_path / "s")  # any reader: one row per clip, the failed row is gone
    assert sorted(df["status"]) == ["ok", "ok"] and df["clip_id"].is_unique
    assert set(df["uri"]) == {str(tmp_path / "clips" / "a.mp4"), str(tmp_path / "clips" / "late.mp4")}


def test_same_clips_named_three_ways_are_stored_once(local_ray, dataset, tmp_path, monkeypatch, capsys):
    root, _ = dataset
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(os.path.join(root, "Train/Happy/good_0.mp4"), data / "clips" / name)
    # b listed twice (two spellings): one record, with a warning
    (data / "manifest.csv").write_text("uri,label,split\nclips/a.mp4,Happy,train\nclips/b.mp4,Sad,val\n"
                                       "./clips/../clips/b.mp4,Sad,val\n")
    out = str(tmp_path / "s")
    monkeypatch.chdir(tmp_path)
    first = run_extract(ExtractConfig(input="data/manifest.csv", output=out, quiet=True,
                                      recipe=FeatureRecipe(frames="uniform:2")))
    assert first["clips_in_input"] == 2 and first["clips_processed"] == 2
    assert "sources: warning: 1 duplicate record(s) of the same file" in capsys.readouterr().err
    for spelling, cwd in (("./data/manifest.csv", tmp_path), ("manifest.csv", data), (str(data / "manifest.csv"), "/")):
        monkeypatch.chdir(cwd)
        again = run_extract(ExtractConfig(input=spelling, output=out, quiet=True,
                                          recipe=FeatureRecipe(frames="uniform:2")))
        assert (again["clips_processed"], again["clips_already_stored"]) == (0, 2), spelling
    # the same files as a folder of clips
    ids = sorted(read_store(out, ["clip_id"]).column("clip_id").to_pylist())
    assert ids == sorted(clip_id(str(data / "clips" / n)) for n in ("a.mp4", "b.mp4"))


def test_unlabelled_clips_are_stored_with_a_null_label(local_ray, dataset, tmp_path):
    root, _ = dataset
    good = os.path.join(root, "Train/Happy/good_0.mp4")
    afew = tmp_path / "afew"  # AFEW: Test/<clip> beside Train/<Emotion>/<clip>
    for rel in ("Train/Happy/a.mp4", "Val/Sad/b.mp4", "Test/c.mp4", "Test/d.mp4"):
        (afew / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(good, afew / rel)
    summary = run_extract(ExtractConfig(input=str(afew), output=str(tmp_path / "s1"), quiet=True,
                                        recipe=FeatureRecipe(frames="uniform:2")))
    assert summary["status_counts"] == {"ok": 4}
    got = {os.path.basename(r["uri"]): (r["label"], r["label_index"], r["split"])
           for r in read_store(str(tmp_path / "s1"), ["uri", "label", "label_index", "split"]).to_pylist()}
    assert got == {"a.mp4": ("Happy", 3, "train"), "b.mp4": ("Sad", 5, "val"),
                   "c.mp4": (None, -1, "test"), "d.mp4": (None, -1, "test")}

    # a manifest of unlabelled clips only, then labelled and unlabelled clips of one split in one shard
    (tmp_path / "only.csv").write_text(f"uri,label\n{afew}/Test/c.mp4,\n{afew}/Test/d.mp4,\n")
    only = run_extract(ExtractConfig(input=str(tmp_path / "only.csv"), output=str(tmp_path / "s2"), quiet=True,
                                     recipe=FeatureRecipe(frames="uniform:2")))
    assert only["status_counts"] == {"ok": 2}
    assert read_store(str(tmp_path / "s2"), ["label"]).column("label").to_pylist() == [None, None]
    (tmp_path / "mixed.csv").write_text(f"uri,label\n{afew}/Train/Happy/a.mp4,Happy\n{afew}/Test/c.mp4,\n")
    run_extract(ExtractConfig(input=str(tmp_path / "mixed.csv"), output=str(tmp_path / "s3"), quiet=True,
                              batch_size=2, recipe=FeatureRecipe(frames="uniform:2")))
    import pyarrow.parquet as pq

    from raylib.store import data_files

    shards = data_files(str(tmp_path / "s3"))
    assert len(shards) == 1
    assert sorted(pq.read_table(shards[0]).column("label_index").to_pylist()) == [-1, 3]


def test_predict_job_scores_new_videos_like_the_model_does_on_their_features(local_ray, dataset, tmp_path):
    import pandas as pd

    from raylib.checkpoints import save_checkpoint
    from raylib.errors import WeightsError
    from raylib.models.fusion import ModelConfig, build_model
    from raylib.prediction import predict
    from raylib.ensemble.predict import PredictConfig, run_predict
    from raylib.train.config import TrainConfig

    root, _ = dataset
    torch.manual_seed(0)
    ckpts = {}
    for dim in (128, 512):
        cfg = ModelConfig(visual_dim=dim)
        model = build_model(cfg)
        (tmp_path / f"ckpt{dim}").mkdir()
        ckpts[dim] = (save_checkpoint(str(tmp_path / f"ckpt{dim}"), model, torch.optim.Adam(model.parameters()), 0,
                                      0.0, cfg, TrainConfig(), {}), model)
    (tmp_path / "new.csv").write_text(f"uri,label\n{root}/Train/Happy/good_0.mp4,Happy\n{root}/Val/Angry/good_2.mp4,\n"
                                      f"{root}/gone.mp4,\n")
    cfg = PredictConfig(input=str(tmp_path / "new.csv"), checkpoints=ckpts[128][0], output=str(tmp_path / "out"),
                        store=str(tmp_path / "store"), quiet=True, recipe=FeatureRecipe(frames=FRAMES))
    summary = run_predict(cfg)
    assert (summary["clips"], summary["predicted"], summary["new"], summary["labelled"]) == (3, 2, 3, 1)
    out = pd.read_parquet(tmp_path / "out" / "predictions.parquet").set_index("uri")
    assert out.loc[f"{root}/gone.mp4", "status"] == "error" and pd.isna(out.loc[f"{root}/gone.mp4", "prediction"])
    assert pd.isna(out.loc[f"{root}/Val/Angry/good_2.mp4", "label"])  # unlabelled: predicted all the same
    stored = read_store(str(tmp_path / "store"))  # --store kept the features: score them directly
    stored = stored.filter(pc.not_equal(stored.column("status"), "error"))
    probs, _ = predict(ckpts[128][1].eval(), stored)
    for uri, p in zip(stored.column("uri").to_pylist(), probs):
        np.testing.assert_allclose(out.loc[uri, [f"score_{e}" for e in EMOTIONS]].to_numpy(float), p, atol=1e-5)
        assert out.loc[uri, "prediction"] == EMOTIONS[int(np.argmax(p))]
    assert pd.read_csv(tmp_path / "out" / "predictions.csv").shape == (3, 4 + len(EMOTIONS) + 3)
    assert run_predict(cfg)["new"] == 1  # only the clip that failed is tried again
    with pytest.raises(WeightsError, match=r"takes 512-d visual features .* this run's features has 128-d"):
        run_predict(PredictConfig(input=str(tmp_path / "new.csv"), checkpoints=ckpts[512][0],
                                  output=str(tmp_path / "out2"), quiet=True, recipe=FeatureRecipe(frames=FRAMES)))
    assert not (tmp_path / "out2").exists()


def test_clip_dataset_gives_each_task_one_long_clip_and_short_clips_in_groups_of_their_kind(local_ray, monkeypatch,
                                                                                             tmp_path):
    """Records in blocks of 64 (standing in for RECORD_BLOCK's 8,192): every decode task gets one
    long clip (a local file over SHORT_CLIP_BYTES, a remote video, a path that cannot be read), or
    up to AUDIO_CLIPS_PER_TASK short audio files (local and small, or remote), or up to
    VIDEO_CLIPS_PER_TASK short local video clips (the one-machine graph only), never kinds mixed;
    every clip comes out once."""
    from raylib.extract import graph
    from raylib.extract.job import shuffled

    monkeypatch.setattr(graph, "RECORD_BLOCK", 64)
    monkeypatch.setattr(graph, "SHORT_CLIP_BYTES", 100)

    def record(cid, uri, split="test"):
        return {"clip_id": cid, "uri": uri, "label": "", "split": split, "dataset": "manifest"}

    def local(name, size):
        path = tmp_path / name
        path.write_bytes(b"x" * size)
        return str(path)

    long_ids = {f"c{i:04d}" for i in range(300)} | {f"r{i}" for i in range(3)}
    records = [record(f"c{i:04d}", f"/nowhere/{i}.mp4", "train") for i in range(290)]  # unreadable: alone
    records += [record(f"c{i:04d}", local(f"long{i}.mp4", 200)) for i in range(290, 300)]
    records += [record(f"r{i}", f"s3://bucket/r{i}.mp4") for i in range(3)]  # remote video: size unknown
    short_video = [record(f"v{i:04d}", local(f"v{i}.avi", 10)) for i in range(21)]
    short_audio = [record(f"a{i:04d}", local(f"a{i}.wav", 10 if i < 40 else 200)) for i in range(43)]
    long_ids |= {f"a{i:04d}" for i in range(40, 43)}
    short_audio += [record(f"s{i}", f"s3://bucket/s{i}.wav") for i in range(5)]
    records = shuffled(records + short_video + short_audio, 0)

    def task(batch):
        n = len(batch["clip_id"])
        return {"clip_id": batch["clip_id"], "task": [local_ray.get_runtime_context().get_task_id()] * n,
                "rows": [n] * n}

    out = graph.clip_dataset(records, fused=True).map_batches(task, batch_size=1, num_cpus=0.25).take_all()
    assert sorted(r["clip_id"] for r in out) == sorted(r["clip_id"] for r in records)  # none lost, none twice
    assert {r["rows"] for r in out} == {1}
    tasks: dict[str, list[str]] = {}
    for r in out:
        tasks.setdefault(r["task"], []).append(r["clip_id"])
    videos = {r["clip_id"] for r in short_video}
    audio = {r["clip_id"] for r in short_audio} - long_ids
    alone = [ids for ids in tasks.values() if set(ids) & long_ids]
    assert all(len(ids) == 1 for ids in alone) and len(alone) == 306  # each long clip alone
    grouped_video = sorted((ids for ids in tasks.values() if set(ids) & videos), key=len)
    grouped_audio = sorted((ids for ids in tasks.values() if set(ids) & audio), key=len)
    assert all(set(ids) <= videos for ids in grouped_video) and all(set(ids) <= audio for ids in grouped_audio)
    assert [len(ids) for ids in grouped_video] == [1, 4, 4, 4, 4, 4]  # 21 short clips in groups of 4
    assert [len(ids) for ids in grouped_audio] == [13, 16, 16]  # 45 short audio files in groups of 16
    # on a cluster (the split graph) a short video clip keeps its own task; short audio files still share
    assert [graph.clips_per_task(r["uri"], fused=False) for r in short_video + short_audio[:1]] == [1] * 21 + [16]
    # an audio-only input whose one-machine actors write their own shards takes bigger calls (the
    # shards they write: test_audio_only); a long audio file stays alone, a short video keeps 4
    assert [graph.clips_per_task(r["uri"], True, 20) for r in short_audio[38:] + short_video[:1]] == \
        [20, 20, 1, 1, 1, 20, 20, 20, 20, 20, 4]


def test_an_audio_only_input_s_calls_are_a_shard_fewer_when_files_are_few_or_big(tmp_path, monkeypatch):
    """own_shard_size: --shard-size files a call, unless that leaves an actor fewer than
    CALLS_PER_ACTOR calls (but AUDIO_CLIPS_PER_TASK a call at least), or a call's files would
    exceed ONE_MACHINE_AUDIO_BYTES (a remote file counts as SHORT_CLIP_BYTES); a smaller shard
    size is kept."""
    from raylib.extract.graph import own_shard_size

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"x" * 1000)
    local = [{"uri": str(wav)}]
    assert own_shard_size(local * 2000, 64, 2) == 64  # ceil(2000 / 8) = 250 a call: a shard
    assert own_shard_size(local * 400, 64, 2) == 50  # ceil(400 / 8)
    assert own_shard_size(local * 400, 64, 4) == 25  # ceil(400 / 16)
    assert own_shard_size(local * 40, 64, 2) == 16  # ceil(40 / 8) = 5, below 16 files a call
    assert own_shard_size(local * 2000, 10, 2) == 10  # the shard size caps the call
    monkeypatch.setattr("raylib.extract.graph.ONE_MACHINE_AUDIO_BYTES", 40_000)
    assert own_shard_size(local * 2000, 64, 2) == 40  # 40,000 bytes a call, 1,000 a file
    assert own_shard_size(local * 2000 + [{"uri": "s3://b/a.wav"}], 64, 2) == 1  # 40,000 // 2 MiB: one a call
