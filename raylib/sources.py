"""Dataset adapters: a folder or manifest (local or any fsspec URI) -> clip records.

Supported layouts (`list_clips(uri, fmt)`):
  afew      <root>/{Train,Val,Test}/<Emotion>/<clip>   (AFEW; an unlabelled Test/<clip> is allowed)
  ravdess   <root>/**/MM-VC-EE-II-SS-RR-AA.mp4|.wav    (EE: emotion code, table RAVDESS_EMOTIONS)
  cremad    <root>/**/AAAA_SSS_EEE_LL.<ext>            (EEE: ANG DIS FEA HAP NEU SAD)
  manifest  a .csv or .parquet with columns uri,label[,split][,speaker] (relative uris: from its folder)
  auto      the first of the above that the input looks like

A clip is a video file or an audio file (AUDIO_EXTENSIONS): audio files are clips without video
(extraction stores their audio features and no frames, status "audio_only").

Clip ids. `clip_id` hashes the clip's canonical URI (`canonical_uri`): an absolute, normalised
local path, or `s3://bucket/key`. The same file named as `data/x.mp4`, `./data/x.mp4` or by its
absolute path is one clip; a manifest's relative URIs are resolved against the manifest's own
folder. Moving the data changes the ids (a moved dataset is a new dataset to the store).
Duplicate records of one file collapse into one (with a warning); one file in two splits, or
with two labels, is an error that lists the files.

Speakers. Each record names who is on screen and speaking where the layout says it (RAVDESS and
CREMA-D: the actor number; a manifest: its optional speaker column; AFEW: unknown, ""), so that
training can hold whole speakers out (cross-validation by speaker, raylib.folds).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import sys
from dataclasses import dataclass

from raylib import storage
from raylib.errors import SourceError
from raylib.labels import EMOTIONS, SPLITS

VIDEO_EXTENSIONS = (".avi", ".mp4", ".flv", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")  # read as audio only
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
FORMATS = ("auto", "afew", "ravdess", "cremad", "manifest")

# RAVDESS emotion codes (3rd field) -> AFEW labels. RAVDESS has 8 emotions, AFEW 7: "calm" is a
# low-arousal neutral state in RAVDESS's own description, so it maps onto Neutral.
RAVDESS_EMOTIONS = {
    "01": "Neutral", "02": "Neutral",  # neutral, calm
    "03": "Happy", "04": "Sad", "05": "Angry", "06": "Fear", "07": "Disgust", "08": "Surprise",
}
# modality (1st field): 01 full audio-video, 03 audio-only (.wav); 02 video-only files (no audio) are skipped
RAVDESS_MODALITIES = ("01", "03")
RAVDESS_VAL_ACTORS = range(21, 25)  # speaker-independent split: actors 21-24 are val
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")

CREMAD_EMOTIONS = {"ANG": "Angry", "DIS": "Disgust", "FEA": "Fear", "HAP": "Happy", "NEU": "Neutral", "SAD": "Sad"}
CREMAD_VAL_FIRST_ACTOR = 1079  # speaker-independent split: actors 1079-1091 (~15%) are val
CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")

AFEW_SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True, slots=True)  # slots: a million of them are planned at once
class ClipRecord:
    """One clip: clip_id (stable hash of uri), uri, label (AFEW name, None if unlabelled), split,
    dataset, speaker ("" when the layout does not say)."""

    clip_id: str
    uri: str
    label: str | None
    split: str
    dataset: str
    speaker: str = ""

    def to_dict(self) -> dict:
        # not dataclasses.asdict: its deep copy of every field cost ~10 s per million records
        return {"clip_id": self.clip_id, "uri": self.uri, "label": self.label, "split": self.split,
                "dataset": self.dataset, "speaker": self.speaker}


def canonical_uri(uri: str) -> str:
    """The one spelling of a clip's location: an absolute normalised local path (file:// and
    relative paths resolved), or scheme://bucket/key with '.', '..' and repeated '/' removed."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" not in uri:
        return os.path.normpath(os.path.abspath(os.path.expanduser(uri)))
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme == "s3a":
        scheme = "s3"
    bucket, _, key = rest.partition("/")
    if key.startswith("/") or key.endswith("/") or "//" in key or "/." in "/" + key:  # else normpath is a no-op
        key = posixpath.normpath("/" + key).lstrip("/")
    return f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"


def clip_id(uri: str) -> str:
    """Stable 16-hex-digit id of a clip: sha1 of its canonical URI (same on every machine)."""
    return _hash(canonical_uri(uri))


def _hash(canonical: str) -> str:
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


def _record(uri: str, label: str | None, split: str, dataset: str, speaker: str = "") -> ClipRecord:
    uri = canonical_uri(uri)
    return ClipRecord(_hash(uri), uri, label, split, dataset, speaker)


_LABELS = {e.lower(): e for e in EMOTIONS}


def _canonical_label(name: str) -> str | None:
    return _LABELS.get(name.lower())


