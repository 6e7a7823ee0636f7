"""What an extraction run reports: its outcomes tallied as they stream (Tally), its efficiency,
the store's judgement after it (failures over clips judged), the summary it keeps under the
store's _runs/ and _summary.json, and the one line a failed stage is reported by."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections import Counter

from raylib import storage
from raylib.extract.config import ExtractConfig
from raylib.schema import STATUS_AUDIO_ONLY, STATUS_ERROR, STATUS_OK
from raylib.storage import public_uri, with_retries
from raylib.store import StoreState

SUMMARY_FILE = "_summary.json"  # the newest run's summary
RUNS_DIR = "_runs"  # every run's summary, <utc time>-<id>.json
SHOWN = 200  # errors and failed clips listed in a summary


class Tally:
    """Outcomes of a run, aggregated as they stream out of the graph: counts per status and node,
    shards and their write attempts, stage seconds, the first SHOWN errors, and the clip ids only
    of clips that failed now or were retried (error rows of the store) -- never a list of every
    clip, so the driver stays small at any dataset size."""

    def __init__(self, stored_failed: dict[str, dict] | None = None):
        self.stored_failed = stored_failed or {}
        self.processed = 0
        self.statuses: Counter = Counter()
        self.nodes = {"cpu": Counter(), "feature": Counter()}
        self.shards: dict[str, int] = {}  # file -> write attempts (a few per SHARD clips)
        self.seconds = {"cpu": 0.0, "feature": 0.0}
        self.actors: set[str] = set()  # feature actors that did work (the pool's size in use)
        self.first_ready = float("inf")  # wall time the first feature actor was ready (its model loaded)
        self.errors: list[dict] = []
        self.failed: dict[str, dict] = {}  # clip_id -> {"uri", "error"} of clips failed in this run
        self.retried: set[str] = set()  # stored error rows processed again in this run

    def add(self, batch: dict) -> None:
        """Adds a batch of outcome rows (write_shard's columns)."""
        for i, cid in enumerate(batch["clip_id"]):
            cid, status = str(cid), str(batch["status"][i])
            self.processed += 1
            self.statuses[status] += 1
            for stage in ("cpu", "feature"):
                self.nodes[stage][str(batch[f"{stage}_node"][i])] += 1
                self.seconds[stage] += float(batch[f"seconds_{stage}"][i] or 0.0)
            self.shards[str(batch["file"][i])] = int(batch["write_attempts"][i])
            self.actors.add(str(batch["feature_actor"][i]))
            self.first_ready = min(self.first_ready, float(batch["feature_ready"][i] or "inf"))
            if cid in self.stored_failed:
                self.retried.add(cid)
            if status not in (STATUS_OK, STATUS_AUDIO_ONLY) and len(self.errors) < SHOWN:
                self.errors.append({"uri": str(batch["uri"][i]), "status": status, "error": str(batch["error"][i])})
            if status == STATUS_ERROR:
                self.failed[cid] = {"uri": str(batch["uri"][i]), "error": str(batch["error"][i])}

    def per_clip(self, stage: str) -> float:
        return self.seconds[stage] / self.processed if self.processed else 0.0

    def summary(self) -> dict:
        return {"clips_processed": self.processed, "status_counts": dict(sorted(self.statuses.items())),
                "nodes": {stage: dict(c) for stage, c in self.nodes.items()},
                "shards_written": len(self.shards), "write_retries": sum(a - 1 for a in self.shards.values()),
                "errors": self.errors, "cpu_seconds_per_clip": round(self.per_clip("cpu"), 4),
                "feature_seconds_per_clip": round(self.per_clip("feature"), 4), "feature_actors": len(self.actors)}


def efficiency(tally: Tally, seconds: float, cpus: float, gpu: bool, startup: float = 0.0) -> dict:
    """The run's throughput against the bound its own measured stage costs allow. Stage costs are
    core-seconds (process CPU time, so sharing a core does not inflate them): on CPUs only, every
    clip costs (CPU stage + feature stage) core-seconds shared by all CPUs; with GPU feature actors
    the CPUs bound decoding alone (the GPU side is not counted here). `seconds` is the whole graph's
    run; `startup` the part of it before the first feature actor was ready (Ray Data's start, the
    actor's process, its model): a fixed cost, so efficiency_after_startup is what a long run
    approaches."""
    if not tally.processed or seconds <= 0 or cpus <= 0:
        return {}
    cost = tally.per_clip("cpu") + (0.0 if gpu else tally.per_clip("feature"))
    bound = cpus / cost if cost > 0 else 0.0
    rate = tally.processed / seconds
    startup = min(max(startup, 0.0), seconds) if math.isfinite(startup) else 0.0
    after = tally.processed / (seconds - startup) if seconds > startup else rate
    return {"processing_s": round(seconds, 2), "processing_clips_per_s": round(rate, 3), "cpus": cpus,
            "bound_clips_per_s": round(bound, 3), "efficiency": round(rate / bound, 3) if bound else 0.0,
            "startup_s": round(startup, 2), "efficiency_after_startup": round(after / bound, 3) if bound else 0.0}


def judge(records, state: StoreState, tally: Tally) -> dict:
    """The store's state for this input after the run: clips with a row, failed clips. Every
    processed clip was either new to the store or one of its error rows (tally.retried)."""
    new = tally.processed - len(tally.retried)
    input_failed = {r.clip_id for r in records if r.clip_id in state.failed}
    stored_in_input = len(input_failed) + sum(1 for r in records if r.clip_id in state.usable)
    failed = {cid: state.failed[cid] for cid in input_failed - tally.retried}
    failed.update(tally.failed)
    judged = stored_in_input + new
    return {"clips_stored": len(state.usable) + len(state.failed) + new, "clips_judged": judged,
            "failures": len(failed), "failure_rate": len(failed) / judged if judged else 0.0,
            "failed_clips": [{"uri": f["uri"], "error": f["error"]} for f in failed.values()][:SHOWN]}


def run_id() -> str:
    """Sortable id of one run: UTC time and a random suffix (names its kept summary)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def write_summary(cfg: ExtractConfig, summary: dict) -> None:
    """The run's summary, kept under _runs/ and copied to _summary.json (the newest run)."""
    for uri in (storage.join(cfg.output, RUNS_DIR, f"{summary['run_id']}.json"), storage.join(cfg.output, SUMMARY_FILE)):
        def write(uri=uri):
            with storage.atomic_write(uri, "w") as f:
                json.dump(summary, f, indent=2, default=str)

        with_retries(f"writing {public_uri(uri)}", write, cfg.write_retries)


_EXCEPTION_LINE = re.compile(r"^\s*([\w.]+(Error|Exception)): (.+)$")


def root_cause(e: BaseException) -> str:
    """The original exception line inside a Ray task error ("ValueError: ..."), else str(e)."""
    for line in str(e).splitlines():
        m = _EXCEPTION_LINE.match(line)
        if m and "UserCodeException" not in m.group(1) and "RayTaskError" not in m.group(1):
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(3)[:300]}"
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


def plan(pending: list[dict]) -> dict[str, dict[str, int]]:
    """split -> label -> clips to process ("-" for unlabelled clips), both sorted."""
    counts = Counter((r["split"] or "-", r["label"] or "-") for r in pending)
    out: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(counts.items()):
        out.setdefault(split, {})[label] = n
    return out
