"""Reading a feature store: its shards, the clips it holds, its recipe, the state of each clip.

Layout of a store (the row format is `raylib.schema`):
    <output>/<split>/part-<hash>.parquet   committed shards, exactly one row per clip
    <output>/_summary.json                 the newest run's summary
    <output>/_runs/<utc time>-<id>.json    every run's summary, kept
Files or folders whose name starts with "." or "_" are not data (pyarrow and Ray skip them too).

Rules the store lives by:
- one recipe (`RECIPE_KEYS`: backbone, weights digest, enhancement, audio mode, frame sampling)
  for every row; extraction refuses to add rows of another recipe, readers refuse a mixed store;
- one row per clip id; a clip whose row says "error" is retried by the next extraction run,
  which first removes that row (`drop_rows`) and then writes the new outcome.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib import storage
from raylib.errors import StoreError
from raylib.sample import is_sample_clip
from raylib.schema import METADATA_KEY, SCHEMA, STATUS_ERROR, USABLE_STATUSES, WRITE_OPTIONS

# What makes two rows' features comparable. The weights URI is not part of it (the digest is):
# a checkpoint moved to another bucket is the same recipe.
RECIPE_KEYS = ("backbone", "weights_digest", "enhancement", "audio_mode", "frames")
READ_THREADS = 16  # shards read at once (object stores answer in parallel)


def data_files(output: str, split: str | None = None) -> list[str]:
    """Committed Parquet shards of a store, of one split if given (hidden and _-prefixed names
    are not data)."""
    _, root = storage.filesystem(output)
    root = root.rstrip("/")
    out = []
    for p in storage.list_files(output, ".parquet"):
        rel = p[len(root):].strip("/")
        parts = rel.split("/")
        if not any(part.startswith((".", "_")) for part in parts) and (split is None or parts[0] == split):
            out.append(p)
    return out


def read_files(output: str, paths: list[str], columns: list[str] | None) -> list[pa.Table]:
    """The given shards (paths as data_files lists them) read with plain pyarrow, in the order given.
    Local shards are read one after another by pyarrow's own file reader (an open per shard costs
    more than its few columns; threads only contend for the GIL); remote shards READ_THREADS at a
    time, fetching only the footer and the asked columns' byte ranges."""
    import pyarrow.parquet as pq

    def read_from(source) -> pa.Table:
        with pq.ParquetFile(source) as f:
            return f.read(columns, use_threads=False)

    if not storage.is_remote(output):
        return [read_from(p) for p in paths]
    fs, _ = storage.filesystem(output)

    def read(p):
        # no read-ahead (block_size 0): s3fs would otherwise fetch up to 50 MB past every range
        # pyarrow asks for, i.e. whole shards of features to read their clip ids. The last range
        # fetched stays cached: a shard smaller than the footer read (64 KB) costs one GET.
        with fs.open(p, "rb", block_size=0, cache_type="readahead") as f:
            return read_from(f)

    if len(paths) <= 1:
        return [read(p) for p in paths]
    with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        return list(pool.map(read, paths))


def read_store(output: str, columns: list[str] | None = None, split: str | None = None) -> pa.Table:
    """The store (or one split of it) as one pyarrow Table (plain pyarrow; small stores, val sets)."""
    tables = read_files(output, data_files(output, split), columns)
    if not tables:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    return pa.concat_tables(tables)


def stored_clip_ids(output: str) -> set[str]:
    """Clip ids with a row in the store (any status)."""
    return set(read_store(output, ["clip_id"]).column("clip_id").to_pylist())


# ---- recipes -----------------------------------------------------------------------------------

def recipe_of(provenance: dict) -> dict:
    """The recipe part of a provenance dict (RECIPE_KEYS)."""
    return {k: provenance.get(k) for k in RECIPE_KEYS}


def describe_recipe(recipe: dict) -> str:
    """One line: backbone=... weights=sha256:1234abcd... enhance=... audio=... frames=..."""
    digest = str(recipe.get("weights_digest") or "")
    short = "+".join(d if d in ("random", "packaged") else d[:12] for d in digest.split("+"))
    return (f"backbone={recipe.get('backbone')} weights={short} enhance={recipe.get('enhancement')} "
            f"audio={recipe.get('audio_mode')} frames={recipe.get('frames')}")


def recipes(table: pa.Table) -> list[dict]:
    """Distinct recipes of a table holding the RECIPE_KEYS columns, in order of appearance."""
    if table.num_rows == 0:
        return []
    distinct = table.select(list(RECIPE_KEYS)).group_by(list(RECIPE_KEYS)).aggregate([])
    return distinct.select(list(RECIPE_KEYS)).to_pylist()


def single_recipe(output: str, table: pa.Table | None = None) -> dict | None:
    """The store's one recipe (None when empty); StoreError naming them when rows disagree."""
    found = recipes(table if table is not None else read_store(output, list(RECIPE_KEYS)))
    if len(found) > 1:
        listed = "; ".join(describe_recipe(r) for r in found)
        raise StoreError(f"the store {storage.public_uri(output)} mixes {len(found)} feature recipes ({listed}): "
                         f"its features are not comparable; extract again into a new --output")
    return found[0] if found else None


# ---- the state of a store's clips --------------------------------------------------------------