def _unknown(problems: list[str], what: str) -> SourceError:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return SourceError(f"{len(problems)} clip(s) with unknown {what}:\n  {shown}{more}\n"
                       f"expected labels: {', '.join(EMOTIONS)}")


def is_audio_file(uri: str) -> bool:
    """Whether a clip is an audio file by its name (AUDIO_EXTENSIONS): it is read as audio only."""
    return uri.lower().endswith(AUDIO_EXTENSIONS)


def _media_files(root: str) -> list[tuple[str, list[str]]]:
    """Sorted (uri, path parts below root) of the video and audio files under root, keeping its scheme."""
    fs, path = storage.filesystem(root)
    if not fs.exists(path):
        raise SourceError(f"input {root} not found")
    if not fs.isdir(path):
        raise SourceError(f"input {root} is a file; give a folder, or a .csv/.parquet manifest")
    remote = storage.is_remote(root)
    base = path.rstrip("/")
    out = []
    for p in sorted(fs.find(path)):
        if not p.lower().endswith(MEDIA_EXTENSIONS) or posixpath.basename(p).startswith("."):
            continue
        parts = p[len(base):].strip("/").split("/")
        uri = storage.uri_of(p, root) if remote else (os.path.join(root, *parts) if "://" not in root else p)
        out.append((uri, parts))
    return out


def afew_clips(root: str) -> list[ClipRecord]:
    """AFEW class folders: <root>/<Split>/<Emotion>/<clip>; unlabelled clips only under Test/."""
    records, problems = [], []
    for uri, parts in _media_files(root):
        split = AFEW_SPLIT_FOLDERS.get(parts[0].lower()) if len(parts) >= 2 else None
        if split is None:
            problems.append(f"{uri} (not under a Train/Val/Test folder)")
            continue
        if len(parts) == 2 and split == "test":
            records.append(_record(uri, None, split, "afew"))
            continue
        label = _canonical_label(parts[1]) if len(parts) == 3 else None
        if label is None:
            problems.append(f"{uri} (folder {'/'.join(parts[1:-1]) or '-'!r})")
            continue
        records.append(_record(uri, label, split, "afew"))
    if problems:
        raise _unknown(problems, "AFEW label folder")
    return records


def _stem(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri))[0]


def ravdess_clips(root: str) -> list[ClipRecord]:
    """RAVDESS file names MM-VC-EE-II-SS-RR-AA; audio-video and audio-only files; split by actor."""
    records, problems = [], []
    for uri, _ in _media_files(root):
        m = RAVDESS_NAME.match(_stem(uri))
        if m is None:
            problems.append(f"{uri} (not a RAVDESS name MM-VC-EE-II-SS-RR-AA)")
            continue
        modality, emotion, actor = m.group(1), m.group(3), int(m.group(7))
        if modality not in RAVDESS_MODALITIES:
            continue  # video-only files have no audio track to fuse
        label = RAVDESS_EMOTIONS.get(emotion)
        if label is None:
            problems.append(f"{uri} (emotion code {emotion})")
            continue
        split = "val" if actor in RAVDESS_VAL_ACTORS else "train"
        records.append(_record(uri, label, split, "ravdess", f"{actor:02d}"))
    if problems:
        raise _unknown(problems, "RAVDESS emotion")
    return records


def cremad_clips(root: str) -> list[ClipRecord]:
    """CREMA-D file names AAAA_SSS_EEE_LL (e.g. 1001_DFA_ANG_XX); split by actor."""
    records, problems = [], []
    for uri, _ in _media_files(root):
        m = CREMAD_NAME.match(_stem(uri))
        label = CREMAD_EMOTIONS.get(m.group(3)) if m else None
        if label is None:
            problems.append(f"{uri} ({'emotion code ' + m.group(3) if m else 'not a CREMA-D name AAAA_SSS_EEE_LL'})")
            continue
        split = "val" if int(m.group(1)) >= CREMAD_VAL_FIRST_ACTOR else "train"
        records.append(_record(uri, label, split, "cremad", m.group(1)))
    if problems:
        raise _unknown(problems, "CREMA-D emotion")
    return records


def read_manifest(manifest: str, columns: str = "uri,label[,split]") -> list[dict]:
    """The rows of a CSV or Parquet manifest (local or URI) with their uri resolved against the
    manifest's own folder; SourceError when it is missing or lacks uri/label."""
    table = _manifest_table(manifest, columns)
    uris = _resolved_uris(manifest, table)
    rows = table.to_pylist()
    for row, uri in zip(rows, uris):
        row["uri"] = uri
    return rows


