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
    # 21 short clips: 6 calls of up to 4 clips (graph.VIDEO_CLIPS_PER_TASK), each call's shards written
    # together; the driver dies as soon as the first call's are in
    n = len(generate_sample_set(SampleConfig(out_dir=videos, train_per_class=2, val_per_class=1)))
    proc = subprocess.Popen(extract_cmd(videos, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not data_files(out) and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run
        proc.wait(timeout=30)
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # then the local Ray it had started
        except ProcessLookupError:
            pass
    partial = read_store(out, ["clip_id"]).column("clip_id").to_pylist()
    assert 1 <= len(partial) < n, f"the run was not interrupted part-way ({len(partial)} of {n} stored)"
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


def test_tally_aggregates_outcomes_and_judges_the_store_without_a_per_clip_list():
    """Outcomes stream in batches; the run's judgement is counted by hand: the store held 3
    usable clips and 2 error rows (e1, e2); this run retried e1 (it failed again) and processed
    4 new clips (one error); the input lists all but the stored u3."""
    import numpy as np

    from raylib.sources import ClipRecord
    from raylib.store import StoreState
    from raylib.extract.summary import SHOWN, Tally, efficiency, judge

    state = StoreState(usable={"u1", "u2", "u3"},
                       failed={"e1": {"file": "f", "uri": "/e1.mp4", "error": "old"},
                               "e2": {"file": "f", "uri": "/e2.mp4", "error": "old"}})
    tally = Tally(state.failed)

    def batch(ids, statuses, node="n1", file="s1"):
        n = len(ids)
        return {"clip_id": np.asarray(ids), "uri": np.asarray([f"/{c}.mp4" for c in ids]),
                "status": np.asarray(statuses), "error": np.asarray(["bad" if s == "error" else "" for s in statuses]),
                "cpu_node": np.asarray([node] * n), "feature_node": np.asarray(["g"] * n),
                "seconds_cpu": np.full(n, 0.5), "seconds_feature": np.full(n, 1.5),
                "file": np.asarray([file] * n), "write_attempts": np.asarray([2 if file == "s2" else 1] * n),
                "feature_actor": np.asarray([f"a-{node}"] * n),
                "feature_ready": np.full(n, 1000.0 if node == "n1" else 999.0)}  # wall time its actor was ready

    tally.add(batch(["e1", "n1", "n2"], ["error", "ok", "no_face"]))
    tally.add(batch(["n3", "n4"], ["error", "audio_only"], node="n2", file="s2"))
    s = tally.summary()
    assert s["clips_processed"] == 5 and s["status_counts"] == {"audio_only": 1, "error": 2, "no_face": 1, "ok": 1}
    assert s["nodes"] == {"cpu": {"n1": 3, "n2": 2}, "feature": {"g": 5}}
    assert s["shards_written"] == 2 and s["write_retries"] == 1 and s["feature_actors"] == 2
    assert [e["uri"] for e in s["errors"]] == ["/e1.mp4", "/n2.mp4", "/n3.mp4"]  # not usable: error, no_face
    assert s["cpu_seconds_per_clip"] == 0.5 and s["feature_seconds_per_clip"] == 1.5
    assert tally.retried == {"e1"} and set(tally.failed) == {"e1", "n3"}

    records = [ClipRecord(c, f"/{c}.mp4", "Happy", "train", "afew") for c in ("u1", "u2", "e1", "e2", "n1", "n2", "n3", "n4")]
    j = judge(records, state, tally)
    # stored: 5 before + 4 new; judged: the input's 4 stored clips + 4 new; failed: e2 (not retried), e1, n3
    assert j["clips_stored"] == 9 and j["clips_judged"] == 8 and j["failures"] == 3
    assert j["failure_rate"] == 3 / 8
    assert {f["uri"]: f["error"] for f in j["failed_clips"]} == {"/e2.mp4": "old", "/e1.mp4": "bad", "/n3.mp4": "bad"}

    # 5 clips at 2 core-s each on 4 CPUs: bound 2 clips/s; 5 clips in 5 s = 1 clip/s = 50%
    e = efficiency(tally, 5.0, 4.0, gpu=False)
    assert e["bound_clips_per_s"] == 2.0 and e["processing_clips_per_s"] == 1.0 and e["efficiency"] == 0.5
    assert efficiency(tally, 5.0, 4.0, gpu=True)["bound_clips_per_s"] == 8.0  # the CPU stage alone
    # the first actor (n2's) was ready at 999.0; a graph started at 998.0 spent 1 s starting up:
    # 5 clips in the 4 s after it = 1.25 clips/s = 62.5% of the bound
    assert tally.first_ready == 999.0
    e = efficiency(tally, 5.0, 4.0, gpu=False, startup=tally.first_ready - 998.0)
    assert e["startup_s"] == 1.0 and e["efficiency_after_startup"] == 0.625 and e["efficiency"] == 0.5
    assert efficiency(tally, 5.0, 4.0, gpu=False, startup=-0.3)["startup_s"] == 0.0  # clocks a little apart

    many = Tally()
    many.add(batch([f"x{i}" for i in range(SHOWN + 50)], ["error"] * (SHOWN + 50)))
    assert len(many.summary()["errors"]) == SHOWN and len(many.failed) == SHOWN + 50
