"""`make demo`: the whole suite on the embedded default (local Ray, local folders), one machine.

sample set -> extract (mini_xception, the default) -> train one model (Ray Train, 2 workers) -> a small sweep
(visual attention x fusion, Ray Tune) -> evaluate an ensemble of two -> the Table-2 report and
the MLflow UI link of the sweep (its trials with the grid axes and val scores as columns).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

from raylib.ensemble.evaluate import EvaluateConfig, run_evaluate
from raylib.extract.config import ExtractConfig, FeatureRecipe
from raylib.extract.job import run_extract
from raylib.extract.preprocess import PreprocessConfig
from raylib.runtime import init_ray
from raylib.sample import SampleConfig, generate_sample_set
from raylib.store import read_store
from raylib.tracking import open_line
from raylib.train.job import TrainConfig, run_train
from raylib.train.sweep import SWEEP_TRAIN, TuneConfig, run_tune


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the demo; defaults run in a few minutes on 2 cores."""

    data_dir: str = field(default="data/demo", metadata={"help": "where the sample set and the feature store go"})
    train_per_class: int = field(default=4, metadata={"help": "generated training clips per emotion"})
    val_per_class: int = field(default=2, metadata={"help": "generated validation clips per emotion"})
    frames: str = field(default="uniform:8", metadata={"help": "frame sampling: all | every:K | uniform:N"})
    audio_mode: str = field(default="spectrogram", metadata={"help": "audio input", "choices": ["spectrogram", "logmel"]})
    num_cpus: int = field(default=2, metadata={"help": "CPUs for the local Ray"})
    epochs: int = field(default=12, metadata={"help": "epochs of the trained model"})
    sweep_epochs: int = field(default=5, metadata={"help": "epochs of each sweep trial"})
    sweep_visual: str = field(default="self,transformer", metadata={"help": "visual attentions of the sweep"})
    sweep_audio: str = field(default="transformer", metadata={"help": "audio attentions of the sweep"})
    sweep_fusions: str = field(default="concat,fbp", metadata={"help": "fusions of the sweep"})
    extract_only: bool = field(default=False, metadata={"help": "stop after the extraction job"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars, no per-epoch or per-trial lines"})

    def __post_init__(self):
        PreprocessConfig(frames=self.frames, audio_mode=self.audio_mode)  # ValueError on bad values
        if min(self.train_per_class, self.val_per_class) < 0 or self.num_cpus < 1:
            raise ValueError("clip counts must be >= 0 and --num-cpus >= 1")


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def clip_summaries(store: str, videos: str) -> list[dict]:
    """One printable dict per stored clip: status, frames, faces, audio seconds, spectrogram shape."""
    cols = ["uri", "label", "split", "status", "num_frames", "face_found", "audio_seconds", "audio_shape", "error"]
    rows = []
    for r in sorted(read_store(store, cols).to_pylist(), key=lambda r: r["uri"]):
        rows.append({"clip": os.path.relpath(r["uri"], videos), "label": r["label"], "split": r["split"],
                     "status": r["status"], "frames": r["num_frames"], "faces": sum(r["face_found"]),
                     "audio_s": f"{r['audio_seconds']:.2f}",
                     "spectrogram": "x".join(map(str, r["audio_shape"])) or "-", "error": r["error"] or ""})
    return rows


def run_demo(cfg: DemoConfig) -> list[dict]:
    """Generate the sample set, extract it into data/demo/features, print and return the summary."""
    t0 = time.perf_counter()
    videos = os.path.join(cfg.data_dir, "videos")
    store = os.path.join(cfg.data_dir, "features")
    paths = generate_sample_set(SampleConfig(out_dir=videos, train_per_class=cfg.train_per_class,
                                             val_per_class=cfg.val_per_class))
    print(f"sample set: {len(paths)} synthetic clips under {videos} ({time.perf_counter() - t0:.1f} s)")

    init_ray(cfg.num_cpus, quiet=True)  # worker logs stay in /tmp/ray; errors still surface here
    summary = run_extract(ExtractConfig(input=videos, dataset_format="afew", output=store,
                                        recipe=FeatureRecipe(frames=cfg.frames, audio=cfg.audio_mode),
                                        num_cpus=cfg.num_cpus, quiet=cfg.quiet))
    rows = clip_summaries(store, videos)
    print_table(rows, ["clip", "label", "split", "status", "frames", "faces", "audio_s", "spectrogram", "error"])
    print(f"extracted {summary['clips_processed']} clips ({summary['clips_already_stored']} already stored) "
          f"in {summary['elapsed_s']} s; status counts {summary['status_counts'] or 'unchanged'}")
    print(f"feature store: {os.path.abspath(store)} ({len(rows)} clips; "
          f"pandas.read_parquet({store!r}) reads it)")
    if not cfg.extract_only:
        train_sweep_evaluate(cfg, store)
    return rows


def train_sweep_evaluate(cfg: DemoConfig, store: str) -> dict:
    """Train one model, sweep a small grid, evaluate an ensemble of the two best; print all."""
    runs = os.path.join(cfg.data_dir, "runs")
    t0 = time.perf_counter()
    trained = run_train(TrainConfig(store=store, output=runs, epochs=cfg.epochs, quiet=cfg.quiet), source="jobs/demo.py")
    print(f"train: {trained['run_name']}: best epoch {trained['best_epoch'] + 1}/{cfg.epochs}, val accuracy "
          f"{trained['val_accuracy']:.3f}, UAR {trained['val_uar']:.3f} ({time.perf_counter() - t0:.0f} s, "
          f"{trained['train_samples_per_s_per_worker']:.1f} samples/s per worker)")
    t0 = time.perf_counter()
    sweep = run_tune(TuneConfig(visual_attentions=cfg.sweep_visual, audio_attentions=cfg.sweep_audio,
                                fusions=cfg.sweep_fusions,
                                train=replace(SWEEP_TRAIN, store=store, output=os.path.join(cfg.data_dir, "sweeps"),
                                              epochs=cfg.sweep_epochs, quiet=cfg.quiet)))
    print(f"sweep: {sweep['trials']} trials in {time.perf_counter() - t0:.0f} s")
    # both members by their MLflow runs (the checkpoint each logged), as a teammate would name them
    ensemble = [f"runs:/{trained['run_id']}"] + ([f"runs:/{sweep['best']['run_id']}"] if sweep["best"] else [])
    ev = run_evaluate(EvaluateConfig(checkpoints=",".join(ensemble), store=store, split="val",
                                     output=os.path.join(cfg.data_dir, "predictions")))
    print(f"evaluate: ensemble of {ev['models']} on {ev['clips']} val clips: accuracy {ev['accuracy']:.3f}, "
          f"UAR {ev['uar']:.3f}; predictions in {ev['predictions_csv']}")
    print()
    print(sweep["report"])
    print(f"report: {sweep['report_markdown']}, {sweep['report_png']}")
    print(f"evaluation in MLflow: {ev['link']}")
    print(f"the sweep in MLflow: {open_line(sweep['link'])}")
    return {"train": trained, "sweep": sweep, "evaluate": ev}
