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
from raylib.errors import ClipError, NoVideoStream, StorageError
from raylib.media.image import resize

# A clip whose decoded length falls short of the container's duration by more than this many
# frames (and this fraction) is flagged as truncated.
DEFAULT_SAMPLING = "uniform:16"  # the frames of a clip the jobs keep unless told otherwise (--frames)
TRUNCATION_SLACK_FRAMES = 3
TRUNCATION_SLACK_FRACTION = 0.05
MAX_DECODE_SIDE = 1920  # larger videos are decoded downscaled to this long side (bounds a task's memory)
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


@dataclass(frozen=True)
class Probe:
    """What the container declares (PyAV, no decoding): readable, video stream, size, frames, fps."""

    readable: bool = False
    duration: float | None = None  # longest declared duration in seconds (any stream)
    video_duration: float | None = None  # what the video stream itself declares
    has_video: bool = False
    width: int = 0
    height: int = 0
    frames: int = 0  # declared frame count, 0 when unknown
    fps: float = 0.0
    container: str = ""  # PyAV's format name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "avi", "png_pipe"

    @property
    def is_image(self) -> bool:
        """A still image (PyAV opens those as a one-frame video)."""
        return self.container == "image2" or self.container.endswith("_pipe")


def probe(src) -> Probe:
    """Probe a path or BytesIO with PyAV; Probe(readable=False) when PyAV cannot open it."""
    import av

    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        with av.open(src) as c:
            found = [c.duration / 1e6] if c.duration else []
            # cover art in an .mp3, .flac or .m4a is a one-picture "video" stream: not a video
            videos = [s for s in c.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            if not videos:
                return Probe(True, max(found) if found else None, container=c.format.name)
            v = videos[0]
            fps = float(v.average_rate) if v.average_rate else 0.0
            own = []
            if v.duration and v.time_base:
                own.append(float(v.duration * v.time_base))
            if v.frames and fps:  # e.g. AVI headers keep the full frame count
                own.append(v.frames / fps)
            found += own
            return Probe(True, max(found) if found else None, max(own) if own else None, True,
                         v.codec_context.width or 0, v.codec_context.height or 0, int(v.frames or 0), fps,
                         c.format.name)
    except Exception:  # the decoder proper reports unreadable files
        return Probe()
    finally:
        if isinstance(src, io.BytesIO):
            src.seek(0)


@dataclass
class Clip:
    """One clip, opened once for both decoders: its URI, its source (a local path, or an object's
    bytes downloaded once) and what its container declares (probed once)."""

    uri: str
    src: str | io.BytesIO
    probe: Probe

    def source(self) -> str | io.BytesIO:
        """The source, from its start (a decoder that read the bytes leaves them at their end)."""
        if isinstance(self.src, io.BytesIO):
            self.src.seek(0)
        return self.src


def open_clip(uri: str | Clip) -> Clip:
    """The clip at uri, read (open_media) and probed; ClipError when it cannot be read. A Clip
    comes back as it is."""
    if isinstance(uri, Clip):
        return uri
    src = open_media(uri)
    return Clip(uri, src, probe(src))


def decode_size(p: Probe) -> tuple[int, int]:
    """(width, height) to decode at: the clip's own, or scaled so its long side is MAX_DECODE_SIDE
    (a 4K clip's 16 frames would otherwise hold ~400 MB); (-1, -1) when unknown or small."""
    long_side = max(p.width, p.height)
    if long_side <= MAX_DECODE_SIDE:
        return -1, -1
    scale = MAX_DECODE_SIDE / long_side
    return int(round(p.width * scale / 2)) * 2, int(round(p.height * scale / 2)) * 2


_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def short_cause(e: BaseException) -> str:
    """First line of a library error without decord's timestamps and source paths."""
    lines = [ln for ln in _DECORD_NOISE.sub("", str(e)).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]


def decode_video(clip: str | Clip, sampling: FrameSampling | str = DEFAULT_SAMPLING) -> Video:
    """Decode one clip (a URI, or a Clip open_clip gave, shared with the audio) sequentially,
    keeping the sampled frames; ClipError on any failure. decord first; PyAV when decord cannot
    open the file (e.g. an MP4 cut after its index)."""
    import decord

    if isinstance(sampling, str):
        sampling = FrameSampling.parse(sampling)
    clip = open_clip(clip)
    uri, src, info = clip.uri, clip.source(), clip.probe
    if info.readable and not info.has_video:  # never hand an audio file to decord
        raise NoVideoStream(uri, "no video stream (an audio-only file?)")
    width, height = decode_size(info)
    try:
        reader = decord.VideoReader(src, num_threads=1)
        reported = len(reader)
        fps = float(reader.get_avg_fps())
    except (RuntimeError, decord.DECORDError) as e:
        if info.readable and not info.is_image:
            return _decode_pyav(uri, clip.source(), sampling, info)
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
            if width > 0:  # each kept frame shrinks at once (decord's own resizing costs more memory)
                frame = resize(frame, width, height)
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
    return _video(uri, frames, kept, stamps, fps, info, decodable)


def _video(uri, frames, kept, stamps, fps, info: Probe, decodable) -> Video:
    """A Video with sane timestamps (from the frame index where the container's are missing or
    broken, as in AVI files without per-frame timestamps) and the truncation verdict, judged on
    what the video stream declares (an audio track running longer is no missing video)."""
    kept_a = np.asarray(kept, dtype=np.int64)
    stamps_a = np.asarray(stamps, dtype=np.float64)
    duration = info.duration if info.duration else decodable / fps
    expected = info.video_duration or duration
    if len(stamps_a) != len(kept_a) or not np.all(np.isfinite(stamps_a)) or (stamps_a < 0).any() \
            or (np.diff(stamps_a) <= 0).any() or stamps_a.max(initial=0) > duration + 1.0:
        stamps_a = kept_a / fps
    missing = expected * fps - decodable
    truncated = missing > max(TRUNCATION_SLACK_FRAMES, TRUNCATION_SLACK_FRACTION * expected * fps)
    return Video(uri=uri, frames=np.stack(frames), indices=kept_a, timestamps=stamps_a, fps=fps,
                 duration=float(duration), num_frames=int(decodable), truncated=bool(truncated))


def _decode_pyav(uri: str, src, sampling: FrameSampling, info: Probe) -> Video:
    """Sequential PyAV decoding of a file decord cannot open, keeping the frames that decode
    (a damaged or cut file becomes a truncated clip, not a lost one)."""
    import av

    fps = info.fps or 25.0
    declared = info.frames or int(round((info.duration or 0) * fps))
    wanted = set(sampling.indices(declared).tolist()) if declared else None
    width, height = decode_size(info)
    frames, kept, stamps = [], [], []
    position = 0
    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        with av.open(src) as c:
            stream = c.streams.video[0]
            for packet in c.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    break  # the rest of the file is damaged or missing
                for f in decoded:
                    if wanted is None or position in wanted:
                        f = f.reformat(width=width, height=height) if width > 0 else f
                        frames.append(f.to_ndarray(format="rgb24"))
                        kept.append(position)
                        stamps.append(float(f.pts * f.time_base) if f.pts is not None and f.time_base else -1.0)
                    position += 1
    except (av.error.FFmpegError, OSError, IndexError) as e:
        if not frames:
            raise ClipError(uri, f"not a readable video ({short_cause(e)})") from None
    if not frames:
        raise ClipError(uri, "no decodable video frames")
    return _video(uri, frames, kept, stamps, fps, info, position)
