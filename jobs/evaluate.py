"""Evaluate checkpoints (or MLflow runs) on a split of a feature store; an ensemble averages them.

Writes predictions as Parquet and CSV, prints accuracy / UAR / per-class recall, logs to MLflow.
"""

import json
import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.ensemble.evaluate import EvaluateConfig, evaluate_cv, run_evaluate
from raylib.errors import Interrupted, RaylibError
from raylib.tracking import open_line


def main(argv=None) -> int:
    cfg = parse(EvaluateConfig, __doc__, argv)
    if cfg.cv_run:
        return main_cv(cfg)
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
    print(f"evaluate: predictions {s['predictions_parquet']} and {s['predictions_csv']}")
    print(f"evaluate: MLflow run {s['run_id']}: {open_line(s['link'])}")
    return 0


def main_cv(cfg: EvaluateConfig) -> int:
    """--cv-run: each fold's checkpoint on its own held-out speakers, then pooled."""
    try:
        s = evaluate_cv(cfg)
    except (RaylibError, ValueError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    for f in s["folds"]:
        print(f"evaluate: fold {f['fold'] + 1}/{len(s['folds'])}: held-out speakers {', '.join(f['test_speakers'])}: "
              f"accuracy {f['accuracy']:.3f}, UAR {f['uar']:.3f} ({f['clips']} clips)")
    print(f"evaluate: pooled over {s['clips']} clips of {len(s['folds'])} folds: accuracy {s['accuracy']:.3f}, "
          f"UAR {s['uar']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
