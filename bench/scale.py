"""Benchmark of the extraction job's driver at dataset scale: planning a million clips, and the
stored-ids read a resumed run starts with.

    python bench/scale.py [--records 1000000] [--shards 20000] [--rows-per-shard 50]
                          [--s3-shards 2000] [--workdir DIR] [--skip-plan] [--skip-ids]

  plan      a generated Parquet manifest of --records clip records (s3:// URIs: the files need not
            exist to plan), planned by `jobs/extract.py --dry-run` in its own process: wall time
            and the process's peak RSS (targets: <= 60 s, <= 2 GB at 1M records)
  ids       a store of --shards small shards (--rows-per-shard rows each, the columns a resumed run
            reads): time to read its state (stored, failed clip ids and recipes) the way the job
            does, locally (target <= 30 s for 20,000 shards) and, for --s3-shards of them, through
            a moto S3 server on 127.0.0.1 (s3fs)
Prints a markdown report for BENCHMARKS.md.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from raylib.labels import EMOTIONS  # noqa: E402
from raylib.schema import METADATA_KEY, SCHEMA_VERSION, STATUS_ERROR, STATUS_OK  # noqa: E402


def write_manifest(path: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = np.asarray(EMOTIONS)[rng.integers(0, len(EMOTIONS), n)]
    splits = np.where(rng.random(n) < 0.9, "train", "val")
    uris = [f"s3://bench-clips/{s}/{i:08d}.mp4" for i, s in enumerate(splits)]
    pq.write_table(pa.table({"uri": uris, "label": labels, "split": splits}), path)


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, int, str]:
    """(wall s, peak RSS GiB, exit code, last stdout/stderr lines) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t, usage.ru_maxrss / 1024**2, proc.returncode, "\n".join(out.splitlines()[-4:])


def bench_plan(workdir: str, records: int) -> list[str]:
    manifest = os.path.join(workdir, "manifest.parquet")
    t = time.perf_counter()
    write_manifest(manifest, records)
    made = time.perf_counter() - t
    store = os.path.join(workdir, "plan-store")
    wall, rss, rc, tail = run_measured([sys.executable, "jobs/extract.py", "--input", manifest, "--output", store,
                                        "--dry-run", "--quiet"])
    print(tail, file=sys.stderr)
    if rc != 0:
        raise SystemExit(f"the dry run failed (exit {rc}):\n{tail}")
    return [f"| plan {records:,} records (`jobs/extract.py --dry-run`, own process) | {wall:.1f} s | "
            f"{rss:.2f} GiB | manifest written in {made:.1f} s |"]


def write_store(store: str, shards: int, rows: int) -> None:
    """shards files of rows rows under store/train: the columns the job's resume reads, with the
    schema version in the file metadata; 1 row in 50 an error row."""
    cols = {"backbone": "dlib_resnet", "weights_digest": "packaged", "enhancement": "basic",
            "audio_mode": "spectrogram", "frames": "uniform:16"}
    os.makedirs(os.path.join(store, "train"), exist_ok=True)
    meta = {METADATA_KEY: SCHEMA_VERSION.encode()}
    for s in range(shards):
        ids = [f"{s:06d}{r:04d}" + "0" * 30 for r in range(rows)]
        status = [STATUS_ERROR if (s * rows + r) % 50 == 0 else STATUS_OK for r in range(rows)]
        table = pa.table({"clip_id": ids, "uri": [f"s3://bench-clips/train/{i}.mp4" for i in ids], "status": status,
                          "error": ["" if x == STATUS_OK else "file not found" for x in status],
                          **{k: [v] * rows for k, v in cols.items()}})
        pq.write_table(table.replace_schema_metadata(meta), os.path.join(store, "train", f"part-{s:08d}.parquet"))


def time_state(store: str, env: dict | None = None) -> tuple[float, float, int]:
    """(wall s, peak RSS GiB, clips) of reading the store's state in a fresh process, as a resumed run does."""
    code = ("import sys, time; from raylib.store import writable_state; t = time.perf_counter(); "
            "s = writable_state(sys.argv[1]); print(len(s.usable) + len(s.failed), time.perf_counter() - t)")
    wall, rss, rc, tail = run_measured([sys.executable, "-c", code, store], env)
    if rc != 0:
        raise SystemExit(f"reading the store failed:\n{tail}")
    clips, seconds = tail.split()[-2:]
    return float(seconds), rss, int(clips)


def bench_ids(workdir: str, shards: int, rows: int, s3_shards: int) -> list[str]:
    store = os.path.join(workdir, "store")
    t = time.perf_counter()
    write_store(store, shards, rows)
    print(f"wrote {shards} shards in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    seconds, rss, clips = time_state(store)
    assert clips == shards * rows, (clips, shards * rows)
    lines = [f"| stored ids from {shards:,} local shards ({clips:,} clips) | {seconds:.1f} s | {rss:.2f} GiB | "
             f"{shards / seconds:,.0f} shards/s |"]
    if s3_shards:
        import logging

        from moto.server import ThreadedMotoServer
        import s3fs

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise

        sock = __import__("socket").socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        try:
            fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="bench", secret="bench")
            fs.mkdir("bench-store")
            part = os.path.join(workdir, "s3-part", "train")
            os.makedirs(part)
            for name in sorted(os.listdir(os.path.join(store, "train")))[:s3_shards]:
                os.link(os.path.join(store, "train", name), os.path.join(part, name))
            t = time.perf_counter()
            fs.put(part, "bench-store/train", recursive=True)
            print(f"uploaded {s3_shards} shards in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            seconds, rss, clips = time_state("s3://bench-store", env)
            assert clips == s3_shards * rows, (clips, s3_shards * rows)
            lines.append(f"| stored ids from {s3_shards:,} shards on S3 (moto on 127.0.0.1) | {seconds:.1f} s | "
                         f"{rss:.2f} GiB | {s3_shards / seconds:,.0f} shards/s |")
        finally:
            server.stop()
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000, help="clip records in the planned manifest")
    p.add_argument("--shards", type=int, default=20_000, help="shards in the local store")
    p.add_argument("--rows-per-shard", type=int, default=50, help="clips per shard")
    p.add_argument("--s3-shards", type=int, default=2_000, help="of them, how many to read through S3 (0: skip)")
    p.add_argument("--workdir", default="", help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--skip-plan", action="store_true")
    p.add_argument("--skip-ids", action="store_true")
    args = p.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    os.makedirs(workdir, exist_ok=True)
    lines = ["| what | time | peak RSS | note |", "|---|---|---|---|"]
    try:
        if not args.skip_plan:
            lines += bench_plan(workdir, args.records)
        if not args.skip_ids:
            lines += bench_ids(workdir, args.shards, args.rows_per_shard, args.s3_shards)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n`python bench/scale.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
          f"on {os.cpu_count()} cores\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
