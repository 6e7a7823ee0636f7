"""The extraction graph's operators, shared by extraction (raylib.extract.job) and prediction
(raylib.ensemble.predict): video (or audio) clips -> faces + spectrograms -> features -> store rows.

    clip records (minus clips already stored), in a seeded random order (shards mix classes)
        |  clip_dataset: Arrow blocks of RECORD_BLOCK records, split as they stream into blocks of
        |  one task's clips at any dataset size: a long clip alone, short clips of one kind a few
        |  to a task (clips_per_task; short video only on one machine), each group size a branch
        v
    cpu_stage        tasks, 1 CPU each: decode, detect, align, spectrogram   (1 row in, 1 row out)
        |
        v
    FeatureStage     actor pool, backbone loaded once per actor, GPU when asked: features of the
        |            (enhanced) face chips                                   (1 row in, 1 row out)
        |            On CPU the pool holds 1 to one actor per CPU, each reserving CPU_ACTOR_CPUS,
        |            started at the size the work can use: the cores decoding does not need run
        |            feature actors
        v
    write_shard      one Parquet file per batch of rows, committed atomically, retried through
        |            storage outages (1 row out per clip: clip_id, split, status, error, file,
        |            write attempts, the nodes that ran its stages)
        v
    On one machine (one_machine: a Ray of one node, CPU features, no stage pinned) cpu_stage runs
    inside the FeatureStage actors instead, one call per block (a long clip, or a few short
    ones), one actor per CPU: no task per clip to hand out, no chips through the
    object store, both stages on every core. An input of audio files only goes further there:
    a call takes up to a shard of short files and its actor writes that shard itself
    (own_shard_size), so no spectrogram crosses the object store to a writer task.

    driver           (raylib.extract.job) tallies outcomes as they stream (counts, nodes, failures, stage seconds: no
                     per-clip list), prints and stores the summary with the run's efficiency: clips/s
                     against the bound its measured stage costs and its CPUs allow

A clip that cannot be read, or whose processing raises anything at all, is a row with status
"error", never a failed job. An audio file is a row with its audio features and no frames
(status "audio_only": usable, no failure). Shard names are a hash of their clip ids, so a retried task rewrites
the same file; a re-run skips clips stored with features and retries clips stored as "error"
(whose old row it removes first), so an interrupted run followed by a re-run stores every clip
exactly once. A store holds one recipe (raylib.store): a run with other features refuses. On a cluster,
--cpu-resource / --feature-resource pin the two stages to node types that declare those custom
resources (cluster.yaml: decode_node on CPU workers, gpu_node on GPU workers).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np

import raylib
from raylib import ray_compat, storage
from raylib.errors import exception_line
from raylib.extract.config import ExtractConfig, ExtractError, FeatureRecipe
from raylib.extract.preprocess import PreprocessConfig, preprocess_clip
from raylib.models.weight_files import weights_digest
from raylib.runtime import autoscaling, check_capacity, cpu_actor_pool, placement
from raylib.schema import SCHEMA_VERSION, STATUS_ERROR, THUMB_SIZE, WRITE_OPTIONS, stored_label, to_table
from raylib.sources import is_audio_file
from raylib.storage import public_uri, with_retries
from raylib.store import StoreState, describe_recipe, recipe_of

CPU_TASK_MEMORY = 768 * 1024**2
CLIPS_PER_TASK = 1  # clips per decode task of a long clip, at any dataset size: a lost task costs one clip
# Short clips go several to a task (a call of the one-machine graph's actors), sized by what they
# cost: a 3 s wav ~0.005 core-s, a 2 s video clip ~0.2 (its sampled frames), not much beside what
# Ray Data spends per task. One to a task left the cores waiting on the driver (2,000 generated 3 s
# wavs on 2 cores: 19.8 clips/s one per task, 45 at 16; 140 generated 2 s clips: 71-74% of the
# bound after start-up one per task, 83-85% at 4; BENCHMARKS.md). "Short": a
# local file of at most SHORT_CLIP_BYTES (about a minute of 16 kHz speech, seconds of video); a
# remote file's size is not listed, so a remote audio file counts as short, a remote video clip
# as long. Long clips (a film, a lecture) stay one to a task; on a cluster, video clips too.
AUDIO_CLIPS_PER_TASK = 16
# An input of audio files only, on one machine: its actors write their own shards, a call of up to
# --shard-size short files each (own_shard_size). The writer task cost a 3 s wav ~1.5 core-ms, a
# quarter of its CPU stage, most of it moving the 240 KB spectrogram through the object store
# (10,000 generated 3 s wavs on 2 cores: 172-195 files/s before, 215-221 after; BENCHMARKS.md).
# A call holds at most ONE_MACHINE_AUDIO_BYTES of input files (its spectrograms stay well inside
# the actor's memory), and an input of few files is cut into CALLS_PER_ACTOR calls per actor at
# least, so no actor waits on a last big call of another.
ONE_MACHINE_AUDIO_BYTES = 64 * 1024**2
CALLS_PER_ACTOR = 4
VIDEO_CLIPS_PER_TASK = 4
SHORT_CLIP_BYTES = 2 * 1024**2
RECORD_BLOCK = 8192  # clip records per block handed to Ray Data before the streaming split
# CPU reserved per feature actor of the autoscaling CPU pool. A CPU actor computes faces for
# ~13x as long per clip as decoding takes (dlib_resnet: ~1.2 s against ~0.09 s): reserving a
# quarter of a CPU lets the pool grow to one actor per core while decode tasks keep their whole
# CPU, and the decode tasks, idle most of the time, leave their cores to the actors. A quarter,
# not a half: Ray restarts the actors of a lost node on the nodes left, and at a half the pool's
# reservation fills a cluster that lost half its CPUs, leaving no CPU for a decode task (the job
# then waits forever).
CPU_ACTOR_CPUS = 0.25
# CPU reserved per actor of the one-machine graph (decode + features in one actor, at most one
# actor per CPU): half, so that the shard writer (and prediction's small tasks) still fit beside a
# full pool, on one CPU too; the actor runs one thread, so the reservation does not change its speed.
ONE_MACHINE_ACTOR_CPUS = 0.5
# Memory reserved per actor of the one-machine graph: the torch, dlib and Ray Data process plus a
# call's clips. With 4 short 640 x 480 clips a call an actor peaked at 690 MiB (2 clips: below
# Ray Data's warning at ~80% of 768 MiB), so 1 GiB, not the decode task's 768 MiB.
ONE_MACHINE_ACTOR_MEMORY = 1024**3
WRITER_CPUS = 0.5  # per shard-writing task (Parquet encoding, the upload)
DECODE_TASK_CPUS = 1.0  # per CPU-stage task of the split graph (decode, faces, audio): one thread, a core


# ---- CPU stage ---------------------------------------------------------------------------------

def cpu_stage(batch: dict, cfg: PreprocessConfig) -> dict:
    """Rows (clip record columns) -> the same rows plus chips, face_found, timestamps, audio,
    status, error, duration. One row out per row in; a bad clip is a row with status "error"."""
    out: dict[str, list] = {k: list(v) for k, v in batch.items()}
    extra: dict[str, list] = {k: [] for k in ("chips", "face_found", "face_count", "timestamps", "audio", "has_audio",
                                              "status", "error", "duration", "audio_seconds",
                                              "seconds_cpu", "cpu_node")}
    for uri in batch["uri"]:
        used = time.process_time()  # core-seconds of this process (all its threads), not wall time
        r = preprocess_clip(str(uri), cfg)
        used = time.process_time() - used
        ok = "chips" in r
        audio = r.get("audio")
        extra["chips"].append(r["chips"] if ok else np.zeros((0, 224, 224, 3), np.uint8))
        extra["face_found"].append(r["face_found"] if ok else np.zeros(0, bool))
        extra["face_count"].append(r["face_count"] if ok else np.zeros(0, np.int16))
        extra["timestamps"].append(r["timestamps"] if ok else np.zeros(0, np.float32))
        extra["audio"].append(audio if audio is not None else np.zeros((0, 0, 0), np.float32))
        extra["has_audio"].append(audio is not None)
        extra["status"].append(r["status"])
        extra["error"].append(r["error"] or "")
        extra["duration"].append(float(r.get("duration", 0.0)))
        extra["audio_seconds"].append(float(r.get("audio_seconds", 0.0)))
        extra["seconds_cpu"].append(used)
        extra["cpu_node"].append(node_id())
    out.update(extra)
    return {k: _column(v) for k, v in out.items()}


def actor_id() -> str:
    """The Ray actor this process is ("" outside an actor)."""
    import ray

    return (ray.get_runtime_context().get_actor_id() or "") if ray.is_initialized() else ""


def node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _column(values: list) -> np.ndarray:
    """A batch column: stacked when shapes agree, else an object array of per-row arrays."""
    if values and isinstance(values[0], np.ndarray):
        if len({v.shape for v in values}) == 1:
            return np.stack(values)
        col = np.empty(len(values), dtype=object)
        col[:] = values
        return col
    return np.asarray(values)


# ---- feature stage -----------------------------------------------------------------------------

def featurize_batch(batch: dict, encoder, mode: str, second_encoder=None) -> dict:
    """Adds visual_features ([N_i, D] per row) from the rows' chips; drops the chips. Rows without
    chips (audio files, faceless clips) need no encoder (None: an actor of an audio-only input)."""
    chips = [np.asarray(c) for c in batch["chips"]]
    counts = [len(c) for c in chips]
    out = {k: v for k, v in batch.items() if k != "chips"}
    if sum(counts):
        import torch

        from raylib.models.enhance import enhance

        if encoder is None:
            raise ValueError("face chips reached a feature actor started without a face model (audio-only input)")
        stacked = torch.from_numpy(np.concatenate([c for c in chips if len(c)])).permute(0, 3, 1, 2)
        feats = enhance(encoder, stacked, mode, second_encoder).cpu().numpy().astype(np.float32)
    else:
        feats = np.zeros((0, 0), np.float32)
    dim = feats.shape[1] if len(feats) else 0
    bounds = np.cumsum([0, *counts])
    out["visual_features"] = _column([feats[a:b] if b > a else np.zeros((0, dim), np.float32)
                                      for a, b in zip(bounds[:-1], bounds[1:])])
    out["thumbnails"] = _column([thumbnails(c) for c in chips])
    out["feature_node"] = np.asarray([node_id()] * len(chips))
    return out


def thumbnails(chips: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] chips -> [N, 32, 32, 3] uint8 thumbnails (block means)."""
    if len(chips) == 0:
        return np.zeros((0, THUMB_SIZE, THUMB_SIZE, 3), np.uint8)
    n, s = chips.shape[0], chips.shape[1]
    k = s // THUMB_SIZE
    cropped = chips[:, : k * THUMB_SIZE, : k * THUMB_SIZE].astype(np.float32)
    return cropped.reshape(n, THUMB_SIZE, k, THUMB_SIZE, k, 3).mean(axis=(2, 4)).astype(np.uint8)


