"""The audio branch on real acted speech, speaker-disjoint: extraction of the audio files with
jobs/extract.py's stage, then jobs/train.py's stage with --modalities audio per audio attention.

Corpora (not shipped, see docs/real-data.md):
  tess     <root>/<SPEAKER>_<emotion>/*.wav, speakers OAF and YAF; two folds: train on one
           speaker, validate on the other, and the reverse
  ravdess  <root>/Actor_NN/03-01-EE-II-SS-RR-NN.wav; calm (EE=02) dropped; one fold: actors
           outside --val-actors train, the four (default) in it validate

    python bench/real_audio.py --corpus tess --root TESS_Toronto_emotional_speech_set_data --work /tmp/real_audio
    python bench/real_audio.py --corpus ravdess --root Audio_Speech_Actors_01-24 --work /tmp/real_audio

Prints one markdown row per (fold, attention): final-epoch train accuracy, best-epoch val
accuracy, UAR and per-class recall; the table goes to stdout and <work>/results.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.labels import EMOTIONS  # noqa: E402

TESS_EMOTIONS = {"angry": "Angry", "disgust": "Disgust", "fear": "Fear", "happy": "Happy", "neutral": "Neutral",
                 "sad": "Sad", "ps": "Surprise", "pleasant_surprise": "Surprise", "pleasant_surprised": "Surprise"}
RAVDESS_EMOTIONS = {"01": "Neutral", "03": "Happy", "04": "Sad", "05": "Angry", "06": "Fear", "07": "Disgust",
                    "08": "Surprise"}  # 02 calm has no counterpart among the 7 labels


def tess_records(root: Path) -> list[dict]:
    """(uri, label, speaker) of every TESS file."""
    out = []
    for wav in sorted(root.glob("*/*.wav")):
        speaker, emotion = wav.parent.name.split("_", 1)
        out.append({"uri": str(wav.resolve()), "label": TESS_EMOTIONS[emotion.lower()], "speaker": speaker.upper()})
    return out


def ravdess_records(root: Path) -> list[dict]:
    """(uri, label, speaker) of every RAVDESS speech file but calm."""
    out = []
    for wav in sorted(root.glob("**/*.wav")):
        m = re.fullmatch(r"\d\d-\d\d-(\d\d)-\d\d-\d\d-\d\d-(\d\d)", wav.stem)
        if m and m.group(1) in RAVDESS_EMOTIONS:
            out.append({"uri": str(wav.resolve()), "label": RAVDESS_EMOTIONS[m.group(1)], "speaker": m.group(2)})
    return out


def folds(corpus: str, records: list[dict], val_actors: str) -> dict[str, set[str]]:
    """fold name -> the speakers that validate."""
    if corpus == "tess":
        return {f"train {s}, val {v}": {v} for s, v in (("OAF", "YAF"), ("YAF", "OAF"))}
    val = {f"{int(a):02d}" for a in val_actors.split(",")}
    return {f"actors {','.join(sorted(val))} held out": val}


def write_manifest(path: Path, records: list[dict], val: set[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "label", "split"])
        for r in records:
            w.writerow([r["uri"], r["label"], "val" if r["speaker"] in val else "train"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", choices=["tess", "ravdess"], required=True)
    p.add_argument("--root", required=True, help="the corpus folder")
    p.add_argument("--work", default="/tmp/real_audio", help="stores, runs and the MLflow store go here")
    p.add_argument("--attentions", default="transformer,self,relation,mean")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--val-actors", default="21,22,23,24", help="ravdess: the held-out actors")
    p.add_argument("--max-clips", type=int, default=0, help="a seeded sample of this many files (0: all; for a quick look)")
    args = p.parse_args(argv)

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    from raylib.runtime import init_ray
    from raylib.extract.config import ExtractConfig
    from raylib.extract.job import run_extract
    from raylib.models.model_config import ModelConfig
    from raylib.train.job import TrainConfig, run_train

    init_ray(quiet=True)
    root = Path(args.root)
    records = tess_records(root) if args.corpus == "tess" else ravdess_records(root)
    if not records:
        p.error(f"no {args.corpus} audio files under {root}")
    if args.max_clips:
        import random

        records = sorted(random.Random(0).sample(records, min(args.max_clips, len(records))), key=lambda r: r["uri"])
    rows = []
    for fold, val in folds(args.corpus, records, args.val_actors).items():
        slug = re.sub(r"[^A-Za-z0-9]+", "-", fold).strip("-")
        manifest = work / f"{args.corpus}-{slug}.csv"
        write_manifest(manifest, records, val)
        store = work / f"{args.corpus}-{slug}-features"
        t0 = time.perf_counter()
        summary = run_extract(ExtractConfig(input=str(manifest), output=str(store), quiet=True))
        print(f"{fold}: extracted {summary.get('clips_stored')} clips in {time.perf_counter() - t0:.0f} s", flush=True)
        for attention in args.attentions.split(","):
            cfg = TrainConfig(store=str(store), output=str(work / "runs"), experiment=f"real-audio-{args.corpus}",
                              run_name=f"{slug}-{attention}-{time.strftime('%H%M%S')}",
                              model=ModelConfig(modalities="audio", audio_attention=attention), epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker, quiet=True)
            t0 = time.perf_counter()
            s = run_train(cfg, log_artifacts=False, progress=False, source="bench/real_audio.py")
            final_train = last_metric(s["run_id"], "train_accuracy")
            recall = [s.get(f"val_recall_{e}", float("nan")) for e in EMOTIONS]
            rows.append([fold, attention, f"{final_train:.3f}", f"{s.get('val_accuracy', 0):.3f}",
                         f"{s.get('val_uar', 0):.3f}", str(s["best_epoch"] + 1),
                         " ".join(f"{r:.2f}" for r in recall), f"{time.perf_counter() - t0:.0f}"])
            print(" | ".join(rows[-1]), flush=True)
    head = ["fold", "audio attention", "train acc (last epoch)", "val acc", "val UAR", "best epoch",
            "val recall " + " ".join(e[:3] for e in EMOTIONS), "train s"]
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])
    cmd = "python bench/real_audio.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (work / "results.md").write_text(f"`{cmd}`\n\n{table}\n")
    print(table)
    print(json.dumps({"chance": round(1 / len(EMOTIONS), 3)}))
    return 0


def last_metric(run_id: str, name: str) -> float:
    from raylib import tracking

    history = tracking.metric_history(run_id, name)
    return history[max(history)] if history else float("nan")


if __name__ == "__main__":
    sys.exit(main())
