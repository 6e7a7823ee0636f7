"""Runs that say what went wrong: the one-line refusals before any training (a store without val
clips, a reused run name, an unreachable MLflow server, more workers than the cluster holds), the
choice among tied epochs, the ending of trials ASHA stopped, and Ctrl-C ending a run as KILLED."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from raylib import tracking
from raylib.errors import StoreError, TrackingError
from raylib.labels import EMOTIONS
from raylib.metrics import keep_score, pick_best
from raylib.runtime import capacity_error
from raylib.schema import to_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = {"backbone": "dlib_resnet", "weights": "packaged", "weights_digest": "ab" * 32, "enhancement": "basic",
          "audio_mode": "spectrogram", "frames": "uniform:4", "code_version": "0.1.0"}


def write_store(root, splits=("train", "val"), per_class=2) -> str:
    """A small store written with the store's schema: per split, per_class clips of each emotion,
    4 frames of 8-d features and a [1, 200, 70] spectrogram (the smallest AlexNet's trunk takes)."""
    rng = np.random.default_rng(0)
    for split in splits:
        rows = [{"clip_id": f"{split}{c}-{i}", "uri": f"/clips/{split}/{c}-{i}.mp4", "label": name, "split": split,
                 "dataset": "manifest", "status": "ok", "visual_features": rng.normal(size=(4, 8)).astype(np.float32),
                 "audio": rng.normal(size=(1, 200, 70)).astype(np.float32), **RECIPE}
                for c, name in enumerate(EMOTIONS) for i in range(per_class)]
        os.makedirs(os.path.join(root, split), exist_ok=True)
        pq.write_table(to_table(rows), os.path.join(root, split, "part-0.parquet"))
    return str(root)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


def job_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            **extra}


def test_tied_epochs_keep_the_earliest_and_unreported_metrics_never_win():
    epochs = [{"epoch": 0, "val_uar": 0.30}, {"epoch": 1, "val_uar": 0.50}, {"epoch": 2, "val_uar": 0.50},
              {"epoch": 3, "val_uar": float("nan")}, {"epoch": 4}]
    assert pick_best(epochs, "val_uar") == 1
    assert pick_best(list(reversed(epochs)), "val_uar") == 3  # whatever the order given: epoch 1 again
    assert pick_best([{"epoch": 0}, {"epoch": 1, "val_uar": float("nan")}], "val_uar") is None
    # Ray keeps the later of equal scores; the keep score sinks epochs that only tie an earlier one
    best, scores = -1.0, []
    for e in epochs[:3]:
        scores.append(keep_score(e["val_uar"], best))
        best = max(best, e["val_uar"])
    assert max(range(3), key=lambda i: (scores[i], i)) == 1  # Ray's top checkpoint: epoch 1, not 2
    from raylib.train.job import best_checkpoint

    kept = [("ckpt-2", epochs[2]), ("ckpt-1", epochs[1])]
    assert best_checkpoint(kept, "val_uar")[0] == "ckpt-1"


def test_a_store_without_val_clips_refuses_before_any_run(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from raylib.train.job import TrainConfig, run_train

    store = write_store(tmp_path / "store", splits=("train",))
    with pytest.raises(StoreError) as e:
        run_train(TrainConfig(store=store, output=str(tmp_path / "runs"), experiment="no-val"))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"feature store {store} has no labelled val clips")
    assert "split column" in message and "val split" in message
    assert MlflowClient(mlflow_uri).get_experiment_by_name("no-val") is None  # nothing was started


def test_a_run_name_already_in_the_experiment_is_refused(mlflow_uri):
    run_id = tracking.start_run("names", "my-run", {})
    with pytest.raises(TrackingError) as e:
        tracking.require_new_run_name("names", "my-run", "choose another --run-name")
    assert str(e.value) == (f"experiment 'names' already has a run named 'my-run' (run {run_id}, RUNNING): "
                            f"choose another --run-name")
    tracking.require_new_run_name("names", "other-run", "")  # a new name, or a new experiment, passes
    tracking.require_new_run_name("no-such-experiment", "my-run", "")


