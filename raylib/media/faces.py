"""Face detection and alignment with dlib (docs/method.md, section 1).

Detection is multi-scale: the HOG frontal detector on a downscaled copy of the frame, then at full
resolution; where HOG finds no face (side views, low light, a profile, a face that is not the one
being followed) dlib's CNN face detector (mmod, shipped in face-recognition-models) looks again.
Which face: the one being followed (tracked by its landmarks between detections), else the
largest, most central one; never a face much smaller than the one followed in the same shot (a
blurred background person). Then 5-point landmarks and an upright 224 x 224 chip whose face box
is extended by 30%. When no face is found the whole frame, resized, stands in, and the frame is
flagged (the paper's rule).
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from raylib.media.image import CHIP_PADDING, CHIP_SIZE, resize

DETECT_MAX_SIDE = 320  # frames are downscaled to this long side before HOG detection
DETECT_UPSAMPLE = 0
DETECT_THRESHOLD = 0.5  # HOG scores: faces ~1.5, face-like objects ~0.2 (measured here)
DETECTORS = ("hog", "hog+cnn", "cnn")  # hog+cnn: the CNN looks where HOG found no usable face
CNN_MODEL = "mmod_human_face_detector.dat"
CNN_THRESHOLD = 0.3  # mmod confidences: faces 0.4-1.1 on real footage, background blur lower
CNN_MAX_SIDE = 720  # the CNN runs on frames downscaled to this long side (cost and memory ~ pixels)
MIN_SIZE_RATIO = 0.5  # in one shot, a face under half the side of the one followed is not taken
CUT_CORRELATION = 0.5  # consecutive sampled frames whose thumbnails correlate less: a new shot
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
def _cnn_detector():
    import dlib

    return dlib.cnn_face_detection_model_v1(dlib_model_path(CNN_MODEL))


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
    detector: str = "hog+cnn"  # one of DETECTORS

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown face detector {self.detector!r}; expected one of {', '.join(DETECTORS)}")


@dataclass
class Faces:
    """Per-frame aligned chips [N, S, S, 3] uint8, found [N] bool, boxes [N, 4] (x0, y0, x1, y1) px,
    scores [N], counts [N] (faces the last whole-frame detection of the shot found)."""

    chips: np.ndarray
    found: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    detect_seconds: float = 0.0
    align_seconds: float = 0.0


def hog_faces(image: np.ndarray, upsample: int, threshold: float) -> list[tuple]:
    """HOG detections scoring >= threshold as (x0, y0, x1, y1, score) in image pixels."""
    rects, scores, _ = _detector().run(image, upsample, threshold)
    return [(r.left(), r.top(), r.right(), r.bottom(), float(sc)) for r, sc in zip(rects, scores) if sc >= threshold]


def _best_box(image: np.ndarray, upsample: int, threshold: float):
    """Largest HOG detection scoring >= threshold as (x0, y0, x1, y1, score), or None."""
    found = hog_faces(image, upsample, threshold)
    return max(found, key=_area) if found else None


def cnn_faces(frame: np.ndarray) -> list[tuple]:
    """dlib's CNN (mmod) detections with confidence >= CNN_THRESHOLD, in full-resolution pixels."""
    h, w = frame.shape[:2]
    scale = min(1.0, CNN_MAX_SIDE / max(h, w))
    image = resize(frame, int(round(w * scale)), int(round(h * scale))) if scale < 1.0 else frame
    return [(d.rect.left() / scale, d.rect.top() / scale, d.rect.right() / scale, d.rect.bottom() / scale,
             float(d.confidence)) for d in _cnn_detector()(image, 0) if d.confidence >= CNN_THRESHOLD]


def hog_multiscale(frame: np.ndarray, cfg: FaceConfig = FaceConfig()) -> list[tuple]:
    """HOG faces of an RGB frame in full-resolution pixels: on the frame downscaled to
    cfg.detect_max_side, then (when that finds none) at full resolution."""
    h, w = frame.shape[:2]
    scale = 1.0
    if cfg.detect_max_side and max(h, w) > cfg.detect_max_side:
        scale = cfg.detect_max_side / max(h, w)
    if scale < 1.0:
        small = resize(frame, int(round(w * scale)), int(round(h * scale)))
        found = [(x0 / scale, y0 / scale, x1 / scale, y1 / scale, sc)
                 for x0, y0, x1, y1, sc in hog_faces(small, cfg.upsample, cfg.threshold)]
        if found or not cfg.retry_full_resolution:
            return found
    return hog_faces(frame, cfg.upsample, cfg.threshold)


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _side(box) -> float:
    return float(np.sqrt(max(_area(box), 0.0)))


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def choose_face(candidates: list[tuple], shape, followed=None):
    """The face to keep among candidates (x0, y0, x1, y1, score), or None.

    With a face followed in this shot (its last box): candidates under MIN_SIZE_RATIO of its side
    are out, and one near its last position wins; otherwise the largest, most central one."""
    h, w = shape[:2]
    if followed is not None:
        candidates = [c for c in candidates if _side(c) >= MIN_SIZE_RATIO * _side(followed)]
        near = [c for c in candidates if np.linalg.norm(_centre(c) - _centre(followed)) <= _side(followed)]
        candidates = near or candidates
    if not candidates:
        return None

    def weight(c):  # area, discounted by up to half at the frame's corners
        d = np.linalg.norm((_centre(c) - [w / 2, h / 2]) / [w, h]) / np.sqrt(0.5)
        return _area(c) * (1.0 - 0.5 * d)

    return max(candidates, key=weight)