class FeatureStage:
    """Holds the loaded backbone(s); each call maps a batch with featurize_batch (after cpu_stage
    when decode: the one-machine graph, see one_machine). faces=False (an input of audio files
    only, which have no frames): no backbone, and no torch import, is loaded (~1.5 s of each
    actor's start)."""

    def __init__(self, cfg: ExtractConfig, decode: bool = False, faces: bool = True, write: dict | None = None):
        self.write = write  # write_shard's arguments: the call writes its rows' shard and returns outcomes
        self.preprocess = cfg.preprocess() if decode else None  # one-machine graph: the CPU stage runs here too
        self.actor = actor_id()
        self.mode = cfg.recipe.enhance
        self.encoder = self.second = None
        if faces:
            self._load(cfg)
        self.ready = time.time()  # the run's start-up ends when its first actor is ready (Tally.first_ready)

    def _load(self, cfg: ExtractConfig) -> None:
        import torch

        from raylib.models.backbones import build_backbone

        device = "cuda" if cfg.gpu_actors and torch.cuda.is_available() else "cpu"
        r = cfg.recipe
        self.encoder = build_backbone(r.backbone, r.weights, device=device, input_size=r.input_size or None)
        self.second = build_backbone(r.second_backbone, r.second_weights or None, device=device) \
            if r.enhance == "ar-mean" else None

    def __call__(self, batch: dict) -> dict:
        if self.preprocess is not None:
            batch = cpu_stage(batch, self.preprocess)
        used = time.process_time()  # core-seconds (all threads): wall time would grow with contention
        try:
            out = featurize_batch(batch, self.encoder, self.mode, self.second)
        except Exception:  # one clip broke the batch: go clip by clip so only that clip fails
            rows = [self._one({k: v[i:i + 1] for k, v in batch.items()}) for i in range(len(batch["clip_id"]))]
            out = {k: _column([r[k][0] for r in rows]) for k in rows[0]}
        n = len(out["clip_id"])
        out["seconds_feature"] = np.full(n, (time.process_time() - used) / max(n, 1))  # the batch's share per clip
        out["feature_actor"] = np.asarray([self.actor] * n)
        out["feature_ready"] = np.full(n, self.ready)
        return write_shard(out, **self.write) if self.write else out

    def _one(self, row: dict) -> dict:
        try:
            return featurize_batch(row, self.encoder, self.mode, self.second)
        except Exception as e:
            failed = {**row, "status": np.asarray([STATUS_ERROR]), "error": np.asarray([exception_line(e)]),
                      "has_audio": np.asarray([False]), "chips": [np.zeros((0, 224, 224, 3), np.uint8)]}
            return featurize_batch(failed, self.encoder, self.mode, self.second)


