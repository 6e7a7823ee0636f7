"""Fine-tune a face backbone on expression images with Ray Train (DDP), or linear-probe its
features (Table 1), logging to MLflow. The result's backbone.pt is what
`jobs/extract.py --backbone X --weights URI` loads.

Runs on the Ray cluster named by RAY_ADDRESS, else on a local Ray. MLflow: MLFLOW_TRACKING_URI,
else the embedded store under ./mlflow.
"""

import json
import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.errors import RaylibError
from raylib.pretrain.job import PretrainConfig, run_pretrain
from raylib.pretrain.table1 import run_table1
from raylib.runtime import init_ray
from raylib.tracking import open_line, run_link


def main(argv=None) -> int:
    cfg = parse(PretrainConfig, __doc__, argv)
    init_ray(quiet=cfg.quiet)
    try:
        if cfg.table1_features:
            out = run_table1(cfg)
            print(out["report"])
            print(f"pretrain: Table 1 in {out['report_markdown']} and {out['report_png']}; "
                  f"MLflow parent run {out['parent_run_id']}")
            return 0
        summary = run_pretrain(cfg)
    except (RaylibError, ValueError) as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 1
    test = f", test accuracy {summary['test_accuracy']:.3f} UAR {summary['test_uar']:.3f}" if "test_accuracy" in summary else ""
    print(f"pretrain: {summary['images']}; skipped {len(summary['skipped'])} unreadable")
    print(f"pretrain: best epoch {summary['best_epoch']}: val accuracy {summary.get('val_accuracy', 0):.3f}, "
          f"UAR {summary.get('val_uar', 0):.3f}{test}")
    print(f"pretrain: backbone weights {summary['backbone_weights']} (sha256 {summary['backbone_digest'][:12]}); "
          f"extract with: python jobs/extract.py --backbone {cfg.backbone} --weights {summary['backbone_weights']}")
    print(f"pretrain: MLflow run {summary['run_id']}: {open_line(run_link(summary['run_id']))}")
    if not cfg.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
