"""Image helpers and the face chip's geometry, shared by video decoding, face alignment, the
backbones and the image datasets of pretraining."""

from __future__ import annotations

import numpy as np

CHIP_SIZE = 224
CHIP_PADDING = 0.3  # the paper's 30% extension of the face box


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an [H, W, 3] uint8 image."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
