"""Generated face images with a planted expression signal, for pretraining tests and demos.

SYNTHETIC DATA. Every image is the real face photograph of the video sample set
(`raylib.sample.face_photo`, from scikit-image) with a mouth drawn on it whose curvature encodes
the label: MOUTH_CURVES[label] runs from a frown (Angry) to a wide smile (Surprise). Position,
scale, rotation, brightness and noise are random per image, so only the mouth tells the class.
Written as class folders <root>/<split>/<class>/<name>.png|jpg (grayscale for every third image,
like FER2013's), or listed in a manifest.
"""

from __future__ import annotations

import os

import numpy as np

from raylib.labels import EMOTIONS
from raylib.sample import face_photo

MOUTH_CURVES = tuple(np.linspace(-1.0, 1.0, len(EMOTIONS)))  # -1 frown ... +1 smile
MOUTH_CENTRE = (0.5, 0.74)  # of the face crop (x, y)


def render_face(label_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, size, 3] uint8: the face with the label's mouth, randomly placed, lit and noised."""
    from PIL import Image, ImageDraw

    face = Image.fromarray(face_photo())
    w, h = face.size
    draw = ImageDraw.Draw(face)
    cx, cy = MOUTH_CENTRE[0] * w, MOUTH_CENTRE[1] * h
    half, bend = 0.2 * w, 0.22 * h * MOUTH_CURVES[label_index]
    xs = np.linspace(-1, 1, 24)
    points = [(cx + half * x, cy - bend * (1 - x * x) + bend) for x in xs]  # corners fixed, centre bends
    draw.line(points, fill=(40, 10, 10), width=max(3, w // 12))
    angle = rng.uniform(-6, 6)
    face = face.rotate(angle, resample=Image.BILINEAR, fillcolor=(96, 96, 96))
    crop = rng.uniform(0.0, 0.06, 4) * np.array([w, h, w, h])
    face = face.crop((crop[0], crop[1], w - crop[2], h - crop[3])).resize((size, size), Image.BILINEAR)
    x = np.asarray(face).astype(np.float32) * rng.uniform(0.75, 1.2) + rng.normal(0, 6, (size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def write_face_folders(root: str, per_class: dict[str, int], size: int = 96, seed: int = 0) -> list[str]:
    """Write <root>/<split>/<Class>/<n>.png|jpg for each split in per_class; returns the paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for split, n in per_class.items():
        for label_index, label in enumerate(EMOTIONS):
            folder = os.path.join(root, split, label.lower())
            os.makedirs(folder, exist_ok=True)
            for k in range(n):
                img = render_face(label_index, size, rng)
                path = os.path.join(folder, f"{label.lower()}_{k:03d}.{'jpg' if k % 2 else 'png'}")
                pil = Image.fromarray(img)
                if k % 3 == 2:
                    pil = pil.convert("L")
                pil.save(path, quality=95) if path.endswith(".jpg") else pil.save(path)
                paths.append(path)
    return paths
