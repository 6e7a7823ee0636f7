"""Face detection and alignment with dlib (docs/method.md, section 1).

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
DETECT_THRESHOLD = 0.5  # HOG scores measured here: faces ~1.5, face-like objects ~0.2
# Between detections the box follows the landmarks; a jump beyond these bounds calls the detector.
TRACK_MAX_SCALE_CHANGE = 1.25
TRACK_MAX_SHIFT = 0.35  # of the box side
TRACK_MIN_CORRELATION = 0.6  # a tracked chip must still look like the last one (else: a cut)
ROI_MARGIN = 0.4  # re-detection around a tracked face searches the box grown by this much per side
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
    detect_every: int = 4  # run the detector on every k-th frame; track with landmarks in between


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


def landmarks(frame: np.ndarray, box) -> np.ndarray:
    """The 5 landmark points [5, 2] (x, y) of the face inside box (x0, y0, x1, y1)."""
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
    shape = _landmarks()(frame, dlib.rectangle(x0, y0, x1, y1))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float32)


def chip_from_landmarks(frame: np.ndarray, points: np.ndarray, cfg: FaceConfig = FaceConfig()) -> np.ndarray:
    """Upright chip [S, S, 3] uint8 aligned on the 5 landmark points."""
    import dlib

    rect = dlib.rectangle(*(int(v) for v in (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())))
    shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in points])
    return dlib.get_face_chip(frame, shape, size=cfg.chip_size, padding=cfg.padding)


def detect_near(frame: np.ndarray, box, cfg: FaceConfig = FaceConfig()):
    """Re-detect a tracked face in a window around box, at the same downscale as a whole-frame
    detection (so boxes agree with it): a fraction of its cost. None when it is not there."""
    h, w = frame.shape[:2]
    side = box[2] - box[0]
    x0, y0 = max(0, int(box[0] - ROI_MARGIN * side)), max(0, int(box[1] - ROI_MARGIN * side))
    x1, y1 = min(w, int(box[2] + ROI_MARGIN * side)), min(h, int(box[3] + ROI_MARGIN * side))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
    scale = cfg.detect_max_side / max(h, w) if cfg.detect_max_side and max(h, w) > cfg.detect_max_side else 1.0
    if scale < 1.0:
        crop = resize(crop, max(1, int(round((x1 - x0) * scale))), max(1, int(round((y1 - y0) * scale))))
    found = _best_box(crop, cfg.upsample, cfg.threshold)
    if found is None:
        return None
    bx0, by0, bx1, by1, score = found
    return (x0 + bx0 / scale, y0 + by0 / scale, x0 + bx1 / scale, y0 + by1 / scale, score)


def align_face(frame: np.ndarray, box, cfg: FaceConfig = FaceConfig()) -> np.ndarray:
    """Upright chip [S, S, 3] uint8 from 5-point landmarks inside box (x0, y0, x1, y1)."""
    return chip_from_landmarks(frame, landmarks(frame, box), cfg)


def track_box(box, prev_points: np.ndarray, points: np.ndarray):
    """Move and scale box with the landmarks from prev_points to points; None when they jumped
    too far to trust (the caller then runs the detector)."""
    c_prev, c_new = prev_points.mean(0), points.mean(0)
    spread_prev = np.sqrt(((prev_points - c_prev) ** 2).sum(1).mean())
    spread_new = np.sqrt(((points - c_new) ** 2).sum(1).mean())
    scale = spread_new / max(spread_prev, 1e-6)
    side = box[2] - box[0]
    if not 1 / TRACK_MAX_SCALE_CHANGE < scale < TRACK_MAX_SCALE_CHANGE or \
            np.linalg.norm(c_new - c_prev) > TRACK_MAX_SHIFT * side:
        return None
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    centre = c_new + scale * (centre - c_prev)
    half = scale * np.array([box[2] - box[0], box[3] - box[1]]) / 2
    return (*(centre - half), *(centre + half), box[4])


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an [H, W, 3] uint8 image."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _thumbnail(chip: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 16 x 16 grey thumbnail of a chip, for cut detection while tracking."""
    grey = chip.reshape(16, chip.shape[0] // 16, 16, chip.shape[1] // 16, 3).mean(axis=(1, 3, 4))
    grey = grey - grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-6)


def align_frames(frames: np.ndarray, cfg: FaceConfig = FaceConfig()) -> Faces:
    """Detect and align the largest face of every frame; whole-frame fallback where none.

    The detector runs on every cfg.detect_every-th frame, around the face being followed when
    there is one (detect_near), on the whole (downscaled) frame otherwise; in between, the
    previous box is re-fitted by the landmarks (face tracking, ~0.4 ms instead of ~8 ms). A
    tracked chip that no longer resembles the last one (a cut) sends the frame to the detector."""
    frames = np.ascontiguousarray(frames)
    n = len(frames)
    chips = np.zeros((n, cfg.chip_size, cfg.chip_size, 3), np.uint8)
    found = np.zeros(n, bool)
    boxes = np.full((n, 4), -1.0, np.float32)
    scores = np.zeros(n, np.float32)
    detect_s = align_s = 0.0
    box, points, last_thumb = None, None, None
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        chip = None
        if box is not None and i % max(cfg.detect_every, 1):
            new_points = landmarks(frame, box)
            box = track_box(box, points, new_points)
            points = new_points if box is not None else None
            if box is not None:
                chip = chip_from_landmarks(frame, points, cfg)
                if float((_thumbnail(chip) * last_thumb).sum()) < TRACK_MIN_CORRELATION:
                    box, chip = None, None
        elif box is not None:
            box = detect_near(frame, box, cfg)
            points = landmarks(frame, box) if box is not None else None
        if box is None:
            box = detect_face(frame, cfg)
            points = landmarks(frame, box) if box is not None else None
        t1 = time.perf_counter()
        if box is None:
            chips[i] = resize(frame, cfg.chip_size, cfg.chip_size)
            last_thumb = None
        else:
            chips[i] = chip if chip is not None else chip_from_landmarks(frame, points, cfg)
            last_thumb = _thumbnail(chips[i])
            found[i] = True
            boxes[i] = box[:4]
            scores[i] = box[4]
        detect_s += t1 - t0
        align_s += time.perf_counter() - t1
    return Faces(chips, found, boxes, scores, detect_seconds=detect_s, align_seconds=align_s)
