"""The embedded default must never listen beyond 127.0.0.1."""

import ipaddress
import subprocess
import sys

import pytest

SCRIPT = """
import ray, psutil, json, os
before = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == "LISTEN"}
ray.init(address="local", num_cpus=1, include_dashboard=False)  # a new Ray, even beside a user's
ray.get(ray.remote(lambda: 1).remote())
after = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet") if c.status == "LISTEN"}
ray.shutdown()
print(json.dumps(sorted(after - before)))
"""


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only():
    import json

    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    new = json.loads(out.stdout.strip().splitlines()[-1])
    assert new, "Ray opened no listener at all: the check would prove nothing"
    assert all(is_loopback(ip) for ip, _ in new), new


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback
