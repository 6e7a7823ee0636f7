"""FER2013 benchmark of jobs/pretrain.py: ResNet18 from random initialisation on Training, accuracy
and UAR on PublicTest (val) and PrivateTest (test), images/s and wall time; then, optionally, the
Table-1 linear probe of three features (dlib's packaged embedding, ResNet18 random, ResNet18
fine-tuned here) on a per-class subsample.

The data is not part of the repository (no licence to redistribute): point --data at a folder
<root>/{train,test}/<class>/<Split>_<n>.jpg (docs/backbones.md, "Pretrain the face backbone", says where to get
one whose splits are alike); the file-name prefix (Training_, PublicTest_, PrivateTest_) gives the
official split. The defaults are the recipe measured in BENCHMARKS.md (64 px input, 90 minutes).

    python bench/pretrain_fer.py --data /path/to/fer2013/data --out /tmp/fer.json
    python bench/pretrain_fer.py --data /path/to/fer2013/data --probe-only <fine-tuned backbone.pt> --probe-per-class 1000
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.runtime import init_ray  # noqa: E402
from raylib.pretrain.job import PretrainConfig, run_pretrain  # noqa: E402
from raylib.pretrain.table1 import run_table1  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="FER2013 class folders (train/ and test/)")
    p.add_argument("--output", default="data/bench/fer", help="checkpoints")
    p.add_argument("--minutes", type=float, default=90.0, help="training time budget (the schedule fits it)")
    p.add_argument("--epochs", type=int, default=200, help="schedule length when the budget is not reached first")
    p.add_argument("--input-size", type=int, default=64, help="model input side (FER2013's faces are 48 px; 64 px "
                                                              "gives ResNet18's stem a 16 x 16 map)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    p.add_argument("--max-contrast", type=float, default=0.3, help="contrast/brightness jitter (augmentation)")
    p.add_argument("--probe-per-class", type=int, default=0, help="also run the Table-1 probe on this many images "
                                                                 "per class and split (0: skip; with --probe-only: all)")
    p.add_argument("--probe-only", default="", metavar="BACKBONE_PT",
                   help="skip the fine-tuning: probe with this fine-tuned ResNet18 backbone.pt")
    p.add_argument("--out", default="", help="write the figures as JSON here")
    a = p.parse_args()
    init_ray()
    cfg = PretrainConfig(input=a.data, output=a.output, experiment="fer2013-bench", backbone="resnet18", init="random",
                         input_size=a.input_size, epochs=a.epochs, time_limit_min=a.minutes, batch_size=a.batch_size,
                         optimizer="adamw", lr=a.lr, weight_decay=0.05, label_smoothing=0.1, warmup=0.03,
                         max_contrast=a.max_contrast, num_workers=a.num_workers, cpus_per_worker=1.0, threads_per_worker=a.threads,
                         decode_cpus=1.0, select_metric="val_accuracy", quiet=True)
    if a.probe_only:
        out, tuned = {"config": asdict(cfg)}, a.probe_only
    else:
        t0 = time.perf_counter()
        summary = run_pretrain(cfg)
        wall = time.perf_counter() - t0
        out = {"config": asdict(cfg), "wall_s": round(wall, 1),
               **{k: v for k, v in summary.items() if k != "skipped"}, "skipped": len(summary["skipped"])}
        print(json.dumps(out, indent=1, default=str), flush=True)
        tuned = summary["backbone_weights"]
    if a.probe_per_class or a.probe_only:
        features = f"dlib_resnet:packaged,resnet18:random,resnet18:{tuned}"
        probe = replace(cfg, linear_probe=False, table1_features=features, max_per_class=a.probe_per_class,
                        input_size=a.input_size, epochs=30, time_limit_min=0, optimizer="adamw", lr=3e-3,
                        weight_decay=1e-4, label_smoothing=0.0, batch_size=256, run_name="")
        t1 = time.perf_counter()
        table = run_table1(probe)
        out["table1"] = {"report": table["report"], "rows": [{k: v for k, v in r.items() if k != "skipped"}
                                                            for r in table["rows"]],
                         "wall_s": round(time.perf_counter() - t1, 1)}
        print(table["report"], flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
