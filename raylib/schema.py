"""The feature store's Parquet schema, defined once and versioned.

One row per clip. Plain Arrow types only (no Ray extension types), so the store reads with
pyarrow, pandas or duckdb; `raylib.store` reads it.
Layout of a store:
    <output>/<split>/part-<hash>.parquet   committed shards (written under a temporary name first)
    <output>/_summary.json                 the last run's summary
Files whose name starts with "." or "_" are not data (pyarrow and Ray skip them too).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import raylib
from raylib.labels import LABEL_INDEX

SCHEMA_VERSION = "3"  # 2: face_count; 3: speaker

# Clip status values, one per row of the store.
STATUS_OK = "ok"
STATUS_NO_AUDIO = "no_audio"  # video usable, audio stream missing: visual-only row
STATUS_SILENT = "silent"  # audio stream present but silent
STATUS_NO_FACE = "no_face"  # no face in any sampled frame: whole-frame fallback throughout
STATUS_TRUNCATED = "truncated"  # decoded far less than the container declares
STATUS_AUDIO_ONLY = "audio_only"  # an audio file (no video stream): audio features, no frames
STATUS_ERROR = "error"  # unreadable: no features; a re-run of extraction retries it
STATUSES = (STATUS_OK, STATUS_NO_AUDIO, STATUS_SILENT, STATUS_NO_FACE, STATUS_TRUNCATED, STATUS_AUDIO_ONLY,
            STATUS_ERROR)
USABLE_STATUSES = tuple(s for s in STATUSES if s != STATUS_ERROR)

# Unlabelled clips (AFEW Test/, a manifest's empty label, videos to predict) are stored with a
# null label and label_index -1. Between stages they carry NO_LABEL: Ray Data builds blocks per
# clip, and a block whose labels are all None cannot be merged with one holding strings.
NO_LABEL = ""


def stored_label(value) -> str | None:
    """The label a row stores: None for unlabelled (None, NO_LABEL, NaN from pandas), else str."""
    if value is None or (isinstance(value, float) and value != value) or str(value) == NO_LABEL:
        return None
    return str(value)
METADATA_KEY = b"raylib.schema_version"

SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),  # sha1(uri)[:16]
        ("uri", pa.string()),
        ("label", pa.string()),  # AFEW name, null when unlabelled
        ("label_index", pa.int16()),  # index in raylib.labels.EMOTIONS, -1 when unlabelled
        ("split", pa.string()),
        ("dataset", pa.string()),
        ("speaker", pa.string()),  # who speaks (raylib.sources), null when the input does not say
        ("status", pa.string()),  # one of STATUSES
        ("error", pa.string()),
        ("num_frames", pa.int32()),  # sampled frames with features; 0 for audio-only clips
        ("frame_timestamps", pa.list_(pa.float32())),  # seconds, [num_frames]
        ("face_found", pa.list_(pa.bool_())),  # [num_frames]; False: whole-frame fallback
        ("face_count", pa.list_(pa.int16())),  # [num_frames]; faces the shot's last detection found
        ("visual_dim", pa.int32()),
        ("visual_features", pa.list_(pa.list_(pa.float32()))),  # [num_frames][visual_dim]
        ("thumbnails", pa.binary()),  # uint8 [num_frames, 32, 32, 3] face chips, for plots
        ("audio_shape", pa.list_(pa.int32())),  # [C, F, T], empty without audio
        ("audio", pa.list_(pa.float32())),  # C*F*T values, row-major
        ("duration", pa.float32()),  # seconds, from the container
        ("audio_seconds", pa.float32()),  # decoded audio, 0 without audio
        ("backbone", pa.string()),
        ("weights", pa.string()),
        ("weights_digest", pa.string()),  # sha256 of the checkpoint file, or "random"
        ("enhancement", pa.string()),
        ("audio_mode", pa.string()),
        ("frames", pa.string()),  # sampling policy
        ("code_version", pa.string()),
    ],
    metadata={METADATA_KEY: SCHEMA_VERSION.encode(), b"raylib.version": raylib.__version__.encode()},
)
COLUMNS = tuple(SCHEMA.names)
# How a shard is written: zstd; a dictionary for the string columns only; the float lists
# (features, spectrograms) byte-stream-split, which zstd compresses better; statistics for the
# scalar columns only. Parquet's default tries a dictionary on every column: on the float lists,
# whose values rarely repeat, it builds one, finds it too large and falls back. 64 rows of 3 s
# speech: 103 ms and 222 KB a row by default, 45-56 ms and 181 KB so.
FLOAT_LISTS = ("audio.list.element", "visual_features.list.element.list.element")
WRITE_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": [f.name for f in SCHEMA if pa.types.is_string(f.type)],
    "use_byte_stream_split": list(FLOAT_LISTS),
    "write_statistics": [f.name for f in SCHEMA if not (pa.types.is_list(f.type) or pa.types.is_binary(f.type))],
}


def _list_array(chunks: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    """A list<value_type> column from one 1-D numpy array per row (no Python lists)."""
    offsets = np.zeros(len(chunks) + 1, np.int32)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    values = np.concatenate(chunks) if chunks else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def _frames(r: dict) -> np.ndarray:
    feats = r.get("visual_features")
    arr = np.zeros((0, 0), np.float32) if feats is None else np.asarray(feats, np.float32)
    return arr if arr.ndim == 2 else np.zeros((0, 0), np.float32)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with numpy arrays; missing arrays = none) -> a table with exactly SCHEMA."""
    feats = [_frames(r) for r in rows]
    audio = [None if r.get("audio") is None else np.asarray(r["audio"], np.float32) for r in rows]
    labels = [stored_label(r.get("label")) for r in rows]
    per_frame_vectors = [f[i] for f in feats for i in range(len(f))]
    inner = _list_array(per_frame_vectors, pa.float32())
    outer_offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(f) for f in feats], out=outer_offsets[1:])
    cols = {
        "clip_id": [r["clip_id"] for r in rows],
        "uri": [r["uri"] for r in rows],
        "label": labels,
        "label_index": [LABEL_INDEX[x] if x else -1 for x in labels],
        "split": [r["split"] for r in rows],
        "dataset": [r["dataset"] for r in rows],
        "speaker": [str(r.get("speaker") or "") or None for r in rows],
        "status": [r["status"] for r in rows],
        "error": [r.get("error") or None for r in rows],
        "num_frames": [len(f) for f in feats],
        "frame_timestamps": _list_array([np.asarray(r.get("timestamps", ()), np.float32) for r in rows], pa.float32()),
        "face_found": _list_array([np.asarray(r.get("face_found", ()), bool) for r in rows], pa.bool_()),
        "face_count": _list_array([np.asarray(r.get("face_count", ()), np.int16) for r in rows], pa.int16()),
        "visual_dim": [f.shape[1] if len(f) else 0 for f in feats],
        "visual_features": pa.ListArray.from_arrays(pa.array(outer_offsets), inner),
        "thumbnails": [np.asarray(r["thumbnails"], np.uint8).tobytes() if r.get("thumbnails") is not None else b""
                       for r in rows],
        "audio_shape": _list_array([np.asarray(a.shape if a is not None else (), np.int32) for a in audio], pa.int32()),
        "audio": _list_array([a.ravel() if a is not None else np.zeros(0, np.float32) for a in audio], pa.float32()),
        "duration": [float(r.get("duration") or 0.0) for r in rows],
        "audio_seconds": [float(r.get("audio_seconds") or 0.0) for r in rows],
    }
    for key in ("backbone", "weights", "weights_digest", "enhancement", "audio_mode", "frames", "code_version"):
        cols[key] = [r.get(key) for r in rows]
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def visual_array(row: dict) -> np.ndarray:
    """[num_frames, visual_dim] float32 of a row read back (pyarrow to_pylist or pandas)."""
    feats = row["visual_features"]
    if len(feats) == 0:
        return np.zeros((0, row["visual_dim"]), np.float32)
    return np.stack([np.asarray(f, np.float32) for f in feats])


THUMB_SIZE = 32


def thumbnails_array(row: dict) -> np.ndarray:
    """[num_frames, 32, 32, 3] uint8 face thumbnails of a row read back."""
    return np.frombuffer(row["thumbnails"] or b"", np.uint8).reshape(-1, THUMB_SIZE, THUMB_SIZE, 3)


def audio_array(row: dict) -> np.ndarray | None:
    """[C, F, T] float32 of a row read back, None without audio."""
    shape = list(row["audio_shape"])
    return None if not shape else np.asarray(row["audio"], np.float32).reshape(shape)