def provenance(recipe: FeatureRecipe) -> dict:
    """What made the features, stored with every row. Checks that the weights exist without
    loading them on the driver (the feature actors load them)."""
    backbone, weights, digest = recipe.backbone, recipe.weights, weights_digest(recipe.backbone, recipe.weights)
    if recipe.input_size:
        backbone += asked_input_size(recipe)
    if recipe.enhance == "ar-mean":
        backbone += "+" + recipe.second_backbone
        weights += "+" + recipe.second_weights
        digest += "+" + weights_digest(recipe.second_backbone, recipe.second_weights or None)
    return {"backbone": backbone, "weights": public_uri(weights), "weights_digest": digest,
            "enhancement": recipe.enhance, "audio_mode": recipe.audio, "frames": recipe.frames,
            "code_version": raylib.__version__}


def asked_input_size(recipe: FeatureRecipe) -> str:
    """Checks --input-size against the weights on the driver, before any work (one-line
    WeightsError); "@<size>" when the flag sets a size the weights do not fix (it is then part of
    the recipe: the backbone column reads e.g. resnet18@112), else ""."""
    from raylib.models.backbones import SPECS, check_input_size, weights_input_size

    fixed = weights_input_size(recipe.backbone, recipe.weights)
    check_input_size(recipe.backbone, recipe.weights, recipe.input_size, fixed)
    return f"@{recipe.input_size}" if not fixed and recipe.input_size != SPECS[recipe.backbone].input_size else ""