def test_workers_the_cluster_can_never_hold_are_one_line():
    two_cpus = [{"CPU": 2.0, "memory": 8 * 2**30}]
    reading = ("reading the store", {"CPU": 1.0})  # Ray Data's file listing task takes a whole CPU
    fix = "lower --num-workers or --cpus-per-worker"
    assert capacity_error("--num-workers 8", 8, {"CPU": 0.5}, two_cpus, fix, reading) == (
        "--num-workers 8 x 0.5 CPU needs 4 CPUs, and reading the store 1 CPU more; the cluster has 2 "
        "(no autoscaler): lower --num-workers or --cpus-per-worker")
    assert capacity_error("--num-workers 2", 2, {"CPU": 0.5}, two_cpus, fix, reading) is None
    # workers that leave less than a CPU for reading the store wait forever too
    assert "needs 1.5 CPUs, and reading the store" in capacity_error("--num-workers 3", 3, {"CPU": 0.5}, two_cpus, fix, reading)
    gpu = capacity_error("--num-workers 2", 2, {"CPU": 0.5, "GPU": 1.0}, two_cpus, {"CPU": fix, "GPU": "no --use-gpu"})
    assert gpu == "--num-workers 2 x 0.5 CPU + 1 GPU needs 2 GPUs; the cluster has none (no autoscaler): no --use-gpu"
    custom = capacity_error("--num-workers 1", 1, {"CPU": 0.5, "gpu_node": 0.001}, two_cpus, fix)
    assert custom.startswith("--num-workers 1 x 0.5 CPU + gpu_node needs nodes with the resource gpu_node; the cluster has none")
    # enough CPUs in all, but no node holds a whole worker
    split = capacity_error("--num-workers 2", 2, {"CPU": 1.5}, [{"CPU": 1.0}] * 4, fix)
    assert split == f"--num-workers 2 x 1.5 CPU: the cluster's 4 node(s) hold at most 0 at once (no autoscaler): {fix}"
    assert capacity_error("--num-workers 2", 2, {"CPU": 1.5}, [{"CPU": 2.0}] * 2, fix) is None


def test_an_unreachable_tracking_server_is_one_line_within_seconds(tmp_path):
    store = write_store(tmp_path / "store")
    uri = f"http://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "jobs/train.py", "--store", store, "--output", str(tmp_path / "runs")],
                          cwd=ROOT, env=job_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == 1 and elapsed < 60
    assert done.stderr.strip().splitlines() == [
        f"train: error: MLflow tracking server {uri} unreachable: [Errno 111] Connection refused (set "
        f"MLFLOW_TRACKING_URI to a running server, or unset it for the local store)"]


