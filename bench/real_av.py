"""The paper's comparisons on real audio-video clips, speaker-independent: audio alone, visual
alone, AV concat and AV FBP (each attention kind), an ensemble of the AV configurations (the
paper's Table 4), and the linear yardstick, on the features a store already holds.

Extract once per feature with jobs/extract.py (a manifest with a speaker column), then:

    python bench/real_av.py --store /data/javased/store_mx --folds 3 --out /tmp/real_av.json

Folds are raylib.folds' plan over the store's speakers (the same as jobs/train.py --folds): in
each fold the test speakers are scored once by the epoch the inner selection speakers picked.
Each configuration is trained in this process with the training loop's own pieces
(raylib.train.loop: train_epoch, set_lr; batch-norm recalibration; val_metrics), one
worker, so a grid of folds x configurations runs in minutes on 2 cores; jobs/train.py --folds
runs the same plan through Ray Train and MLflow.

Reported per configuration: accuracy and UAR pooled over all folds' test clips with a 95%
bootstrap interval over clips, per-fold accuracy, and train accuracy at the chosen epoch (does
the branch fit its training speakers). The yardstick: a logistic regression (C=1, standardised
inputs) on clip-level summaries of the same stored features (visual: frame mean; audio: mean and
standard deviation of each frequency bin over time).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.labels import EMOTIONS  # noqa: E402

BOOTSTRAP = 2000


def read_rows(store: str):
    """The store's labelled rows with features (and frames), with their speaker."""
    from raylib.store import COLUMNS, usable
    from raylib.prediction import rows_for
    from raylib.store import read_store

    table = read_store(store, [*COLUMNS, "speaker"])
    return rows_for(usable(table), "av")


def interval(y: np.ndarray, pred: np.ndarray, seed: int = 0) -> dict:
    """Accuracy and UAR with 95% bootstrap intervals over clips."""
    from raylib.metrics import summarize

    rng = np.random.default_rng(seed)
    point = summarize(y, pred)
    accs, uars = [], []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(y), len(y))
        s = summarize(y[i], pred[i])
        accs.append(s["accuracy"]), uars.append(s["uar"])
    q = lambda v: [round(float(np.percentile(v, 2.5)), 3), round(float(np.percentile(v, 97.5)), 3)]  # noqa: E731
    return {"accuracy": round(point["accuracy"], 4), "accuracy_95": q(accs), "uar": round(point["uar"], 4),
            "uar_95": q(uars)}


def fit_fold(table, roles: np.ndarray, model_cfg, a) -> tuple[np.ndarray, dict]:
    """Train one configuration on the fold's train speakers, pick the epoch on its select
    speakers; returns test-speaker probabilities and {best_epoch, train_accuracy, select_uar}."""
    import torch

    from raylib.batches import collate
    from raylib.models.audio_cnn import recalibrate_norms
    from raylib.models.fusion import build_model
    from raylib.prediction import predict, val_metrics
    from raylib.train.config import TrainConfig
    from raylib.train.loop import make_optimizer, set_lr, train_epoch

    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, visual_lr_scale=a.visual_lr_scale,
                      weight_decay=a.weight_decay)
    torch.manual_seed(a.seed)
    model = build_model(model_cfg)
    opt = make_optimizer(cfg.optimizer, model.param_groups(cfg.visual_lr_scale), cfg.lr, cfg.weight_decay)
    train = table.filter(roles == "train")
    select = table.filter(roles == "val")
    test = table.filter(roles == "test")
    rng = np.random.default_rng(a.seed)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(train.num_rows)
        batches = (collate(train.take(order[i:i + cfg.batch_size]), model_cfg.audio_channels)
                   for i in range(0, len(order), cfg.batch_size))
        set_lr(opt, cfg, epoch)
        kept: list = []
        train_epoch(model, opt, batches, keep=kept)
        recalibrate_norms(model, kept)
        score = val_metrics(model, select)["val_uar"]
        if score > best:  # the earliest of equal epochs, as training's pick_best
            best, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
    final_fit = val_metrics(model, train)["val_accuracy"]  # the end of the schedule: does the branch fit
    model.load_state_dict(best_state)
    probs, _ = predict(model, test)
    fit = val_metrics(model, train)["val_accuracy"]
    return probs, {"best_epoch": best_epoch, "train_accuracy": round(fit, 4), "final_train_accuracy": round(final_fit, 4),
                   "select_uar": round(best, 4)}


def summaries(table, which: str) -> np.ndarray:
    """Clip-level inputs of the yardstick: visual frame mean (of the l2-normalised frames, as
    training sees them) and/or the audio bins' mean and sd over time."""
    from raylib.batches import collate

    out = []
    for start in range(0, table.num_rows, 32):
        b = collate(table.slice(start, 32))
        parts = []
        if which in ("visual", "av"):
            m = b["visual_mask"].numpy()[..., None]
            parts.append((b["visual"].numpy() * m).sum(1) / np.maximum(m.sum(1), 1))
        if which in ("audio", "av"):
            x, n = b["audio"].numpy(), b["audio_lengths"].numpy()
            rows = []
            for i in range(len(n)):
                s = x[i, :, :, : max(int(n[i]), 1)].reshape(-1, max(int(n[i]), 1))
                rows.append(np.concatenate([s.mean(1), s.std(1)]))
            parts.append(np.stack(rows))
        out.append(np.concatenate(parts, axis=1))
    return np.concatenate(out)