# ---- writer ------------------------------------------------------------------------------------

def shard_name(clip_ids) -> str:
    """Deterministic file name for a set of clips: a retried write lands on the same file."""
    return "part-" + hashlib.sha1("\n".join(sorted(map(str, clip_ids))).encode()).hexdigest()[:20] + ".parquet"


def batch_rows(batch: dict) -> list[dict]:
    n = len(batch["clip_id"])
    rows = [{k: batch[k][i] for k in batch} for i in range(n)]
    for r in rows:
        if not r.get("has_audio", True):
            r["audio"] = None
        r["label"] = stored_label(r.get("label"))
    return rows


OUTCOME_KEYS = ("clip_id", "uri", "split", "status", "error", "seconds_cpu", "seconds_feature", "cpu_node",
                "feature_node", "feature_actor", "feature_ready")


def write_shard(batch: dict, output: str, prov: dict, retries: int = storage.WRITE_RETRIES) -> dict:
    """Rows with features -> one Parquet file per split under output; returns per-clip outcomes
    (OUTCOME_KEYS, file, write_attempts). A write that fails on a storage outage is retried;
    StorageError when it still fails."""
    import pyarrow.parquet as pq

    rows = batch_rows(batch)
    out: dict[str, list] = {k: [] for k in (*OUTCOME_KEYS, "file", "write_attempts")}
    for split in sorted({r["split"] for r in rows}):
        part = [r for r in rows if r["split"] == split]
        uri = storage.join(output, split, shard_name(r["clip_id"] for r in part))
        table = to_table([{**r, **prov} for r in part])

        def write():
            with storage.atomic_write(uri) as f:
                pq.write_table(table, f, **WRITE_OPTIONS)

        _, attempts = with_retries(f"writing {public_uri(uri)}", write, retries)
        for r in part:
            for k in OUTCOME_KEYS:
                out[k].append(r.get(k, ""))
            out["file"].append(uri)
            out["write_attempts"].append(attempts)
    return {k: np.asarray(v) for k, v in out.items()}


