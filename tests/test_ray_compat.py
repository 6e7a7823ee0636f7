"""The Ray internals of raylib/ray_compat.py against the installed Ray: an upgrade that moves or
changes one fails here, not silently in a job."""

import io
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from raylib import ray_compat, runtime


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def put_cluster_config(groups: list[tuple[int, int]] | None) -> None:
    """Publish an autoscaling config with node groups of (min, max) workers, as a head's
    autoscaler (v2, KubeRay) does; None clears it."""
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode()
    if groups is None:
        _internal_kv_del(key, namespace=namespace)
        return
    config = autoscaler_pb2.ClusterConfig()
    for lo, hi in groups:
        group = config.node_group_configs.add()
        group.resources["CPU"] = 4
        group.min_count, group.max_count = lo, hi
    _internal_kv_put(key, config.SerializeToString(), overwrite=True, namespace=namespace)


def test_the_autoscaling_state_is_read_where_ray_keeps_it(local_ray, monkeypatch):
    import time

    assert ray_compat.cluster_config() is None  # no autoscaler published a config
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert runtime.autoscaling() is False  # the embedded default: no autoscaler, nothing read
    # a local Ray runs the read-only monitor: its report names the nodes node_<id>
    deadline = time.monotonic() + 60
    while not ray_compat.autoscaler_status().get("autoscaler_report") and time.monotonic() < deadline:
        time.sleep(0.2)
    active = ray_compat.autoscaler_status()["autoscaler_report"]["active_nodes"]
    assert list(active) and all(name.startswith("node_") for name in active)
    monkeypatch.setenv("RAY_ADDRESS", local_ray.get_runtime_context().gcs_address)  # as a job on a cluster
    assert runtime.autoscaling() is False
    try:
        put_cluster_config([(0, 3)])  # a node group that can grow (autoscaler v2, KubeRay)
        assert [(g.min_count, g.max_count) for g in ray_compat.cluster_config().node_group_configs] == [(0, 3)]
        assert runtime.autoscaling() is True
        put_cluster_config([(2, 2)])  # fixed size: the monitor's report decides
        assert runtime.autoscaling() is False
    finally:
        put_cluster_config(None)


def test_a_datasets_last_operator_reserves_the_cpus_set_on_it(local_ray):
    ds = local_ray.data.range(12).repartition(target_num_rows_per_block=4)
    assert ray_compat.set_operator_cpus(ds, 0) is True
    assert ds._logical_plan.dag.ray_remote_args["num_cpus"] == 0
    # Ray Data still plans and runs the operator with the field changed
    out = ds.map_batches(lambda b: {"id": b["id"] * 2}, num_cpus=1, batch_size=None)
    assert sorted(r["id"] for r in out.take_all()) == [2 * i for i in range(12)]
    assert ray_compat.set_operator_cpus(object(), 0) is False  # no plan: said in the log, not raised


def test_raylet_notices_stay_off_the_terminal_and_other_lines_reach_it(local_ray, capsys):
    from ray._private import worker

    assert ray_compat.drop_driver_lines(lambda line: any(n in line for n in runtime.RAYLET_NOTICES)) is True
    notice = "Warning: 2 PYTHON worker processes have been started on node: abc with address: 127.0.0.1."
    worker.print_to_stdstream({"pid": "raylet", "ip": "127.0.0.1", "is_err": True, "lines": [notice],
                               "task_name": None, "actor_name": None, "job": "01000000"}, False)
    worker.print_to_stdstream({"pid": "raylet", "ip": "127.0.0.1", "is_err": True, "lines": ["disk is full"],
                               "task_name": None, "actor_name": None, "job": "01000000"}, False)
    err = capsys.readouterr().err
    assert "disk is full" in err and "worker processes have been started" not in err
    assert ray_compat.drop_driver_lines(lambda line: False) is True  # once per process: the first filter stays


def test_a_ray_without_the_field_is_a_warning_in_the_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    ray_compat.log.addHandler(handler)
    try:
        ray_compat.set_operator_cpus(type("Plan", (), {"_logical_plan": None})(), 0)
    finally:
        ray_compat.log.removeHandler(handler)
    assert "keep Ray Data's CPU reservation" in stream.getvalue()


FILTER = os.path.join(os.path.dirname(ray_compat.__file__), "line_filter.py")
NATIVE = b"[2026-12-06 19:28:04,318 E 26289 26289] core_worker.cc:2465: Actor with class name: 'A' and ID: 'ab' "


def test_the_line_filter_drops_only_native_lines_that_name_a_text_and_passes_the_rest_as_written():
    bar = b"\rMap 40%|####      | 4/10 [00:01<00:02, 2.3it/s]"
    stream = (b"extract: start\n" + NATIVE + b"has NOISE in it.\n" + bar + NATIVE + b"NOISE again\n"
              + b"[2026-12-06 19:28:05,001 W 1 2] raylet.cc:1: disk is full\n" + b"[not a log line] NOISE\n"
              + b"[2026-12-06 19:28:05,002 E 1 2] no newline at the end: NOISE")
    out = subprocess.run([sys.executable, "-S", FILTER, "NOISE"], input=stream, capture_output=True, timeout=30).stdout
    assert out == (b"extract: start\n" + bar + b"[2026-12-06 19:28:05,001 W 1 2] raylet.cc:1: disk is full\n"
                   + b"[not a log line] NOISE\n" + b"[2026-12-06 19:28:05,002 E 1 2] no newline at the end: NOISE")


def test_the_line_filter_holds_back_only_a_tail_that_may_become_a_native_line():
    from raylib import line_filter

    bar = b"x\n\rMap 40%|####      | 4/10 [00:01<00:02, 2.3it/s]"
    assert line_filter.held_from(bar) == len(bar)  # a progress bar is never held
    assert line_filter.held_from(b"done\n[2026-12-06 19:2") == 5
    assert line_filter.held_from(b"done\n" + NATIVE) == 5
    assert line_filter.held_from(b"[2026-1x") == 8  # not a date
    assert line_filter.held_from(b"a [b [2026") == 5


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    """Run code in a fresh Python whose stderr is a pipe (fd 2, as a job's under `ray job submit`)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.path.dirname(os.path.dirname(ray_compat.__file__))}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True,
                          timeout=240)


def test_what_a_job_writes_to_stderr_before_it_crashes_still_arrives(tmp_path):
    done = run_python("""
        import os, sys
        from raylib import ray_compat
        assert ray_compat.drop_native_lines("NOISE")
        print("python line", file=sys.stderr, flush=True)
        os.write(2, b"[2026-12-06 19:28:04,318 E 1 1] core_worker.cc:1: NOISE\\n")
        os.write(2, b"native line, unfinished")
        os.abort()
    """, tmp_path)
    assert done.returncode < 0
    assert done.stderr == b"python line\nnative line, unfinished"
