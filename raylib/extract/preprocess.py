"""The CPU stage of extraction for one clip: decode -> faces -> audio -> spectrogram.

An audio file (by its name, `raylib.sources.AUDIO_EXTENSIONS`, or a file without a video stream)
skips the video decoder and the faces: its row has the audio features and no frames, status
"audio_only" (or "truncated" / "silent" as for any track).
`preprocess_clip` never raises for a bad clip, whatever the library that fails: the returned
dict carries `status` and `error`, so a batch job records the failure and goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from raylib.errors import ClipError, NoVideoStream, exception_line
from raylib.media import audio as audio_mod
from raylib.media.faces import FaceConfig, align_frames
from raylib.media.video import DEFAULT_SAMPLING, Clip, FrameSampling, decode_video, open_clip
from raylib.schema import (
    STATUS_AUDIO_ONLY,
    STATUS_ERROR,
    STATUS_NO_AUDIO,
    STATUS_NO_FACE,
    STATUS_OK,
    STATUS_SILENT,
    STATUS_TRUNCATED,
)
from raylib.sources import is_audio_file


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the CPU stage."""

    frames: str = DEFAULT_SAMPLING
    audio_mode: str = "spectrogram"  # or "logmel"
    sample_rate: int = audio_mod.SAMPLE_RATE
    faces: FaceConfig = field(default_factory=FaceConfig)

    def __post_init__(self):
        FrameSampling.parse(self.frames)  # fail early on a bad spec
        if self.audio_mode not in audio_mod.AUDIO_MODES:
            raise ValueError(f"unknown audio mode {self.audio_mode!r}; expected one of {', '.join(audio_mod.AUDIO_MODES)}")


def clip_status(truncated: bool, audio_status: str, faces_found: int, video: bool = True) -> str:
    """One status per clip, the most serious first."""
    if truncated or audio_status == audio_mod.AUDIO_TRUNCATED:
        return STATUS_TRUNCATED
    if audio_status == audio_mod.AUDIO_MISSING:
        return STATUS_NO_AUDIO
    if video and faces_found == 0:
        return STATUS_NO_FACE
    if audio_status == audio_mod.AUDIO_SILENT:
        return STATUS_SILENT
    return STATUS_OK if video else STATUS_AUDIO_ONLY


def preprocess_clip(uri: str, cfg: PreprocessConfig = PreprocessConfig()) -> dict:
    """One clip -> dict with chips [N,224,224,3] uint8, face_found [N], timestamps [N] s,
    audio [C, F, T] float32 (None without audio), status, error, and per-stage seconds
    (N = 0 for an audio file)."""
    out: dict = {"uri": uri, "status": STATUS_ERROR, "error": None}
    t0 = time.perf_counter()
    try:
        out.update(audio_clip(uri, cfg) if is_audio_file(uri) else video_clip(uri, cfg))
    except ClipError as e:
        out["error"] = e.cause
    except Exception as e:  # any other library failure (dlib, PyAV, memory) fails this clip only
        out["error"] = exception_line(e)
    out["seconds_total"] = time.perf_counter() - t0
    return out


def _audio(clip: str | Clip, cfg: PreprocessConfig) -> tuple[audio_mod.AudioTrack, np.ndarray | None]:
    """The clip's audio track and its features (None without audio)."""
    track = audio_mod.load_audio(clip, cfg.sample_rate)
    if track.status == audio_mod.AUDIO_MISSING:
        return track, None
    return track, audio_mod.audio_features(track.samples, cfg.audio_mode, cfg.sample_rate)


def video_clip(uri: str, cfg: PreprocessConfig) -> dict:
    """A video clip's frames, faces and audio (see preprocess_clip); a file without a video stream
    goes to audio_clip. ClipError (or a library's error) when it cannot be read."""
    t0 = time.perf_counter()
    clip = open_clip(uri)  # one download (an object-store clip) and one probe, for the frames and the audio
    try:
        video = decode_video(clip, cfg.frames)
    except NoVideoStream:  # probed before decord opens it: an audio file under a video name
        return audio_clip(clip, cfg, "no video stream and no decodable audio")
    t1 = time.perf_counter()
    faces = align_frames(video.frames, cfg.faces)
    t2 = time.perf_counter()
    track, spec = _audio(clip, cfg)
    out = dict(
        chips=faces.chips,
        face_found=faces.found,
        face_count=faces.counts,
        face_boxes=faces.boxes,
        timestamps=video.timestamps.astype(np.float32),
        fps=video.fps,
        duration=video.duration,
        num_frames=video.num_frames,
        audio=spec,
        audio_seconds=track.seconds,
        audio_status=track.status,
        status=clip_status(video.truncated, track.status, int(faces.found.sum())),
        seconds_decode=t1 - t0,
        seconds_detect=faces.detect_seconds,
        seconds_align=faces.align_seconds,
        seconds_audio=time.perf_counter() - t2,
    )
    if out["status"] == STATUS_TRUNCATED:
        out["error"] = (f"decoded {video.num_frames} frames / {track.seconds:.2f} s audio of a "
                        f"{video.duration:.2f} s clip")
    return out


def audio_clip(clip: str | Clip, cfg: PreprocessConfig, missing: str = "no decodable audio") -> dict:
    """An audio file's features and no frames (see preprocess_clip); the video decoder never
    opens it. ClipError (cause `missing`) when no audio decodes. clip: a URI or the opened Clip."""
    t0 = time.perf_counter()
    track, spec = _audio(clip, cfg)
    if spec is None:
        raise ClipError(track.uri, missing)
    size = cfg.faces.chip_size
    out = dict(
        chips=np.zeros((0, size, size, 3), np.uint8),
        face_found=np.zeros(0, bool),
        face_count=np.zeros(0, np.int16),
        face_boxes=np.zeros((0, 4), np.float32),
        timestamps=np.zeros(0, np.float32),
        fps=0.0,
        duration=track.declared or track.seconds,
        num_frames=0,
        audio=spec,
        audio_seconds=track.seconds,
        audio_status=track.status,
        status=clip_status(False, track.status, 0, video=False),
        seconds_decode=0.0,
        seconds_detect=0.0,
        seconds_align=0.0,
        seconds_audio=time.perf_counter() - t0,
    )
    if out["status"] == STATUS_TRUNCATED:
        out["error"] = f"decoded {track.seconds:.2f} s of a {track.declared:.2f} s audio track"
    return out
