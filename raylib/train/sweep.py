"""The attention x fusion sweep (Table 2 of docs/method.md) with Ray Tune, each trial a Ray Train run.

    Tuner(grid: visual attention x audio attention x fusion [x lr])
        trial = a function trainable that runs run_train(...) with TuneReportCallback
        the driver prints one line per finished trial (TrialLines)
    MLflow: one parent run for the sweep, one child run per trial named visual/audio/fusion
    (params, per-epoch metrics, artifacts); the report (markdown + heat maps of the selection
    metric and accuracy, Table 2 layout) goes to the parent run. The report names the store it
    comes from (the synthetic sample set or real data) and its number of val clips.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

from raylib import plots, storage, tracking
from raylib.checkpoints import checkpoint_of_epoch
from raylib.errors import Interrupted
from raylib.metrics import pick_best
from raylib.models import ATTENTIONS, FUSIONS
from raylib.runtime import init_ray, sigint_raises
from raylib.store import store_description
from raylib.train.artifacts import log_run_artifacts
from raylib.train.config import SELECT_METRICS, TrainConfig, require_splits, store_info
from raylib.train.job import check_workers_fit, run_train, storage_name

METRIC_NAMES = {"val_uar": "UAR", "val_accuracy": "accuracy"}
# how the sweep names its best trial (raylib.metrics.pick_best over trials sorted by name)
BEST_RULE = "highest val {metric} at its best epoch; ties: the earlier best epoch, then the first trial name in A-Z order"
TRIAL_CPUS = 0.01  # a trial only drives its Ray Train run, whose workers hold the CPUs (0 is refused)
PAPER_TABLE2_FBP = {  # published AFEW val accuracy, speech spectrogram + FBP (docs/method.md, Table 2)
    ("self", "self"): 54.6, ("self", "relation"): 56.9, ("self", "transformer"): 60.3,
    ("relation", "self"): 54.0, ("relation", "relation"): 57.2, ("relation", "transformer"): 60.0,
    ("transformer", "self"): 54.8, ("transformer", "relation"): 58.0, ("transformer", "transformer"): 61.1,
}


def _names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise ValueError(f"{flag}: expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
    return names


# A sweep holds the TrainConfig every trial starts from; its flags are jobs/train.py's, except:
SWEPT = ("visual_attention", "audio_attention", "fusion")  # the grid's axes: --visual-attentions, ...
# trials are named by the grid and start fresh (one model is continued by jobs/train.py --resume-from)
NOT_PER_TRIAL = ("run_name", "resume_from", "folds", "fold")  # cross-validation: jobs/train.py --folds
# where a sweep's default differs from a single run's (8 epochs per trial: docs/method.md, section 4)
SWEEP_TRAIN = TrainConfig(output="data/demo/sweeps", experiment="emotion-fusion-sweep", epochs=8, num_workers=1)
SWEEP_HELP = {  # where a knob means more in a sweep
    "output": "checkpoints and the report (local folder or s3://)",
    "experiment": "MLflow experiment of the sweep's parent run",
    "epochs": "epochs per trial (ASHA's budget with --asha)",
    "num_workers": "Ray Train workers (DDP) per trial",
    "select_metric": "metric that picks each trial's best epoch, the report's cells and ASHA's cut",
    "quiet": "no per-trial lines",
}


@dataclass(frozen=True)
class TuneConfig:
    """Every knob of jobs/tune.py: the sweep's own (the grid, ASHA, concurrency), then `train`, the
    TrainConfig each trial starts from (the grid sets its attentions, fusion and lr), whose flags
    are jobs/train.py's but the swept ones (SWEPT) and those that make no sense per trial
    (NOT_PER_TRIAL), with a sweep's defaults (SWEEP_TRAIN)."""

    visual_attentions: str = field(default=",".join(ATTENTIONS), metadata={"help": "visual attentions to sweep (comma-separated)"})
    audio_attentions: str = field(default=",".join(ATTENTIONS), metadata={"help": "audio attentions to sweep"})
    fusions: str = field(default=",".join(FUSIONS), metadata={"help": "fusions to sweep"})
    lrs: str = field(default="", metadata={"help": "extra grid over learning rates, e.g. 1e-3,3e-4 (default: --lr only)"})
    asha: bool = field(default=False, metadata={"help": "ASHA early stopping on the selection metric"})
    max_concurrent_trials: int = field(default=1, metadata={"help": "trials run at once (each holds its Train workers; raise it on a cluster)"})
    sweep_name: str = field(default="", metadata={"help": "name of the parent run (default: a time stamp)"})
    train: TrainConfig = field(default_factory=lambda: SWEEP_TRAIN, metadata={"inline": {
        "skip": tuple(f"model.{name}" for name in SWEPT) + NOT_PER_TRIAL, "help": SWEEP_HELP}})

    def __post_init__(self):  # the training knobs were checked by TrainConfig itself
        visual = _names(self.visual_attentions, ATTENTIONS, "--visual-attentions")
        audio = _names(self.audio_attentions, ATTENTIONS, "--audio-attentions")
        fusions = _names(self.fusions, FUSIONS, "--fusions")
        [float(x) for x in self.lrs.split(",") if x.strip()]
        if self.max_concurrent_trials < 1:
            raise ValueError("--max-concurrent-trials must be >= 1")
        unused = {"visual": ["--audio-attentions", "--fusions"], "audio": ["--visual-attentions", "--fusions"]}
        grids = {"--visual-attentions": visual, "--audio-attentions": audio, "--fusions": fusions}
        wide = [flag for flag in unused.get(self.train.model.modalities, []) if len(grids[flag]) > 1]
        if wide:  # their trials would train the same model
            raise ValueError(f"--modalities {self.train.model.modalities} does not use {' or '.join(wide)}: give one "
                             f"name to each")


