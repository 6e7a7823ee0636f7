"""Shuffled training data: sources list clips class folder after class folder; extraction writes
them in a seeded random order, and training reads them in a new order each epoch, so batches mix
classes about as a full shuffle does (and the old sorted order would not)."""

import math
import os

import numpy as np
import pytest

from raylib.labels import EMOTIONS
from raylib.sources import list_clips
from raylib.extract.job import shuffled

PER_CLASS = 8  # train clips per class
SHARD = 8  # clips per Parquet file
BATCH = 7  # clips per training batch and worker (each worker: 4 full batches an epoch)
WORKERS = 2
MIX = 0.8  # the bound: mean distinct labels per batch within 80% of a full shuffle's


def expected_distinct(labels: list[int], size: int) -> float:
    """Mean distinct labels of `size` rows drawn at random, without replacement, from labels."""
    n = len(labels)
    counts = np.bincount(labels)
    return float(sum(1 - math.comb(n - c, size) / math.comb(n, size) for c in counts if c))


def distinct_per_chunk(labels: list[int], size: int) -> float:
    """Mean distinct labels of consecutive chunks of `size` (shards or batches in that order)."""
    return float(np.mean([len(set(labels[i:i + size])) for i in range(0, len(labels), size)]))


def class_folders(root, per_class: int = PER_CLASS) -> str:
    """An AFEW-layout folder of (empty) clips, per_class per emotion."""
    for label in EMOTIONS:
        os.makedirs(root / "Train" / label)
        for k in range(per_class):
            (root / "Train" / label / f"{label.lower()}_{k:03d}.mp4").write_bytes(b"")
    return str(root)


def records(root: str) -> list[dict]:
    return [{**r.to_dict(), "label_index": EMOTIONS.index(r.label)} for r in list_clips(root, "afew")]


def test_extraction_order_mixes_class_sorted_clips_into_shards(tmp_path):
    listed = records(class_folders(tmp_path))
    sorted_labels = [r["label_index"] for r in listed]
    ours = [r["label_index"] for r in shuffled(listed, seed=0)]
    uniform = expected_distinct(sorted_labels, SHARD)
    print(f"distinct labels per shard of {SHARD}: listed order {distinct_per_chunk(sorted_labels, SHARD):.2f}, "
          f"extraction order {distinct_per_chunk(ours, SHARD):.2f}, uniform shuffle {uniform:.2f}")
    assert sorted_labels == sorted(sorted_labels)  # the source lists class after class
    assert distinct_per_chunk(sorted_labels, SHARD) < MIX * uniform  # the old order fails the bound
    assert distinct_per_chunk(ours, SHARD) >= MIX * uniform


def test_extraction_order_is_seeded_and_stable_under_resume_and_limit(tmp_path):
    listed = records(class_folders(tmp_path))
    ids = [r["clip_id"] for r in shuffled(listed, seed=0)]
    assert ids == [r["clip_id"] for r in shuffled(list(reversed(listed)), seed=0)]  # same seed, same order
    assert ids != [r["clip_id"] for r in shuffled(listed, seed=1)]
    # a resumed run (some clips stored) keeps the order of the rest: --limit N twice = the first 2N
    pending = [r for r in listed if r["clip_id"] not in set(ids[:10])]
    assert [r["clip_id"] for r in shuffled(pending, seed=0)] == ids[10:]
    # --limit takes a sample across classes, not the first class folders
    first = shuffled(listed, seed=0)[:2 * PER_CLASS]
    assert len({r["label_index"] for r in first}) >= 5 > len({r["label_index"] for r in listed[:2 * PER_CLASS]})


