"""Storage faults and secrets, with real processes on 127.0.0.1: the moto S3 server out of service
mid-write from the moment a given number of shards is stored (503 to every request, as a store in
an outage answers) until the test lets it back, and a secret key that must not leak into any output."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import pytest


pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RestartableS3:
    """moto's S3 server in this process, behind an OutageGate (gate) that puts it out of service on
    an event; stop() closes the port, start() reopens it (objects live in this process, so they
    survive a restart, as they would on a real store)."""

    def __init__(self):
        from conftest import _free_port

        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.server._server.app = self.gate = OutageGate(self.server._server.app)

    def stop(self):
        self.server.stop()

    def fs(self, secret="testing"):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret=secret, skip_instance_cache=True)


class OutageGate:
    """WSGI middleware in front of moto: after `close_after(prefix, n)`, the n-th stored .parquet
    object under prefix closes the gate, and from then on every request gets 503 until reopen().
    The outage starts on an event (a shard stored), never on a timer."""

    def __init__(self, app):
        import threading

        self.app, self.lock = app, threading.Lock()
        self.prefix, self.remaining, self.closed = None, 0, False

    def close_after(self, prefix: str, n: int) -> None:
        with self.lock:
            self.prefix, self.remaining, self.closed = "/" + prefix.strip("/") + "/", n, False

    def reopen(self) -> None:
        with self.lock:
            self.prefix, self.closed = None, False

    def __call__(self, environ, start_response):
        with self.lock:
            closed = self.closed
        if closed:
            start_response("503 Service Unavailable", [("Content-Type", "application/xml")])
            return [b"<Error><Code>ServiceUnavailable</Code><Message>outage</Message></Error>"]
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        out = self.app(environ, start_response)
        if method == "PUT" and path.endswith(".parquet") and self.prefix and path.startswith(self.prefix):
            with self.lock:
                self.remaining -= 1
                self.closed = self.remaining <= 0
        return out


@pytest.fixture(scope="module")
def s3():
    server = RestartableS3()
    server.start()
    yield server
    server.stop()


def job_env(s3, secret="testing", **extra):
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def extract(videos, out, *flags):
    return [sys.executable, "jobs/extract.py", "--input", videos, "--output", out, "--frames", "uniform:4",
            "--shard-size", "1", "--batch-size", "1", "--cpu-workers", "1", "--num-cpus", "2", *flags]


def shards(s3, prefix):
    fs = s3.fs()
    return [p for p in fs.find(prefix) if p.endswith(".parquet")] if fs.exists(prefix) else []


def stored_ids(s3, prefix):
    import pyarrow.parquet as pq

    fs = s3.fs()
    ids = []
    for p in shards(s3, prefix):
        with fs.open(p, "rb") as f:
            ids += pq.read_table(f, columns=["clip_id"]).column("clip_id").to_pylist()
    return ids


def logged(ray_tmp: str, text: str) -> bool:
    """Whether a log file of the Ray session under ray_tmp (the job's own) holds text."""
    for d, _, files in os.walk(ray_tmp):
        for f in files:
            if f.endswith((".err", ".out", ".log")):
                try:
                    with open(os.path.join(d, f), errors="replace") as fh:
                        if text in fh.read():
                            return True
                except OSError:
                    pass
    return False


def test_s3_outage_mid_write_retried_through_or_failed_clearly_then_rerun(s3, sample_videos):
    """The outages are bound to events, not to wall time: the server comes back once the job has
    logged that it retries a shard write (1), or once the job has ended (2)."""
    videos, n = sample_videos
    s3.fs().mkdir("faults")
    ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    try:
        # 1. the store goes out of service once 2 shards are stored and comes back once a shard write
        # has failed and is being retried (botocore's own retries, then ours): the job finishes with
        # every clip once
        prefix = "faults/retried"
        s3.gate.close_after(prefix, 2)
        proc = subprocess.Popen(extract(videos, f"s3://{prefix}", "--quiet"), cwd=ROOT,
                                env=job_env(s3, RAY_TMPDIR=ray_tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not logged(ray_tmp, "retrying in"):
            time.sleep(0.3)
        s3.gate.reopen()
        before = 2
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        summary = json.loads(s3.fs().cat(f"{prefix}/_summary.json"))
        print(f"outage after {before} shards until a write was retried: {summary['write_retries']} shard write(s) "
              f"retried, job {summary['elapsed_s']} s")
        assert summary["write_retries"] >= 1
        ids = stored_ids(s3, prefix)
        assert len(ids) == n and len(set(ids)) == n
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # 2. no retries allowed, the server down until the job has ended: it stops with one clear line;
    # after the restart a re-run completes
    prefix = "faults/failed"
    s3.gate.close_after(prefix, 2)
    proc = subprocess.Popen(extract(videos, f"s3://{prefix}", "--quiet", "--write-retries", "0"), cwd=ROOT,
                            env=job_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = 2
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        s3.gate.reopen()
    assert proc.returncode == 1, stdout[-2000:] + stderr[-2000:]
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("extract: error: extraction failed: StorageError: writing s3://faults/failed/"), error
    assert "failed after 1 attempt(s)" in error and "Traceback" not in stderr
    partial = stored_ids(s3, prefix)
    # the shards stored before the outage (a write already under way when it began may land too)
    assert len(partial) == len(set(partial)) and 2 <= len(partial) < n
    rerun = subprocess.run(extract(videos, f"s3://{prefix}", "--quiet"), cwd=ROOT, env=job_env(s3),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    print(f"outage with --write-retries 0 after {before} shards: '{error[:120]}...'; "
          f"{len(partial)} clips kept, the re-run processed {n - len(partial)}")
    assert f"{n - len(partial)} clips processed" in rerun.stdout
    ids = stored_ids(s3, prefix)
    assert len(ids) == n and len(set(ids)) == n  # nothing lost, nothing duplicated


def test_the_secret_key_appears_in_no_log_mlflow_record_or_parquet_metadata(s3, sample_videos, tmp_path):
    import pyarrow.parquet as pq

    videos, n = sample_videos
    marker = "SECRETMARKER" + secrets.token_hex(8)
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    mlflow_dir = tmp_path / "mlflow"
    mlflow_dir.mkdir()
    env = job_env(s3, secret=marker, RAY_TMPDIR=ray_tmp, MLFLOW_TRACKING_URI=f"sqlite:///{mlflow_dir}/mlflow.db")
    s3.fs(marker).mkdir("secrets")
    store = "s3://secrets/store"
    try:
        ext = subprocess.run(extract(videos, store), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert ext.returncode == 0, ext.stderr[-3000:]
        train = subprocess.run([sys.executable, "jobs/train.py", "--store", store, "--output", "s3://secrets/runs",
                                "--epochs", "1", "--num-workers", "1"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
        assert train.returncode == 0, train.stderr[-3000:]
        assert "checkpoint s3://secrets/runs/" in train.stdout  # checkpoints on the object store too

        places = {"extract stdout/stderr": (ext.stdout + ext.stderr).encode(),
                  "train stdout/stderr": (train.stdout + train.stderr).encode()}
        for label, root in (("Ray session", ray_tmp), ("MLflow store", str(mlflow_dir))):
            for d, _, files in os.walk(root):
                for f in files:
                    path = os.path.join(d, f)
                    if os.path.isfile(path) and not os.path.islink(path):
                        with open(path, "rb") as fh:
                            places[f"{label}: {os.path.relpath(path, root)}"] = fh.read()
        fs = s3.fs(marker)
        for p in (p for p in fs.find("secrets") if not p.endswith("/")):  # skip folder markers
            if p.endswith(".parquet"):
                with fs.open(p, "rb") as f:
                    meta = pq.ParquetFile(f).metadata
                places[f"Parquet metadata: {p}"] = repr(meta.metadata).encode() + str(meta.schema).encode()
            places[f"store object: {p}"] = fs.cat(p)
        logs = sum(1 for k in places if k.startswith("Ray session") and k.endswith((".log", ".out", ".err")))
        mlflow_files = sum(1 for k in places if k.startswith("MLflow store"))
        print(f"secret marker searched in {len(places)} files/streams ({logs} Ray log files, "
              f"{mlflow_files} MLflow files)")
        assert logs >= 5 and mlflow_files >= 3 and any(k.startswith("Parquet metadata") for k in places)
        assert any(k.endswith("model.pt") for k in places)
        leaks = [k for k, blob in places.items() if marker.encode() in blob]
        assert leaks == []

        from mlflow.tracking import MlflowClient

        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs and all(marker not in json.dumps([r.data.params, r.data.tags]) for r in runs)
        assert "AWS_SECRET_ACCESS_KEY" not in json.dumps([r.data.params for r in runs])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_s3_read_hiccup_is_retried_inside_the_clip(s3, monkeypatch, caplog):
    import logging

    from raylib.errors import ClipError
    from raylib.media import video

    import s3fs

    for k, v in job_env(s3).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: only ours remain
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3.fs()
    fs.mkdir("reads")
    fs.pipe("reads/clip.mp4", b"\x00video" * 1000)

    class RestartOnSecondRetry(logging.Handler):
        """The outage ends as the second retry is announced (not after a fixed time: a slow first
        attempt must not shorten it), so exactly two attempts fail and the third reads the clip."""

        def __init__(self):
            super().__init__(logging.WARNING)
            self.retries = 0

        def emit(self, record):
            if "retrying in" in record.getMessage():
                self.retries += 1
                if self.retries == 2:
                    s3.start()

    handler = RestartOnSecondRetry()
    logger = logging.getLogger("raylib.storage")
    s3.stop()
    logger.addHandler(handler)
    try:
        with caplog.at_level("WARNING", logger="raylib.storage"):
            data = video.open_media("s3://reads/clip.mp4")
    finally:
        logger.removeHandler(handler)
        if handler.retries < 2:
            s3.start()
    assert data.getvalue() == b"\x00video" * 1000
    assert "reading s3://reads/clip.mp4: EndpointConnectionError" in caplog.text
    assert "retrying in 2 s (attempt 2 of 4)" in caplog.text and "retrying in 4 s (attempt 3 of 4)" in caplog.text
    assert handler.retries == 2  # the third attempt read it
    s3fs.S3FileSystem.clear_instance_cache()

    s3.stop()  # and one that outlasts the retries: the clip fails with one line, the job does not
    monkeypatch.setattr(video, "READ_RETRIES", 0)
    try:
        with pytest.raises(ClipError) as info:
            video.open_media("s3://reads/clip.mp4")
    finally:
        s3.start()
        s3fs.S3FileSystem.clear_instance_cache()
    assert info.value.cause.startswith("cannot read: reading s3://reads/clip.mp4 failed after 1 attempt(s): "
                                       "EndpointConnectionError")
