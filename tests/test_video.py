import os

import numpy as np
import pytest

from conftest import FPS, NUM_FRAMES, frame_level
from raylib.errors import ClipError
from raylib.media.video import FrameSampling, decode_video


@pytest.mark.parametrize("ext", ["mp4", "avi"])
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", list(range(NUM_FRAMES))),
        ("every:7", list(range(0, NUM_FRAMES, 7))),
        ("uniform:5", [0, 12, 24, 37, 49]),
        ("uniform:80", list(range(NUM_FRAMES))),  # more than the clip has: every frame once
    ],
)
def test_sampling_policies_decode_the_right_frames(clips, ext, spec, expected):
    v = decode_video(clips[ext], spec)
    assert v.fps == pytest.approx(FPS)
    assert v.indices.tolist() == expected
    assert v.frames.shape == (len(expected), 120, 160, 3) and v.frames.dtype == np.uint8
    # every decoded frame is the one its index names (grey level encodes the index)
    assert [frame_level(f) for f in v.frames] == expected
    np.testing.assert_allclose(v.timestamps, np.asarray(expected) / FPS, atol=1e-3)
    assert v.num_frames == NUM_FRAMES and not v.truncated
    assert v.duration == pytest.approx(NUM_FRAMES / FPS, abs=0.05)


def test_frame_sampling_parse_rejects_bad_specs():
    assert FrameSampling.parse("every:3") == FrameSampling("every", 3)
    assert str(FrameSampling.parse("uniform:16")) == "uniform:16"
    for bad in ["", "uniform", "uniform:0", "every:-1", "random:3", "all:2"]:
        with pytest.raises(ValueError, match="bad frame sampling"):
            FrameSampling.parse(bad)


def test_cremad_flv_vp6_decodes(cremad_clips):
    v = decode_video(cremad_clips[0], "all")
    assert v.frames.shape == (67, 360, 480, 3)
    assert v.fps == pytest.approx(29.97, abs=0.01)
    assert v.duration == pytest.approx(2.235, abs=0.01)
    assert not v.truncated


def test_decode_from_s3_uri(clips, s3_bucket):
    from raylib import storage

    uri = f"{s3_bucket}/videos/tone.mp4"
    fs, path = storage.filesystem(uri)
    fs.put(clips["mp4"], path)
    v = decode_video(uri, "every:10")
    assert [frame_level(f) for f in v.frames] == [0, 10, 20, 30, 40]
    with pytest.raises(ClipError, match="not found"):
        decode_video(f"{s3_bucket}/videos/absent.mp4")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("zero_byte", "empty file"),
        ("text", "not a readable video"),
        ("png_renamed", "not a readable video"),
        ("truncated_mp4", "not a readable video"),
        ("missing", "file not found"),
    ],
)
def test_unreadable_files_raise_one_clip_error(bad_files, kind, message):
    with pytest.raises(ClipError, match=message) as info:
        decode_video(bad_files[kind], "all")
    assert info.value.uri == bad_files[kind]
    assert os.path.basename(bad_files[kind]) in str(info.value)


def test_corrupt_bitstream_raises_clip_error_mid_clip(bad_files):
    with pytest.raises(ClipError, match="corrupt video stream at frame") as info:
        decode_video(bad_files["corrupt"], "all")
    assert "[" not in info.value.cause.split("(", 1)[1][:3]  # decord's log prefix is stripped


def test_truncated_avi_is_flagged(bad_files):
    v = decode_video(bad_files["truncated_avi"], "all")
    assert v.truncated
    assert 0 < v.num_frames < NUM_FRAMES
