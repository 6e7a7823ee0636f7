"""Face-image datasets (for pretraining) and the chip a backbone sees from one image.

Sources (`list_images(uri, fmt)`), local or any fsspec URI (s3://...):
  folders   <root>/<split>/<class>/<image>.jpg|jpeg|png|bmp  (FER2013 and RAF-DB re-distributions,
            most folder releases). Class folder names map onto our 7 labels case-insensitively,
            with the usual synonyms (LABEL_SYNONYMS); classes outside the 7 that datasets are known
            to carry (DROPPED_CLASSES, e.g. contempt) are dropped and counted; any other folder name
            is an error listing its files. A file name prefixed Training_ / PublicTest_ /
            PrivateTest_ (FER2013's official split) is put in train / val / test whatever its folder.
  manifest  a .csv or .parquet with columns uri,label[,split][,subject]; relative uris resolve
            against the manifest's folder. Labels as above.
  auto      manifest for .csv/.parquet, else folders.

The chip. `image_chip` frames an image exactly like extraction frames a video frame: grayscale
becomes three equal channels; with align=True the extraction's dlib detection + 5-point alignment
(224 x 224, 30% padding) runs, and the whole image resized stands in when no face is found;
without it the whole image resized is the chip (datasets of already cropped faces). `model_input`
then resizes and normalises chips exactly as the extraction's encoder does before its forward.
"""

from __future__ import annotations

import io
import os
import posixpath
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from raylib import storage
from raylib.errors import SourceError
from raylib.labels import EMOTIONS, SPLITS
from raylib.media.faces import FaceConfig, align_frames
from raylib.media.image import resize
from raylib.sources import canonical_uri, clip_id, collapse_duplicates, read_manifest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGE_FORMATS = ("auto", "folders", "manifest")
LABEL_SYNONYMS = {
    "anger": "Angry", "angry": "Angry", "disgust": "Disgust", "disgusted": "Disgust",
    "fear": "Fear", "fearful": "Fear", "scared": "Fear", "happiness": "Happy", "happy": "Happy",
    "joy": "Happy", "neutral": "Neutral", "sadness": "Sad", "sad": "Sad",
    "surprise": "Surprise", "surprised": "Surprise",
}
DROPPED_CLASSES = ("contempt", "none", "uncertain", "unknown", "non-face", "nonface", "nf")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "publictest": "val", "test": "test", "privatetest": "test"}
FILE_PREFIX_SPLITS = {"training_": "train", "publictest_": "val", "privatetest_": "test"}  # FER2013


