"""Faces found on real footage: the share of hand-labelled frames where the job finds the main face.

    python bench/faces.py --data /path/to/clips [--labels bench/faces_labels.csv] [--detector hog|hog+cnn]

`bench/faces_labels.csv` labels the frames that `--frames uniform:24` samples from four real clips
(docs/real-data.md says where to get them; they are not part of the repository):
for each frame whether a face is plainly visible and, if so, a box (fractions of the frame's width
and height) around the main face. A frame counts as a hit when the job found a face there and
the centre of the face it chose lies inside that box. The CPU seconds are those of face detection
and alignment (`align_frames`) per clip, measured in this process on one core.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from raylib.media.faces import FaceConfig, align_frames  # noqa: E402
from raylib.media.video import decode_video  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load_labels(path: str) -> dict[str, dict[int, tuple | None]]:
    """clip -> frame -> (x0, y0, x1, y1) fractions of the main face, or None (no face visible)."""
    out: dict[str, dict[int, tuple | None]] = defaultdict(dict)
    with open(path) as f:
        for r in csv.DictReader(f):
            box = tuple(float(r[k]) for k in ("x0", "y0", "x1", "y1")) if r["visible"] == "1" else None
            out[r["clip"]][int(r["frame"])] = box
    return out


def score_clip(path: str, labels: dict[int, tuple | None], frames: str, cfg: FaceConfig) -> dict:
    """Per-clip counts: visible frames, found (any face), hits (the main face), false faces."""
    video = decode_video(path, frames)
    t0 = time.process_time()
    faces = align_frames(video.frames, cfg)
    cpu = time.process_time() - t0
    h, w = video.frames.shape[1:3]
    visible = found = hits = false = 0
    for k, box in labels.items():
        if box is None:
            false += int(faces.found[k])
            continue
        visible += 1
        if faces.found[k]:
            found += 1
            x0, y0, x1, y1 = faces.boxes[k]
            cx, cy = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h
            hits += int(box[0] <= cx <= box[2] and box[1] <= cy <= box[3])
    return {"frames": len(labels), "visible": visible, "found": found, "hits": hits, "false": false,
            "cpu_s": cpu, "faces_per_frame": float(np.mean(getattr(faces, "counts", faces.found.astype(int))))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder holding the labelled clips")
    p.add_argument("--labels", default=os.path.join(HERE, "faces_labels.csv"))
    p.add_argument("--frames", default="uniform:24", help="the sampling the labels were made for")
    p.add_argument("--detector", default=None, help="FaceConfig.detector (default: the job's default)")
    p.add_argument("--threshold", type=float, default=None, help="FaceConfig.threshold")
    p.add_argument("--detect-max-side", type=int, default=None)
    a = p.parse_args(argv)
    overrides = {k: v for k, v in (("detector", a.detector), ("threshold", a.threshold),
                                   ("detect_max_side", a.detect_max_side)) if v is not None}
    cfg = FaceConfig(**overrides)
    labels = load_labels(a.labels)
    total = defaultdict(float)
    print(f"| clip | visible frames | face found | main face found | face on faceless frames | CPU s/clip |")
    print("|---|---|---|---|---|---|")
    for clip, lab in labels.items():
        r = score_clip(os.path.join(a.data, clip), lab, a.frames, cfg)
        for k, v in r.items():
            total[k] += v
        print(f"| {clip} | {r['visible']} | {r['found']} ({r['found'] / r['visible']:.0%}) | "
              f"{r['hits']} ({r['hits'] / r['visible']:.0%}) | {r['false']} of {r['frames'] - r['visible']} | "
              f"{r['cpu_s']:.2f} |")
    n = len(labels)
    print(f"| **all** | {int(total['visible'])} | {int(total['found'])} ({total['found'] / total['visible']:.0%}) | "
          f"{int(total['hits'])} ({total['hits'] / total['visible']:.0%}) | {int(total['false'])} of "
          f"{int(total['frames'] - total['visible'])} | {total['cpu_s'] / n:.2f} |")
    print(f"config: {cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
