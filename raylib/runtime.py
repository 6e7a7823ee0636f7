"""Connecting to Ray: the cluster named by RAY_ADDRESS, or the embedded local default.

Every job connects through init_ray. On the embedded default the job's terminal shows the job's
own lines and Ray Data's progress bars (on a terminal); Ray's INFO lines, worker output and
start-up warnings, and hints about tools that are not installed stay in Ray's logs
(/tmp/ray/session_latest/logs).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading

from raylib import ray_compat
from raylib.errors import ClusterError

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
# lines of Ray's C++ core a job's driver writes to its stderr that are no news: Ray Data starts every
# actor of a pool with its plan in the object store (owned by the driver for the whole run) and
# restarts allowed, and the core logs that at ERROR on each actor's start
NATIVE_NOTICES = ("has constructor arguments in the object store and max_restarts > 0",)


def placement(resource: str) -> dict[str, float]:
    """Ray resources that pin work to nodes declaring `resource` ({} when resource is '')."""
    return {resource: RESOURCE_SHARE} if resource else {}


def capacity_error(what: str, count: int, each: dict[str, float], nodes: list[dict[str, float]],
                   fix: str | dict[str, str], beside: tuple[str, dict[str, float]] | None = None) -> str | None:
    """Why `count` units (workers, actors) of `each` resources can never run at once on nodes with
    these total resources, with room left for `beside` (what else the job needs to run at the same
    time: (its name, its resources)); one line naming `what` (the flag) and the fix (`fix`, or
    `fix[resource]` of the resource that falls short). None when they fit."""
    fixes = fix if isinstance(fix, dict) else {}
    default_fix = fix if isinstance(fix, str) else fix.get("CPU", "")
    need = {r: v for r, v in each.items() if v > 0}
    other_name, other = beside or ("", {})
    fits = sum(min((math.floor(node.get(r, 0.0) / v + 1e-9) for r, v in need.items()), default=count) for node in nodes)
    unit = " + ".join(_unit(r, v) for r, v in need.items())
    for r in [*need, *[r for r in other if r not in need]]:
        total = sum(node.get(r, 0.0) for node in nodes)
        wanted = need.get(r, 0.0) * count
        if total >= wanted + other.get(r, 0.0) - 1e-9:
            continue
        if r not in ("CPU", "GPU", "memory"):
            return f"{what} x {unit} needs nodes with the resource {r}; the cluster has none (no autoscaler): " \
                   f"{fixes.get(r, default_fix)}"
        have = "none" if not total else f"{total / 2**30:.3g} GiB" if r == "memory" else f"{total:g}"
        more = f", and {other_name} {_unit(r, other[r], plural=True)} more" if other.get(r) else ""
        return f"{what} x {unit} needs {_unit(r, wanted, plural=True)}{more}; the cluster has {have} (no autoscaler): " \
               f"{fixes.get(r, default_fix)}"
    if fits < count:
        return f"{what} x {unit}: the cluster's {len(nodes)} node(s) hold at most {fits} at once (no autoscaler): " \
               f"{default_fix}"
    return None


def _unit(resource: str, value: float, plural: bool = False) -> str:
    """0.5 CPU, 4 CPUs, 1 GPU, 0.75 GiB memory; a custom resource by its name (its share is a tag)."""
    if resource == "memory":
        return f"{value / 2**30:.3g} GiB memory"
    if resource in ("CPU", "GPU"):
        return f"{value:g} {resource}" + ("s" if plural and value != 1 else "")
    return resource


def cpu_actor_pool(items: int, per_actor: int, most: int = 0):
    """A Ray Data actor pool of 1 to `most` actors (0: one per CPU of the cluster), started at the
    size that `items` fill batches of `per_actor` for: growing waits for a queue to build up first,
    and the actors' start-up is then paid in the middle of the run."""
    import ray

    most = most or max(1, int(ray.cluster_resources().get("CPU", 1)))
    start = min(most, max(1, -(-items // per_actor))) if items else 1
    return ray.data.ActorPoolStrategy(min_size=1, max_size=most, initial_size=start)


def own_cluster() -> None:
    """worker_process_setup_hook of the embedded default: each worker's RAY_ADDRESS names the Ray it
    belongs to. Ray's state API, which Ray Train's placement-group cleaner calls with no address,
    otherwise picks a Ray by scanning the machine: beside another local Ray (a user's notebook, a
    `ray start` head) it refused ("Found multiple active Ray instances") or asked the other one."""
    import ray

    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = os.environ[OWN_RAY] = address


OWN_RAY = "RAYLIB_EMBEDDED_RAY"  # set by own_cluster: the RAY_ADDRESS of a worker of the embedded default


def autoscaling() -> bool:
    """Whether an autoscaler may add nodes to the cluster. The embedded default (no RAY_ADDRESS, or
    its own in its workers) has none; on a cluster, an autoscaling config with a node group that
    can grow (autoscaler v2, KubeRay) or a monitor that is not the read-only one (`ray up`'s
    autoscaler) says yes; when neither can be read the answer is yes (never refuse what a cluster
    may grow to hold)."""
    if not os.environ.get("RAY_ADDRESS") or os.environ["RAY_ADDRESS"] == os.environ.get(OWN_RAY):
        return False

    try:
        config = ray_compat.cluster_config()
        if config is not None and config.node_group_configs:
            return any(g.max_count == -1 or g.max_count > g.min_count for g in config.node_group_configs
                       if g.resources and g.max_count != 0)
        # autoscaler v1: the read-only monitor (no --autoscaling-config) names nodes "node_<id>"
        active = (ray_compat.autoscaler_status().get("autoscaler_report") or {}).get("active_nodes") or {}
        return not active or not all(name.startswith("node_") for name in active)
    except Exception as e:  # a GCS that does not answer, a Ray whose internals moved (tests/test_ray_compat.py)
        logging.getLogger(__name__).warning("cannot read the cluster's autoscaling state (%s: %s); assuming an "
                                            "autoscaler", type(e).__name__, e)
        return True


def check_capacity(what: str, count: int, each: dict[str, float], fix: str | dict[str, str],
                   beside: tuple[str, dict[str, float]] | None = None) -> None:
    """ClusterError, before any work, when the connected cluster can never hold `count` units of
    `each` at once (with `beside` next to them; capacity_error) and no autoscaler can add nodes:
    Ray would wait, or retry, forever."""
    import ray

    if not ray.is_initialized() or autoscaling():
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    message = capacity_error(what, count, each, nodes, fix, beside)
    if message:
        raise ClusterError(message)


@contextlib.contextmanager
def sigint_raises():
    """Inside the block SIGINT (Ctrl-C) raises KeyboardInterrupt or SystemExit out of Ray, and the
    handler of before is back after it: Tune's own handler (which ends a sweep as if it had
    finished) is off, and the one Ray Train's fit() installs (abort the run, SystemExit) goes."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if main:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def quiet_logging() -> None:
    """Driver logging of the embedded default: warnings and errors of Ray, none of QUIET_LOGGERS;
    Ray Data's terminal output limited to warnings (RAY_DATA_LOGGING, read by every process)."""
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's verbose=0 then prints no tables or hints
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # RAYLET_NOTICES stay in raylet.out; Ray prints them from a listener thread with no switch of its own
    ray_compat.drop_driver_lines(lambda line: any(n in line for n in RAYLET_NOTICES))


def init_ray(num_cpus: int | None = None, env_vars: dict[str, str] | None = None, quiet: bool = False,
             state_api: bool = False, pin_workers: bool = True):
    """ray.init for a job: connect when RAY_ADDRESS is set (cluster, `ray job submit`), else start
    a local Ray that listens on 127.0.0.1 only and keeps its chatter in its logs. env_vars reach
    every worker; quiet also keeps worker output off a cluster job's terminal. state_api: the local
    Ray runs its dashboard (on 127.0.0.1), whose state API Ray Train's placement-group cleaner asks
    whether a training run's controller is gone: a sweep needs it, or the workers' CPUs of every
    trial Tune stops (ASHA) stay reserved and the next trial waits forever.

    The local Ray is always a new one (address "local"): never a Ray another program started on
    the machine (a `ray start` head, a test's cluster: both leave their address in
    /tmp/ray/ray_current_cluster, which a plain ray.init() joins), and with pin_workers its workers
    talk to it alone (own_cluster: what Ray Train needs; extraction, which does not, leaves it
    off: the runtime env it takes added ~1 s to the start of an extraction's actors)."""
    import ray

    if ray.is_initialized():
        return ray
    ray_compat.drop_native_lines(*NATIVE_NOTICES)
    runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=not quiet)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # embedded default: loopback only
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        quiet_logging()
        dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1"} if state_api else {"include_dashboard": False}
        if pin_workers:
            runtime_env = {**(runtime_env or {}), "worker_process_setup_hook": f"{__name__}.own_cluster"}
        ray.init(address="local", num_cpus=num_cpus, **dashboard, runtime_env=runtime_env, log_to_driver=False,
                 logging_level=logging.WARNING)
    return ray