def detect_face(frame: np.ndarray, cfg: FaceConfig = FaceConfig()):
    """The main face of an RGB frame as (x0, y0, x1, y1, score) in full-resolution pixels, or None."""
    return find_face(frame, cfg)[0]


def find_face(frame: np.ndarray, cfg: FaceConfig = FaceConfig(), followed=None, use_cnn: bool = True):
    """(the chosen face or None, how many faces were found, whether the CNN ran and found none)."""
    found = [] if cfg.detector == "cnn" else hog_multiscale(frame, cfg)
    box = choose_face(found, frame.shape, followed)
    far = followed is not None and box is not None and \
        np.linalg.norm(_centre(box) - _centre(followed)) > _side(followed)
    cnn_missed = False
    if cfg.detector != "hog" and use_cnn and (box is None or far):
        more = cnn_faces(frame)
        cnn_missed = not more
        found = found + [c for c in more if not any(_iou(c, f) > 0.3 for f in found)]
        box = choose_face(found, frame.shape, followed)
    return box, len(found), cnn_missed


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / max(_area(a) + _area(b) - inter, 1e-6)


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


def _thumbnail(chip: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 16 x 16 grey thumbnail of a chip, for cut detection while tracking."""
    grey = chip.reshape(16, chip.shape[0] // 16, 16, chip.shape[1] // 16, 3).mean(axis=(1, 3, 4))
    grey = grey - grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-6)


def _signature(frame: np.ndarray) -> np.ndarray:
    """The whole frame's 16 x 16 thumbnail, for telling shots apart."""
    return _thumbnail(resize(frame, 64, 64))


@dataclass
class _Shot:
    """What align_frames remembers within one shot: the face followed, the last CNN miss."""

    followed: tuple | None = None
    cnn_missed_at: int = -(10**9)
    count: int = 0


def align_frames(frames: np.ndarray, cfg: FaceConfig = FaceConfig()) -> Faces:
    """Detect and align the main face of every frame; whole-frame fallback where none.

    The detector runs on every cfg.detect_every-th frame, around the face being followed when
    there is one (detect_near), on the whole frame otherwise (find_face: HOG at two scales, the
    CNN where HOG finds no usable face); in between, the previous box is re-fitted by the
    landmarks (face tracking, ~0.4 ms instead of ~8 ms). A tracked chip that no longer resembles
    the last one, or a frame unlike the previous one (a cut), sends the frame to the detector.
    Within a shot the CNN, after finding nothing, rests for cfg.detect_every frames."""
    frames = np.ascontiguousarray(frames)
    n = len(frames)
    chips = np.zeros((n, cfg.chip_size, cfg.chip_size, 3), np.uint8)
    found = np.zeros(n, bool)
    boxes = np.full((n, 4), -1.0, np.float32)
    scores = np.zeros(n, np.float32)
    counts = np.zeros(n, np.int16)
    detect_s = align_s = 0.0
    box, points, last_thumb, last_sig = None, None, None, None
    shot = _Shot()
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        sig = _signature(frame)
        if last_sig is not None and float((sig * last_sig).sum()) < CUT_CORRELATION:
            box, shot = None, _Shot()  # a new shot: nothing carries over
        last_sig = sig
        box, points, chip = _next_box(frame, i, box, points, last_thumb, shot, cfg)
        t1 = time.perf_counter()
        counts[i] = max(shot.count, int(box is not None))
        if box is None:
            chips[i] = resize(frame, cfg.chip_size, cfg.chip_size)
            last_thumb = None
        else:
            chips[i] = chip if chip is not None else chip_from_landmarks(frame, points, cfg)
            last_thumb = _thumbnail(chips[i])
            found[i] = True
            boxes[i] = box[:4]
            scores[i] = box[4]
            shot.followed = box
        detect_s += t1 - t0
        align_s += time.perf_counter() - t1
    return Faces(chips, found, boxes, scores, counts, detect_seconds=detect_s, align_seconds=align_s)


def _next_box(frame: np.ndarray, i: int, box, points, last_thumb, shot: _Shot, cfg: FaceConfig):
    """(box, landmarks, chip) of frame i: the previous box re-fitted by the landmarks between
    detection frames (the chip made on the way; dropped when unlike last_thumb), detect_near on a
    detection frame, else find_face (shot's CNN rest and face count updated); box None: no face."""
    every = max(cfg.detect_every, 1)
    chip = None
    if box is not None and i % every:
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
        box, shot.count, cnn_missed = find_face(frame, cfg, shot.followed, use_cnn=i - shot.cnn_missed_at >= every)
        if cnn_missed:
            shot.cnn_missed_at = i
        points = landmarks(frame, box) if box is not None else None
    return box, points, chip
