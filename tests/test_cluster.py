"""Multi-node: a head and two worker nodes (ray.cluster_utils.Cluster) on 127.0.0.1. The extraction
job, submitted as a driver process with RAY_ADDRESS, spreads over both workers; a worker node
killed mid-run and a driver killed mid-run both end with every clip stored exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from raylib.store import data_files, read_store

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a dead node is noticed after ~3 s instead of Ray's default ~30 s
FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                      "health_check_failure_threshold": 3}
WORKER = {"num_cpus": 2, "resources": {"decode_node": 1}, "object_store_memory": 150 * 1024**2}


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPUs) + two worker nodes, in a temp dir of their own (RAY_TMPDIR while the module
    runs): Cluster writes its address into <temp dir>/ray/ray_current_cluster, and in the shared
    /tmp/ray a user's plain ray.init() beside the tests would join this cluster."""
    import shutil
    import tempfile

    from ray.cluster_utils import Cluster

    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: socket paths < 108 bytes
    try:
        c = Cluster(initialize_head=True, connect=False,
                    head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * 1024**2,
                                    "_system_config": FAST_HEALTH_CHECKS})
        for _ in range(2):
            c.add_node(**WORKER)
        c.wait_for_nodes()
        yield c
        c.shutdown()
    finally:
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(ray_tmp, ignore_errors=True)


def workers(cluster):
    return [n for n in cluster.list_all_nodes() if n is not cluster.head_node]


def start_job(cluster, videos, out):
    """jobs/extract.py as a driver connected to the cluster, decode tasks pinned to decode_node."""
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    cmd = [sys.executable, "jobs/extract.py", "--input", videos, "--output", out, "--frames", "uniform:4",
           "--shard-size", "1", "--batch-size", "1", "--cpu-resource", "decode_node", "--quiet"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_shards(proc, out, count, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and len(data_files(out)) < count:
        time.sleep(0.2)
    assert proc.poll() is None, f"the job ended before {count} shards: {proc.communicate()[1][-2000:]}"
    return len(data_files(out))


def node_of_feature_actor(cluster):
    """The worker node whose raylet parents the feature actor's process (only processes under
    this test's own cluster's raylets are looked at)."""
    for node in workers(cluster):
        try:
            children = psutil.Process(node.all_processes["raylet"][0].process.pid).children()
            if any("FeatureStage" in " ".join(p.cmdline() or []) for p in children):
                return node
        except psutil.NoSuchProcess:  # a process ended while looked at
            continue
    return None


def assert_exactly_once(out, n):
    ids = read_store(out, ["clip_id"]).column("clip_id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n, f"{len(ids)} rows, {len(set(ids))} distinct clips, {n} expected"
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.startswith(".tmp-")]


def test_worker_node_killed_mid_run_every_clip_once(cluster, sample_videos, tmp_path):
    videos, n = sample_videos
    out = str(tmp_path / "store")
    before = {node.node_id for node in workers(cluster)}
    proc = start_job(cluster, videos, out)
    try:
        at_kill = wait_for_shards(proc, out, 3)
        actor_node = node_of_feature_actor(cluster)
        victim = actor_node or workers(cluster)[0]
        t_kill = time.time()
        cluster.remove_node(victim, allow_graceful=False)  # raylet and its workers die at once
        stdout, stderr = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    after_kill = time.time() - t_kill
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.load(open(os.path.join(out, "_summary.json")))
    print(f"worker node (feature actor's: {actor_node is not None}) killed after {at_kill} of {n} shards; the job finished {after_kill:.1f} s later; "
          f"clips per node (decode): {summary['nodes']['cpu']}")
    assert_exactly_once(out, n)
    assert summary["clips_processed"] == n
    assert set(summary["nodes"]["cpu"]) == before  # decode ran on both worker nodes, never on the head
    assert cluster.head_node.node_id not in summary["nodes"]["feature"]
    assert victim.node_id in summary["nodes"]["cpu"]
    cluster.add_node(**WORKER)  # back to two workers for the next test
    cluster.wait_for_nodes()


def test_killed_driver_on_a_cluster_then_rerun_every_clip_once(cluster, sample_videos, tmp_path):
    videos, n = sample_videos
    out = str(tmp_path / "store")
    proc = start_job(cluster, videos, out)
    try:
        wait_for_shards(proc, out, 3)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies; the cluster cleans up its job
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1)
    partial = read_store(out, ["clip_id"]).column("clip_id").to_pylist()
    assert 3 <= len(partial) < n and len(set(partial)) == len(partial)

    rerun = start_job(cluster, videos, out)
    stdout, stderr = rerun.communicate(timeout=420)
    assert rerun.returncode == 0, stderr[-3000:]
    print(f"driver killed after {len(partial)} of {n} clips; the re-run processed {n - len(partial)}")
    assert f"{n - len(partial)} clips processed" in stdout
    assert_exactly_once(out, n)
