"""The embedded-default demo: sample set -> preprocessing on a local Ray -> per-clip summary."""

import sys

from raylib.config import parse
from raylib.demo import DemoConfig, run_demo
from raylib.errors import RaylibError

if __name__ == "__main__":
    cfg = parse(DemoConfig, __doc__)
    try:
        run_demo(cfg)
    except RaylibError as e:
        sys.exit(f"demo: error: {e}")
