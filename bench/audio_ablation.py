"""One change at a time to the audio branch on real speech, outside Ray (what made it learn).

RAVDESS speech (calm dropped), actors 01-20 train, 21-24 val; spectrograms from
raylib.media.audio, the model from raylib's build_model (of the checkout named by --repo, so an
older checkout gives the "before" rows), plain PyTorch, batches of 16, Adam, eval-mode metrics.

    python bench/audio_ablation.py --root RavdessDataSet                       # the model as shipped
    python bench/audio_ablation.py --root RavdessDataSet --order sorted        # class-sorted batches
    python bench/audio_ablation.py --root RavdessDataSet --scale clip          # per-clip standardisation
    python bench/audio_ablation.py --root RavdessDataSet --recalibrate 0       # no batch-norm recalibration
    python bench/audio_ablation.py --root RavdessDataSet --repo <old checkout> --scale clip --recalibrate 0

Prints one line per epoch: training loss, accuracy (train mode; eval mode at the last epoch), val
accuracy, UAR, per-class recall and the predicted-class counts.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time

import numpy as np


def spectrograms(root: str, cache: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(features [1, 200, T] float16 per clip, label indices, actor ids), cached in `cache`."""
    if os.path.exists(cache):
        with open(cache, "rb") as f:
            return pickle.load(f)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.real_audio import ravdess_records
    from pathlib import Path

    from raylib.labels import LABEL_INDEX
    from raylib.media.audio import audio_features, load_audio

    records = ravdess_records(Path(root))
    xs = [audio_features(load_audio(r["uri"]).samples).astype(np.float16) for r in records]
    out = (xs, np.array([LABEL_INDEX[r["label"]] for r in records]), np.array([r["speaker"] for r in records]))
    with open(cache, "wb") as f:
        pickle.dump(out, f)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the RAVDESS folder (Actor_NN/*.wav)")
    p.add_argument("--cache", default="/tmp/ravdess_spectrograms.pkl")
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="the checkout whose model is built")
    p.add_argument("--scale", choices=["none", "clip", "global"], default="none",
                   help="none: as stored (the model standardises); clip: per clip; global: one mean/std")
    p.add_argument("--order", choices=["shuffle", "sorted"], default="shuffle")
    p.add_argument("--attention", default="transformer")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--recalibrate", type=int, default=16, help="batches to recompute batch-norm statistics on (0: off)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import torch

    xs, y, actor = spectrograms(a.root, a.cache)
    sys.path.insert(0, a.repo)
    from raylib.models.fusion import ModelConfig, build_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = np.where(actor.astype(int) <= 20)[0]
    val = np.where(actor.astype(int) > 20)[0]
    mean = float(np.mean([xs[i].astype(np.float32).mean() for i in train]))
    std = float(np.mean([xs[i].astype(np.float32).std() for i in train]))

    def collate(idx):
        clips = [xs[i].astype(np.float32) for i in idx]
        out = np.zeros((len(clips), 1, 200, max(c.shape[-1] for c in clips)), np.float32)
        for k, c in enumerate(clips):
            if a.scale == "clip":
                c = (c - c.mean()) / max(float(c.std()), 1e-6)
            elif a.scale == "global":
                c = (c - mean) / std
            out[k, :, :, :c.shape[-1]] = c
        return torch.from_numpy(out), torch.tensor([c.shape[-1] for c in clips]), torch.from_numpy(y[idx])

    model = build_model(ModelConfig(visual_dim=8, modalities="audio", audio_attention=a.attention,
                                    attention_hidden=64, fbp_o=128, dropout=0.2))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs) if a.schedule == "cosine" else None

    def evaluate(idx):
        model.eval()
        with torch.no_grad():
            pred = np.concatenate([model(None, None, *collate(idx[s:s + 64])[:2])[0].argmax(1).numpy()
                                   for s in range(0, len(idx), 64)])
        recall = [float((pred[y[idx] == c] == c).mean()) for c in range(7)]
        return float((pred == y[idx]).mean()), float(np.mean(recall)), recall, np.bincount(pred, minlength=7)

    print(vars(a), flush=True)
    for epoch in range(a.epochs):
        t0 = time.time()
        model.train()
        order = rng.permutation(train) if a.order == "shuffle" else train[np.argsort(y[train], kind="stable")]
        loss_sum, seen, correct, kept = 0.0, 0, 0, []
        for s in range(0, len(order), 16):
            spec, lengths, labels = collate(order[s:s + 16])
            if a.recalibrate:
                kept = (kept + [(None, None, spec, lengths)])[-a.recalibrate:]
            logits, _ = model(None, None, spec, lengths)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum, seen = loss_sum + float(loss.detach()) * len(labels), seen + len(labels)
            correct += int((logits.argmax(1) == labels).sum())
        if sched:
            sched.step()
        if a.recalibrate:
            from raylib.models.audio_cnn import recalibrate_norms

            recalibrate_norms(model, kept)
        train_acc = evaluate(train)[0] if epoch == a.epochs - 1 else correct / seen
        acc, uar, recall, counts = evaluate(val)
        print(f"epoch {epoch + 1}: loss {loss_sum / seen:.3f}  train acc {train_acc:.3f}  val acc {acc:.3f}  UAR {uar:.3f}  "
              f"recall {' '.join(f'{r:.2f}' for r in recall)}  predicted {counts.tolist()}  ({time.time() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
