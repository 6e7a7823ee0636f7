"""The embedded-default demo: sample set -> preprocessing on a local Ray -> per-clip summary."""

import sys

from raylib.config import parse
from raylib.demo import DemoConfig, run_demo

if __name__ == "__main__":
    cfg = parse(DemoConfig, __doc__)
    rows = run_demo(cfg)
    sys.exit(0 if rows else 1)
