"""The extraction job's driver: the input's clips, less those already stored, through the graph
(raylib.extract.graph) into the store; the run's tally, summary and failure gate (raylib.extract.summary).

A clip that cannot be read, or whose processing raises anything at all, is a row with status
"error", never a failed job. A re-run skips clips stored with features and retries clips stored as
"error" (whose old row it removes first), so an interrupted run followed by a re-run stores every
clip exactly once. A store holds one recipe (raylib.store): a run with other features refuses.
"""

from __future__ import annotations

import hashlib
import os
import time

from raylib import storage
from raylib.config import flag_values
from raylib.extract.config import ExtractConfig, ExtractError
from raylib.extract.graph import check_recipe, feature_graph, one_machine, provenance
from raylib.extract.summary import SUMMARY_FILE, Tally, efficiency, judge, plan, root_cause, run_id, write_summary
from raylib.runtime import init_ray
from raylib.schema import NO_LABEL
from raylib.sources import list_clips
from raylib.storage import public_uri, with_retries
from raylib.store import drop_rows, writable_state


def _check_failures(summary: dict, cfg: ExtractConfig) -> None:
    if summary["clips_judged"] and summary["failure_rate"] > cfg.max_failure_rate:
        raise ExtractError(f"{summary['failures']} of {summary['clips_judged']} clips failed "
                           f"({summary['failure_rate']:.0%} > --max-failure-rate {cfg.max_failure_rate:.0%}); "
                           f"see the 'error' column or {storage.join(cfg.output, SUMMARY_FILE)}; a re-run "
                           f"retries them")


def shuffled(pending: list[dict], seed: int) -> list[dict]:
    """Clip records in a seeded random order: sorted by a hash of (seed, clip_id). Sources list
    clips by path (AFEW: class folder after class folder), and shards take the clips in the order
    they come: unshuffled, each shard would hold one or two classes. A clip's place depends only on
    its own id, so a resumed run keeps the order of the clips still pending, and the first N
    (--limit) are a random sample that the next run continues."""
    return sorted(pending, key=lambda r: hashlib.sha1(f"{seed}:{r['clip_id']}".encode()).digest())


def run_extract(cfg: ExtractConfig) -> dict:
    """Run the extraction graph over cfg.input into cfg.output; returns the summary dict.

    Clips of the input without a usable row in the store are processed: new clips and clips whose
    row says "error" (that row is removed first, so the store keeps one row per clip). The failure
    gate judges the store: the input's clips whose row says "error", over those with a row.
    Raises SourceError (bad input), WeightsError (bad weights), StoreError (a store that breaks
    its rules) or ExtractError (another recipe, too many failures)."""
    t0 = time.perf_counter()
    env = {}
    if cfg.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = cfg.s3_endpoint
    if os.environ.get("AWS_ENDPOINT_URL"):
        env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    records = list_clips(cfg.input, cfg.dataset_format)
    prov = provenance(cfg.recipe)
    state, _ = with_retries(f"reading the store {public_uri(cfg.output)}", lambda: writable_state(cfg.output),
                            cfg.write_retries)
    check_recipe(cfg, state, prov)
    pending = [{**r.to_dict(), "label": r.label or NO_LABEL} for r in records if r.clip_id not in state.usable]
    already = len(records) - len(pending)
    pending = shuffled(pending, cfg.seed)[: cfg.limit or None]
    retry: dict[str, set[str]] = {}
    for r in pending:
        if r["clip_id"] in state.failed:
            retry.setdefault(state.failed[r["clip_id"]]["file"], set()).add(r["clip_id"])
    summary = {"run_id": run_id(), "input": public_uri(cfg.input), "output": public_uri(cfg.output),
               "clips_in_input": len(records), "clips_already_stored": already,
               "clips_retried": sum(map(len, retry.values())),
               "clips_processed": 0, "status_counts": {}, "failures": 0, "failure_rate": 0.0,
               "config": {k: (public_uri(v) if isinstance(v, str) else v) for k, v in flag_values(cfg).items()},
               "provenance": prov}
    if cfg.dry_run:
        return {**summary, "dry_run": True, "clips_to_process": len(pending), "plan": plan(pending)}
    tally = Tally(state.failed)
    if pending:
        summary.update(process(pending, retry, cfg, prov, env, tally))
    del pending
    summary.update(judge(records, state, tally))
    elapsed = time.perf_counter() - t0
    summary.update(elapsed_s=round(elapsed, 2),
                   clips_per_s=round(summary["clips_processed"] / elapsed, 3) if elapsed else 0.0)
    write_summary(cfg, summary)
    _check_failures(summary, cfg)
    return summary


def process(pending: list[dict], retry: dict[str, set[str]], cfg: ExtractConfig, prov: dict, env: dict,
            tally: Tally) -> dict:
    """The pending clips through the graph on Ray (the error rows of retried clips removed first);
    tally takes the outcomes. Returns the summary's graph, counts and efficiency."""
    import ray

    init_ray(cfg.num_cpus or None, env, quiet=cfg.quiet, pin_workers=False)  # no Ray Train here
    ray.data.DataContext.get_current().enable_progress_bars = not cfg.quiet
    if retry:  # the old error rows go first: a clip has no row (pending) until its new one lands
        drop_rows(cfg.output, retry, cfg.write_retries)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    out = {"graph": "one_machine" if one_machine(cfg) else "split"}  # stages in one actor, or apart
    started, started_at = time.perf_counter(), time.time()
    _run_graph(pending, cfg, prov, env, tally)
    out.update(tally.summary())
    out.update(efficiency(tally, time.perf_counter() - started, cpus, gpu=cfg.gpu_actors > 0,
                          startup=tally.first_ready - started_at))
    return out


def _run_graph(pending: list[dict], cfg: ExtractConfig, prov: dict, env: dict, tally: Tally) -> None:
    ds = feature_graph(pending, cfg, env, write={"output": cfg.output, "prov": prov, "retries": cfg.write_retries})
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            tally.add(batch)
    except Exception as e:  # a stage failed as a whole (weights that do not fit, storage down for good)
        raise ExtractError(f"extraction failed: {root_cause(e)} (shards already written are kept; a re-run "
                           f"continues from them)") from None
