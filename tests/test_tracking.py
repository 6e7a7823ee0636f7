import contextlib
import os
import sqlite3
import subprocess
from dataclasses import dataclass

import pytest

from raylib import tracking


@dataclass(frozen=True)
class _Cfg:
    store: str = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/features"
    aws_secret_access_key: str = "wJalrXUtnFEMI"
    api_token: str = "tok-123"
    lr: float = 0.001


def test_config_params_carry_no_credentials():
    params = tracking.config_params(_Cfg())
    assert params == {"store": "s3://bucket/features", "lr": "0.001"}
    assert not any("wJalrXUtnFEMI" in v or "tok-123" in v for v in params.values())


def test_embedded_store_by_default_and_the_ui_command(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert tracking.ui_command().startswith(f"MLFLOW_BACKEND_STORE_URI=sqlite:///{tmp_path}/mlflow/mlflow.db "
                                            "bash mlflow/server.sh")
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout's own store
    assert tracking.ui_command().startswith("make mlflow-ui")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    assert tracking.tracking_uri() == "http://127.0.0.1:5555"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_experiments_open_on_the_model_training_view_and_runs_name_their_source(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    run_id = tracking.start_run("kind", "transformer/self/fbp", tracking.config_params(_Named()),
                                tracking.source_tags("jobs/train.py"))
    client = MlflowClient(tracking.tracking_uri())
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert run.info.run_name == "transformer/self/fbp"
    assert run.data.params == {"lr": "0.001"}  # run_name and quiet name or steer a run: no params
    assert run.data.tags["mlflow.source.name"] == "jobs/train.py" and run.data.tags["code_version"]


@dataclass(frozen=True)
class _Named:
    run_name: str = "transformer/self/fbp"
    lr: float = 0.001
    quiet: bool = True


def test_a_moved_embedded_store_still_finds_its_artifacts(monkeypatch, tmp_path):
    import shutil

    from mlflow.tracking import MlflowClient

    first = tmp_path / "checkout-a"
    monkeypatch.chdir(first.mkdir() or first)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = tracking.start_run("moving", "r", {})
    (tmp_path / "note.txt").write_text("hello")
    tracking.log_artifact(run_id, str(tmp_path / "note.txt"))
    tracking.end_run(run_id)
    second = tmp_path / "elsewhere" / "checkout-b"
    second.parent.mkdir()
    shutil.move(str(first), str(second))
    db = str(second / "mlflow" / "mlflow.db")
    assert tracking.relocate_artifacts(db) >= 2  # the experiment and the run
    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_run(run_id).info.artifact_uri.startswith(f"file://{second}/mlflow/artifacts/")
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    assert open(client.download_artifacts(run_id, "note.txt", str(tmp_path))).read() == "hello"
    assert tracking.relocate_artifacts(db) == 0  # already home


def test_metric_names_group_the_charts_held_out_scores_first():
    # the jobs' names -> MLflow's: a section per prefix, capitals (held-out scores) before train/
    expected = {"val_uar": "Val/UAR", "val_accuracy": "Val/accuracy", "val_loss": "Val/loss",
                "best_val_uar": "Val/best_UAR", "best_val_accuracy": "Val/best_accuracy",
                "val_recall_Happy": "Val_recall/Happy", "test_uar": "Test/UAR", "test_recall_Sad": "Test_recall/Sad",
                "train_loss": "train/loss", "train_images_per_s_per_worker": "train/images_per_s_per_worker",
                "cv_test_uar_mean": "CV/test_UAR_mean", "cv_pooled_test_accuracy": "CV/pooled_test_accuracy",
                "restarted_at_epoch": "restarted_at_epoch", "lr": "lr"}
    assert {k: tracking.metric_key(k) for k in expected} == expected
    # MLflow draws sections and charts in code-point order: the val scores, UAR first, before train/
    shown = sorted(tracking.metric_key(k) for k in ("train_loss", "val_accuracy", "val_recall_Angry", "best_val_uar",
                                                      "val_uar", "val_loss"))
    assert shown == ["Val/UAR", "Val/accuracy", "Val/best_UAR", "Val/loss", "Val_recall/Angry", "train/loss"]


def test_links_open_the_model_training_view_and_saved_views_pick_the_trials(monkeypatch, tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert tracking.ui_link("7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert tracking.ui_link("7", view="k") == ("http://127.0.0.1:5000/#/experiments/7/runs?workflowType="
                                               "machine_learning&viewStateShareKey=k")
    assert tracking.open_line("L").startswith(f"L  (serve the store first: MLFLOW_BACKEND_STORE_URI=sqlite:///{tmp_path}")
    parent = tracking.start_run("views", "sweep", {}, purpose="what it is for")
    tracking.log_metrics(parent, {"val_uar": 0.5}, 0)
    client = MlflowClient(tracking.tracking_uri())
    experiment = client.get_run(parent).info.experiment_id
    assert client.get_experiment(experiment).tags[tracking.NOTE_TAG] == "what it is for"
    assert client.get_run(parent).data.metrics == {"Val/UAR": 0.5}
    assert tracking.metric_history(parent, "val_uar") == {0: 0.5}
    link = tracking.save_runs_view(experiment, "k1", parent, ["fusion"], ["best_val_uar", "val_uar"], "best_val_uar")
    assert link == tracking.ui_link(experiment, view="k1")
    state = json.loads(client.get_experiment(experiment).tags["mlflow.sharedViewState.k1"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent}'"
    assert state["orderByKey"] == "metrics.`Val/best_UAR`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == ["params.`fusion`", "metrics.`Val/best_UAR`", "metrics.`Val/UAR`"]
    assert state["columnOrder"][0] == "attributes.`Run Name`" and state["columnWidths"]["attributes.`Run Name`"] == tracking.RUN_NAME_PX
    monkeypatch.setattr(tracking, "SHARED_VIEW_VERSIONS", ((0, 1),))  # an MLflow whose UI reads no such view
    assert tracking.save_runs_view(experiment, "k2", parent, [], [], "val_uar") is None
    assert "mlflow.sharedViewState.k2" not in client.get_experiment(experiment).tags
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:pw@mlflow.internal:5000/")
    assert tracking.ui_link("3", "abc") == "http://mlflow.internal:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert tracking.ui_link("3", "abc", tab="model-metrics") == ("http://mlflow.internal:5000/#/experiments/3/runs/abc/"
                                                                 "model-metrics?workflowType=machine_learning")
    assert tracking.open_line("L") == "L"


def test_the_ui_script_names_the_newest_sweep_first(monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    old = tracking.start_run("grid", "sweep-old", {}, {"kind": "sweep"})
    import time

    time.sleep(0.01)  # a later start time (milliseconds)
    new = tracking.start_run("grid", "sweep-new", {}, {"kind": "sweep"})
    tracking.start_run("single", "one", {})
    from mlflow.tracking import MlflowClient

    eid = MlflowClient(uri).get_run(new).info.experiment_id
    tracking.save_runs_view(eid, new, new, ["fusion"], ["val_uar"], "val_uar")
    lines = tracking.store_links(uri, "http://127.0.0.1:5001")
    assert lines[0] == (f"newest sweep sweep-new: http://127.0.0.1:5001/#/experiments/{eid}/runs?workflowType="
                        f"machine_learning&viewStateShareKey={new}") and old not in lines[0]
    assert sorted(ln.split(":")[0] for ln in lines[1:]) == ["experiment grid", "experiment single"]


def test_a_store_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    # a folder that cannot be made
    with pytest.raises(tracking.TrackingError, match=r"the MLflow store /proc/nowhere/mlflow.db cannot be written"):
        tracking.check_reachable("sqlite:////proc/nowhere/mlflow.db")
    # a store SQLite can only open read-only (the copy of a checkout a cluster job runs in): the run's first write
    # would fail midway; root writes whatever the mode bits say, so as root the file is made immutable instead
    path = str(tmp_path / "ro" / "mlflow.db")
    os.makedirs(os.path.dirname(path))
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE runs (id TEXT)")
        db.commit()
    root = os.geteuid() == 0
    if root and subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
        pytest.skip("as root a read-only store needs chattr +i, which this filesystem or container refuses")
    if not root:
        os.chmod(path, 0o444)
        os.chmod(os.path.dirname(path), 0o555)
    try:
        with pytest.raises(tracking.TrackingError, match=rf"the MLflow store {path} cannot be written \(attempt to "
                                                         r"write a readonly database\): set MLFLOW_TRACKING_URI"):
            tracking.check_reachable(f"sqlite:///{path}")
    finally:
        if root:
            subprocess.run(["chattr", "-i", path])
        else:
            os.chmod(os.path.dirname(path), 0o755)
            os.chmod(path, 0o644)
    # a writable one passes, once per process
    tracking.check_reachable(f"sqlite:///{tmp_path}/store/mlflow.db")
    assert os.path.exists(tmp_path / "store" / "mlflow.db")
