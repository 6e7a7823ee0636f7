"""Table 1: a grid of features x datasets, each cell a linear probe (jobs/pretrain.py
--table1-features), as child runs of one MLflow parent; the report as markdown and a heat map."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace

from raylib import plots, storage, tracking
from raylib.pretrain.job import PROBE_BACKBONES, PretrainConfig, run_pretrain


def parse_features(spec: str) -> list[tuple[str, str]]:
    """'resnet18:random,dlib_resnet:packaged,ir50:s3://b/w.pt' -> [(backbone, weights), ...]."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        backbone, _, weights = item.partition(":")
        if backbone not in PROBE_BACKBONES or not weights:
            raise ValueError(f"--table1-features item {item!r}: expected backbone:weights with backbone one of "
                             f"{', '.join(PROBE_BACKBONES)}")
        out.append((backbone, weights))
    return out


def table1_report(rows: list[dict], metric: str = "test_accuracy") -> str:
    """Markdown table: one row per feature, one column per dataset (val and test accuracy / UAR)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    features = list(dict.fromkeys(r["feature"] for r in rows))
    cell = {(r["feature"], r["dataset"]): r for r in rows}
    lines = ["| feature | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for f in features:
        vals = []
        for d in datasets:
            r = cell.get((f, d))
            if r is None or r.get("error"):
                vals.append("failed" if r else "-")
            else:
                main = r.get(metric, r.get("val_accuracy"))
                vals.append(f"{100 * main:.1f} (UAR {100 * r.get(metric.replace('accuracy', 'uar'), r.get('val_uar', 0)):.1f})")
        lines.append(f"| {f} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + f"\n\nLinear probe (frozen features, softmax only), {metric.replace('_', ' ')} in %.\n"


def run_table1(cfg: PretrainConfig) -> dict:
    """Linear probe of every --table1-features feature on every --input dataset, as child runs of
    one MLflow parent run; the Table-1 report (markdown + PNG) goes to the parent and to output."""
    features = parse_features(cfg.table1_features)
    datasets = [d.strip() for d in cfg.input.split(",") if d.strip()]
    name = cfg.run_name or time.strftime("table1-%Y%m%d-%H%M%S")
    parent = tracking.start_run(cfg.experiment, name, tracking.config_params(cfg), {"kind": "table1"},
                                purpose=tracking.PURPOSES["pretrain"])
    rows = []
    for backbone, weights in features:
        for dataset in datasets:
            feature = f"{backbone}:{os.path.basename(weights.rstrip('/')) if '/' in weights else weights}"
            child = replace(cfg, backbone=backbone, init=weights, input=dataset, linear_probe=True, table1_features="",
                            run_name=f"{name}-{feature}-{os.path.basename(dataset.rstrip('/'))}")
            row = {"feature": feature, "dataset": dataset}
            try:
                row.update(run_pretrain(child, parent_run_id=parent))
            except Exception as e:  # one failed cell does not lose the table
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(f"pretrain: table1 cell {feature} x {dataset} failed: {row['error']}", file=sys.stderr)
            rows.append(row)
    metric = "test_accuracy" if all("test_accuracy" in r for r in rows if not r.get("error")) else "val_accuracy"
    text = table1_report(rows, metric)
    out_dir = storage.join(os.path.abspath(cfg.output) if not storage.is_remote(cfg.output) else cfg.output, name)
    with tempfile.TemporaryDirectory() as d:
        md = os.path.join(d, "table1.md")
        with open(md, "w") as f:
            f.write(f"# {name}\n\n{text}")
        png = plots.table1_png(rows, os.path.join(d, "table1.png"), metric)
        for p in (md, png):
            tracking.log_artifact(parent, p)
            with open(p, "rb") as src, storage.atomic_write(storage.join(out_dir, os.path.basename(p))) as dst:
                dst.write(src.read())
    tracking.end_run(parent, "FAILED" if all(r.get("error") for r in rows) else "FINISHED")
    return {"parent_run_id": parent, "rows": rows, "report": text, "report_markdown": storage.join(out_dir, "table1.md"),
            "report_png": storage.join(out_dir, "table1.png")}