def trial(config: dict) -> None:
    """A Tune trial: one Ray Train run whose epochs are reported to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    base = TrainConfig.from_dict(config["base"])
    model = replace(base.model, visual_attention=config["visual_attention"], audio_attention=config["audio_attention"],
                    fusion=config["fusion"])
    cfg = replace(base, model=model, lr=config.get("lr", base.lr), run_name=trial_name(config))
    run_train(cfg, parent_run_id=config["parent_run_id"], callbacks=[TuneReportCallback()], progress=False,
              source="jobs/tune.py")


def trial_name(config: dict) -> str:
    """A trial's run name: visual/audio/fusion (transformer/self/fbp), /lr<value> when lr is swept;
    the sweep is its parent run."""
    name = f"{config['visual_attention']}/{config['audio_attention']}/{config['fusion']}"
    return name + (f"/lr{config['lr']:g}" if "lr" in config else "")


def trial_lines_callback(total: int, metric: str, epochs: int):
    """A Tune callback (it runs on the driver) that prints one line per finished, stopped (ASHA) or
    failed trial: its name, epochs, best metric and the accuracy of that epoch, last train loss, seconds."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def __init__(self):
            self.best: dict[str, dict] = {}
            self.done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if metric in result and result[metric] > self.best.get(trial.trial_id, {}).get(metric, -1.0):  # ties: the earliest
                self.best[trial.trial_id] = dict(result)

        def _line(self, trial, outcome: str) -> None:
            self.done += 1
            last, best = trial.last_result or {}, self.best.get(trial.trial_id, {})
            text = (f"tune: trial {self.done}/{total} {trial_name(trial.config)}: {outcome}")
            if best:
                other = next(m for m in SELECT_METRICS if m != metric)
                text += (f", {int(last.get('epoch', best.get('epoch', 0))) + 1} epochs, best val "
                         f"{METRIC_NAMES[metric]} {best[metric]:.3f} at epoch {int(best.get('epoch', 0)) + 1} "
                         f"({METRIC_NAMES[other]} {best.get(other, 0):.3f}), "
                         f"last train loss {last.get('train_loss', float('nan')):.3f}")
            print(text + f", {last.get('time_total_s', 0):.0f} s", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            ran = int((trial.last_result or {}).get("epoch", epochs - 1)) + 1
            self._line(trial, "done" if ran >= epochs else f"stopped at epoch {ran}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED")

    return TrialLines()


def report(cells: list[dict], visual: list[str], audio: list[str], fusions: list[str], metric: str,
           source: dict | None = None, epochs: int | None = None) -> str:
    """Table 2 layout, one table per fusion: val accuracy / UAR of the best epoch of the best trial
    per (visual, audio) cell; where the numbers come from first, the published figures last."""
    lines = []
    if source:
        lines += [f"Store {source['store']}: {source['kind']}"
                  + (f" ({', '.join(source['datasets'])})" if source["datasets"] and source["kind"] == "real data" else "")
                  + f", {source['val_clips']} val clips."]
        if source["kind"] != "real data":
            lines += ["These numbers check that the pipeline learns the planted signal; they say nothing about "
                      "emotion recognition on real video."]
        lines.append("")
    per = f" over {epochs} epochs" if epochs else ""
    for fusion in fusions:
        lines += [f"### fusion: {fusion} (val accuracy / UAR, %, at the best epoch by {METRIC_NAMES[metric]}{per})", "",
                  "| visual \\ audio | " + " | ".join(a.capitalize() for a in audio) + " |",
                  "|---|" + "---|" * len(audio)]
        for v in visual:
            row = []
            for a in audio:
                c = next((c for c in cells if (c["visual"], c["audio"], c["fusion"]) == (v, a, fusion)), None)
                row.append("-" if c is None else f"{100 * c['val_accuracy']:.1f} / {100 * c['val_uar']:.1f}"
                           + (f" (stopped at epoch {c['stopped_at_epoch']})" if c.get("stopped_at_epoch") else ""))
            lines.append(f"| {v.capitalize()} | " + " | ".join(row) + " |")
        lines.append("")
    published = [f"{v}/{a} {PAPER_TABLE2_FBP[(v, a)]}" for v in visual for a in audio if (v, a) in PAPER_TABLE2_FBP]
    if published:
        lines += ["For context only, not comparable (another dataset, 383 AFEW val clips): the published AFEW val "
                  "accuracies with FBP (docs/method.md): " + ", ".join(published) + ".", ""]
    return "\n".join(lines)


def child_results(parent_run_id: str) -> list[dict]:
    """Per trial (from MLflow): visual, audio, fusion, lr, best val accuracy and UAR, run id."""
    client = tracking.client()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    out = []
    for r in sorted(runs, key=lambda r: r.info.run_name):  # a fixed order: ties go to the first name
        p, t = r.data.params, r.data.tags
        out.append({"visual": p["visual_attention"], "audio": p["audio_attention"], "fusion": p["fusion"],
                    "lr": float(p["lr"]), "val_accuracy": tracking.run_metric(r, "best_val_accuracy"),
                    "val_uar": tracking.run_metric(r, "best_val_uar"), "run_id": r.info.run_id, "run_name": r.info.run_name,
                    "status": r.info.status, "best_epoch": int(t.get("best_epoch", 0)),
                    "stopped_at_epoch": int(t["stopped_at_epoch"]) if t.get("stopped_early") == "true" else None})
    return out


def end_open_trials(parent_run_id: str, metric: str, epochs: int, output: str, store: str,
                    failed: set[str] = frozenset(), interrupted: bool = False) -> int:
    """End the trial runs of a sweep that Tune stopped before their run_train could: with
    `interrupted` those still RUNNING end KILLED; else those named in `failed` (the trials Tune saw
    fail) end FAILED, and the others still RUNNING, or FAILED by the stop itself (the trial's Ray
    Train run lost its controller), were stopped by ASHA (at a rung, or at max_t: the last epoch)
    and end as finish_stopped_trial says. Returns how many runs it ended."""
    client = tracking.client()
    experiment = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    ended = 0
    for r in children:
        if r.info.status == "RUNNING" and (interrupted or r.info.run_name in failed):
            tracking.end_run(r.info.run_id, "KILLED" if interrupted else "FAILED")
        elif r.info.status in ("RUNNING", "FAILED") and not interrupted and r.info.run_name not in failed:
            finish_stopped_trial(r.info.run_id, r.info.run_name, metric, epochs, output, store)
        else:
            continue
        ended += 1
    return ended


def finish_stopped_trial(run_id: str, run_name: str, metric: str, epochs: int, output: str, store: str) -> None:
    """What run_train would have logged at the end, from the epochs the trial logged: best_* and
    best_epoch (best metric, then the earliest epoch), its checkpoint and artifacts where that
    checkpoint was kept; stopped_early=true and stopped_at_epoch when it ran fewer than `epochs`.
    The run ends FINISHED."""
    client = tracking.client()
    history = {n: tracking.metric_history(run_id, n) for n in SELECT_METRICS}
    logged = [{"epoch": e, **{n: history[n].get(e) for n in SELECT_METRICS}} for e in sorted(history[metric])]
    ran = logged[-1]["epoch"] + 1 if logged else 0
    if ran < epochs:
        client.set_tag(run_id, "stopped_early", "true")
        client.set_tag(run_id, "stopped_at_epoch", str(ran))
    best = pick_best(logged, metric)
    if best is not None:
        e = logged[best]
        tracking.log_metrics(run_id, {f"best_{n}": e[n] for n in SELECT_METRICS}, e["epoch"])
        client.set_tag(run_id, "best_epoch", str(e["epoch"]))
        path = checkpoint_of_epoch(storage.join(output, storage_name(run_name, run_id)), e["epoch"])
        if path:
            log_run_artifacts(run_id, path, store)
            client.set_tag(run_id, "best_checkpoint", tracking.public(path))
    tracking.end_run(run_id)


def best_cells(results: list[dict], metric: str) -> list[dict]:
    """The best trial (by metric, then the earlier best epoch) of each (visual, audio, fusion) cell,
    over any extra grid axes; trials that reported no metric fill no cell."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["visual"], r["audio"], r["fusion"]), []).append(r)
    picks = [(g, pick_best(g, metric, "best_epoch")) for g in groups.values()]
    return [g[i] for g, i in picks if i is not None]


def write_report(cfg: TuneConfig, name: str, parent: str, results: list[dict], visual: list[str], audio: list[str],
                 fusions: list[str]) -> tuple[str, str]:
    """The Table-2 report of a sweep (markdown + heat maps) to the parent run and under
    --output/<sweep>/; returns (its text, that folder)."""
    cells = best_cells(results, cfg.train.select_metric)
    source = store_description(cfg.train.store)
    text = report(cells, visual, audio, fusions, cfg.train.select_metric, source, cfg.train.epochs)
    out_dir = storage.join(cfg.train.output, name)
    with tempfile.TemporaryDirectory() as d:
        md = os.path.join(d, "table2.md")
        with open(md, "w") as f:
            f.write(f"# Sweep {name}\n\n{text}")
        metrics = (cfg.train.select_metric, *[m for m in SELECT_METRICS if m != cfg.train.select_metric])
        png = plots.heatmap_png(cells, visual, audio, fusions, os.path.join(d, "table2.png"), metrics,
                                caption=f"Sweep {name} on {source['kind']} ({source['val_clips']} val clips): "
                                        f"best epoch by {METRIC_NAMES[cfg.train.select_metric]} of each cell, in %.")
        for path in (md, png):
            tracking.log_artifact(parent, path)
            with open(path, "rb") as src, storage.atomic_write(storage.join(out_dir, os.path.basename(path))) as dst:
                dst.write(src.read())
    return text, out_dir


def sweep_view(parent: str, lrs: list[float], metric: str) -> str:
    """Save the sweep's runs-table view (its trials, the grid axes and val scores as columns, the
    best first) and return the UI link that opens it; the sweep's run page where MLflow's UI would
    not read a saved view."""
    experiment = tracking.client().get_run(parent).info.experiment_id
    axes = ["visual_attention", "audio_attention", "fusion"] + (["lr"] if lrs else [])
    scores = ["best_val_uar", "best_val_accuracy"]  # Table 2's figures: each trial at its best epoch
    return (tracking.save_runs_view(experiment, parent, parent, axes, scores, order_by="best_" + metric)
            or tracking.ui_link(experiment, parent))


def run_tune(cfg: TuneConfig) -> dict:
    """Run the sweep; returns {parent_run_id, link, results, report_markdown, report_png, ...}."""
    tracking.check_reachable()
    visual = _names(cfg.visual_attentions, ATTENTIONS, "--visual-attentions")
    audio = _names(cfg.audio_attentions, ATTENTIONS, "--audio-attentions")
    fusions = _names(cfg.fusions, FUSIONS, "--fusions")
    lrs = [float(x) for x in cfg.lrs.split(",") if x.strip()]
    local = {k: os.path.abspath(getattr(cfg.train, k)) for k in ("store", "output")
             if not storage.is_remote(getattr(cfg.train, k))}
    cfg = replace(cfg, train=replace(cfg.train, **local))
    base = cfg.train
    require_splits(cfg.train.store, store_info(cfg.train.store))
    init_ray(quiet=cfg.train.quiet, state_api=True)
    total = len(visual) * len(audio) * len(fusions) * max(len(lrs), 1)
    check_workers_fit(base, min(cfg.max_concurrent_trials, total), TRIAL_CPUS)  # the trials that run at once
    name = cfg.sweep_name or time.strftime("sweep-%Y%m%d-%H%M%S")
    if cfg.sweep_name:
        tracking.require_new_run_name(cfg.train.experiment, name, "choose another --sweep-name")
    parent = tracking.start_run(cfg.train.experiment, name, tracking.config_params(cfg),
                                {"store": cfg.train.store, "kind": "sweep", **tracking.source_tags("jobs/tune.py")},
                                purpose=tracking.PURPOSES["train"])
    link = sweep_view(parent, lrs, cfg.train.select_metric)
    tuner = make_tuner(cfg, base, name, parent, (visual, audio, fusions, lrs), total)
    t0 = time.perf_counter()
    with tracking.ending_runs(parent):
        try:
            with sigint_raises():
                grid = tuner.fit()
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C: the sweep and its open trials end KILLED
            n = end_open_trials(parent, cfg.train.select_metric, cfg.train.epochs, cfg.train.output, cfg.train.store, interrupted=True)
            tracking.end_run(parent, "KILLED")
            raise Interrupted(f"interrupted; MLflow sweep run {parent} and {n} open trial run(s) ended as KILLED") from None
        summary = finish_sweep(cfg, name, parent, grid, visual, audio, fusions)
    return {**summary, "link": link, "elapsed_s": round(time.perf_counter() - t0, 1)}


def make_tuner(cfg: TuneConfig, base: TrainConfig, name: str, parent: str, axes: tuple, total: int):
    """The Tuner of the grid (visual x audio attention x fusion [x lr]), each trial a training run
    under the parent run; ASHA stops weak trials early with --asha."""
    import ray.tune
    from ray import tune

    visual, audio, fusions, lrs = axes
    space = {"visual_attention": tune.grid_search(visual), "audio_attention": tune.grid_search(audio),
             "fusion": tune.grid_search(fusions), "base": asdict(base), "parent_run_id": parent, "sweep": name,
             "tracking_uri": tracking.tracking_uri()}
    if lrs:
        space["lr"] = tune.grid_search(lrs)
    scheduler = None
    if cfg.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric=cfg.train.select_metric, mode="max", max_t=cfg.train.epochs, grace_period=min(2, cfg.train.epochs))
    return tune.Tuner(
        tune.with_resources(trial, {"cpu": TRIAL_CPUS}),
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=cfg.max_concurrent_trials),
        # Tune's own progress tables stay off: the driver prints one line per trial instead
        run_config=ray.tune.RunConfig(name=name, storage_path=storage.join(cfg.train.output, "tune"), verbose=0,
                                      callbacks=[] if cfg.train.quiet else [trial_lines_callback(total, cfg.train.select_metric, cfg.train.epochs)]),
    )


def finish_sweep(cfg: TuneConfig, name: str, parent: str, grid, visual: list[str], audio: list[str],
                 fusions: list[str]) -> dict:
    """After the grid ran: every trial's run ended, the Table-2 report written, the best trial
    named on the parent run, which ends; the sweep's summary."""
    errors = [str(r.error).splitlines()[0][:300] for r in grid if r.error]
    end_open_trials(parent, cfg.train.select_metric, cfg.train.epochs, cfg.train.output, cfg.train.store,
                    failed={trial_name(r.config) for r in grid if r.error})
    results = child_results(parent)
    text, out_dir = write_report(cfg, name, parent, results, visual, audio, fusions)
    best = pick_best(results, cfg.train.select_metric, "best_epoch")
    best = None if best is None else results[best]
    rule = BEST_RULE.format(metric=METRIC_NAMES[cfg.train.select_metric])
    if best:
        tracking.log_metrics(parent, {"best_val_accuracy": best["val_accuracy"], "best_val_uar": best["val_uar"]}, 0)
        tracking.set_tags(parent, {"best_trial": best["run_name"], "best_trial_run_id": best["run_id"],
                                   "best_trial_rule": rule})
    tracking.describe(parent, f"Sweep {name}" + (f": best trial {best['run_name']} ({rule})." if best else ".")
                      + f"\n\n{text}")
    tracking.end_run(parent, "FAILED" if errors and not results else "FINISHED")
    return {"parent_run_id": parent, "sweep_name": name, "trials": len(results), "errors": errors,
            "results": results, "report": text, "report_markdown": storage.join(out_dir, "table2.md"),
            "report_png": storage.join(out_dir, "table2.png"), "best": best}