@dataclass(frozen=True)
class ImageRecord:
    """One image: image_id (clip_id of its canonical uri), uri, label (our name), split, dataset, subject."""

    clip_id: str
    uri: str
    label: str
    split: str
    dataset: str
    subject: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageListing:
    """Records plus what was left out: dropped classes {name: files}, empty class folders."""

    records: list[ImageRecord]
    dropped: Counter = field(default_factory=Counter)
    empty_folders: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts = Counter(r.split for r in self.records)
        parts = [f"{len(self.records)} images ({', '.join(f'{s} {counts[s]}' for s in SPLITS if counts[s])})"]
        if self.dropped:
            parts.append("dropped classes outside the 7: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
        if self.empty_folders:
            parts.append(f"{len(self.empty_folders)} empty class folder(s): {', '.join(self.empty_folders[:5])}")
        return "; ".join(parts)


def map_label(name: str) -> str | None:
    """Our label for a dataset's class name (case-insensitive, synonyms), or None."""
    key = name.strip().lower()
    for known in EMOTIONS:
        if known.lower() == key:
            return known
    return LABEL_SYNONYMS.get(key)


def is_dropped_class(name: str) -> bool:
    return name.strip().lower() in DROPPED_CLASSES


def _unknown(problems: list[str]) -> SourceError:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return SourceError(f"{len(problems)} image(s) with unknown label:\n  {shown}{more}\nexpected labels: "
                       f"{', '.join(EMOTIONS)} (or a synonym: {', '.join(sorted(LABEL_SYNONYMS))}); "
                       f"classes dropped on purpose: {', '.join(DROPPED_CLASSES)}")


def _record(uri: str, label: str, split: str, dataset: str, subject: str = "") -> ImageRecord:
    uri = canonical_uri(uri)
    return ImageRecord(clip_id(uri), uri, label, split, dataset, subject)


def _split_of(folder: str, filename: str) -> str | None:
    low = filename.lower()
    for prefix, split in FILE_PREFIX_SPLITS.items():
        if low.startswith(prefix):
            return split
    return SPLIT_FOLDERS.get(folder.lower())


def folder_images(root: str) -> ImageListing:
    """Class folders <root>/<split>/<class>/<image>; see the module docstring for the rules."""
    fs, path = storage.filesystem(root)
    if not fs.exists(path) or not fs.isdir(path):
        raise SourceError(f"image folder {root} not found (expected <root>/<split>/<class>/*.jpg|png)")
    remote = storage.is_remote(root)
    base = path.rstrip("/")
    listing = ImageListing([])
    problems: list[str] = []
    class_dirs: set[str] = set()
    for split_dir in sorted(fs.ls(path, detail=False)):
        if fs.isdir(split_dir) and not posixpath.basename(split_dir).startswith((".", "_")):
            class_dirs.update(d for d in fs.ls(split_dir, detail=False) if fs.isdir(d))
    used: set[str] = set()
    for p in sorted(fs.find(path)):
        name = posixpath.basename(p)
        if not name.lower().endswith(IMAGE_EXTENSIONS) or name.startswith("."):
            continue
        parts = p[len(base):].strip("/").split("/")
        uri = storage.uri_of(p, root) if remote else os.path.join(root, *parts)
        if len(parts) != 3:
            problems.append(f"{uri} (not under <split>/<class>/)")
            continue
        used.add(posixpath.dirname(p).rstrip("/"))
        split = _split_of(parts[0], name)
        if split is None:
            problems.append(f"{uri} (split folder {parts[0]!r}; expected {', '.join(sorted(SPLIT_FOLDERS))})")
            continue
        label = map_label(parts[1])
        if label is None:
            if is_dropped_class(parts[1]):
                listing.dropped[parts[1].lower()] += 1
            else:
                problems.append(f"{uri} (class folder {parts[1]!r})")
            continue
        listing.records.append(_record(uri, label, split, "folders"))
    if problems:
        raise _unknown(problems)
    listing.empty_folders = sorted(storage.uri_of(d, root) for d in class_dirs
                                   if d.rstrip("/") not in used)
    return listing


def manifest_images(manifest: str) -> ImageListing:
    """A CSV or Parquet manifest uri,label[,split][,subject]; split defaults to train."""
    listing, problems = ImageListing([]), []
    for row in read_manifest(manifest, "uri,label[,split][,subject]"):
        uri = row["uri"]
        raw = "" if row.get("label") is None else str(row["label"])
        split = SPLIT_FOLDERS.get(str(row.get("split") or "train").lower())
        label = map_label(raw)
        if label is None and is_dropped_class(raw):
            listing.dropped[raw.lower()] += 1
        elif label is None:
            problems.append(f"{uri} (label {raw!r})")
        elif split is None:
            problems.append(f"{uri} (split {row.get('split')!r}; expected {', '.join(SPLITS)})")
        else:
            listing.records.append(_record(uri, label, split, "manifest", str(row.get("subject") or "")))
    if problems:
        raise _unknown(problems)
    return listing


def list_images(uri: str, fmt: str = "auto") -> ImageListing:
    """Image records of a class-folder tree or manifest; SourceError on unknown labels, an empty
    input, or a file in two splits. Dropped classes and empty class folders are reported on stderr."""
    if fmt not in IMAGE_FORMATS:
        raise SourceError(f"unknown image dataset format {fmt!r}; expected one of {', '.join(IMAGE_FORMATS)}")
    if fmt == "auto":
        fmt = "manifest" if uri.lower().endswith((".csv", ".parquet")) else "folders"
    listing = manifest_images(uri) if fmt == "manifest" else folder_images(uri)
    listing.records, repeats = collapse_duplicates(listing.records)
    if not listing.records:
        raise SourceError(f"no labelled images found in {uri} (format {fmt}; {listing.summary()})")
    if repeats:
        print(f"images: warning: {repeats} duplicate record(s) of the same file in {uri} collapsed into one",
              file=sys.stderr, flush=True)
    for folder in listing.empty_folders:
        print(f"images: warning: class folder {folder} holds no images", file=sys.stderr, flush=True)
    return listing


# ---- the chip ------------------------------------------------------------------------------------

def decode_image(blob: bytes) -> np.ndarray:
    """Encoded image bytes -> [H, W, 3] uint8 RGB; grayscale becomes three equal channels."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        img.load()
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
        arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def image_chip(image: np.ndarray, align: bool = False, faces: FaceConfig = FaceConfig()) -> tuple[np.ndarray, bool]:
    """[H, W, 3] uint8 -> (chip [224, 224, 3] uint8, face found), framed like extraction's chips."""
    if align:
        out = align_frames(image[None], faces)
        return out.chips[0], bool(out.found[0])
    return resize(np.ascontiguousarray(image), faces.chip_size, faces.chip_size), False


def model_input(chips, spec, input_size: int | None = None):
    """Chips [B, S, S, 3] uint8 (numpy or torch) -> [B, C, s, s] float32, cropped, resized and
    normalised by TorchFaceEncoder's own code (s = input_size or spec.input_size)."""
    import torch

    from raylib.models.backbones import prepare

    return prepare(torch.as_tensor(np.asarray(chips)).permute(0, 3, 1, 2).float() / 255.0, spec, input_size)
