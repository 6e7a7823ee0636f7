"""A one-machine twin of cluster.yaml for Ray's fake multi-node provider: the cluster launcher's
autoscaler launching the node types of cluster.yaml as local Ray nodes, no cloud.

The twin keeps what the jobs depend on: the worker node types by name, their custom resources
(decode_node, gpu_node), their min/max workers (max scaled down to fit one machine), a head that
runs no work (0 CPUs). It drops what a laptop has no use for: the cloud provider, instance
configs, docker, setup commands. A GPU-less twin keeps `gpu_node` as a label: the jobs place their
work by it (--feature-resource gpu_node, --worker-resource gpu_node) and run it on the CPU.

    python -m raylib.cluster_twin cluster.yaml --port 6390 > /tmp/twin.yaml
    RAY_FAKE_CLUSTER=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 AUTOSCALER_UPDATE_INTERVAL_S=1 \\
        ray start --head --port 6390 --num-cpus 0 --node-ip-address 127.0.0.1 \\
        --dashboard-host 127.0.0.1 --autoscaling-config /tmp/twin.yaml
"""

from __future__ import annotations

import argparse
import sys

import yaml

# Ray's fake provider names its head node type this way (ray.autoscaler._private.fake_multi_node)
HEAD_TYPE = "ray.head.default"
CPUS_PER_NODE = 1  # each twin worker node: one CPU, beside its custom resources
# and this much memory in the autoscaler's view of a node type (a cloud provider infers it from the
# instance type; without it the autoscaler never launches a node for a task that asks for memory,
# as extraction's decode tasks do); the node itself reports the machine's
MEMORY_PER_NODE = 4 * 2**30
PROVIDER = "raylib.cluster_twin.TwinNodeProvider"
MAX_WORKERS_PER_TYPE = 2  # a node type's max_workers, scaled down to one machine
IDLE_TIMEOUT_MINUTES = 0.1  # the autoscaler removes a worker idle this long (cluster.yaml: minutes)


def twin_config(cluster: dict, port: int = 6379, max_per_type: int = MAX_WORKERS_PER_TYPE,
                cpus: int = CPUS_PER_NODE, idle_timeout_minutes: float = IDLE_TIMEOUT_MINUTES) -> dict:
    """The fake_multinode twin of a cluster-launcher config (a dict of cluster.yaml), whose head
    listens on 127.0.0.1:port."""
    types = cluster.get("available_node_types") or {}
    head = cluster.get("head_node_type")
    if head not in types:
        raise ValueError(f"cluster config: head_node_type {head!r} is not one of its available_node_types")
    workers = {}
    for name, t in types.items():
        if name == head:
            continue
        custom = {k: v for k, v in (t.get("resources") or {}).items() if k not in ("CPU", "GPU", "memory")}
        most = min(int(t.get("max_workers", cluster.get("max_workers", 1))), max_per_type)
        workers[name] = {"resources": {"CPU": cpus, "memory": MEMORY_PER_NODE, **custom}, "node_config": {},
                         "min_workers": min(int(t.get("min_workers", 0)), most), "max_workers": most}
    head_resources = {k: v for k, v in (types[head].get("resources") or {}).items() if k not in ("GPU",)}
    head_resources["CPU"] = 0  # the head schedules; work goes to the worker types
    return {
        "cluster_name": f"{cluster.get('cluster_name', 'cluster')}-twin",
        "max_workers": sum(w["max_workers"] for w in workers.values()),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "external", "module": PROVIDER, "gcs_address": f"127.0.0.1:{port}",
                     "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0},
                                 **workers},
        "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def _fake_provider():
    from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

    return FakeMultiNodeProvider


def __getattr__(name):
    """TwinNodeProvider, built on first use: Ray's fake provider is imported only by the autoscaler
    that loads it (provider type external, module raylib.cluster_twin.TwinNodeProvider)."""
    if name != "TwinNodeProvider":
        raise AttributeError(name)

    class TwinNodeProvider(_fake_provider()):
        """Ray's fake multi-node provider, given node types that declare memory: it starts the node
        without it (Ray refuses memory as a custom resource; the node reports the machine's)."""

        def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
            resources = {k: v for k, v in resources.items() if k != "memory"}
            return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)

    globals()["TwinNodeProvider"] = TwinNodeProvider
    return TwinNodeProvider


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Print the one-machine twin of a cluster-launcher config "
                                            "(Ray's fake multi-node provider) as YAML.")
    p.add_argument("config", nargs="?", default="cluster.yaml", help="the cluster config (default: cluster.yaml)")
    p.add_argument("--port", type=int, default=6379, help="the twin head's GCS port on 127.0.0.1 (default: 6379)")
    p.add_argument("--max-workers", type=int, default=MAX_WORKERS_PER_TYPE,
                   help=f"most workers of each node type (default: {MAX_WORKERS_PER_TYPE})")
    args = p.parse_args(argv)
    try:
        with open(args.config) as f:
            cluster = yaml.safe_load(f)
        twin = twin_config(cluster, args.port, args.max_workers)
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"cluster_twin: error: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump(twin, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