def _manifest_table(manifest: str, columns: str):
    """A manifest as a pyarrow Table; SourceError when it is missing or lacks uri/label."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(manifest)
    if not fs.exists(path):
        raise SourceError(f"manifest {manifest} not found")
    with fs.open(path, "rb") as f:
        table = pq.read_table(f) if path.endswith(".parquet") else pacsv.read_csv(f)
    missing = {"uri", "label"} - set(table.column_names)
    if missing:
        raise SourceError(f"manifest {manifest} lacks column(s) {', '.join(sorted(missing))}; expected {columns}")
    return table


def _resolved_uris(manifest: str, table) -> list[str]:
    """The manifest's uri column, relative ones joined to the manifest's own folder."""
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    return [uri if "://" in uri or uri.startswith("/") else storage.join(base, uri)
            for uri in map(str, table.column("uri").to_pylist())]


def manifest_clips(manifest: str) -> list[ClipRecord]:
    """A CSV or Parquet manifest with columns uri,label[,split][,speaker]; split defaults to 'train',
    speaker to "" (unknown). Reads it column by column (no dict per row): a manifest can list
    millions of clips."""
    table = _manifest_table(manifest, "uri,label[,split][,speaker]")
    uris = _resolved_uris(manifest, table)
    raw_labels = table.column("label").to_pylist()
    raw_splits = table.column("split").to_pylist() if "split" in table.column_names else [None] * len(uris)
    speakers = ([("" if v is None else str(v)) for v in table.column("speaker").to_pylist()]
                if "speaker" in table.column_names else [""] * len(uris))
    labels = {raw: (_canonical_label(str(raw)) if raw not in (None, "") else None) for raw in set(raw_labels)}
    splits = {raw: _split_name(raw) for raw in set(raw_splits)}
    records, problems = [], []
    for uri, raw, raw_split, speaker in zip(uris, raw_labels, raw_splits, speakers):
        label, split = labels[raw], splits[raw_split]
        if raw not in (None, "") and label is None:
            problems.append(f"{uri} (label {raw!r})")
        elif split not in SPLITS:
            problems.append(f"{uri} (split {split!r}; expected {', '.join(SPLITS)})")
        else:
            records.append(_record(uri, label, split, "manifest", speaker))
    if problems:
        raise _unknown(problems, "label or split")
    return records


def _split_name(raw) -> str:
    """A manifest's split value as one of SPLITS where it names one (empty: train)."""
    split = str(raw or "train").lower()
    return AFEW_SPLIT_FOLDERS.get(split, split)


def detect_format(uri: str) -> str:
    """Guess the layout of an input folder or manifest (see the module docstring)."""
    if uri.lower().endswith((".csv", ".parquet")):
        return "manifest"
    files = _media_files(uri)
    if not files:
        raise SourceError(f"no video or audio files ({', '.join(MEDIA_EXTENSIONS)}) under {uri}")
    example, first = files[0]
    if len(first) >= 2 and first[0].lower() in AFEW_SPLIT_FOLDERS:
        return "afew"
    if RAVDESS_NAME.match(_stem(example)):
        return "ravdess"
    if CREMAD_NAME.match(_stem(example)):
        return "cremad"
    raise SourceError(f"cannot tell the layout of {uri} (e.g. {example}); pass --dataset-format "
                      f"one of {', '.join(FORMATS[1:])}")


def collapse_duplicates(records: list[ClipRecord]) -> tuple[list[ClipRecord], int]:
    """Records with one entry per clip id, in first-seen order, and how many repeats were dropped.
    SourceError listing the files when a clip appears in two splits or with two labels."""
    first: dict[str, ClipRecord] = {}
    conflicts: dict[str, set[str]] = {}
    dropped = 0
    for r in records:
        seen = first.get(r.clip_id)
        if seen is None:
            first[r.clip_id] = r
            continue
        dropped += 1
        if (seen.split, seen.label) != (r.split, r.label):
            conflicts.setdefault(r.uri, {f"{seen.split}/{seen.label or 'unlabelled'}"}).add(
                f"{r.split}/{r.label or 'unlabelled'}")
    if conflicts:
        shown = [f"{uri} ({', '.join(sorted(where))})" for uri, where in sorted(conflicts.items())]
        listed = "\n  ".join(shown[:20]) + (f"\n  ... and {len(shown) - 20} more" if len(shown) > 20 else "")
        raise SourceError(f"{len(conflicts)} file(s) listed in two splits or with two labels (train/val leakage):"
                          f"\n  {listed}\nlist each file once")
    return list(first.values()), dropped


ADAPTERS = {"afew": afew_clips, "ravdess": ravdess_clips, "cremad": cremad_clips, "manifest": manifest_clips}


def list_clips(uri: str, fmt: str = "auto") -> list[ClipRecord]:
    """Clip records (one per file) of a dataset folder or manifest; SourceError on unknown labels,
    empty input, or a file in two splits."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(uri)
    records, dropped = collapse_duplicates(ADAPTERS[fmt](uri))
    if not records:
        raise SourceError(f"no clips found in {uri} (format {fmt})")
    if dropped:
        print(f"sources: warning: {dropped} duplicate record(s) of the same file in {uri} collapsed into one",
              file=sys.stderr, flush=True)
    return records
