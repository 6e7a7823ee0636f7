"""The pretraining step on one GPU: jobs/pretrain.py's worker loop (pretrain_loop.train_epoch and
evaluate: augmentation, bf16 autocast, AdamW, cosine schedule fitted to a time budget) fine-tunes
IR50 at 112 px from random initialisation on FER2013, fed from device memory; plus the images/s of
the training step and of extraction's bf16 feature encoder (TorchFaceEncoder) against fp32.

What it leaves out, on purpose: Ray (Train's DDP set-up and Ray Data's decoding, which bench/
pretrain_fer.py covers on CPU). A GPU machine that cannot install Ray still runs this, and what it
measures is the ceiling the Ray job's data pipeline has to keep up with.

Two steps, because a GPU machine may have neither the dataset nor room for it:

    # here: FER2013 class folders -> one file of 48 px lossless WebP images (55 MiB), chips framed
    # as jobs/pretrain.py frames them (raylib.images.decode_image + image_chip), then brought back
    # to FER2013's own 48 px
    python bench/pretrain_gpu.py pack --data /path/to/fer2013/data --pack .gpudata/fer48.npz
    # there: train, time, report (JSON written after every epoch)
    python bench/pretrain_gpu.py run --pack .gpudata/fer48.npz --minutes 5 --out /tmp/gpu_fer.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raylib.labels import EMOTIONS, LABEL_INDEX, SPLITS  # noqa: E402

SIDE = 48  # FER2013's own resolution


def pack(data: str, out: str) -> None:
    """FER2013 folders -> npz: blob (concatenated WebP files), offsets, label_index, split_index."""
    from PIL import Image

    from raylib import storage
    from raylib.images import decode_image, image_chip, list_images

    listing = list_images(data)
    blobs, labels, splits = [], [], []
    for i, r in enumerate(listing.records):
        chip, _ = image_chip(decode_image(storage.read_bytes(r.uri)))
        grey = Image.fromarray(chip[:, :, 0]).resize((SIDE, SIDE), Image.BOX)
        buf = io.BytesIO()
        grey.save(buf, "WEBP", lossless=True)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        labels.append(LABEL_INDEX[r.label])
        splits.append(SPLITS.index(r.split))
        if i % 5000 == 0:
            print(f"{i} / {len(listing.records)}", flush=True)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, blob=np.concatenate(blobs), offsets=offsets, label_index=np.array(labels, np.int64),
             split_index=np.array(splits, np.int64))
    print(f"{len(blobs)} images ({listing.summary()}) -> {out}: {os.path.getsize(out) / 2**20:.1f} MiB")


def read_pack(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(faces [N, 48, 48] uint8, label_index [N], split_index [N]) of a pack, decoded once."""
    from PIL import Image

    z = np.load(path)
    blob, off = z["blob"], z["offsets"]
    faces = np.stack([np.asarray(Image.open(io.BytesIO(blob[off[i]:off[i + 1]].tobytes())).convert("L"))
                      for i in range(len(off) - 1)])
    return faces, z["label_index"], z["split_index"]


def model_inputs(pack: tuple, size: int, spec, device) -> dict:
    """{split: (x [N, 3, size, size] float32 on device, y [N])}: the 48 px faces as three equal
    channels through raylib.images.model_input (extraction's resize and normalisation)."""
    import torch

    from raylib.images import model_input

    faces, labels, splits = pack
    out = {}
    for s, name in enumerate(SPLITS):
        keep = np.flatnonzero(splits == s)
        if not len(keep):
            continue
        chips = np.repeat(faces[keep][..., None], 3, axis=3)
        x = torch.cat([model_input(chips[i:i + 4096], spec, size) for i in range(0, len(chips), 4096)])
        out[name] = (x.to(device), torch.as_tensor(labels[keep]).to(device))
    return out


class GpuBusy:
    """Share of time a kernel ran on GPU 0 while active, from NVML's utilisation counter."""

    def __init__(self, period: float = 0.1):
        self.samples, self.period, self._stop = [], period, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:  # no NVML: report None
            self._nvml = None

    def __enter__(self):
        if self._nvml:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.period):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc):
        self._stop.set()

    def share(self) -> float | None:
        return round(float(np.mean(self.samples)) / 100, 3) if self.samples else None


def batches(x, y, batch_size: int, generator=None, limit: int = 0):
    """{x, label_index} dicts over (x, y), shuffled when a generator is given."""
    import torch

    order = torch.randperm(len(x), generator=generator, device="cpu").to(x.device) if generator is not None \
        else torch.arange(len(x), device=x.device)
    n = len(x) if not limit else min(len(x), limit * batch_size)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield {"x": x[idx], "label_index": y[idx]}


def step_speed(cfg, data, device, steps: int, nchw: bool = False) -> dict:
    """Images/s of train_epoch's step (augment, bf16 forward, backward, AdamW) over `steps`
    batches after a warm-up, and the GPU's busy share meanwhile."""
    import torch

    from raylib.pretrain import loop as pretrain_loop
    from raylib.pretrain.loop import build_classifier, channels_last, make_optimizer, train_epoch

    x, y = data["train"]
    model = channels_last(build_classifier(cfg).to(device), device)
    if nchw:  # the loop as it was: batches and model in the default memory order
        model = model.to(memory_format=torch.contiguous_format)
        pretrain_loop.channels_last = lambda t, d: t
    opt = make_optimizer(cfg, model.parameters())
    gen = torch.Generator().manual_seed(0)
    try:
        train_epoch(cfg, model, opt, batches(x, y, cfg.batch_size, gen, 5), device, gen, 0, 1000, 0.0)  # warm-up
        with GpuBusy() as busy:
            m = train_epoch(cfg, model, opt, batches(x, y, cfg.batch_size, gen, steps), device, gen, 0, 1000, 0.0)
    finally:
        pretrain_loop.channels_last = channels_last
    return {"images_per_s": round(m["train_images_per_s_per_worker"], 1), "gpu_busy_share": busy.share(),
            "data_wait_share": round(m["data_wait_share"], 4)}


