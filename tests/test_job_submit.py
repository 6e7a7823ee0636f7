"""`ray start --head` on 127.0.0.1 with token auth, then `ray job submit -- python jobs/extract.py`."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import stop_head
from raylib.sample import SampleConfig, generate_sample_set
from raylib.store import read_store

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the head's dashboard answers (the job server lives there), or the head exits."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"ray start exited with {proc.returncode}: {proc.stdout.read()[-3000:]}"
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5)
            return
        except urllib.error.HTTPError:  # it answers (401 without the token): it is up
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the head's dashboard {url} did not answer within {timeout} s")


@pytest.fixture
def head(tmp_path):
    """A Ray head node started with the `ray` CLI from this venv, token auth on, loopback only;
    it runs in the foreground (--block) under this test, with its own temp dir (RAY_TMPDIR: its
    session and its ray_current_cluster file, which a later ray.init() elsewhere would otherwise
    find and try to join), and the test stops its processes alone."""
    ray_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    proc = subprocess.Popen([f"{BIN}/ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--block",
                             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             "--include-dashboard=true", "--disable-usage-stats",
                             # its own agent ports: another Ray on the machine holds the defaults
                             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                             f"--metrics-export-port={free_port()}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{dash}", proc)
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        stop_head(proc, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def submit(env, address, *args):
    """`ray job submit`; again while the head answers that its job agent is not up yet (it registers
    after the dashboard answers, later on a loaded machine)."""
    import time

    runtime_env = json.dumps({"working_dir": ROOT, "excludes": [".venv", "data", ".git", "mlflow"]})
    for _ in range(30):
        job = subprocess.run([f"{BIN}/ray", "job", "submit", "--address", address, "--runtime-env-json", runtime_env,
                              "--", "python", *args], env=env, capture_output=True, text=True, timeout=600)
        if job.returncode == 0 or "No available agent to submit job" not in job.stderr + job.stdout:
            return job
        time.sleep(1)
    return job


def test_extract_job_submitted_to_a_token_authenticated_head(head, tmp_path):
    env, address = head
    videos, out = str(tmp_path / "videos"), str(tmp_path / "store")
    n = len(generate_sample_set(SampleConfig(out_dir=videos, train_per_class=1, val_per_class=0)))
    job = submit(env, address, "jobs/extract.py", "--input", videos, "--output", out, "--frames", "uniform:2", "--quiet")
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert f"extract: {n} clips processed (ok {n})" in job.stdout
    assert "succeeded" in job.stdout
    assert "constructor arguments in the object store" not in job.stdout + job.stderr  # Ray's C++ notice, per actor
    table = read_store(out, ["clip_id", "status"])
    assert table.num_rows == n and set(table.column("status").to_pylist()) == {"ok"}

    # no token at all: a client with token auth off and no ~/.ray/auth_token to fall back on
    home = tmp_path / "home"
    home.mkdir()
    anonymous = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    refused = submit({**anonymous, "HOME": str(home)}, address, "jobs/extract.py", "--help")
    assert refused.returncode != 0
    assert "no authentication token was found" in refused.stdout + refused.stderr
    # and the job server itself answers a request without the token with 401
    import urllib.error
    import urllib.request

    body = json.dumps({"entrypoint": "python -c 'print(1)'"}).encode()
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(f"{address}/api/jobs/", data=body, method="POST",
                                                      headers={"Content-Type": "application/json"}), timeout=30)
    assert denied.value.code in (401, 403)
    listing = subprocess.run([f"{BIN}/ray", "job", "list", "--address", address], env=env, capture_output=True,
                             text=True, timeout=120)
    assert listing.stdout.count("submission_id") == 1  # only the authenticated job ever ran

    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    refused = submit(wrong, address, "jobs/extract.py", "--help")
    assert refused.returncode != 0
    assert "Invalid authentication token" in refused.stdout + refused.stderr  # the server said no