def yardstick(x: np.ndarray, y: np.ndarray, roles_by_fold: list[np.ndarray]) -> tuple[np.ndarray, list]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    pred = np.full(len(y), -1)
    fits = []
    for roles in roles_by_fold:
        fit_rows = np.isin(roles, ("train", "val"))  # no epochs to pick: select speakers train too
        test = roles == "test"
        scaler = StandardScaler().fit(x[fit_rows])
        model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x[fit_rows]), y[fit_rows])
        pred[test] = model.predict(scaler.transform(x[test]))
        fits.append(round(float(model.score(scaler.transform(x[fit_rows]), y[fit_rows])), 4))
    return pred, fits


def main(argv=None) -> int:
    from raylib.folds import fold_plan, speaker_split
    from raylib.models import POOLINGS
    from raylib.models.model_config import ModelConfig
    from raylib.train.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="feature store with a speaker column (jobs/extract.py)")
    p.add_argument("--folds", type=int, default=3, help="speaker folds")
    p.add_argument("--epochs", type=int, default=12, help="epochs per fold (the training default)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch (the training default)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (the training default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--visual-lr-scale", type=float, default=TrainConfig.visual_lr_scale,
                   help="the visual branch's learning rate over --lr (the training default)")
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay, help="the training default")
    p.add_argument("--dropout", type=float, default=ModelConfig.dropout, help="FBP and classifier dropout (the model default)")
    p.add_argument("--attentions", default="transformer", help="comma-separated attention kinds, the same on both "
                                                               "branches (" + ", ".join(POOLINGS) + ")")
    p.add_argument("--runs", default="audio,visual,concat,fbp", help="comma-separated: audio, visual, concat, fbp")
    p.add_argument("--no-visual-norm", action="store_true", help="train without FrameNorm (the old visual branch)")
    p.add_argument("--speaker-norm", action="store_true", help="standardise each speaker's features with that "
                                                                 "speaker's statistics (raylib.speaker_norm), for the "
                                                                 "yardstick and the trained models")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default="", help="write the figures as JSON here")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    table = read_rows(a.store)
    if a.speaker_norm:
        from raylib.speaker_norm import normalize, table_stats

        table = normalize(table, table_stats(table))
    y = table.column("label_index").to_numpy().astype(np.int64)
    speakers = np.array(table.column("speaker").to_pylist(), dtype=object)
    plan = fold_plan(speakers, a.folds)
    roles = [speaker_split(speakers, f) for f in plan]
    channels = int(table.column("audio_shape")[0].as_py()[0])
    dim = int(table.column("visual_dim").to_numpy().max())
    out = {"store": a.store, "clips": int(table.num_rows), "speakers": sorted(set(speakers)),
           "classes": [EMOTIONS[k] for k in sorted(set(y))], "folds": [f.__dict__ for f in plan],
           "epochs": a.epochs, "batch_size": a.batch_size, "weight_decay": a.weight_decay, "dropout": a.dropout, "visual_lr_scale": a.visual_lr_scale, "visual_norm": not a.no_visual_norm,
           "speaker_norm": a.speaker_norm, "results": {}}
    print(f"{table.num_rows} clips, {len(set(speakers))} speakers, {a.folds} folds, {a.epochs} epochs", flush=True)

    def report(name: str, pred: np.ndarray, per_fold: list, extra: dict) -> None:
        res = {**interval(y, pred), "per_fold_accuracy": per_fold, **extra}
        out["results"][name] = res
        print(f"{name:32s} acc {res['accuracy']:.3f} {res['accuracy_95']}  UAR {res['uar']:.3f}  folds "
              f"{per_fold}  {json.dumps(extra)}", flush=True)

    for which in ("audio", "visual", "av"):
        pred, fits = yardstick(summaries(table, which), y, roles)
        report(f"yardstick {which}", pred, [round(float(np.mean(pred[r == 'test'] == y[r == 'test'])), 4)
                                            for r in roles], {"train_accuracy": fits})
    members: dict[str, np.ndarray] = {}
    for attention in a.attentions.split(","):
        for run in a.runs.split(","):
            modalities, fusion = (run, "fbp") if run in ("audio", "visual") else ("av", run)
            cfg = ModelConfig(visual_dim=dim, visual_attention=attention, audio_attention=attention, fusion=fusion,
                              modalities=modalities, audio_channels=channels,
                              visual_input_norm=not a.no_visual_norm, dropout=a.dropout)
            probs = np.zeros((len(y), len(EMOTIONS)))
            t0 = time.perf_counter()
            info = []
            for r in roles:
                fold_probs, fold_info = fit_fold(table, r, cfg, a)
                probs[r == "test"] = fold_probs
                info.append(fold_info)
            pred = probs.argmax(1)
            name = f"{run} {attention}"
            report(name, pred, [round(float(np.mean(pred[r == 'test'] == y[r == 'test'])), 4) for r in roles],
                   {"train_accuracy": [i["train_accuracy"] for i in info],
                    "final_train_accuracy": [i["final_train_accuracy"] for i in info],
                    "best_epoch": [i["best_epoch"] for i in info],
                    "seconds": round(time.perf_counter() - t0, 1)})
            members[name] = probs
    # Table 4: the mean of the configurations' class probabilities, of the AV runs and of all runs
    for title, names in (("ensemble of the AV runs", [n for n in members if n.split()[0] in ("concat", "fbp")]),
                         ("ensemble of all runs", list(members))):
        if len(names) > 1:
            pred = sum(members[n] for n in names).argmax(1)
            report(title, pred, [round(float(np.mean(pred[r == 'test'] == y[r == 'test'])), 4) for r in roles],
                   {"members": names})
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
