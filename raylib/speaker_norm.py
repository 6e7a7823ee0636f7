"""Speaker normalisation: each speaker's stored features standardised with that speaker's own
statistics (docs/method.md, section 4), before the model sees them.

    visual: each feature dimension, over every frame of the speaker's clips
    audio:  each (channel, frequency bin) of the spectrogram, over every time step of those clips

Why: in a speaker-independent split the model meets voices and faces it never trained on, and
what a voice or a face adds to every clip of its owner (pitch range, timbre, identity in the face
embedding) is larger than the spread emotion makes around it. Subtracting the speaker's own mean
leaves the spread. The statistics use features only, never labels: a test speaker's clips are
normalised with statistics of that speaker's own (unlabelled) clips, as speaker-normalised
emotion recognition does. Clips without a speaker form one group ("").

A model trained on normalised features says so in its ModelConfig (speaker_norm); whatever scores
it (training's val and test, jobs/evaluate.py) normalises the rows it scores the same way, with
statistics of the speakers in the store it reads.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.errors import RaylibError
from raylib.store import data_files, read_files

STAT_COLUMNS = ["status", "speaker", "visual_features", "audio_shape", "audio"]
MIN_STD = 1e-3  # a constant dimension (a silent bin) stays 0 instead of being divided by ~0


class SpeakerNormError(RaylibError):
    """Rows to normalise name a speaker the statistics do not hold, or the store has no speaker column."""


def speakers_of_rows(table: pa.Table) -> list[str]:
    """Each row's speaker, "" where the clip names none."""
    return [s or "" for s in table.column("speaker").to_pylist()]


