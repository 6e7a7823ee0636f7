"""Extract features: video or audio clips (folder, s3:// prefix or manifest) -> a Parquet feature store.

Runs on the Ray cluster named by RAY_ADDRESS (as under `ray job submit`), else on a local Ray.
Re-running with the same --output skips clips already stored with features and retries clips
stored as "error"; a store holds one recipe (backbone, weights, enhancement, audio, frames).
"""

import json
import os
import sys

# runnable from a checkout (e.g. `ray job submit --working-dir .`) without installing the package
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.config import parse
from raylib.errors import RaylibError
from raylib.extract.config import ExtractConfig
from raylib.extract.job import run_extract


def main(argv=None) -> int:
    cfg = parse(ExtractConfig, __doc__, argv)
    try:
        summary = run_extract(cfg)
    except RaylibError as e:
        print(f"extract: error: {e}", file=sys.stderr)
        return 1
    if cfg.dry_run:
        print(f"extract: dry run: {summary['clips_in_input']} clips in the input, {summary['clips_already_stored']} "
              f"already stored, {summary['clips_to_process']} to process ({summary['clips_retried']} of them retried "
              f"after an error) into {summary['output']}; nothing was run or written")
        for split, labels in summary["plan"].items():
            print(f"  {split}: " + ", ".join(f"{label} {n}" for label, n in labels.items()))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in summary["status_counts"].items()) or "nothing new"
    if summary["clips_retried"]:
        counts += f"; {summary['clips_retried']} of them retried after an error"
    print(f"extract: {summary['clips_processed']} clips processed ({counts}), "
          f"{summary['clips_already_stored']} already stored, {summary['clips_stored']} in {summary['output']}; "
          f"{summary['elapsed_s']} s, {summary['clips_per_s']} clips/s")
    if summary.get("bound_clips_per_s"):
        print(f"extract: efficiency {summary['efficiency']:.0%} ({summary['efficiency_after_startup']:.0%} after "
              f"{summary['startup_s']} s of start-up): {summary['processing_clips_per_s']} clips/s while "
              f"processing, bound {summary['bound_clips_per_s']} clips/s from {summary['cpus']:g} CPUs and the measured "
              f"stage costs (CPU stage {summary['cpu_seconds_per_clip']} s + feature stage "
              f"{summary['feature_seconds_per_clip']} s per clip{' on CPUs' if not cfg.gpu_actors else '; GPU not counted'})")
    if not cfg.quiet:
        print(json.dumps({k: summary[k] for k in ("status_counts", "failures", "failure_rate")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
