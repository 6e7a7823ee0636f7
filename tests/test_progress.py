"""What a person sees in a terminal: Ray Data's progress bars, and none of Ray's chatter."""

import fcntl
import glob
import os
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time

import pytest

from raylib import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_terminal(args: list[str], timeout: float = 300, env: dict | None = None) -> tuple[int, str]:
    """Run a command on a pseudo-terminal of 120 x 40 characters; (exit code, everything it printed)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real terminal has a size
    proc = subprocess.Popen(args, cwd=ROOT, stdin=follower, stdout=follower, stderr=follower, close_fds=True, env=env)
    os.close(follower)
    out = bytearray()
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the job exited and closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(timeout=30), out.decode("utf-8", "replace")


@pytest.mark.slow
def test_extraction_in_a_terminal_shows_progress_bars_and_no_ray_chatter(sample_videos, tmp_path):
    videos, n = sample_videos
    ray_tmp = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    rc, out = run_in_terminal([sys.executable, "jobs/extract.py", "--input", videos, "--output", str(tmp_path / "s"),
                               "--frames", "uniform:2", "--num-cpus", "2"], env={**os.environ, "RAY_TMPDIR": ray_tmp})
    driver_log = "".join(open(p).read() for p in glob.glob(f"{ray_tmp}/**/python-core-driver-*.log", recursive=True))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert rc == 0, out[-3000:]
    assert "%|" in out and "\x1b[A" in out  # tqdm bars, redrawn in place
    assert f"extract: {n} clips processed" in out
    for chatter in ("INFO worker.py", "Started a local Ray instance", "(raylet)", "TensorboardX",
                    "Token authentication is enabled", "Progress bars disabled",
                    "constructor arguments in the object store"):
        assert chatter not in out, chatter
    # Ray's C++ core still logs that notice for each feature actor: the job's stderr filter (raylib/line_filter.py) drops it
    assert runtime.NATIVE_NOTICES[0] in driver_log