@pytest.fixture(scope="module")
def class_sorted_store(tmp_path_factory, mlflow_uri):
    """A store extracted by the real job from generated clips in class folders (7 x 8 train clips
    and 7 val clips, small and short; training refuses a store without val), shards of 8 clips."""
    import ray

    from raylib.sample import SampleConfig, generate_sample_set
    from raylib.extract.config import ExtractConfig, FeatureRecipe
    from raylib.extract.job import run_extract

    root = tmp_path_factory.mktemp("shuffle")
    generate_sample_set(SampleConfig(out_dir=str(root / "videos"), train_per_class=PER_CLASS, val_per_class=1,
                                     width=160, height=120, seconds=1.0))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    run_extract(ExtractConfig(input=str(root / "videos"), output=str(root / "features"), shard_size=SHARD,
                              quiet=True, recipe=FeatureRecipe(frames="uniform:2", face_detector="hog")))
    yield str(root / "features"), root
    ray.shutdown()


@pytest.mark.slow
def test_training_batches_mix_classes_like_a_full_shuffle(class_sorted_store):
    from mlflow.tracking import MlflowClient

    from raylib.store import data_files, read_files, read_store
    from raylib.train.job import TrainConfig, run_train

    store, root = class_sorted_store
    labels = read_store(store, ["label_index"], split="train").column("label_index").to_pylist()
    assert len(labels) == len(EMOTIONS) * PER_CLASS
    shards = [t.column("label_index").to_pylist() for t in read_files(store, data_files(store, "train"), ["label_index"])]
    # train and val clips share the job's shards of SHARD and are written one file per split, so a
    # train file holds SHARD or fewer clips: each is held to a random draw of its own size
    shard_mix = float(np.mean([len(set(s)) for s in shards]))
    shard_uniform = float(np.mean([expected_distinct(labels, len(s)) for s in shards]))
    assert shard_mix >= MIX * shard_uniform  # the job wrote mixed shards

    epochs = 3
    run = run_train(TrainConfig(store=store, output=str(root / "runs"), epochs=epochs, batch_size=BATCH,
                                num_workers=WORKERS, quiet=True), log_artifacts=False, progress=False)
    history = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_metric_history(run["run_id"],
                                                                                 "train/batch_distinct_labels")
    assert sorted(m.step for m in history) == list(range(epochs))
    seen = float(np.mean([m.value for m in history]))  # rank 0's batches, BATCH rows each
    uniform = expected_distinct(labels, BATCH)
    listed = distinct_per_chunk(sorted(labels), BATCH)
    print(f"distinct labels per training batch of {BATCH}: class-sorted order {listed:.2f}, "
          f"trained on {seen:.2f}, uniform shuffle {uniform:.2f}; per train shard: {shard_mix:.2f} "
          f"(uniform {shard_uniform:.2f})")
    # measured on the old path (class-sorted shards, files in listed order, a 4-batch buffer): 3.50 of 4.78
    assert listed < MIX * uniform <= seen


def test_dry_run_lists_the_plan_per_split_and_label_and_writes_nothing(tmp_path, capsys):
    import importlib.util

    root = class_folders(tmp_path / "clips", per_class=3)
    os.makedirs(tmp_path / "clips" / "Val" / "Sad")
    (tmp_path / "clips" / "Val" / "Sad" / "s.mp4").write_bytes(b"")
    os.makedirs(tmp_path / "clips" / "Test")
    (tmp_path / "clips" / "Test" / "t.mp4").write_bytes(b"")  # AFEW's unlabelled test clips
    store = tmp_path / "store"
    spec = importlib.util.spec_from_file_location("extract_job", os.path.join(os.path.dirname(__file__), "..", "jobs", "extract.py"))
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--input", root, "--output", str(store), "--dry-run", "--limit", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("extract: dry run: 23 clips in the input, 0 already stored, 20 to process")
    plan = dict(line.strip().split(": ", 1) for line in out[1:])
    counts = {split: sum(int(part.rsplit(" ", 1)[1]) for part in text.split(", ")) for split, text in plan.items()}
    assert sum(counts.values()) == 20 and set(counts) <= {"train", "val", "test"} and counts["train"] >= 17
    assert not store.exists()  # nothing written, not even the run summary