def encoder_speed(device, name: str, size: int, batch: int, repeats: int) -> dict:
    """Images/s of extraction's TorchFaceEncoder.embed on 224 px uint8 chips, bf16 vs fp32."""
    import torch

    from raylib.models.backbones import build_backbone

    enc = build_backbone(name, "random", device=str(device), input_size=size)
    chips = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
    out = {}
    for label, dtype in (("bf16", enc.dtype), ("fp32", None)):
        enc.dtype = dtype
        for _ in range(3):
            enc.embed(chips)
        torch.cuda.synchronize() if device.type == "cuda" else None
        t = time.perf_counter()
        for _ in range(repeats):
            enc.embed(chips)
        torch.cuda.synchronize() if device.type == "cuda" else None
        out[label] = round(batch * repeats / (time.perf_counter() - t), 1)
    return out


def run(a) -> dict:
    import torch

    from raylib.models.backbones import SPECS
    from raylib.pretrain.config import PretrainConfig
    from raylib.pretrain.loop import build_classifier, channels_last, evaluate, make_optimizer, train_epoch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__}

    def save():
        if a.out:
            with open(a.out, "w") as f:
                json.dump(report, f, indent=1)

    cfg = PretrainConfig(backbone=a.backbone, init="random", input_size=a.input_size, epochs=a.epochs,
                         time_limit_min=a.minutes, batch_size=a.batch_size, optimizer="adamw", lr=a.lr,
                         weight_decay=0.05, label_smoothing=0.1, warmup=0.03, max_contrast=0.3, use_gpu=True,
                         num_workers=1, select_metric="val_accuracy")
    t0 = time.perf_counter()
    pack = read_pack(a.pack)
    data = model_inputs(pack, cfg.side(), SPECS[cfg.backbone], device)
    report["load_s"] = round(time.perf_counter() - t0, 1)
    report["images"] = {k: len(v[1]) for k, v in data.items()}
    print(json.dumps(report), flush=True)
    if a.speed_steps:
        report["encoder_images_per_s"] = {f"{n}@{s}": encoder_speed(device, n, s, 256, a.speed_steps)
                                          for n, s in (("ir50", 112), ("resnet18", 224))}
        report["step"] = {}
        for label, c, nchw in ((f"{cfg.backbone}@{cfg.side()} b{cfg.batch_size}", cfg, False),
                               (f"{cfg.backbone}@{cfg.side()} b{cfg.batch_size} NCHW", cfg, True),
                               ("resnet18@64 b64", PretrainConfig(**{**cfg.__dict__, "backbone": "resnet18",
                                                                     "input_size": 64, "batch_size": 64}), False)):
            sub = data if c.side() == cfg.side() else model_inputs(pack, c.side(), SPECS[c.backbone], device)
            report["step"][label] = step_speed(c, sub, device, a.speed_steps, nchw)
            print(label, report["step"][label], flush=True)
        report["encoder_images_per_s"]["note"] = "batch of 256 chips, 224 px uint8 in"
        print(json.dumps(report["encoder_images_per_s"]), flush=True)
        save()
    if not a.minutes:
        return report
    torch.manual_seed(cfg.seed)
    model = channels_last(build_classifier(cfg).to(device), device)
    opt = make_optimizer(cfg, model.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = data["train"]
    steps = -(-len(x) // cfg.batch_size)
    spent, best, history = 0.0, -1.0, []
    report.update(config={k: v for k, v in cfg.__dict__.items() if k not in ("input", "output")}, history=history)
    with GpuBusy() as busy:
        for epoch in range(cfg.epochs):
            m = train_epoch(cfg, model, opt, batches(x, y, cfg.batch_size, gen), device, gen, epoch, steps, spent)
            spent = m["train_seconds"]
            for split in ("val", "test"):
                if split in data:
                    scores, cm = evaluate(model, batches(*data[split], 512), device, split)
                    m.update(scores)
                    m[f"{split}_confusion"] = cm.tolist()
            m = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
            history.append(m)
            if m.get("val_accuracy", 0) > best:
                best, report["best"] = m["val_accuracy"], m
            report["gpu_busy_share_training"] = busy.share()
            print(f"epoch {epoch}: {spent:.0f} s, train {m['train_accuracy']:.3f}, val {m.get('val_accuracy')}, "
                  f"test {m.get('test_accuracy')} / uar {m.get('test_uar')}, {m['train_images_per_s_per_worker']:.0f} img/s",
                  flush=True)
            save()
            if spent >= cfg.time_limit_min * 60:
                break
    report["labels"] = list(EMOTIONS)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    save()
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="FER2013 class folders -> one file of 48 px faces")
    pk.add_argument("--data", required=True)
    pk.add_argument("--pack", required=True)
    r = sub.add_parser("run", help="train and time on the GPU (CPU works, slowly)")
    r.add_argument("--pack", required=True)
    r.add_argument("--backbone", default="ir50", choices=["ir50", "resnet18"])
    r.add_argument("--input-size", type=int, default=112)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--epochs", type=int, default=60, help="schedule length when the budget is not reached first")
    r.add_argument("--minutes", type=float, default=5.0, help="training budget (0: speed figures only)")
    r.add_argument("--speed-steps", type=int, default=40, help="steps timed per speed figure (0: skip them)")
    r.add_argument("--out", default="", help="JSON report, rewritten after every epoch")
    a = p.parse_args()
    if a.cmd == "pack":
        pack(a.data, a.pack)
    else:
        run(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
