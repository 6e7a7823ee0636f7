"""CPU forward time of each face backbone (per face) and of FusionModel (per clip).

    python bench/models.py [--batch 8] [--repeats 3] [--fusion-only]

The FusionModels are the ones jobs/train.py builds with its default flags (TrainConfig's
model_config), on 16 frames of 128-d features (dlib's embedding) and a 200 x 200 spectrogram.

Prints a markdown table; paste it into BENCHMARKS.md with this command line.
"""

import argparse
import time
from dataclasses import replace

import torch

from raylib.models.backbones import build_backbone
from raylib.models.fusion import build_model
from raylib.train.config import TrainConfig


def timed(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="faces per forward / clips per batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fusion-only", action="store_true", help="time the FusionModels only")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, best of {args.repeats}\n")
    if not args.fusion_only:
        backbones(args)
    fusion_models(args)


def backbones(args):
    print("| backbone | input | params | output | ms / face |")
    print("|---|---|---|---|---|")
    chips = torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8)
    for name, size in (("ir50", 112), ("ir50", 224), ("resnet18", None), ("vggface", None), ("dlib_resnet", None)):
        enc = build_backbone(name, None if name == "dlib_resnet" else "random", input_size=size)
        params = f"{sum(p.numel() for p in enc.module.parameters()):,}" if hasattr(enc, "module") else "n/a (dlib)"
        sec = timed(lambda: enc.embed(chips), args.repeats)
        print(f"| {name} | {enc.spec.input_size} | {params} | {enc.dim} | {1000 * sec / args.batch:.1f} |")
    print()


def fusion_models(args):
    train = TrainConfig()
    print(f"| FusionModel, jobs/train.py's defaults (m {train.model.attention_hidden}, FBP k {train.model.fbp_k} o "
          f"{train.model.fbp_o}, dropout {train.model.dropout}); visual 16 x 128-d, audio 1 x 200 x 200 | params | ms / clip (forward) | "
          f"ms / clip (fwd+bwd) |")
    print("|---|---|---|---|")
    visual = torch.randn(args.batch, 16, 128)
    vmask = torch.ones(args.batch, 16, dtype=torch.bool)
    audio = torch.randn(args.batch, 1, 200, 200)
    lengths = torch.full((args.batch,), 200)
    for va, aa, fu in (("self", "self", "concat"), ("transformer", "transformer", "fbp"), ("relation", "relation", "fbp")):
        cfg = replace(train.model, visual_attention=va, audio_attention=aa, fusion=fu, visual_dim=128, audio_channels=1)
        model = build_model(cfg)
        params = sum(p.numel() for p in model.parameters())
        model.eval()
        with torch.no_grad():
            fwd = timed(lambda: model(visual, vmask, audio, lengths), args.repeats)
        model.train()

        def step():
            logits, _ = model(visual, vmask, audio, lengths)
            logits.sum().backward()

        both = timed(step, args.repeats)
        print(f"| {va} / {aa} / {fu} | {params:,} | {1000 * fwd / args.batch:.1f} | {1000 * both / args.batch:.1f} |")


if __name__ == "__main__":
    main()
