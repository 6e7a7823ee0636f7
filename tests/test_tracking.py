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
    assert tracking.ui_command() == (f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow/mlflow.db "
                                     "--host 127.0.0.1 --port 5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    assert tracking.tracking_uri() == "http://127.0.0.1:5555"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
