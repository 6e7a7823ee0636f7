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
        assert twins[name]["resources"] == {"CPU": 1, "memory": cluster_twin.MEMORY_PER_NODE, **t["resources"]}  # decode_node / gpu_node kept
        assert twins[name]["min_workers"] == t["min_workers"] == 0
        assert twins[name]["max_workers"] == min(t["max_workers"], 2)
    assert twin["available_node_types"][twin["head_node_type"]]["resources"]["CPU"] == 0
    assert twin["provider"]["module"] == "raylib.cluster_twin.TwinNodeProvider" and twin["provider"]["gcs_address"] == "127.0.0.1:6390"
    assert twin["max_workers"] == 4


def test_the_twin_command_prints_yaml_or_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raylib.cluster_twin", os.path.join(ROOT, "cluster.yaml"), "--port",
                          "6400"], capture_output=True, text=True, cwd=ROOT)
    provider = yaml.safe_load(out.stdout)["provider"]
    assert out.returncode == 0 and provider["gcs_address"] == "127.0.0.1:6400"
    assert provider["module"] == "raylib.cluster_twin.TwinNodeProvider"  # importable by the autoscaler
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


def autoscaler_events(ray_tmp: str) -> list[tuple[str, str, str, int]]:
    """(time, "Adding" | "Removing", node type, how many nodes) of each launch and removal the
    twin's autoscaler logged (its monitor.log, in the twin's own temp dir), in order. One event
    may name several nodes ("Adding 2 nodes of type gpu_worker")."""
    import glob
    import re

    out = []
    for path in sorted({os.path.realpath(p) for p in glob.glob(os.path.join(ray_tmp, "ray", "session_*", "logs",
                                                                             "monitor.log"))}):
        with open(path, errors="replace") as f:
            for line in f:
                m = re.search(r"^\S+ (\S+?),\d+.*:event_summary:(Adding|Removing) (\d+) nodes?(?:\(s\))? of type "
                              r"(\S+?)[ .]", line)
                if m:
                    out.append((m.group(1), m.group(2), m.group(4), int(m.group(3))))
    return out


def _answers(url: str) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


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
                             # its own agent ports: another Ray on the machine holds the defaults
                             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                             f"--metrics-export-port={free_port()}", "--disable-usage-stats"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        from test_job_submit import wait_until_up

        wait_until_up(f"http://127.0.0.1:{dash}", proc)
        yield env, f"http://127.0.0.1:{dash}", ray_tmp
    finally:
        stop_head(proc, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_the_twin_autoscales_from_zero_to_the_node_types_the_jobs_ask_for_and_back(twin, tmp_path):
    from raylib.sample import SampleConfig, generate_sample_set

    env, address, ray_tmp = twin
    videos, store = str(tmp_path / "videos"), str(tmp_path / "store")
    n = len(generate_sample_set(SampleConfig(out_dir=videos, train_per_class=1, val_per_class=1)))
    # the team server's script on its own store: the training's processes on several nodes log
    # through it, as on a real cluster
    port = free_port()
    server = subprocess.Popen(["bash", "mlflow/server.sh"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**env, "MLFLOW_PORT": str(port), "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/server.db",
                                   "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts")})
    try:
        run_jobs(env, address, ray_tmp, tmp_path, videos, store, n, f"http://127.0.0.1:{port}")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def submit(env, address, tracking, *args):
    """`ray job submit` of a job of this checkout (by its path: the twin's nodes share this disk,
    and Ray deletes a working_dir package when a node that unpacked it is removed, from under the
    jobs still running in it) whose driver logs to the MLflow server at `tracking` (a job's driver
    gets the head's environment, not the submitter's: it goes in the runtime env)."""
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": tracking}})
    for _ in range(30):
        job = subprocess.run([f"{BIN}/ray", "job", "submit", "--address", address, "--runtime-env-json", runtime_env,
                              "--", "python", os.path.join(ROOT, args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=600)
        if job.returncode == 0 or "No available agent to submit job" not in job.stderr + job.stdout:
            return job
        time.sleep(1)
    return job


def run_jobs(env, address, ray_tmp, tmp_path, videos, store, n, tracking):
    from mlflow.tracking import MlflowClient

    from raylib.store import read_store

    assert wait_for(lambda: _answers(f"{tracking}/health"), 90), "the MLflow server did not start"
    assert autoscaler_events(ray_tmp) == []  # from zero: the head alone, nothing launched
    extract = submit(env, address, tracking, "jobs/extract.py", "--input", videos, "--output", store, "--frames",
                     "uniform:2", "--cpu-resource", "decode_node", "--feature-resource", "gpu_node", "--quiet")
    assert extract.returncode == 0, (extract.stdout + extract.stderr)[-3000:]
    launched = {kind for _, what, kind, _ in autoscaler_events(ray_tmp) if what == "Adding"}
    assert launched == {"cpu_worker", "gpu_worker"}, autoscaler_events(ray_tmp)  # decode_node, gpu_node
    ids = read_store(store, ["clip_id"]).column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == n  # every clip stored once
    train = submit(env, address, tracking, "jobs/train.py", "--store", store, "--output", str(tmp_path / "runs"),
                   "--epochs", "1", "--num-workers", "1", "--cpus-per-worker", "1", "--worker-resource", "gpu_node",
                   "--quiet")
    assert train.returncode == 0, (train.stdout + train.stderr)[-3000:]
    assert "train: best epoch 1/1" in train.stdout
    runs = MlflowClient(tracking).search_runs([e.experiment_id for e in MlflowClient(tracking).search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]  # logged through the server from the twin's nodes

    def all_removed():
        events = autoscaler_events(ray_tmp)
        return all(sum(n for _, w, k, n in events if k == kind and w == "Adding")
                   == sum(n for _, w, k, n in events if k == kind and w == "Removing") for kind in launched)

    # idle workers go (twin: after 6 s). In about half of this test's runs on 2 cores the autoscaler went on adding a
    # cpu_worker and removing it when idle for minutes after the training ended (a resource request that outlives
    # the job; cause not pinned down, docs/cluster.md): then every type's idle scale-down is what
    # must have happened, and the timeline is printed
    timeline = lambda: "; ".join(f"{t} {w} {n} {k}" for t, w, k, n in autoscaler_events(ray_tmp))  # noqa: E731
    if not wait_for(all_removed, 60):
        removed = {k for _, w, k, _ in autoscaler_events(ray_tmp) if w == "Removing"}
        assert removed == launched, timeline()  # (a str: pytest does not cut it)
        print("twin: worker nodes still come and go after the jobs: " + timeline())
    print("twin autoscaler timeline: " + timeline())
