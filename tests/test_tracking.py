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
