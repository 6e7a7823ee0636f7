"""Predict emotions for new videos or audio files: a folder, s3:// prefix or manifest (labelled or
not) -> the extraction graph -> an ensemble of trained models (checkpoints or MLflow run ids) ->
predictions.

Runs on the Ray cluster named by RAY_ADDRESS (as under `ray job submit`), else on a local Ray.
Writes <output>/predictions.parquet and predictions.csv; a re-run predicts only clips it has not
predicted yet. The extraction flags must match the store the models were trained on.
"""

import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.ensemble.predict import PredictConfig, main_line, run_predict
from raylib.errors import RaylibError


def main(argv=None) -> int:
    cfg = parse(PredictConfig, __doc__, argv)
    try:
        summary = run_predict(cfg)
    except (RaylibError, ValueError) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 1
    print(main_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