def _frames(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """All rows' frame features [frames, d] (float64) and each row's frame count."""
    vis = table.column("visual_features").combine_chunks()
    counts = pc.fill_null(pc.list_value_length(vis), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    frame_lists = vis.flatten()
    values = frame_lists.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    d = len(values) // max(int(counts.sum()), 1) if len(values) else 0
    return values.reshape(-1, d) if d else np.zeros((0, 0)), counts


def _codes(speakers: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct speakers (in first-seen order) and each row's index into them."""
    index: dict[str, int] = {}
    code = np.array([index.setdefault(s, len(index)) for s in speakers], dtype=np.int64)
    return list(index), code


def _audio(table: pa.Table) -> list[np.ndarray | None]:
    """Each row's spectrogram [C, F, T] (float64), None where the row has none."""
    shapes = table.column("audio_shape").to_pylist()
    aud = table.column("audio").combine_chunks()
    out: list[np.ndarray | None] = []
    for i, s in enumerate(shapes):
        v = aud[i].values if s and aud[i].is_valid else None
        out.append(None if v is None else v.to_numpy(zero_copy_only=False).astype(np.float64).reshape(s))
    return out


class Accumulator:
    """Running sums of each speaker's features; .stats() gives {speaker: {visual_mean, visual_std,
    audio_mean, audio_std}} (arrays; None for a modality the speaker has no data of)."""

    def __init__(self):
        self.sums: dict[str, dict[str, list]] = {}

    def add(self, table: pa.Table) -> None:
        table = table.filter(pc.not_equal(table.column("status"), "error"))
        if not table.num_rows:
            return
        speakers = speakers_of_rows(table)
        frames, counts = _frames(table)
        names, code = _codes(speakers)
        frame_code = np.repeat(code, counts)
        for k, spk in enumerate(names):  # one pass per speaker of the batch, not per row
            acc = self.sums.setdefault(spk, {"visual": [0.0, 0.0, 0], "audio": [0.0, 0.0, 0]})
            f = frames[frame_code == k] if len(frames) else frames
            if len(f):
                v = acc["visual"]
                v[0], v[1], v[2] = v[0] + f.sum(0), v[1] + (f * f).sum(0), v[2] + len(f)
        for spk, x in zip(speakers, _audio(table)):
            if x is not None and x.shape[-1]:
                a = self.sums[spk]["audio"]
                a[0], a[1], a[2] = a[0] + x.sum(-1), a[1] + (x * x).sum(-1), a[2] + x.shape[-1]

    def stats(self) -> dict[str, dict]:
        out = {}
        for spk, acc in self.sums.items():
            entry = {}
            for kind in ("visual", "audio"):
                s, ss, n = acc[kind]
                if n:
                    mean = s / n
                    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
                    entry[f"{kind}_mean"] = mean.astype(np.float32)
                    entry[f"{kind}_std"] = np.maximum(std, MIN_STD).astype(np.float32)
                else:
                    entry[f"{kind}_mean"] = entry[f"{kind}_std"] = None
            out[spk] = entry
        return out


def table_stats(table: pa.Table) -> dict[str, dict]:
    """Each speaker's feature statistics over the rows of table (see Accumulator)."""
    acc = Accumulator()
    acc.add(table)
    return acc.stats()


def store_stats(store: str) -> dict[str, dict]:
    """Each speaker's feature statistics over every row with features of a store (all splits,
    labelled or not), read one shard at a time."""
    acc = Accumulator()
    try:
        for path in data_files(store):
            for t in read_files(store, [path], STAT_COLUMNS):
                acc.add(t)
    except (KeyError, pa.ArrowInvalid) as e:
        if "speaker" not in str(e):
            raise
        raise SpeakerNormError(f"feature store {store} has no speaker column (written by an older version): "
                               f"extract into a new --output to normalise by speaker") from None
    return acc.stats()


def stats_for(model, store: str) -> dict | None:
    """The store's speaker statistics when the model (a FusionModel) reads speaker-normalised
    features, else None."""
    return store_stats(store) if model.cfg.speaker_norm else None


def normalize(table: pa.Table, stats: dict[str, dict]) -> pa.Table:
    """The rows of table (with a speaker column) with visual_features and audio standardised by
    their speaker's statistics; every other column as it was."""
    if not table.num_rows:
        return table
    speakers = speakers_of_rows(table)
    missing = sorted(set(speakers) - set(stats))
    if missing:
        raise SpeakerNormError(f"no feature statistics for speaker(s) {', '.join(repr(s) for s in missing[:5])}")
    frames, counts = _frames(table)
    if len(frames):
        names, code = _codes(speakers)
        with_frames = set(np.asarray(code)[counts > 0].tolist())
        bare = [names[k] for k in sorted(with_frames) if stats[names[k]]["visual_mean"] is None]
        if bare:
            raise SpeakerNormError(f"no visual statistics for speaker(s) {', '.join(repr(s) for s in bare[:5])}")
        d = frames.shape[1]
        mean = np.stack([stats[n]["visual_mean"] if k in with_frames else np.zeros(d) for k, n in enumerate(names)])
        std = np.stack([stats[n]["visual_std"] if k in with_frames else np.ones(d) for k, n in enumerate(names)])
        frame_code = np.repeat(code, counts)
        frames = (frames - mean[frame_code]) / std[frame_code]
    vis = table.column("visual_features").combine_chunks()
    vtype = vis.type
    d = frames.shape[1] if len(frames) else 0
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, len(frames) * d + 1, max(d, 1), dtype=np.int32)
                                              if d else np.zeros(1, np.int32)),
                                     pa.array(frames.reshape(-1).astype(np.float32)))
    outer = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    new_vis = pa.ListArray.from_arrays(pa.array(outer), inner, mask=vis.is_null()).cast(vtype)

    aud = table.column("audio").combine_chunks()
    rows = []
    for spk, x in zip(speakers, _audio(table)):
        if x is None:
            rows.append(None)
        else:
            st = stats[spk]
            if st["audio_mean"] is None:
                raise SpeakerNormError(f"no audio statistics for speaker {spk!r}")
            rows.append(((x - st["audio_mean"][..., None]) / st["audio_std"][..., None]).astype(np.float32).reshape(-1))
    new_aud = pa.array(rows, type=pa.list_(pa.float32())).cast(aud.type)
    table = table.set_column(table.schema.get_field_index("visual_features"), "visual_features", new_vis)
    return table.set_column(table.schema.get_field_index("audio"), "audio", new_aud)


def normalized_columns(table: pa.Table, stats: dict[str, dict], columns: list[str]) -> pa.Table:
    """normalize with fixed statistics, then only `columns`: a Ray Data map_batches function
    (pyarrow batches; map_batches(normalized_columns, fn_args=(stats, columns)))."""
    return normalize(table, stats).select(columns)
