"""Exactly once across an interrupted run: kill the driver part-way, re-run, re-run again."""

import os
import signal
import subprocess
import sys
import time

import pytest

from raylib.sample import SampleConfig, generate_sample_set
from raylib.store import data_files, read_store

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def extract_cmd(videos, out):
    return [sys.executable, "jobs/extract.py", "--input", videos, "--output", out, "--frames", "uniform:6",
            "--shard-size", "1", "--batch-size", "1", "--cpu-workers", "1", "--quiet"]


def test_killed_driver_then_rerun_stores_every_clip_once(tmp_path):
    videos = str(tmp_path / "videos")
    out = str(tmp_path / "store")
    n = len(generate_sample_set(SampleConfig(out_dir=videos, train_per_class=1, val_per_class=1)))
    proc = subprocess.Popen(extract_cmd(videos, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(data_files(out)) < 3 and proc.poll() is None:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run
        proc.wait(timeout=30)
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # then the local Ray it had started
        except ProcessLookupError:
            pass
    partial = read_store(out, ["clip_id"]).column("clip_id").to_pylist()
    assert 3 <= len(partial) < n, f"the run was not interrupted part-way ({len(partial)} of {n} stored)"
    assert len(set(partial)) == len(partial)

    rerun = subprocess.run(extract_cmd(videos, out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{n - len(partial)} clips processed" in rerun.stdout
    ids = read_store(out, ["clip_id"]).column("clip_id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n  # every clip exactly once
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".tmp-")]

    files = sorted(data_files(out))
    again = subprocess.run(extract_cmd(videos, out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 clips processed (nothing new)" in again.stdout
    assert sorted(data_files(out)) == files