def check_recipe(cfg: ExtractConfig, state: StoreState, prov: dict) -> None:
    """One store, one recipe: refuse to add features made another way."""
    old = sorted(state.schema_versions - {SCHEMA_VERSION})
    if old:
        raise ExtractError(f"the store {public_uri(cfg.output)} was written with store schema version "
                           f"{', '.join(old)}, this version writes {SCHEMA_VERSION}: use a new --output")
    wanted = recipe_of(prov)
    others = [r for r in state.recipes if r != wanted]
    if others:
        raise ExtractError(f"the store {public_uri(cfg.output)} holds features made with "
                           f"{'; '.join(describe_recipe(r) for r in others)}, this run would make "
                           f"{describe_recipe(wanted)}: use a new --output, or the store's flags")


RECORD_COLUMNS = ("clip_id", "uri", "label", "split", "dataset", "speaker")


def clips_per_task(uri: str, fused: bool, audio_per_task: int = AUDIO_CLIPS_PER_TASK) -> int:
    """How many clips like this one share a decode task (a call of a one-machine actor): short
    audio files audio_per_task, short video clips VIDEO_CLIPS_PER_TASK in the one-machine
    graph (fused), others one. On a cluster a video clip keeps a task of its own: decoding spreads
    over the nodes clip by clip, and a lost node loses one clip per task (grouping video was
    measured on one machine only)."""
    audio = is_audio_file(uri)
    if not (audio or fused):
        return CLIPS_PER_TASK  # no stat of every video clip on the driver of a cluster job
    size = short_size(uri, audio)
    if size is None:
        return CLIPS_PER_TASK
    return audio_per_task if audio else VIDEO_CLIPS_PER_TASK if fused else CLIPS_PER_TASK


def short_size(uri: str, audio: bool) -> int | None:
    """The size of a short clip (None: a long one): a local file of at most SHORT_CLIP_BYTES. A
    remote file's size is not at hand: remote audio counts as short at SHORT_CLIP_BYTES (speech
    corpora hold short utterances), remote video as long; an unreadable audio file as short (its
    task records the error)."""
    if "://" in uri:
        return SHORT_CLIP_BYTES if audio else None
    try:
        size = os.path.getsize(uri)
    except OSError:
        return 0 if audio else None
    return size if size <= SHORT_CLIP_BYTES else None


