"""Per-stage cost of the CPU preprocessing of one clip (decode, detect, align, audio), one process.

    python bench/preprocess.py [--clips 20] [--frames uniform:16] [--width 640 --height 480]

Generates clips like the sample set (2 s, 25 fps, one face) under /tmp, preprocesses each
sequentially in this process, and prints medians per clip and stage as a markdown table.
"""

import argparse
import statistics
import tempfile
import time

from raylib.media.video import DEFAULT_SAMPLING
from raylib.sample import SampleConfig, generate_sample_set
from raylib.extract.preprocess import PreprocessConfig, preprocess_clip


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=21, help="clips to generate (rounded to a multiple of 7)")
    p.add_argument("--frames", default=DEFAULT_SAMPLING, help="frame sampling policy")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--out", default=None, help="folder for the generated clips (default: a temp folder)")
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench-preprocess-")
    per_class = max(1, args.clips // 7)
    paths = generate_sample_set(SampleConfig(out_dir=out, train_per_class=per_class, val_per_class=0,
                                             width=args.width, height=args.height))
    cfg = PreprocessConfig(frames=args.frames)
    preprocess_clip(paths[0], cfg)  # warm-up: model loading, librosa's lazy imports
    rows, t0 = [], time.perf_counter()
    for path in paths:
        rows.append(preprocess_clip(path, cfg))
    wall = time.perf_counter() - t0
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    print(f"{len(paths)} clips {args.width}x{args.height}, 2 s, 25 fps, frames {args.frames}, one process\n")
    print("| stage | median ms / clip | share |")
    print("|---|---|---|")
    total = statistics.median(r["seconds_total"] for r in rows)
    for stage in ("decode", "detect", "align", "audio"):
        med = statistics.median(r[f"seconds_{stage}"] for r in rows)
        print(f"| {stage} | {1000 * med:.1f} | {100 * med / total:.0f}% |")
    print(f"| total | {1000 * total:.1f} | |")
    print(f"\nthroughput: {len(paths) / wall:.2f} clips/s in one process; "
          f"faces found in {sum(int(r['face_found'].sum()) for r in rows)} of {sum(len(r['face_found']) for r in rows)} frames")


if __name__ == "__main__":
    main()
