"""The Ray internals the jobs rely on, in one place; tests/test_ray_compat.py pins each one.

Ray has no public API for these. A Ray upgrade that moves or changes one fails its test, and a job
that meets such a Ray says so in its log rather than silently losing what the internal gave it:

- cluster_config(): the autoscaling config a head publishes (ray._private.state), read by
  raylib.runtime.autoscaling;
- autoscaler_status(): the v1 autoscaler's report in the GCS key-value store, read there too;
- set_operator_cpus(ds, cpus): the CPUs the last operator of a Dataset reserves (repartition()
  takes no resource arguments; extraction's split must reserve none, or on a 2-CPU machine the
  second feature actor waits for it to end);
- drop_driver_lines(drop): lines the driver's log listener (ray._private.worker.print_to_stdstream)
  leaves off the terminal (raylet notices that are no news on one machine);
- drop_native_lines(texts): lines of Ray's C++ core (its log format, written straight to fd 2)
  that the job's stderr leaves out (raylib/line_filter.py).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)
AUTOSCALING_STATUS_KEY = b"__autoscaling_status"


def cluster_config():
    """The cluster's autoscaling config (node_group_configs with min/max counts), or None when no
    autoscaler published one. Needs ray.init."""
    from ray._private.state import state

    return state.get_cluster_config()


def autoscaler_status() -> dict:
    """The v1 autoscaler's last report ({} when there is none). Needs ray.init."""
    from ray.experimental.internal_kv import _internal_kv_get

    return json.loads(_internal_kv_get(AUTOSCALING_STATUS_KEY) or b"{}")


def set_operator_cpus(ds, cpus: float) -> bool:
    """Make the last operator of ds's logical plan reserve `cpus` CPUs per task; False (and a
    warning in the log) when this Ray's plan has no such field."""
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)
    args = getattr(op, "ray_remote_args", None)
    if not isinstance(args, dict):
        log.warning("this Ray's Dataset plan has no ray_remote_args on %s: its tasks keep Ray Data's CPU "
                    "reservation", type(op).__name__)
        return False
    object.__setattr__(op, "ray_remote_args", {**args, "num_cpus": cpus})  # operators are frozen dataclasses
    return True


def drop_driver_lines(drop) -> bool:
    """Leave the lines of raylet messages for which drop(line) is true off the driver's terminal
    (they stay in the raylet's log). Once per process; False when this Ray prints them elsewhere."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        log.warning("this Ray has no ray._private.worker.print_to_stdstream: raylet notices reach the terminal")
        return False
    if getattr(original, "raylib_filtered", False):
        return True

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            data = {**data, "lines": [ln for ln in data.get("lines", []) if not drop(ln)]}
            if not data["lines"]:
                return None
        return original(data, *args, **kwargs)

    print_to_stdstream.raylib_filtered = True
    worker.print_to_stdstream = print_to_stdstream
    return True


_native_filter: subprocess.Popen | None = None


def drop_native_lines(*texts: str) -> bool:
    """Leave the lines Ray's C++ core writes to this process's stderr that contain one of texts off
    it, for the rest of the process: fd 2 becomes a pipe to raylib/line_filter.py, which writes
    everything else on to the real stderr and drains it when this process ends or crashes. Once per
    process; False (nothing changed) when sys.stderr is not fd 2 (a test's captured output)."""
    global _native_filter
    if _native_filter is not None:
        return True
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):
        return False
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "line_filter.py")
    # a session of its own: Ctrl-C or `ray job stop` on the job's process group leaves it to drain
    _native_filter = subprocess.Popen([sys.executable, "-S", script, *texts], stdin=read, stdout=real,
                                      start_new_session=True)
    os.dup2(write, 2)
    for fd in (read, write):
        os.close(fd)

    def restore():
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real, 2)  # the filter's input closes here: it writes what it holds and ends
        try:  # unless a child of this process still holds the pipe
            _native_filter.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass

    atexit.register(restore)
    return True
