"""Connecting to Ray: the cluster named by RAY_ADDRESS, or the embedded local default.

Every job connects through init_ray. On the embedded default the job's terminal shows the job's
own lines and Ray Data's progress bars (on a terminal); Ray's INFO lines, worker output and
start-up warnings, and hints about tools that are not installed stay in Ray's logs
(/tmp/ray/session_latest/logs).
"""

from __future__ import annotations

import logging
import os

# Share of a node's custom resource (cluster.yaml: decode_node, gpu_node) one task, actor or
# training worker asks for: the resource picks the node type, CPUs and GPUs bound concurrency.
RESOURCE_SHARE = 0.001
RAY_DATA_LOGGING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_data_logging.yaml")
# driver-side loggers whose messages are no news to a user of these jobs
QUIET_LOGGERS = (
    "ray.tune.utils.callback",  # "The TensorboardX logger cannot be instantiated ..." (not installed)
    "ray._private.authentication",  # "Token authentication is enabled for this Ray cluster"
    "mlflow.store.db.utils",  # "Creating initial MLflow database tables..."
    "mlflow.pytorch",  # the caution about pickled models: training logs them on purpose, for load_model
)
# raylet notices the driver prints whatever log_to_driver says; on one machine they are expected
RAYLET_NOTICES = ("PYTHON worker processes have been started on node",)


def placement(resource: str) -> dict[str, float]:
    """Ray resources that pin work to nodes declaring `resource` ({} when resource is '')."""
    return {resource: RESOURCE_SHARE} if resource else {}


def quiet_logging() -> None:
    """Driver logging of the embedded default: warnings and errors of Ray, none of QUIET_LOGGERS;
    Ray Data's terminal output limited to warnings (RAY_DATA_LOGGING, read by every process)."""
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's verbose=0 then prints no tables or hints
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    _drop_raylet_notices()


def _drop_raylet_notices() -> None:
    """Keep RAYLET_NOTICES (still in raylet.out) off the driver's terminal. Ray prints them from a
    listener thread through ray._private.worker.print_to_stdstream, which has no switch of its own."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "raylib_filtered", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            data = {**data, "lines": [ln for ln in data.get("lines", []) if not any(n in ln for n in RAYLET_NOTICES)]}
            if not data["lines"]:
                return None
        return original(data, *args, **kwargs)

    print_to_stdstream.raylib_filtered = True
    worker.print_to_stdstream = print_to_stdstream


def init_ray(num_cpus: int | None = None, env_vars: dict[str, str] | None = None, quiet: bool = False):
    """ray.init for a job: connect when RAY_ADDRESS is set (cluster, `ray job submit`), else start
    a local Ray that listens on 127.0.0.1 only and keeps its chatter in its logs. env_vars reach
    every worker; quiet also keeps worker output off a cluster job's terminal."""
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=not quiet)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # embedded default: loopback only
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        quiet_logging()
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False,
                 logging_level=logging.WARNING)
    return ray
