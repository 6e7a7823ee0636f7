"""Connecting to Ray: the cluster named by RAY_ADDRESS, or the embedded local default."""

from __future__ import annotations

import os

# Share of a node's custom resource (cluster.yaml: decode_node, gpu_node) one task, actor or
# training worker asks for: the resource picks the node type, CPUs and GPUs bound concurrency.
RESOURCE_SHARE = 0.001


def placement(resource: str) -> dict[str, float]:
    """Ray resources that pin work to nodes declaring `resource` ({} when resource is '')."""
    return {resource: RESOURCE_SHARE} if resource else {}


def init_ray(num_cpus: int | None = None, env_vars: dict[str, str] | None = None, quiet: bool = False):
    """ray.init for a job: connect when RAY_ADDRESS is set (cluster, `ray job submit`), else start
    a local Ray that listens on 127.0.0.1 only. env_vars reach every worker."""
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=not quiet)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # embedded default: loopback only
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=not quiet,
                 configure_logging=not quiet)
    return ray
