import os
from dataclasses import dataclass

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
