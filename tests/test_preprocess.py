import numpy as np
import pytest

from raylib.extract.preprocess import PreprocessConfig, preprocess_clip


def test_real_clip_gives_chips_flags_and_spectrogram(cremad_clips):
    out = preprocess_clip(cremad_clips[0], PreprocessConfig(frames="uniform:8"))
    assert out["status"] == "ok" and out["error"] is None
    assert out["chips"].shape == (8, 224, 224, 3) and out["face_found"].all()
    assert out["audio"].shape == (1, 200, 228) and out["audio"].dtype == np.float32
    assert np.all(np.diff(out["timestamps"]) > 0)
    for stage in ("decode", "detect", "align", "audio"):
        assert out[f"seconds_{stage}"] > 0


def test_logmel_mode(cremad_clips):
    out = preprocess_clip(cremad_clips[1], PreprocessConfig(frames="uniform:2", audio_mode="logmel"))
    assert out["audio"].shape[:2] == (3, 40)


@pytest.mark.parametrize(
    "kind, status",
    [("no_audio", "no_audio"), ("silent", "no_face"), ("mp4", "no_face")],  # marker clips have no face
)
def test_benign_problems_are_statuses(clips, kind, status):
    out = preprocess_clip(clips[kind], PreprocessConfig(frames="uniform:4"))
    assert out["status"] == status
    assert out["chips"].shape == (4, 224, 224, 3) and not out["face_found"].any()
    assert (out["audio"] is None) == (kind == "no_audio")


@pytest.mark.parametrize("kind, status", [
    ("zero_byte", "error"), ("text", "error"), ("png_renamed", "error"), ("truncated_mp4", "error"),
    ("corrupt", "error"), ("missing", "error"), ("truncated_avi", "truncated")])
def test_bad_files_become_statuses_never_exceptions(bad_files, kind, status):
    out = preprocess_clip(bad_files[kind], PreprocessConfig(frames="all"))
    assert out["status"] == status
    assert out["error"] and "\n" not in out["error"]


def test_bad_config_fails_early():
    with pytest.raises(ValueError, match="bad frame sampling"):
        PreprocessConfig(frames="some")
    with pytest.raises(ValueError, match="unknown audio mode"):
        PreprocessConfig(audio_mode="mfcc")


def test_an_object_store_clip_is_downloaded_once_for_frames_and_audio(cremad_clips, s3_bucket, monkeypatch):
    """One GET per clip through the moto S3 server: the frames and the audio share the download,
    and give what the local file gives."""
    from raylib import storage

    fs, _ = storage.filesystem(s3_bucket)
    uri = f"{s3_bucket}/clips/a.flv"
    fs.put(cremad_clips[2], uri.removeprefix("s3://"))
    reads = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda u, *a, **k: reads.append(u) or real_read(u, *a, **k))
    cfg = PreprocessConfig(frames="uniform:4")
    remote = preprocess_clip(uri, cfg)
    assert reads == [uri]
    local = preprocess_clip(cremad_clips[2], cfg)
    assert remote["status"] == local["status"] == "ok"
    np.testing.assert_array_equal(remote["chips"], local["chips"])
    np.testing.assert_array_equal(remote["audio"], local["audio"])
