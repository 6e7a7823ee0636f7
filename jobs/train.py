"""Train one fusion model on a feature store with Ray Train (DDP), logging to MLflow.

Runs on the Ray cluster named by RAY_ADDRESS, else on a local Ray. MLflow: MLFLOW_TRACKING_URI,
else the embedded store under ./mlflow.
"""

import json
import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.errors import Interrupted, RaylibError
from raylib.tracking import open_line, run_link
from raylib.train.job import TrainConfig, run_train


def main(argv=None) -> int:
    cfg = parse(TrainConfig, __doc__, argv)
    try:
        summary = run_train(cfg)
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C: the job's MLflow runs ended as KILLED
        print(f"train: {str(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except (RaylibError, ValueError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 1
    if "folds" in summary:  # --folds: one line per fold, then the cross-validated figures
        for f in summary["folds"]:
            print(f"train: fold {f['fold'] + 1}/{cfg.folds}: test speakers {', '.join(f['test_speakers'])}: test "
                  f"accuracy {f['test_accuracy']:.3f}, UAR {f['test_uar']:.3f} ({f['test_clips']} clips; epoch "
                  f"{f['best_epoch'] + 1} picked on val UAR {f.get('val_uar', 0):.3f}); checkpoint {f['best_checkpoint']}")
        print(f"train: {cfg.folds}-fold cross-validation by speaker: test accuracy {summary['cv_test_accuracy_mean']:.3f} "
              f"+- {summary['cv_test_accuracy_sd']:.3f}, UAR {summary['cv_test_uar_mean']:.3f} +- "
              f"{summary['cv_test_uar_sd']:.3f} (mean +- sd over folds); pooled over "
              f"{summary['cv_pooled_test_clips']} clips: accuracy {summary['cv_pooled_test_accuracy']:.3f}, "
              f"UAR {summary['cv_pooled_test_uar']:.3f}")
    else:
        print(f"train: best epoch {summary['best_epoch'] + 1}/{cfg.epochs}: val accuracy {summary.get('val_accuracy', 0):.3f}, "
              f"UAR {summary.get('val_uar', 0):.3f}; checkpoint {summary['best_checkpoint']}"
              + (f"; test speakers {', '.join(summary['test_speakers'])}: accuracy {summary['test_accuracy']:.3f}, "
                 f"UAR {summary['test_uar']:.3f}" if "test_speakers" in summary else ""))
    print(f"train: MLflow run {summary['run_id']}: {open_line(run_link(summary['run_id']))}")
    if not cfg.quiet:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
