"""The CPU stage of extraction for one clip: decode -> faces -> audio -> spectrogram.

`preprocess_clip` never raises for a bad clip, whatever the library that fails: the returned
dict carries `status` and `error`, so a batch job records the failure and goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from raylib.errors import ClipError
from raylib.media import audio as audio_mod
from raylib.media.faces import FaceConfig, align_frames
from raylib.media.video import FrameSampling, decode_video
from raylib.schema import (STATUS_ERROR, STATUS_NO_AUDIO, STATUS_NO_FACE, STATUS_OK, STATUS_SILENT,
                           STATUS_TRUNCATED)



@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the CPU stage."""

    frames: str = "uniform:16"
    audio_mode: str = "spectrogram"  # or "logmel"
    sample_rate: int = audio_mod.SAMPLE_RATE
    faces: FaceConfig = field(default_factory=FaceConfig)

    def __post_init__(self):
        FrameSampling.parse(self.frames)  # fail early on a bad spec
        if self.audio_mode not in audio_mod.AUDIO_MODES:
            raise ValueError(f"unknown audio mode {self.audio_mode!r}; expected one of {', '.join(audio_mod.AUDIO_MODES)}")


def clip_status(truncated: bool, audio_status: str, faces_found: int) -> str:
    """One status per clip, the most serious first."""
    if truncated or audio_status == audio_mod.AUDIO_TRUNCATED:
        return STATUS_TRUNCATED
    if audio_status == audio_mod.AUDIO_MISSING:
        return STATUS_NO_AUDIO
    if faces_found == 0:
        return STATUS_NO_FACE
    if audio_status == audio_mod.AUDIO_SILENT:
        return STATUS_SILENT
    return STATUS_OK


def exception_line(e: BaseException) -> str:
    """'TypeName: first line of the message', short enough for the store's error column."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def preprocess_clip(uri: str, cfg: PreprocessConfig = PreprocessConfig()) -> dict:
    """One clip -> dict with chips [N,224,224,3] uint8, face_found [N], timestamps [N] s,
    audio [C, F, T] float32 (None without audio), status, error, and per-stage seconds."""
    out: dict = {"uri": uri, "status": STATUS_ERROR, "error": None}
    t0 = time.perf_counter()
    try:
        video = decode_video(uri, cfg.frames)
        t1 = time.perf_counter()
        faces = align_frames(video.frames, cfg.faces)
        t2 = time.perf_counter()
        track = audio_mod.load_audio(uri, cfg.sample_rate)
        spec = None
        if track.status != audio_mod.AUDIO_MISSING:
            spec = audio_mod.audio_features(track.samples, cfg.audio_mode, cfg.sample_rate)
        t3 = time.perf_counter()
    except ClipError as e:
        out["error"] = e.cause
        out["seconds_total"] = time.perf_counter() - t0
        return out
    except Exception as e:  # any other library failure (dlib, PyAV, memory) fails this clip only
        out["error"] = exception_line(e)
        out["seconds_total"] = time.perf_counter() - t0
        return out
    out.update(
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
        seconds_audio=t3 - t2,
        seconds_total=t3 - t0,
    )
    if out["status"] == STATUS_TRUNCATED:
        out["error"] = (f"decoded {video.num_frames} frames / {track.seconds:.2f} s audio of a "
                        f"{video.duration:.2f} s clip")
    return out
