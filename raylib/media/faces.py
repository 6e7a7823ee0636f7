"""Face detection and alignment with dlib (PAPER.md section 1).

HOG frontal detector on a downscaled copy of the frame, box mapped back to full resolution,
5-point landmarks, then an upright chip of 224 x 224 whose face box is extended by 30%.
When no face is found the whole frame, resized, stands in, and the frame is flagged.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CHIP_SIZE = 224
CHIP_PADDING = 0.3  # the paper's 30% extension of the face box
DETECT_MAX_SIDE = 320  # frames are downscaled to this long side before HOG detection
DETECT_UPSAMPLE = 0
DETECT_THRESHOLD = 0.5  # HOG scores: faces ~1.5, face-like objects ~0.2 (ENVIRONMENT.md)
LANDMARKS_MODEL = "shape_predictor_5_face_landmarks.dat"


def dlib_model_path(filename: str) -> str:
    """Path of a .dat model shipped in face-recognition-models (its __init__ is not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed: pip install face-recognition-models")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dlib model {filename} not found at {path}; reinstall face-recognition-models")
    return path


@lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=1)
def _landmarks():
    import dlib

    return dlib.shape_predictor(dlib_model_path(LANDMARKS_MODEL))


@dataclass(frozen=True)
class FaceConfig:
    """Detection and alignment settings."""

    chip_size: int = CHIP_SIZE
    padding: float = CHIP_PADDING
    detect_max_side: int = DETECT_MAX_SIDE  # 0: detect at full resolution
    upsample: int = DETECT_UPSAMPLE
    threshold: float = DETECT_THRESHOLD
    retry_full_resolution: bool = True  # a miss on the small frame is retried at full size


@dataclass
class Faces:
    """Per-frame aligned chips [N, S, S, 3] uint8, found [N] bool, boxes [N, 4] (x0, y0, x1, y1) px."""

    chips: np.ndarray
    found: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    detect_seconds: float = 0.0
    align_seconds: float = 0.0


def _best_box(image: np.ndarray, upsample: int, threshold: float):
    """Largest detection scoring >= threshold as (x0, y0, x1, y1, score), or None."""
    rects, scores, _ = _detector().run(image, upsample, threshold)
    best = None
    for r, s in zip(rects, scores):
        area = r.width() * r.height()
        if s >= threshold and (best is None or area > best[0]):
            best = (area, (r.left(), r.top(), r.right(), r.bottom(), float(s)))
    return None if best is None else best[1]


def detect_face(frame: np.ndarray, cfg: FaceConfig = FaceConfig()):
    """Largest face of an RGB frame as (x0, y0, x1, y1, score) in full-resolution pixels, or None."""
    h, w = frame.shape[:2]
    scale = 1.0
    if cfg.detect_max_side and max(h, w) > cfg.detect_max_side:
        scale = cfg.detect_max_side / max(h, w)
    box = None
    if scale < 1.0:
        small = resize(frame, int(round(w * scale)), int(round(h * scale)))
        box = _best_box(small, cfg.upsample, cfg.threshold)
        if box is not None:
            x0, y0, x1, y1, s = box
            box = (x0 / scale, y0 / scale, x1 / scale, y1 / scale, s)
    if box is None and (scale == 1.0 or cfg.retry_full_resolution):
        box = _best_box(frame, cfg.upsample, cfg.threshold)
    return box


def align_face(frame: np.ndarray, box, cfg: FaceConfig = FaceConfig()) -> np.ndarray:
    """Upright chip [S, S, 3] uint8 from 5-point landmarks inside box (x0, y0, x1, y1)."""
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
    shape = _landmarks()(frame, dlib.rectangle(x0, y0, x1, y1))
    return dlib.get_face_chip(frame, shape, size=cfg.chip_size, padding=cfg.padding)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an [H, W, 3] uint8 image."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def align_frames(frames: np.ndarray, cfg: FaceConfig = FaceConfig()) -> Faces:
    """Detect and align the largest face of every frame; whole-frame fallback where none."""
    frames = np.ascontiguousarray(frames)
    n = len(frames)
    chips = np.zeros((n, cfg.chip_size, cfg.chip_size, 3), np.uint8)
    found = np.zeros(n, bool)
    boxes = np.full((n, 4), -1.0, np.float32)
    scores = np.zeros(n, np.float32)
    detect_s = align_s = 0.0
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        box = detect_face(frame, cfg)
        t1 = time.perf_counter()
        if box is None:
            chips[i] = resize(frame, cfg.chip_size, cfg.chip_size)
        else:
            chips[i] = align_face(frame, box, cfg)
            found[i] = True
            boxes[i] = box[:4]
            scores[i] = box[4]
        detect_s += t1 - t0
        align_s += time.perf_counter() - t1
    return Faces(chips, found, boxes, scores, detect_seconds=detect_s, align_seconds=align_s)
