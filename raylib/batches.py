"""Feature-store rows -> padded tensors with masks, for training and evaluation.

Choices (the method is silent; docs/method.md, section 4): each frame feature is l2-normalised and scaled by sqrt(d) so its
entries are O(1) whatever the backbone; spectrograms go in as stored (log magnitudes): the audio
CNN standardises them with statistics of the training data, so a loud clip stays louder than a
quiet one. Padding is zeros, and the masks/lengths make the models ignore it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from raylib.media.audio import input_shape


def collate(table: pa.Table, audio_channels: int = 1) -> dict:
    """A table of store rows -> visual [B, n, d], visual_mask [B, n], audio [B, C, F, T],
    audio_lengths [B], labels [B] (int64, -1 unlabelled). audio_channels (1: spectrogram, 3:
    log-Mel) shapes the audio of a batch in which no clip has any."""
    b = table.num_rows
    vis = table.column("visual_features").combine_chunks()
    outer = vis.offsets.to_numpy()
    inner = vis.values
    frame_values = inner.values.to_numpy(zero_copy_only=False).astype(np.float32)
    dims = table.column("visual_dim").to_numpy()
    d = int(dims.max()) if b else 0
    frames = frame_values.reshape(-1, d) if d else np.zeros((0, 0), np.float32)
    counts = np.diff(outer)
    n = max(int(counts.max()) if b else 0, 1)
    visual = np.zeros((b, n, max(d, 1)), np.float32)
    mask = np.zeros((b, n), bool)
    for i in range(b):
        k = counts[i]
        if k:
            f = frames[outer[i]:outer[i] + k]
            f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8) * np.sqrt(d)
            visual[i, :k, :d] = f
            mask[i, :k] = True

    shapes = table.column("audio_shape").to_pylist()
    aud = table.column("audio").combine_chunks()
    a_off = aud.offsets.to_numpy()
    a_values = aud.values.to_numpy(zero_copy_only=False)
    present = [s for s in shapes if s]
    c, fbins = (present[0][0], present[0][1]) if present else input_shape(audio_channels)
    lengths = np.array([s[2] if s else 0 for s in shapes], np.int64)
    t = max(int(lengths.max()) if b else 0, 1)
    audio = np.zeros((b, c, fbins, t), np.float32)
    for i, s in enumerate(shapes):
        if s:
            x = a_values[a_off[i]:a_off[i + 1]].reshape(s)
            audio[i, :, :, : s[2]] = x
    return {
        "visual": torch.from_numpy(visual),
        "visual_mask": torch.from_numpy(mask),
        "audio": torch.from_numpy(audio),
        "audio_lengths": torch.from_numpy(lengths),
        "labels": torch.from_numpy(table.column("label_index").to_numpy().astype(np.int64)),
    }


def model_inputs(batch: dict, device) -> tuple:
    """The FusionModel forward arguments of a collated batch, on device."""
    return tuple(batch[k].to(device) for k in ("visual", "visual_mask", "audio", "audio_lengths"))
