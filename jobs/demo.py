"""The embedded-default demo: sample set -> preprocessing on a local Ray -> per-clip summary."""

import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.demo import DemoConfig, run_demo
from raylib.errors import RaylibError

if __name__ == "__main__":
    cfg = parse(DemoConfig, __doc__)
    try:
        run_demo(cfg)
    except RaylibError as e:
        sys.exit(f"demo: error: {e}")
