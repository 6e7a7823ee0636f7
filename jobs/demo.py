"""The whole suite on the embedded default (a local Ray on 127.0.0.1, local folders, the MLflow
store under mlflow/): writes the synthetic sample set, extracts it into a feature store (one line
per clip), trains one model (Ray Train), runs a small attention x fusion sweep (Ray Tune),
evaluates an ensemble of the two on val, prints the Table-2 report and the command that opens
the MLflow UI. --extract-only stops after extraction.
"""

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
