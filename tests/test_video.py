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


def faststart_mp4(src: str, dst: str) -> bytes:
    """src re-muxed as an MP4 whose index (moov) precedes the media data, as web video is."""
    import av

    with av.open(src) as inp, av.open(dst, "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("h264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for frame in inp.decode(video=0):
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return open(dst, "rb").read()


def test_an_mp4_cut_after_its_index_keeps_the_frames_that_decode(clips, tmp_path):
    data = faststart_mp4(clips["mp4"], str(tmp_path / "whole.mp4"))
    assert data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # decord refuses to open this file
    v = decode_video(str(cut), "all")
    assert v.truncated and 0 < v.num_frames < NUM_FRAMES and len(v.frames) == v.num_frames
    assert [frame_level(f) for f in v.frames] == list(range(v.num_frames))  # the right frames, in order
    np.testing.assert_allclose(v.timestamps, np.arange(v.num_frames) / FPS, atol=1e-3)


def test_a_file_without_a_video_stream_says_so(tmp_path):
    import av

    path = str(tmp_path / "speech.mp4")
    with av.open(path, "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    with pytest.raises(ClipError) as info:
        decode_video(path)
    assert info.value.cause == "no video stream (an audio-only file?)"


def test_broken_container_timestamps_come_from_the_frame_index():
    from raylib.media import video

    frames = [np.zeros((4, 4, 3), np.uint8)] * 3
    info = video.Probe(True, 2.0, 2.0, True, 4, 4, 50, 25.0)
    broken = video._video("x.avi", frames, [0, 10, 20], [-3.85e17] * 3, 25.0, info, 50)  # as decord gives for some AVIs
    np.testing.assert_allclose(broken.timestamps, [0.0, 0.4, 0.8])
    good = video._video("x.mp4", frames, [0, 10, 20], [0.0, 0.41, 0.8], 25.0, info, 50)
    np.testing.assert_allclose(good.timestamps, [0.0, 0.41, 0.8])


def test_large_videos_are_decoded_downscaled(clips, monkeypatch):
    from raylib.media import video

    monkeypatch.setattr(video, "MAX_DECODE_SIDE", 100)  # the clips are 160 x 120
    v = decode_video(clips["mp4"], "uniform:4")
    assert v.frames.shape == (4, 76, 100, 3)
    assert [frame_level(f) for f in v.frames] == [0, 16, 33, 49]
