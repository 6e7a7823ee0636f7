"""Sweep visual attention x audio attention x fusion (Table 2 of docs/method.md) with Ray Tune.

Each trial is a Ray Train run; MLflow gets one parent run with a child run per trial, and the
Table-2 report (markdown + heat-map PNG).
"""

import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.errors import Interrupted, RaylibError
from raylib.tracking import open_line
from raylib.train.sweep import TuneConfig, run_tune


def main(argv=None) -> int:
    cfg = parse(TuneConfig, __doc__, argv)
    try:
        out = run_tune(cfg)
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C: the job's MLflow runs ended as KILLED
        print(f"tune: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except (RaylibError, ValueError) as e:
        print(f"tune: error: {e}", file=sys.stderr)
        return 1
    print(out["report"])
    print(f"tune: {out['trials']} trials in {out['elapsed_s']} s; report {out['report_markdown']} and {out['report_png']}")
    print(f"tune: the sweep in MLflow (trials, grid axes, val scores): {open_line(out['link'])}")
    for e in out["errors"]:
        print(f"tune: a trial failed: {e}", file=sys.stderr)
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
