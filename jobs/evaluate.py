"""Evaluate checkpoints (or MLflow runs) on a split of a feature store; an ensemble averages them.

Writes predictions as Parquet and CSV, prints accuracy / UAR / per-class recall, logs to MLflow.
"""

import json
import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.errors import Interrupted, RaylibError
from raylib.stages.evaluate import EvaluateConfig, run_evaluate


def main(argv=None) -> int:
    cfg = parse(EvaluateConfig, __doc__, argv)
    try:
        s = run_evaluate(cfg)
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C: the job's MLflow runs ended as KILLED
        print(f"evaluate: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except (RaylibError, ValueError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    if "accuracy" in s:
        print(f"evaluate: {s['models']} model(s) on {s['clips']} {s['split']} clips: accuracy {s['accuracy']:.3f}, "
              f"UAR {s['uar']:.3f}")
        print("evaluate: recall " + json.dumps({k: (None if v is None else round(v, 3)) for k, v in s["recall"].items()}))
    if s["skipped_without_frames"]:
        print(f"evaluate: {s['skipped_without_frames']} clip(s) without frames (audio files) left out: the models "
              f"read visual features")
    print(f"evaluate: predictions {s['predictions_parquet']} and {s['predictions_csv']}; MLflow run {s['run_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