@dataclass
class StoreState:
    """Which clips a store holds: usable rows, error rows (with the shard and the error), recipes."""

    usable: set[str] = field(default_factory=set)
    failed: dict[str, dict] = field(default_factory=dict)  # clip_id -> {"file", "uri", "error"}
    recipes: list[dict] = field(default_factory=list)
    files: int = 0
    schema_versions: set[str] = field(default_factory=set)  # of the shards (raylib.schema.SCHEMA_VERSION)

    @property
    def clip_ids(self) -> set[str]:
        return self.usable | set(self.failed)


# the columns a model reads from a store row (raylib.batches.collate)
COLUMNS = ["clip_id", "uri", "label_index", "status", "visual_dim", "visual_features", "audio_shape", "audio"]


def usable(table: pa.Table, labelled: bool = True) -> pa.Table:
    """Rows with features ("error" rows carry none), and a label when labelled."""
    keep = pc.is_in(table.column("status"), pa.array(USABLE_STATUSES))
    if labelled:
        keep = pc.and_(keep, pc.greater_equal(table.column("label_index"), 0))
    return table.filter(keep)


STATE_COLUMNS = ["clip_id", "uri", "status", "error", *RECIPE_KEYS]


def store_state(output: str) -> StoreState:
    """Read the small columns of every shard into a StoreState, with Arrow compute rather than a
    Python loop per row. StoreError when a clip has two rows (a store written by hand or by an
    older version)."""
    files = data_files(output)
    tables = read_files(output, files, STATE_COLUMNS)
    state = StoreState(files=len(files))
    if not tables:
        return state
    state.schema_versions = {(t.schema.metadata or {}).get(METADATA_KEY, b"?").decode() for t in tables}
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")
    stored = set(table.column("clip_id").to_pylist())
    if len(stored) != table.num_rows:
        raise _stored_twice(output, files, tables)
    error = pc.fill_null(pc.equal(table.column("status"), STATUS_ERROR), False)
    if pc.any(error).as_py():
        shard = np.repeat(np.arange(len(files), dtype=np.int32), [t.num_rows for t in tables])
        rows = table.select(["clip_id", "uri", "error"]).append_column("shard", pa.array(shard)).filter(error)
        state.failed = {r["clip_id"]: {"file": files[r["shard"]], "uri": r["uri"], "error": r["error"]}
                        for r in rows.to_pylist()}
    stored.difference_update(state.failed)
    state.usable = stored
    state.recipes = recipes(table)
    return state


def _stored_twice(output: str, files: list[str], tables: list[pa.Table]) -> StoreError:
    """StoreError listing the clips with more than one row, and the shards holding them."""
    seen: dict[str, str] = {}
    twice = []
    for path, table in zip(files, tables):
        for cid in table.column("clip_id").to_pylist():
            if cid in seen:
                twice.append(f"{cid} ({seen[cid]}, {path})")
            else:
                seen[cid] = path
    shown = "; ".join(twice[:5]) + (f"; ... {len(twice) - 5} more" if len(twice) > 5 else "")
    return StoreError(f"the store {storage.public_uri(output)} holds {len(twice)} clip(s) twice: {shown}")


def drop_rows(output: str, clip_ids_by_file: dict[str, set[str]], retries: int = storage.WRITE_RETRIES) -> int:
    """Remove the rows of the given clips from their shards (rewritten atomically, deleted when
    nothing is left); returns the number of rows removed."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, _ = storage.filesystem(output)
    removed = 0
    for path, ids in sorted(clip_ids_by_file.items()):
        table = read_files(output, [path], None)[0]
        keep = table.filter(pc.invert(pc.is_in(table.column("clip_id"), pa.array(sorted(ids), pa.string()))))
        removed += table.num_rows - keep.num_rows
        uri = _uri_of(output, path)
        if keep.num_rows == 0:
            storage.with_retries(f"removing {storage.public_uri(uri)}", lambda: fs.rm(path), retries)
            continue
        keep = keep.replace_schema_metadata(table.schema.metadata)

        def write(keep=keep, uri=uri):
            with storage.atomic_write(uri) as f:
                pq.write_table(keep, f, **WRITE_OPTIONS)

        storage.with_retries(f"rewriting {storage.public_uri(uri)}", write, retries)
    return removed


def _uri_of(output: str, path: str) -> str:
    """The URI of a path inside the store's filesystem (as listed by data_files)."""
    return storage.uri_of(path, output)


def writable_state(output: str) -> StoreState:
    """The store's state once the temporaries of interrupted writes are removed: what a job that
    adds to the store starts from."""
    storage.remove_stale_temporaries(output)
    return store_state(output)


def store_description(store: str) -> dict:
    """What the numbers of a report come from: kind ("synthetic sample set" or "real data"), the
    number of usable val clips, the datasets named in the store."""
    val = usable(read_store(store, ["uri", "dataset", "label_index", "status"], split="val"))
    uris = val.column("uri").to_pylist()
    synthetic = bool(uris) and all(is_sample_clip(u) for u in {uris[0], uris[-1]})
    return {"store": store, "kind": "synthetic sample set" if synthetic else "real data",
            "val_clips": val.num_rows, "datasets": sorted(set(val.column("dataset").to_pylist()) - {None})}