def own_shard_size(pending: list[dict], shard_size: int, actors: int) -> int:
    """Short audio files per call of one-machine actors that write their own shards: a shard
    (shard_size), fewer when the files are few (CALLS_PER_ACTOR calls per actor, but
    AUDIO_CLIPS_PER_TASK files a call at least) or big (ONE_MACHINE_AUDIO_BYTES of input a call
    at most: a remote file counts as SHORT_CLIP_BYTES)."""
    largest = max((short_size(str(r["uri"]), True) or 0 for r in pending), default=0)
    few = -(-len(pending) // (CALLS_PER_ACTOR * max(actors, 1)))  # ceil
    return max(1, min(shard_size, ONE_MACHINE_AUDIO_BYTES // max(largest, 1), max(AUDIO_CLIPS_PER_TASK, few)))


def clip_dataset(pending: list[dict], fused: bool, audio_per_task: int = AUDIO_CLIPS_PER_TASK):
    """Clip records -> a Ray dataset that feeds each decode task clips_per_task clips (one long
    clip, or a few short ones of one kind; fused: the one-machine graph; short audio files
    audio_per_task at a time), at any size: the records go to Ray Data as Arrow blocks of
    RECORD_BLOCK rows (columns, not Python objects in the object store), split into blocks of one
    task's clips as they stream. Each group size streams as a branch of one dataset."""
    import pyarrow as pa
    import ray

    parts: dict[int, list[dict]] = {}
    for r in pending:
        parts.setdefault(clips_per_task(str(r["uri"]), fused, audio_per_task), []).append(r)
    branches = []
    for per_task, records in sorted(parts.items(), reverse=True):
        blocks = []
        for i in range(0, len(records), RECORD_BLOCK):
            part = records[i:i + RECORD_BLOCK]
            blocks.append(pa.table({k: pa.array([str(r.get(k) or "") for r in part], pa.string())
                                    for k in RECORD_COLUMNS}))
        ds = ray.data.from_arrow(blocks).repartition(target_num_rows_per_block=per_task)
        # The split is a long-lived task that streams blocks out as the decode tasks take them; Ray
        # Data gives it a whole CPU, which on a small machine is the CPU a feature actor needed (the
        # second actor of a 2-CPU machine waited for the split to end). It only slices Arrow tables:
        # it reserves none. repartition() takes no resource arguments, so they are set on its operator.
        ray_compat.set_operator_cpus(ds, 0)
        branches.append(ds)
    return branches[0] if len(branches) == 1 else branches[0].union(*branches[1:])


def stage_options(env: dict) -> dict:
    """Ray options that carry env (the S3 endpoint) to every stage, even on a Ray started without it."""
    return {"runtime_env": {"env_vars": env}} if env else {}


def check_feature_actors_fit(cfg: ExtractConfig, fused: bool = False) -> None:
    """ClusterError when the cluster can never run the feature actors together with one decode task
    (fused, the one-machine graph: one actor that decodes too)."""
    if fused:
        check_capacity("extraction", 1, {"CPU": ONE_MACHINE_ACTOR_CPUS, "memory": ONE_MACHINE_ACTOR_MEMORY},
                       {"CPU": "start Ray with at least one CPU", "memory": "run on a machine with more memory"},
                       beside=("the shard writer", {"CPU": WRITER_CPUS}))
        return
    gpu = cfg.gpu_actors > 0
    flag, count = ("--gpu-actors", cfg.gpu_actors) if gpu else ("--cpu-actors", max(cfg.cpu_actors, 1))
    fix = {"CPU": f"lower {flag}", "GPU": f"lower {flag}, or use --cpu-actors", "memory": "run on nodes with more memory"}
    for name, resource in (("--cpu-resource", cfg.cpu_resource), ("--feature-resource", cfg.feature_resource)):
        if resource:
            fix[resource] = f"start such nodes, or change {name}"
    per_actor = 1.0 if gpu or cfg.cpu_actors else CPU_ACTOR_CPUS
    check_capacity(f"{flag} {count}", count, {"CPU": per_actor, "GPU": 1.0 if gpu else 0.0, **placement(cfg.feature_resource)},
                   fix, beside=("one decode task", {"CPU": DECODE_TASK_CPUS, "memory": CPU_TASK_MEMORY, **placement(cfg.cpu_resource)}))


def feature_graph(pending: list[dict], cfg: ExtractConfig, env: dict, write: dict | None = None):
    """Clip records -> a dataset of rows with features: the CPU stage (tasks) and the feature stage
    (actor pool), placed on the nodes cfg names. Shared by extraction and prediction. With write
    (write_shard's arguments: extraction) the rows are written to shards and the dataset holds
    their outcomes: on one machine an audio-only input's actors write them, else writer tasks."""
    import ray

    fused, clips = one_machine(cfg), len(pending)
    faces = not all(is_audio_file(str(r["uri"])) for r in pending)
    stage, extra = {"cfg": cfg, "faces": faces}, stage_options(env)
    if fused:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = min(cfg.cpu_workers, actors) if cfg.cpu_workers else actors
        own = write is not None and not faces  # the actors write their shards
        ds = clip_dataset(pending, True, own_shard_size(pending, cfg.shard_size, actors) if own else AUDIO_CLIPS_PER_TASK)
    else:
        ds, own = clip_dataset(pending, False), False
    check_feature_actors_fit(cfg, fused)
    for flag, name in (("--cpu-resource", cfg.cpu_resource), ("--feature-resource", cfg.feature_resource)):
        if name and name not in ray.cluster_resources():  # an autoscaler may still add such a node
            print(f"extract: no node offers the resource {name} ({flag}) yet; that stage waits until one joins",
                  file=sys.stderr, flush=True)

    def placed(resource: str) -> dict:
        return {"resources": placement(resource)} if resource else {}

    if fused:
        # batch_size None: a call per block, i.e. per long clip, or per clips_per_task short ones
        # (one call per 3 s wav spent a third of the actor's time in Ray Data's per-batch work)
        ds = ds.map_batches(FeatureStage, fn_constructor_kwargs={**stage, "decode": True, "write": write if own else None},
                            batch_size=None, compute=cpu_actor_pool(clips, 1, actors), num_cpus=ONE_MACHINE_ACTOR_CPUS,
                            memory=ONE_MACHINE_ACTOR_MEMORY, **extra)
    else:
        # The memory reservation bounds how many decoded clips a node holds at once; being a resource
        # the feature actors do not ask for, it also keeps Ray from fusing this stage into them, which
        # would run decoding inside the (few) actors instead of on every CPU.
        ds = ds.map_batches(cpu_stage, batch_size=1, fn_kwargs={"cfg": cfg.preprocess()}, num_cpus=DECODE_TASK_CPUS,
                            memory=CPU_TASK_MEMORY, **extra, **placed(cfg.cpu_resource),
                            compute=ray.data.TaskPoolStrategy(size=cfg.cpu_workers) if cfg.cpu_workers else None)
        compute, cpus, gpus = feature_pool(cfg, clips)
        ds = ds.map_batches(FeatureStage, fn_constructor_kwargs=stage, batch_size=cfg.batch_size,
                            compute=compute, num_gpus=gpus, num_cpus=cpus, **extra, **placed(cfg.feature_resource))
    if write is None or own:
        return ds
    return ds.map_batches(write_shard, batch_size=cfg.shard_size, num_cpus=WRITER_CPUS, **extra, fn_kwargs=write)


def one_machine(cfg: ExtractConfig) -> bool:
    """Whether decoding and features run in the same actors, one call per block, one actor per CPU:
    CPU features (no --gpu-actors, no --cpu-actors) on a Ray of one node that no autoscaler grows,
    with no stage pinned to a node type (the embedded default; a laptop's own head). There, split
    stages only cost: a decode task per clip waits on the driver to hand it out, its chips cross
    the object store, and the reservations of the two stages leave one core decoding at a time
    (140 generated clips on 2 cores: 3.8 clips/s split, 6.0 in one stage). On a cluster the
    stages stay apart, so each can be placed and scaled on its own node type."""
    import ray

    if cfg.gpu_actors or cfg.cpu_actors or cfg.cpu_resource or cfg.feature_resource:
        return False
    return sum(1 for n in ray.nodes() if n.get("Alive")) == 1 and not autoscaling()


def feature_pool(cfg: ExtractConfig, clips: int = 0):
    """(Ray Data compute strategy, CPUs, GPUs per actor) of the feature actors: --gpu-actors fixed
    GPU actors, --cpu-actors fixed CPU actors, else a CPU pool of 1 to one actor per CPU of the
    cluster (CPU_ACTOR_CPUS each), started with as many as `clips` fill batches for."""
    import ray

    if cfg.gpu_actors:
        return ray.data.ActorPoolStrategy(size=cfg.gpu_actors), 1, 1
    if cfg.cpu_actors:
        return ray.data.ActorPoolStrategy(size=cfg.cpu_actors), 1, 0
    return cpu_actor_pool(clips, cfg.batch_size), CPU_ACTOR_CPUS, 0