def test_trials_asha_stopped_end_finished_with_their_best_metrics_and_the_report_marks_them(mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from raylib.train.sweep import best_cells, child_results, end_open_trials, report

    client = MlflowClient(mlflow_uri)
    parent = tracking.start_run("sweep-ends", "sweep", {})

    def trial(visual, uars):
        run_id = tracking.start_run("sweep-ends", f"{visual}/self/fbp", {"visual_attention": visual,
                                    "audio_attention": "self", "fusion": "fbp", "lr": "0.001"}, parent_run_id=parent)
        for epoch, uar in enumerate(uars):
            tracking.log_metrics(run_id, {"val_uar": uar, "val_accuracy": uar + 0.1}, epoch)
        return run_id

    finished = trial("transformer", [0.2, 0.3, 0.3, 0.25])
    tracking.log_metrics(finished, {"best_val_uar": 0.3, "best_val_accuracy": 0.4}, 1)
    client.set_tag(finished, "best_epoch", "1")
    tracking.end_run(finished)
    stopped = trial("self", [0.4, 0.4])  # ASHA stopped it after 2 of 4 epochs: its run_train never ended it
    last = trial("self-last", [0.1, 0.2, 0.2, 0.1])  # ... and this one at max_t, its last report, where
    tracking.end_run(last, "FAILED")  # its run_train saw its Ray Train run die with the stopped trial
    failed = trial("relation", [0.1])
    ends = dict(epochs=4, output=str(tmp_path), store=str(tmp_path))  # no checkpoints kept there: no artifacts
    assert end_open_trials(parent, "val_uar", failed={"relation/self/fbp"}, **ends) == 3
    run = client.get_run(last)
    assert run.info.status == "FINISHED" and "stopped_early" not in run.data.tags and run.data.tags["best_epoch"] == "1"
    run = client.get_run(stopped)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stopped_early"] == "true" and run.data.tags["stopped_at_epoch"] == "2"
    assert run.data.tags["best_epoch"] == "0"  # tied epochs: the earliest
    assert [(m.step, m.value) for m in client.get_metric_history(stopped, "Val/best_UAR")] == [(0, 0.4)]
    assert client.get_run(failed).info.status == "FAILED"
    results = child_results(parent)
    assert {r["visual"]: r["stopped_at_epoch"] for r in results} == {"transformer": None, "self": 2, "self-last": None,
                                                                     "relation": None}
    assert pick_best(results, "val_uar", "best_epoch") == [r["visual"] for r in results].index("self")
    cells = best_cells(results, "val_uar")
    assert {c["visual"] for c in cells} == {"transformer", "self", "self-last"}  # the failed one reported no best
    text = report(cells, ["self", "relation", "transformer"], ["self"], ["fbp"], "val_uar")
    assert "| Self | 50.0 / 40.0 (stopped at epoch 2) |" in text and "| Relation | - |" in text and "nan" not in text
    # an interrupted sweep ends what is still open as KILLED
    open_run = trial("mean", [0.1])
    assert end_open_trials(parent, "val_uar", interrupted=True, **ends) == 1
    assert client.get_run(open_run).info.status == "KILLED"


@pytest.mark.slow
def test_ctrl_c_stops_training_and_ends_its_run_as_killed(tmp_path, bystander_ray):
    """Beside another local Ray whose address file the job's ray.init() would find (the same
    RAY_TMPDIR): the job starts a Ray of its own, its workers ask only that one (Ray Train's
    placement-group cleaner found two and complained each time it looked), and Ctrl-C ends the
    run as KILLED and leaves the other Ray running."""
    import glob

    from mlflow.tracking import MlflowClient

    bystander_tmp, bystander = bystander_ray
    store = write_store(tmp_path / "store")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job = subprocess.Popen([sys.executable, "jobs/train.py", "--store", store, "--output", str(tmp_path / "runs"),
                            "--run-name", "interrupted", "--epochs", "200", "--num-workers", "1", "--quiet"],
                           cwd=ROOT, env=job_env(MLFLOW_TRACKING_URI=uri, RAY_TMPDIR=bystander_tmp),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client, run, deadline = MlflowClient(uri), None, time.monotonic() + 240
    try:
        while time.monotonic() < deadline and job.poll() is None:  # until the first epoch is logged
            experiment = os.path.exists(f"{tmp_path}/mlflow.db") and client.get_experiment_by_name("emotion-fusion")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and client.get_metric_history(runs[0].info.run_id, "Val/UAR"):
                run = runs[0]
                break
            time.sleep(1)
        assert run is not None, job.stderr.read() if job.poll() is not None else "no epoch logged in 240 s"
        t0 = time.monotonic()
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
    print(f"train exited {time.monotonic() - t0:.1f} s after SIGINT")
    assert job.returncode == 130 and time.monotonic() - t0 < 60
    assert err.strip().splitlines()[-1] == f"train: interrupted; MLflow run {run.info.run_id} ended as KILLED"
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    sessions = glob.glob(f"{bystander_tmp}/ray/session_2*")
    assert len(sessions) == 2, sessions  # the bystander's and the job's own: the job joined nothing
    assert "multiple active Ray instances" not in err
    cleaner = [f for f in glob.glob(f"{bystander_tmp}/ray/session_2*/logs/worker-*.err")
               if ":actor_name:PlacementGroupCleaner" in open(f, errors="replace").read()]
    assert cleaner and not any("multiple active Ray instances" in open(f, errors="replace").read() for f in cleaner)
    assert bystander.poll() is None  # the other Ray still runs
