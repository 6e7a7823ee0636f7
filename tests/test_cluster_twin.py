"""The one-machine twin of cluster.yaml (raylib/cluster_twin.py): generated from the file, valid
for the cluster launcher, and brought up for real: Ray's autoscaler (fake multi-node provider)
launches the node types the jobs ask for from zero and removes them when idle."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import yaml

from conftest import stop_head
from raylib import cluster_twin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def cluster_yaml() -> dict:
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def test_the_twin_keeps_the_node_types_and_their_resources_and_validates():
    from ray.autoscaler._private.util import validate_config

    cluster = cluster_yaml()
    twin = cluster_twin.twin_config(cluster, port=6390)
    validate_config(twin)  # the cluster launcher's own schema
    workers = {k: v for k, v in cluster["available_node_types"].items() if k != cluster["head_node_type"]}
    twins = {k: v for k, v in twin["available_node_types"].items() if k != twin["head_node_type"]}
    assert set(twins) == set(workers) == {"cpu_worker", "gpu_worker"}
    for name, t in workers.items():
        assert twins[name]["resources"] == {"CPU": 1, **t["resources"]}  # decode_node / gpu_node kept
        assert twins[name]["min_workers"] == t["min_workers"] == 0
        assert twins[name]["max_workers"] == min(t["max_workers"], 2)
    assert twin["available_node_types"][twin["head_node_type"]]["resources"]["CPU"] == 0
    assert twin["provider"]["type"] == "fake_multinode" and twin["provider"]["gcs_address"] == "127.0.0.1:6390"
    assert twin["max_workers"] == 4


def test_the_twin_command_prints_yaml_or_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raylib.cluster_twin", os.path.join(ROOT, "cluster.yaml"), "--port",
                          "6400"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and yaml.safe_load(out.stdout)["provider"]["gcs_address"] == "127.0.0.1:6400"
    bad = subprocess.run([sys.executable, "-m", "raylib.cluster_twin", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "cluster_twin: error:" in bad.stderr
    (tmp_path / "headless.yaml").write_text("available_node_types: {a: {}}\nhead_node_type: b\n")
    bad = subprocess.run([sys.executable, "-m", "raylib.cluster_twin", str(tmp_path / "headless.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "head_node_type 'b'" in bad.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeWatch(threading.Thread):
    """Polls the twin's alive nodes (Ray's state API through the CLI) and keeps a timeline: seconds
    since start, and the worker node types alive then, named by their custom resource."""

    def __init__(self, env: dict, address: str):
        super().__init__(daemon=True)
        self.env, self.address = env, address
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, tuple[str, ...]]] = []
        self.done = threading.Event()

    def alive(self) -> tuple[str, ...] | None:
        out = subprocess.run([f"{BIN}/ray", "list", "nodes", "--address", self.address, "--format", "json",
                              "--filter", "state=ALIVE", "--detail"], env=self.env, capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            return None
        kinds = []
        for node in json.loads(out.stdout):
            total = node.get("resources_total") or {}
            kinds += [k for k in ("decode_node", "gpu_node") if k in total]
        return tuple(sorted(kinds))

    def run(self):
        while not self.done.is_set():
            now = self.alive()
            if now is not None and (not self.timeline or self.timeline[-1][1] != now):
                self.timeline.append((round(time.monotonic() - self.t0, 1), now))
                print(f"twin: {self.timeline[-1][0]:6.1f} s  worker nodes alive: {', '.join(now) or 'none'}", flush=True)
            self.done.wait(0.5)

    def seen(self, kind: str) -> bool:
        return any(kind in kinds for _, kinds in self.timeline)

    def wait_for(self, kinds: tuple[str, ...], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.timeline and self.timeline[-1][1] == kinds:
                return True
            time.sleep(0.5)
        return False


@pytest.fixture
def twin(tmp_path):
    """The twin of cluster.yaml brought up by `ray start --head --autoscaling-config` on 127.0.0.1,
    its own temp dir and ports, token auth on; stopped by its own processes (stop_head)."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    port, dash = free_port(), free_port()
    config = tmp_path / "twin.yaml"
    config.write_text(yaml.safe_dump(cluster_twin.twin_config(cluster_yaml(), port=port)))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_TMPDIR": ray_tmp, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([f"{BIN}/ray", "start", "--head", f"--port={port}", "--num-cpus=0", "--block",
                             f"--autoscaling-config={config}", "--node-ip-address=127.0.0.1",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                             "--disable-usage-stats"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        from test_job_submit import wait_until_up

        wait_until_up(f"http://127.0.0.1:{dash}", proc)
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        stop_head(proc, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_the_twin_autoscales_from_zero_to_the_node_types_the_jobs_ask_for_and_back(twin, tmp_path):
    from test_job_submit import submit

    from raylib.sample import SampleConfig, generate_sample_set
    from raylib.store import read_store

    env, address = twin
    videos, store = str(tmp_path / "videos"), str(tmp_path / "store")
    n = len(generate_sample_set(SampleConfig(out_dir=videos, train_per_class=1, val_per_class=1)))
    jobs_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    watch = NodeWatch(env, address)
    watch.start()
    try:
        assert watch.wait_for((), 60), watch.timeline  # from zero: the head alone
        extract = submit(jobs_env, address, "jobs/extract.py", "--input", videos, "--output", store, "--frames",
                         "uniform:2", "--cpu-resource", "decode_node", "--feature-resource", "gpu_node", "--quiet")
        assert extract.returncode == 0, (extract.stdout + extract.stderr)[-3000:]
        extracted = watch.timeline[-1][0]
        assert watch.seen("decode_node") and watch.seen("gpu_node"), watch.timeline
        ids = read_store(store, ["clip_id", "status"]).column("clip_id").to_pylist()
        assert len(ids) == len(set(ids)) == n  # every clip stored once
        train = submit(jobs_env, address, "jobs/train.py", "--store", store, "--output", str(tmp_path / "runs"),
                       "--epochs", "1", "--num-workers", "1", "--cpus-per-worker", "1", "--worker-resource",
                       "gpu_node", "--quiet")
        assert train.returncode == 0, (train.stdout + train.stderr)[-3000:]
        assert "train: best epoch 1/1" in train.stdout
        # idle workers go (twin idle timeout: 6 s)
        assert watch.wait_for((), 120), watch.timeline
    finally:
        watch.done.set()
        watch.join(timeout=70)
    print("twin timeline (s, worker nodes alive): " + "; ".join(f"{t} {'+'.join(k) or 'none'}"
                                                                for t, k in watch.timeline) + f"; extraction done by {extracted} s")
