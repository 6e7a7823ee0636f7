"""Audio files (.wav, .flac, .mp3, ...) as clips without video: sources, the CPU stage, and on a
real local Ray the extraction job, training, evaluation and prediction over real CREMA-D speech."""

import os
import shutil
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SR, tone
from raylib.errors import NoVideoStream
from raylib.labels import EMOTIONS
from raylib.media.audio import audio_features, load_audio
from raylib.media.video import decode_video
from raylib.schema import STATUS_AUDIO_ONLY, USABLE_STATUSES, audio_array
from raylib.sources import list_clips
from raylib.extract.preprocess import PreprocessConfig, preprocess_clip

CFG = PreprocessConfig(frames="uniform:2")


def write_audio(path, samples: np.ndarray, rate: int = SR, codec: str = "pcm_s16le", cover: bool = False,
                layout: str = "mono"):
    """Encode samples [C, S] (or [S]) float32 in [-1, 1] with PyAV; pcm_f32le keeps them exactly;
    cover: a one-picture mjpeg stream marked as attached cover art (as in tagged .mp3 files)."""
    import av

    planar = np.atleast_2d(np.asarray(samples, np.float32))
    fmt, data = ("flt", planar.T.reshape(1, -1)) if codec == "pcm_f32le" else \
        ("s16", (np.clip(planar, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1))
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if cover:
            pic = out.add_stream("mjpeg", rate=1)
            pic.width = pic.height = 64
            pic.pix_fmt = "yuvj420p"
            pic.disposition = av.stream.Disposition.attached_pic
            for packet in [*pic.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 200, np.uint8), "rgb24")),
                           *pic.encode()]:
                out.mux(packet)
        step = stream.codec_context.frame_size or 1024  # some encoders take only their own frame size
        for start in range(0, data.shape[1] // planar.shape[0], step):
            chunk = data[:, start * planar.shape[0]:(start + step) * planar.shape[0]]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


def wav_of(video: str, path) -> str:
    """The audio track of a video as it decodes (native rate and layout), as a float WAV."""
    import av

    with av.open(video) as c:
        stream = c.streams.audio[0]
        frames = list(c.decode(stream))
    samples = np.concatenate([f.to_ndarray() for f in frames], axis=1)
    return write_audio(path, samples, frames[0].sample_rate, "pcm_f32le", layout=frames[0].layout.name)


# ---- sources and the CPU stage (no Ray) ---------------------------------------------------------

def test_audio_files_are_clips_in_every_folder_layout(tmp_path):
    for rel in ("afew/Train/Angry/a.wav", "afew/Val/Sad/b.flac", "afew/Train/Happy/c.mp4", "afew/Test/d.mp3",
                "ravdess/Actor_01/03-01-05-01-01-01-01.wav", "ravdess/Actor_22/01-01-04-01-01-01-22.mp4",
                "ravdess/Actor_01/02-01-03-01-01-01-01.mp4", "cremad/1001_DFA_ANG_XX.wav", "only/Train/Fear/e.m4a"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = {os.path.relpath(r.uri, tmp_path): (r.label, r.split, r.dataset)
           for name in ("afew", "ravdess", "cremad", "only") for r in list_clips(str(tmp_path / name))}
    assert got == {"afew/Train/Angry/a.wav": ("Angry", "train", "afew"), "afew/Val/Sad/b.flac": ("Sad", "val", "afew"),
                   "afew/Train/Happy/c.mp4": ("Happy", "train", "afew"), "afew/Test/d.mp3": (None, "test", "afew"),
                   # RAVDESS: audio-only (03) and audio-video (01) files; video-only (02) has no audio
                   "ravdess/Actor_01/03-01-05-01-01-01-01.wav": ("Angry", "train", "ravdess"),
                   "ravdess/Actor_22/01-01-04-01-01-01-22.mp4": ("Sad", "val", "ravdess"),
                   "cremad/1001_DFA_ANG_XX.wav": ("Angry", "train", "cremad"),
                   "only/Train/Fear/e.m4a": ("Fear", "train", "afew")}


@pytest.mark.parametrize("name, codec", [("speech.wav", "pcm_s16le"), ("speech.flac", "flac"),
                                         ("speech.mp3", "libmp3lame"), ("speech.opus", "libopus")])
def test_an_audio_file_gives_its_track_s_features_and_no_frames(tmp_path, name, codec):
    path = write_audio(tmp_path / name, tone(1.2), codec=codec)
    out = preprocess_clip(path, CFG)
    assert (out["status"], out["error"], out["num_frames"]) == (STATUS_AUDIO_ONLY, None, 0)
    assert out["chips"].shape == (0, 224, 224, 3) and len(out["face_found"]) == len(out["timestamps"]) == 0
    np.testing.assert_array_equal(out["audio"], audio_features(load_audio(path).samples))
    assert out["audio_seconds"] == pytest.approx(1.2, abs=0.05) and out["duration"] == pytest.approx(1.2, abs=0.05)


@pytest.mark.parametrize("name, codec", [("speech.wav", "pcm_s16le"), ("speech.flac", "flac")])
def test_an_audio_file_is_opened_once_and_keeps_its_declared_duration(tmp_path, monkeypatch, name, codec):
    """No probe before the decoder for an audio file: its container declares the duration (a
    second open was ~40% of a 3 s wav's CPU stage)."""
    import av

    path = write_audio(tmp_path / name, tone(1.2), codec=codec)
    opened, real_open = [], av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    out = preprocess_clip(path, CFG)
    assert out["status"] == STATUS_AUDIO_ONLY and opened == [path]
    assert out["duration"] == pytest.approx(1.2, abs=0.03) and out["audio_seconds"] == pytest.approx(1.2, abs=0.03)


def test_cover_art_or_a_video_name_never_sends_an_audio_file_to_the_video_decoder(tmp_path):
    tagged = write_audio(tmp_path / "tagged.mp3", tone(1.0), codec="libmp3lame", cover=True)
    with pytest.raises(NoVideoStream):  # the cover picture is not a one-frame video
        decode_video(tagged)
    named_as_video = write_audio(tmp_path / "speech.mp4", tone(1.0), codec="aac")
    for path in (tagged, named_as_video):
        out = preprocess_clip(path, CFG)
        assert (out["status"], out["num_frames"], out["audio"].shape[:2]) == (STATUS_AUDIO_ONLY, 0, (1, 200))


@pytest.mark.parametrize("kind, status, cause", [
    ("text.wav", "error", "not a readable media file"), ("empty.wav", "error", "empty file (0 bytes)"),
    ("picture.wav", "error", "no decodable audio"), ("header.flac", "error", "not a readable media file"),
    ("cut.wav", "truncated", "decoded 0.60 s of a 1.20 s audio track")])
def test_a_broken_audio_file_is_a_row_with_a_clear_cause(tmp_path, kind, status, cause):
    from PIL import Image

    good = {ext: open(write_audio(tmp_path / f"good.{ext}", tone(1.2), codec=codec), "rb").read()
            for ext, codec in (("wav", "pcm_s16le"), ("flac", "flac"))}
    path = tmp_path / kind
    if kind == "text.wav":
        path.write_text("not audio\n" * 100)
    elif kind == "empty.wav":
        path.write_bytes(b"")
    elif kind == "picture.wav":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="PNG")
    elif kind == "header.flac":
        path.write_bytes(good["flac"][:60])
    else:  # a WAV cut in half: ffmpeg takes its length from the file size, the RIFF header knows better
        path.write_bytes(good["wav"][: 44 + (len(good["wav"]) - 44) // 2])
    out = preprocess_clip(str(path), CFG)
    assert out["status"] == status and out["error"].startswith(cause)
    assert (out.get("audio") is not None) == (status in USABLE_STATUSES)


# ---- models over audio-only rows (no Ray) ------------------------------------------------------

def audio_file_rows(tmp_path, names: dict[str, str]) -> dict:
    """CPU-stage rows of tone WAVs (name -> split), as cpu_stage and featurize_batch leave them."""
    from raylib.sources import ClipRecord, clip_id
    from raylib.extract.graph import cpu_stage, featurize_batch

    records = [ClipRecord(clip_id(str(tmp_path / n)), write_audio(tmp_path / n, tone(1.0, 300 + 50 * i)), "Happy",
                          split, "manifest") for i, (n, split) in enumerate(names.items())]
    batch = {k: np.asarray([getattr(r, k) for r in records]) for k in ("clip_id", "uri", "label", "split", "dataset")}
    return featurize_batch(cpu_stage(batch, CFG), encoder=None, mode="basic")  # no chips: the encoder is not run


def test_the_feature_actors_of_an_audio_only_input_load_no_face_model(tmp_path, cremad_clips):
    """An input of audio files only starts its feature actors with faces=False: no backbone is read
    (a missing weights file is not even opened), audio rows pass through with their features, and a
    clip with frames that reaches such an actor anyway is an error row, not a crashed actor."""
    from raylib.errors import WeightsError
    from raylib.extract.config import ExtractConfig, FeatureRecipe
    from raylib.extract.graph import FeatureStage

    cfg = ExtractConfig(recipe=FeatureRecipe(backbone="resnet18", weights=str(tmp_path / "missing.pth"), frames="uniform:2"))
    with pytest.raises(WeightsError):
        FeatureStage(cfg, decode=True)
    stage = FeatureStage(cfg, decode=True, faces=False)
    assert stage.encoder is None and stage.second is None
    uris = [write_audio(tmp_path / "a.wav", tone(1.0, 300)), cremad_clips[0]]
    batch = {"clip_id": np.asarray(["a", "v"]), "uri": np.asarray(uris), "label": np.asarray(["Happy", "Happy"]),
             "split": np.asarray(["train", "train"]), "dataset": np.asarray(["manifest", "manifest"])}
    out = stage(batch)
    assert list(out["status"]) == [STATUS_AUDIO_ONLY, "error"]
    assert out["error"][1] == ("ValueError: face chips reached a feature actor started without a face model "
                               "(audio-only input)")
    assert out["audio"][0].shape[0] > 0 and out["visual_features"][0].shape[0] == 0
    assert out["feature_ready"][0] == stage.ready  # the wall time its start-up ended (the run's start-up figure)


def checkpoint(tmp_path, modalities: str, visual_dim: int) -> str:
    import torch

    from raylib.checkpoints import save_checkpoint
    from raylib.models.fusion import ModelConfig, build_model
    from raylib.train.config import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(model=ModelConfig(modalities=modalities)).model_config(visual_dim, 1)
    (tmp_path / modalities).mkdir()
    return save_checkpoint(str(tmp_path / modalities), build_model(cfg), None, 0, 0.0, cfg, TrainConfig(), {})


def test_a_visual_branch_refuses_a_store_of_audio_files_in_one_line(tmp_path):
    from raylib.schema import to_table
    from raylib.extract.config import FeatureRecipe
    from raylib.extract.graph import batch_rows, provenance
    from raylib.models.model_config import ModelConfig
    from raylib.train.job import TrainConfig, run_train
    from raylib.train.config import store_info

    batch = audio_file_rows(tmp_path, {"a.wav": "train", "b.wav": "train", "c.wav": "val"})
    rows = [{**r, **provenance(FeatureRecipe())} for r in batch_rows(batch)]
    for split in ("train", "val"):
        (tmp_path / "store" / split).mkdir(parents=True)
        part = to_table([r for r in rows if r["split"] == split])
        pq.write_table(part, tmp_path / "store" / split / "part-0.parquet")
    store = str(tmp_path / "store")
    for modalities in ("av", "visual"):
        with pytest.raises(ValueError) as info:
            run_train(TrainConfig(store=store, output=str(tmp_path / "runs"), model=ModelConfig(modalities=modalities),
                                  quiet=True))
        assert str(info.value) == (f"feature store {store} holds no clips with frames (its 3 labelled clips are audio "
                                   f"files): --modalities {modalities} reads visual features; train on them with "
                                   f"--modalities audio")
    info = store_info(store, "audio")
    assert (info["visual_dim"], info["train_rows"], info["val_rows"], info["skipped"]) == (0, 2, 1, 0)


def test_predictions_of_an_audio_file_need_models_without_a_visual_branch(tmp_path):
    from raylib.prediction import NO_FRAMES, predict
    from raylib.schema import to_table
    from raylib.extract.config import FeatureRecipe
    from raylib.extract.graph import batch_rows, provenance
    from raylib.ensemble.predict import Predictor

    batch = audio_file_rows(tmp_path, {"new.wav": "test"})
    audio, av = checkpoint(tmp_path, "audio", 0), checkpoint(tmp_path, "av", 128)
    prov = provenance(FeatureRecipe())
    both = Predictor([audio, av], "none", prov)(batch)
    assert (both["status"][0], both["prediction"][0], both["error"][0]) == (STATUS_AUDIO_ONLY, "", NO_FRAMES)
    assert np.isnan(both["score_Happy"][0])
    alone = Predictor([audio], "none", prov)
    out = alone(batch)
    probs, _ = predict(alone.models[0], to_table([{**r, **prov} for r in batch_rows(batch)]))
    assert out["prediction"][0] == EMOTIONS[int(probs[0].argmax())] and out["error"][0] == ""
    np.testing.assert_allclose([out[f"score_{e}"][0] for e in EMOTIONS], probs[0], atol=1e-6)


# ---- the jobs on a real local Ray -------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cremad_clips):
    """Class folders mixing two CREMA-D videos with the six clips' speech as float WAVs (the same
    samples), a text file named .wav and a cut WAV: (root, expected status per file)."""
    root = tmp_path_factory.mktemp("mixed")
    folder = {"ANG": "Train/Angry", "DIS": "Train/Disgust", "FEA": "Train/Fear", "HAP": "Train/Happy",
              "NEU": "Val/Neutral", "SAD": "Val/Sad"}
    expected = {}
    for video in cremad_clips:
        name = os.path.splitext(os.path.basename(video))[0]  # 1001_DFA_ANG_XX
        rel = root / folder[name.split("_")[2]]
        rel.mkdir(parents=True, exist_ok=True)
        expected[wav_of(video, rel / f"{name}.wav")] = STATUS_AUDIO_ONLY
        if name.endswith(("ANG_XX", "SAD_XX")):  # two of the videos beside their speech
            expected[shutil.copy(video, rel)] = "ok"
    (root / "Train/Happy/notes.wav").write_text("not audio\n" * 50)
    expected[str(root / "Train/Happy/notes.wav")] = "error"
    whole = open(root / "Val/Neutral/1001_DFA_NEU_XX.wav", "rb").read()
    (root / "Val/Neutral/cut.wav").write_bytes(whole[: len(whole) // 3])
    expected[str(root / "Val/Neutral/cut.wav")] = "truncated"
    return str(root), expected


@pytest.fixture(scope="module")
def store(local_ray, corpus, tmp_path_factory):
    from raylib.extract.config import ExtractConfig, FeatureRecipe
    from raylib.extract.job import run_extract

    out = str(tmp_path_factory.mktemp("store") / "features")
    return out, run_extract(ExtractConfig(input=corpus[0], output=out, quiet=True,
                                          recipe=FeatureRecipe(frames="uniform:2")))


@pytest.mark.slow
def test_wav_and_video_in_class_folders_extract_to_rows_whose_audio_features_match(store, corpus):
    from raylib.store import read_store

    out, summary = store
    root, expected = corpus
    rows = {r["uri"]: r for r in read_store(out).to_pylist()}
    assert {u: r["status"] for u, r in rows.items()} == expected
    assert summary["status_counts"] == {"audio_only": 6, "error": 1, "ok": 2, "truncated": 1}
    assert summary["failures"] == 1  # audio files are no failures ...
    assert {e["status"] for e in summary["errors"]} == {"error", "truncated"}  # ... nor notable outcomes
    for uri, r in rows.items():
        if r["status"] in (STATUS_AUDIO_ONLY, "truncated"):
            assert (r["num_frames"], r["visual_dim"], r["visual_features"], r["face_found"]) == (0, 0, [], [])
            assert audio_array(r).shape[:2] == (1, 200) and r["audio_seconds"] > 0
    for video in ("Train/Angry/1001_DFA_ANG_XX", "Val/Sad/1001_DFA_SAD_XX"):
        from_video, from_wav = rows[f"{root}/{video}.flv"], rows[f"{root}/{video}.wav"]
        assert from_video["num_frames"] == 2 and from_video["visual_dim"] == 128
        # the same samples give the same spectrogram, whichever file carries them
        np.testing.assert_array_equal(audio_array(from_wav), audio_array(from_video))
        assert from_wav["audio_seconds"] == from_video["audio_seconds"]


def test_on_one_machine_an_audio_only_input_s_actors_write_a_shard_a_call_each_file_once(local_ray, tmp_path):
    """An input of audio files only on a Ray of one node: the feature actors write their own shards,
    a call's files to a file. 40 files (one of them text) on 2 CPUs: own_shard_size gives
    max(16, ceil(40 / (4 calls x 2 actors))) = 16 files a call, so shards of 16, 16 and 8; every
    file is in exactly one of them, and the summary counts them all."""
    from raylib.extract.config import ExtractConfig
    from raylib.extract.job import run_extract
    from raylib.store import read_store

    root = tmp_path / "wavs"
    uris = []
    for i in range(40):
        folder = root / "Train" / EMOTIONS[i % len(EMOTIONS)]
        folder.mkdir(parents=True, exist_ok=True)
        if i == 7:
            (folder / "notes.wav").write_text("not audio\n" * 50)
            uris.append(str(folder / "notes.wav"))
        else:
            uris.append(write_audio(folder / f"tone{i:02d}.wav", tone(0.5, 200 + 20 * i)))
    out = str(tmp_path / "store")
    summary = run_extract(ExtractConfig(input=str(root), output=out, quiet=True, max_failure_rate=0.5))
    assert summary["graph"] == "one_machine"
    assert summary["status_counts"] == {"audio_only": 39, "error": 1} and summary["shards_written"] == 3
    shards = sorted((root_, f) for root_, _, files in os.walk(out) for f in files if f.endswith(".parquet"))
    sizes = sorted(pq.read_metadata(os.path.join(d, f)).num_rows for d, f in shards)
    assert sizes == [8, 16, 16]
    rows = read_store(out).to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(uris)  # each file once
    assert {r["uri"]: r["status"] for r in rows}[uris[7]] == "error"


@pytest.mark.slow
def test_evaluation_and_prediction_take_audio_files_with_audio_models(store, corpus, mlflow_uri, tmp_path):
    from raylib.ensemble.evaluate import EvaluateConfig, run_evaluate
    from raylib.ensemble.predict import PredictConfig, run_predict
    from raylib.extract.config import FeatureRecipe

    out, _ = store
    audio, av = checkpoint(tmp_path, "audio", 0), checkpoint(tmp_path, "av", 128)
    # val: the SAD video, the NEU and SAD speech, the cut WAV
    by_audio = run_evaluate(EvaluateConfig(checkpoints=audio, store=out, output=str(tmp_path / "a")))
    by_av = run_evaluate(EvaluateConfig(checkpoints=av, store=out, output=str(tmp_path / "av")))
    assert (by_audio["clips"], by_audio["skipped_without_frames"]) == (4, 0)
    assert (by_av["clips"], by_av["skipped_without_frames"]) == (1, 3)
    scored = pq.read_table(by_av["predictions_parquet"]).column("uri").to_pylist()
    assert scored == [f"{corpus[0]}/Val/Sad/1001_DFA_SAD_XX.flv"]

    wav = f"{corpus[0]}/Train/Fear/1001_DFA_FEA_XX.wav"
    (tmp_path / "new.csv").write_text(f"uri,label\n{wav},Fear\n")
    summary = run_predict(PredictConfig(input=str(tmp_path / "new.csv"), checkpoints=audio,
                                        output=str(tmp_path / "p"), quiet=True,
                                        recipe=FeatureRecipe(frames="uniform:2")))
    row = pq.read_table(summary["predictions_parquet"]).to_pylist()[0]
    assert (summary["predicted"], row["uri"], row["status"], row["error"]) == (1, wav, STATUS_AUDIO_ONLY, None)
    assert row["prediction"] in EMOTIONS
