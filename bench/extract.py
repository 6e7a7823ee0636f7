"""Benchmark of the extraction job's CPU stage against its floor and a naive baseline.

    python bench/extract.py [--clips 21] [--naive-clips 6] [--frames uniform:16] [--skip-job]
    python bench/extract.py --job-only --clips 140                # the whole job, generated video clips
    python bench/extract.py --job-only --cheap --clips 400        # the whole job, 3 s speech-like .wav files
    python bench/extract.py --job-only --clips 700 --out /tmp/bench-700   # a longer run (start-up amortised)

On one generated clip set (640 x 480, 2 s, 25 fps, one face), in one run:
  decode-only     the same sequential decode of the sampled frames (the floor of the stage)
  cpu stage       decode + detect/track + align + spectrogram, per-stage medians, clips/s per core
  naive baseline  every frame dumped to JPEG, read back, dlib HOG on every full-resolution frame,
                  5-point alignment, spectrogram (what a typical research script does)
  quality         IoU of our (detected or tracked) boxes with per-frame full-resolution detection
  scaling         the CPU stage in 1 and 2 worker processes; peak RSS of a worker
  job             the whole extraction job on a local Ray (--backbone, default the job's), clips/s;
                  --cheap: on short audio files (a CPU stage of a few hundredths of a second)
Prints a markdown report for BENCHMARKS.md.
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from raylib.media.audio import load_audio, speech_spectrogram
from raylib.media.faces import FaceConfig, align_face, align_frames, detect_face
from raylib.media.video import DEFAULT_SAMPLING, decode_video
from raylib.sample import SampleConfig, generate_sample_set
from raylib.extract.preprocess import PreprocessConfig, preprocess_clip

FULL = FaceConfig(detect_max_side=0)

def median_ms(values):
    return 1000 * statistics.median(values)

def naive_clip(path: str, workdir: str) -> float:
    """Seconds for the naive pipeline on one clip."""
    import decord
    from PIL import Image

    t = time.perf_counter()
    reader = decord.VideoReader(path, num_threads=1)
    names = []
    for i in range(len(reader)):
        name = os.path.join(workdir, f"{i:05d}.jpg")
        Image.fromarray(reader.next().asnumpy()).save(name, quality=95)
        names.append(name)
    for name in names:
        frame = np.asarray(Image.open(name).convert("RGB"))
        box = detect_face(frame, FULL)
        if box is not None:
            align_face(frame, box, FULL)
    speech_spectrogram(load_audio(path).samples)
    return time.perf_counter() - t

def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

def _worker_run(args):
    paths, frames = args
    cfg = PreprocessConfig(frames=frames)
    for p in paths:
        assert preprocess_clip(p, cfg)["status"] == "ok"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB

def scaling(paths, frames, workers: int):
    """(clips/s, peak worker RSS MiB) with `workers` processes, each warmed up first."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_worker_run, [([paths[0]], frames)] * workers))  # warm-up: model loading, imports
        chunks = [(paths[i::workers], frames) for i in range(workers)]
        t = time.perf_counter()
        rss = list(pool.map(_worker_run, chunks))
        return len(paths) / (time.perf_counter() - t), max(rss)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=21, help="generated clips (a multiple of 7)")
    p.add_argument("--naive-clips", type=int, default=6, help="clips timed through the (slow) naive baseline")
    p.add_argument("--frames", default=DEFAULT_SAMPLING, help="frame sampling of the CPU stage")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "bench-extract-clips"))
    p.add_argument("--skip-job", action="store_true", help="do not time the whole Ray job")
    p.add_argument("--job-only", action="store_true", help="time only the whole Ray job")
    p.add_argument("--cpu-actors", type=int, default=0, help="the job's --cpu-actors (0: the autoscaling pool)")
    p.add_argument("--backbone", default="", help="the job's --backbone (default: the job's default; weights packaged)")
    p.add_argument("--cheap", action="store_true", help="with --job-only: 3 s .wav files instead of video clips")
    args = p.parse_args()
    if args.job_only and args.cheap:
        write_wavs(args.out + "-wav", args.clips)
        args.out += "-wav"
        return job(args)
    if args.job_only:
        generate_sample_set(SampleConfig(out_dir=args.out, train_per_class=max(1, args.clips // 7),
                                         val_per_class=0, width=640, height=480))
        return job(args)

    paths = generate_sample_set(SampleConfig(out_dir=args.out, train_per_class=max(1, args.clips // 7),
                                             val_per_class=0, width=640, height=480))
    cfg = PreprocessConfig(frames=args.frames)
    preprocess_clip(paths[0], cfg)  # warm-up
    decode, rows = [], []
    for path in paths:  # interleaved, so both see the same caches
        t = time.perf_counter()
        decode_video(path, args.frames)
        decode.append(time.perf_counter() - t)
        rows.append(preprocess_clip(path, cfg))
    assert all(r["status"] == "ok" for r in rows)
    stage = [r["seconds_total"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        naive = [naive_clip(path, tmp) for path in paths[: args.naive_clips]]

    ious = []
    for path in paths:
        video = decode_video(path, args.frames)
        faces = align_frames(video.frames)
        for frame, box, found in zip(video.frames, faces.boxes, faces.found):
            ref = detect_face(frame, FULL)
            ious.append(iou(box, ref) if found and ref is not None else 0.0)
    ious = np.array(ious)

    one, rss1 = scaling(paths, args.frames, 1)
    two, rss2 = scaling(paths, args.frames, 2)

    print(f"{len(paths)} clips, 640 x 480, 2 s, 25 fps, one face; CPU stage samples {args.frames}; "
          f"naive baseline on {len(naive)} clips, every frame (50)\n")
    print("| measure | median ms / clip | vs CPU stage |")
    print("|---|---|---|")
    print(f"| decode only (floor) | {median_ms(decode):.1f} | {median_ms(stage) / median_ms(decode):.2f}x of it |")
    for s in ("decode", "detect", "align", "audio"):
        print(f"| cpu stage: {s} | {median_ms([r['seconds_' + s] for r in rows]):.1f} | |")
    print(f"| **cpu stage total** | **{median_ms(stage):.1f}** | 1 |")
    print(f"| naive baseline | {median_ms(naive):.1f} | {median_ms(naive) / median_ms(stage):.1f}x slower |")
    print()
    print(f"- CPU stage: {1 / statistics.median(stage):.2f} clips/s per core (one process)")
    print(f"- face boxes vs per-frame full-resolution detection: IoU >= 0.7 on {100 * (ious >= 0.7).mean():.1f}% "
          f"of {len(ious)} frames (median IoU {np.median(ious):.3f})")
    print(f"- scaling: 1 worker {one:.2f} clips/s, 2 workers {two:.2f} clips/s ({two / one:.2f}x); "
          f"peak worker RSS {max(rss1, rss2):.0f} MiB")
    print("\n| target | figure | met |")
    print("|---|---|---|")
    checks = [
        (">= 5x naive baseline per core", f"{median_ms(naive) / median_ms(stage):.1f}x", median_ms(naive) / median_ms(stage) >= 5),
        ("<= 3x decode-only", f"{median_ms(stage) / median_ms(decode):.2f}x", median_ms(stage) / median_ms(decode) <= 3),
        ("IoU >= 0.7 on >= 95% of frames", f"{100 * (ious >= 0.7).mean():.1f}%", (ious >= 0.7).mean() >= 0.95),
        ("2 workers >= 1.7x one", f"{two / one:.2f}x", two / one >= 1.7),
        ("peak worker RSS <= 1.5 GB", f"{max(rss1, rss2):.0f} MiB", max(rss1, rss2) <= 1536),
    ]
    for name, fig, ok in checks:
        print(f"| {name} | {fig} | {'yes' if ok else 'NO'} |")

    if not args.skip_job:
        job(args)


def write_wavs(root: str, n: int) -> None:
    """n speech-like 3 s mono 16 kHz .wav files in AFEW class folders (kept between runs)."""
    import soundfile

    from raylib.labels import EMOTIONS
    from raylib.sample import speech_like

    rng = np.random.default_rng(0)
    for i in range(n):
        path = os.path.join(root, "Train", EMOTIONS[i % len(EMOTIONS)], f"speech_{i:04d}.wav")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            soundfile.write(path, speech_like(3.0, 16000, 0.35 if i % 2 else -0.35, rng), 16000)


def job(args) -> None:
    """The whole extraction job on a local Ray, with the efficiency it reports of itself."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from raylib.extract.config import ExtractConfig, FeatureRecipe
    from raylib.extract.job import run_extract

    backbone = args.backbone or FeatureRecipe().backbone
    with tempfile.TemporaryDirectory() as store:
        s = run_extract(ExtractConfig(input=args.out, dataset_format="afew", output=store,
                                      cpu_actors=args.cpu_actors, quiet=True,
                                      recipe=FeatureRecipe(frames=args.frames, backbone=backbone)))
    actors = f"{args.cpu_actors} {backbone} actor(s) of 1 CPU" if args.cpu_actors else \
        f"the autoscaling {backbone} actor pool"
    print(f"\n- whole job on a local Ray ({s['cpus']:g} CPUs, {actors}): {s['clips_processed']} clips in "
          f"{s['elapsed_s']} s including Ray start-up ({s['clips_per_s']} clips/s); while processing "
          f"{s['processing_clips_per_s']} clips/s against a bound of {s['bound_clips_per_s']} clips/s "
          f"(CPU stage {s['cpu_seconds_per_clip']} + feature stage {s['feature_seconds_per_clip']} core-s per clip): "
          f"**{s['efficiency']:.0%} of the bound**, {s['feature_actors']} feature actor(s) did work; start-up "
          f"(until the first feature actor was ready) {s['startup_s']} s, after it **{s['efficiency_after_startup']:.0%}**")


if __name__ == "__main__":
    main()
