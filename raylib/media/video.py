"""Video decoding with decord, always sequential (random seeks on h264 are ~50x slower).

Frame sampling policies (`FrameSampling.parse`):
  "all"        every frame
  "every:K"    frames 0, K, 2K, ...
  "uniform:N"  N frames evenly spaced over the clip (fewer if the clip is shorter)
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import numpy as np

from raylib import storage
from raylib.errors import ClipError, StorageError

# A clip whose decoded length falls short of the container's duration by more than this many
# frames (and this fraction) is flagged as truncated.
TRUNCATION_SLACK_FRAMES = 3
TRUNCATION_SLACK_FRACTION = 0.05
READ_RETRIES = 3  # extra attempts to read a remote clip after a transient error (pauses 2, 4, 8 s)


@dataclass(frozen=True)
class FrameSampling:
    """Which frame indices of a clip to keep: policy in {"all", "every", "uniform"} and its n."""

    policy: str = "uniform"
    n: int = 16

    @staticmethod
    def parse(spec: str) -> "FrameSampling":
        """'all' | 'every:K' | 'uniform:N' -> FrameSampling; ValueError explains the syntax."""
        name, _, arg = spec.strip().partition(":")
        if name == "all" and not arg:
            return FrameSampling("all", 0)
        if name in ("every", "uniform") and arg.isdigit() and int(arg) > 0:
            return FrameSampling(name, int(arg))
        raise ValueError(f"bad frame sampling {spec!r}: use 'all', 'every:K' or 'uniform:N' (K, N > 0)")

    def __str__(self) -> str:
        return "all" if self.policy == "all" else f"{self.policy}:{self.n}"

    def indices(self, num_frames: int) -> np.ndarray:
        """Sorted unique frame indices to keep out of num_frames."""
        if num_frames <= 0:
            return np.zeros(0, dtype=np.int64)
        if self.policy == "all":
            return np.arange(num_frames)
        if self.policy == "every":
            return np.arange(0, num_frames, self.n)
        return np.unique(np.round(np.linspace(0, num_frames - 1, min(self.n, num_frames))).astype(np.int64))


@dataclass
class Video:
    """Decoded frames of one clip: frames [N, H, W, 3] uint8 RGB, timestamps [N] seconds."""

    uri: str
    frames: np.ndarray
    indices: np.ndarray
    timestamps: np.ndarray
    fps: float
    duration: float  # seconds, from the container when it says, else frames / fps
    num_frames: int  # frames actually decodable in the file
    truncated: bool  # decoded far fewer frames than the container's duration implies


def open_media(uri: str):
    """A local path as str, or the object's bytes in a BytesIO (s3:// and other fsspec URIs, read
    with retries on transient errors); ClipError when it cannot be read."""
    if storage.is_remote(uri):
        try:  # transient errors (timeouts, throttling, 5xx) are retried here, inside the task
            data, _ = storage.with_retries(f"reading {storage.public_uri(uri)}", lambda: storage.read_bytes(uri),
                                           READ_RETRIES)
            return io.BytesIO(data)
        except FileNotFoundError:
            raise ClipError(uri, "file not found") from None
        except (OSError, StorageError) as e:
            raise ClipError(uri, f"cannot read: {str(e).splitlines()[0][:200]}") from None
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if not os.path.isfile(path):
        raise ClipError(uri, "file not found")
    if os.path.getsize(path) == 0:
        raise ClipError(uri, "empty file (0 bytes)")
    return path


def container_duration(src) -> float | None:
    """Longest duration in seconds the container declares (frame count, stream or file
    duration; PyAV probe, no decoding), None when it declares none."""
    import av

    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        with av.open(src) as c:
            found = [c.duration / 1e6] if c.duration else []
            if c.streams.video:
                v = c.streams.video[0]
                if v.duration and v.time_base:
                    found.append(float(v.duration * v.time_base))
                if v.frames and v.average_rate:  # e.g. AVI headers keep the full frame count
                    found.append(v.frames / float(v.average_rate))
            return max(found) if found else None
    except Exception:  # the decoder proper reports unreadable files
        return None
    finally:
        if isinstance(src, io.BytesIO):
            src.seek(0)


_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def short_cause(e: BaseException) -> str:
    """First line of a library error without decord's timestamps and source paths."""
    lines = [ln for ln in _DECORD_NOISE.sub("", str(e)).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]


def decode_video(uri: str, sampling: FrameSampling | str = "uniform:16") -> Video:
    """Decode one clip sequentially, keeping the sampled frames; ClipError on any failure."""
    import decord

    if isinstance(sampling, str):
        sampling = FrameSampling.parse(sampling)
    src = open_media(uri)
    declared = container_duration(src)
    try:
        reader = decord.VideoReader(src, num_threads=1)
        reported = len(reader)
        fps = float(reader.get_avg_fps())
    except (RuntimeError, decord.DECORDError) as e:
        raise ClipError(uri, f"not a readable video ({short_cause(e)})") from None
    if reported <= 0 or not np.isfinite(fps) or fps <= 0:
        raise ClipError(uri, "video stream has no frames")

    wanted = sampling.indices(reported)
    frames, kept, stamps = [], [], []
    position = 0
    try:
        for index in wanted:
            if index > position:
                reader.skip_frames(int(index - position))  # decodes, skips the RGB conversion
            frame = reader.next().asnumpy()
            position = int(index) + 1
            frames.append(frame)
            kept.append(int(index))
            stamps.append(float(reader.get_frame_timestamp(int(index))[0]))
    except StopIteration:
        pass  # container over-reported its frame count; judged as truncation below
    except (RuntimeError, decord.DECORDError) as e:
        raise ClipError(uri, f"corrupt video stream at frame {position} ({short_cause(e)})") from None
    if not frames:
        raise ClipError(uri, "no decodable video frames")

    decodable = position if len(kept) < len(wanted) else reported
    duration = declared if declared else decodable / fps
    missing = duration * fps - decodable
    truncated = missing > max(TRUNCATION_SLACK_FRAMES, TRUNCATION_SLACK_FRACTION * duration * fps)
    return Video(
        uri=uri,
        frames=np.stack(frames),
        indices=np.asarray(kept, dtype=np.int64),
        timestamps=np.asarray(stamps, dtype=np.float64),
        fps=fps,
        duration=float(duration),
        num_frames=int(decodable),
        truncated=bool(truncated),
    )
