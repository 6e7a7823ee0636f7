"""The embedded sample set: small, synthetic, labelled clips in the AFEW folder layout.

SYNTHETIC DATA, for demos and tests only. Every clip animates a real photograph that ships with
scikit-image (`skimage.data.astronaut()`), so dlib finds and aligns a real face, and carries a
speech-like harmonic audio track. A class signal is planted in both modalities, each of which
alone can only tell some classes apart:

  visual factor v = label // 2 (0..3): the face is squeezed horizontally to VISUAL_FACE_WIDTHS[v]
      of its width: a change of face shape, which a face-recognition embedding (the embedded
      default backbone, dlib's ResNet) does see, unlike expression or lighting.
  audio factor  a = label % 2 (0..1): the pitch contour of the voice rises (a = 0) or falls (a = 1).

So (v, a) is unique per label, visual alone reaches at most 4/7 accuracy, audio alone 2/7 (plus
chance within its groups), and only audio-video fusion can separate all 7 classes.
Everything else (base pitch, loudness, head motion, scale, rotation) is random per clip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from raylib.labels import EMOTIONS

VISUAL_FACE_WIDTHS = (0.80, 0.88, 0.96, 1.04)
PITCH_SLOPES = (+0.35, -0.35)  # relative f0 change over the clip: rising, falling
BACKGROUND = 96


def visual_factor(label_index: int) -> int:
    return label_index // 2


def audio_factor(label_index: int) -> int:
    return label_index % 2


@dataclass(frozen=True)
class SampleConfig:
    """Size of the generated set: clips per class and split, frame size, duration."""

    out_dir: str = "data/demo/videos"
    train_per_class: int = 4
    val_per_class: int = 2
    width: int = 320
    height: int = 240
    fps: int = 25
    seconds: float = 2.0
    sample_rate: int = 16000
    seed: int = 0


def write_clip(path: str, frames: np.ndarray, audio: np.ndarray | None, fps: int,
               sample_rate: int = 16000) -> None:
    """Encode RGB frames [N, H, W, 3] uint8 and mono audio [S] in [-1, 1] with PyAV.

    .mp4 -> h264 + AAC, .avi -> MPEG-4 Part 2 + 16-bit PCM; audio None writes no audio stream.
    """
    import av
    from fractions import Fraction

    avi = path.lower().endswith(".avi")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as out:
        video = out.add_stream("mpeg4" if avi else "libx264", rate=fps)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        if avi:
            video.bit_rate = 2_000_000
        else:
            video.options = {"crf": "20", "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = out.add_stream("pcm_s16le" if avi else "aac", rate=sample_rate, layout="mono")
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if astream is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            chunk = 1024
            for start in range(0, len(pcm), chunk):
                piece = pcm[start:start + chunk][None]
                af = av.AudioFrame.from_ndarray(piece, format="s16", layout="mono")
                af.sample_rate = sample_rate
                af.pts = start
                af.time_base = Fraction(1, sample_rate)
                for packet in astream.encode(af):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)


def face_photo() -> np.ndarray:
    """The real face photograph the sample set animates: a crop of skimage's astronaut, RGB uint8."""
    from skimage import data

    return data.astronaut()[30:250, 110:340].copy()


def render_frames(face: np.ndarray, n: int, width: int, height: int, face_width: float,
                  rng: np.random.Generator) -> np.ndarray:
    """n frames of the face squeezed to face_width, drifting, scaling and turning slightly."""
    from PIL import Image

    h, w = face.shape[:2]
    squeezed = Image.fromarray(face).resize((max(1, int(w * face_width)), h), Image.BILINEAR)
    base = 0.8 * height / h
    phase = rng.uniform(0, 2 * np.pi, 3)
    amp = rng.uniform([2, 0.01, 1], [width * 0.06, 0.06, 6])
    speed = rng.uniform(0.5, 1.5, 3)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        t = i / n * 2 * np.pi
        dx = amp[0] * np.sin(speed[0] * t + phase[0])
        scale = base * (1 + amp[1] * np.sin(speed[1] * t + phase[1]))
        angle = amp[2] * np.sin(speed[2] * t + phase[2])
        im = squeezed.rotate(angle, resample=Image.BILINEAR, fillcolor=(BACKGROUND,) * 3)
        nw, nh = max(1, int(im.width * scale)), max(1, int(im.height * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
        canvas.paste(im, (int((width - nw) / 2 + dx), int((height - nh) / 2)))
        frames[i] = np.asarray(canvas)
    return frames


def speech_like(seconds: float, sample_rate: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """A voiced, syllable-modulated harmonic tone whose pitch moves by `slope` over the clip."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(110, 220) * (1 + slope * (t / seconds - 0.5))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 9))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 2 * np.pi)))
    y = voice * (0.2 + 0.8 * syllables) + 0.01 * rng.standard_normal(len(t))
    return (rng.uniform(0.3, 0.6) * y / np.max(np.abs(y))).astype(np.float32)


def generate_sample_set(cfg: SampleConfig = SampleConfig()) -> list[str]:
    """Write the sample set under cfg.out_dir/{Train,Val}/<Emotion>/; returns the file paths.

    Clips alternate between .mp4 (h264/AAC) and .avi (MPEG-4/PCM). Existing files are kept.
    """
    face = face_photo()
    rng = np.random.default_rng(cfg.seed)
    n = int(round(cfg.seconds * cfg.fps))
    paths = []
    for split, per_class in (("Train", cfg.train_per_class), ("Val", cfg.val_per_class)):
        for label_index, label in enumerate(EMOTIONS):
            for k in range(per_class):
                clip_rng = np.random.default_rng(rng.integers(2**63))
                ext = ".mp4" if k % 2 == 0 else ".avi"
                path = os.path.join(cfg.out_dir, split, label, f"{label.lower()}_{k:03d}{ext}")
                paths.append(path)
                if os.path.exists(path):
                    continue
                frames = render_frames(face, n, cfg.width, cfg.height,
                                       VISUAL_FACE_WIDTHS[visual_factor(label_index)], clip_rng)
                audio = speech_like(cfg.seconds, cfg.sample_rate, PITCH_SLOPES[audio_factor(label_index)], clip_rng)
                tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.part{ext}")  # hidden: never listed as a clip
                write_clip(tmp, frames, audio, cfg.fps, cfg.sample_rate)
                os.replace(tmp, path)
    return paths
