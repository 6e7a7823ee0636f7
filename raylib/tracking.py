"""MLflow: the embedded default store, run set-up (params, tags, the run's source), metrics.

When MLFLOW_TRACKING_URI is unset, runs go to an embedded store under ./mlflow (SQLite database
mlflow/mlflow.db, artifacts in mlflow/artifacts), which `make mlflow-ui` (mlflow/server.sh) shows.
Otherwise the given server is used. The embedded store moves with its folder: artifact locations
recorded under another copy of the folder are pointed back at this one when a job or the server
opens it (relocate_artifacts). Figures live in raylib.plots.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np

import raylib
from raylib.config import flag_values
from raylib.errors import Interrupted, TrackingError
from raylib.storage import public_uri

# Nothing leaves the machine unasked: MLflow's usage telemetry is off unless a user turns it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# a job prints its own lines; MLflow's per-download progress bars would break them up
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

EMBEDDED_DIR = "mlflow"
# the embedded store of a checkout, which `make mlflow-ui` serves
REPO_STORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), EMBEDDED_DIR, "mlflow.db")
SECRET_WORDS = re.compile(r"(secret|password|token|credential|access_key|private)", re.IGNORECASE)
# config fields that name or steer a run but are no hyper-parameter: never MLflow params
NOT_PARAMS = ("run_name", "sweep_name", "quiet")
# MLflow 3 marks model-training experiments with this tag; its UI (3.17) still opens an experiment
# on the GenAI overview unless the address says ?workflowType=machine_learning (ui_link does)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # an experiment's or run's description in the UI
# each experiment's description, by the job that creates it
_SCORES = ("Val/ and Val_recall/<class> are scores on the store's val split (UAR, unweighted average recall, "
           "the headline; best_ at the epoch kept), Test/ on held-out speakers, train/ training diagnostics.")
PURPOSES = {
    "train": "Audio-video emotion models. jobs/train.py: one run per model (cross-validation: a parent run with one "
             "child per fold). jobs/tune.py: a parent run per sweep, holding its Table 2 and naming its best "
             "trial, with one child run per trial (visual attention/audio attention/fusion). " + _SCORES,
    "evaluate": "jobs/evaluate.py: one run per scoring of a checkpoint or an ensemble on a store's split, with "
                "its predictions. " + _SCORES,
    "pretrain": "Face backbones pretrained for expression (jobs/pretrain.py) and their linear probes (Table 1). "
                + _SCORES,
}
# the embedded store's UI address (`make mlflow-ui`)
EMBEDDED_UI = "http://127.0.0.1:5000"
# MLflow 3.17 keeps a saved runs-table view as an experiment tag with this prefix, opened by the
# address parameter viewStateShareKey (an undocumented format: written for the versions below only)
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
SHARED_VIEW_VERSIONS = ((3, 17),)
RUN_NAME_PX = 240  # the saved view's Run Name column
# an unreachable tracking server is reported within this many seconds, not after MLflow's retries
PROBE_TIMEOUT_S = 10
_relocated: set[str] = set()
_reachable: set[str] = set()


def embedded_uri(root: str = EMBEDDED_DIR) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(root, 'mlflow.db'))}"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store under ./mlflow."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri()


def client():
    """An MLflow client of the store in use."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def check_reachable(uri: str | None = None) -> None:
    """TrackingError, within PROBE_TIMEOUT_S, when an http(s) tracking server does not answer (MLflow's
    own client would retry for minutes; any HTTP answer counts) or a local SQLite store cannot be
    written. Once per URI and process."""
    uri = uri or tracking_uri()
    if uri in _reachable:
        return
    if uri.startswith("sqlite:///"):
        check_writable(uri[len("sqlite:///"):])
        _reachable.add(uri)
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass  # it answered: a server is there (a proxy's 404, a login page)
    except (OSError, ValueError) as e:  # URLError, a timeout, a malformed address
        reason = str(getattr(e, "reason", e)) or type(e).__name__
        raise TrackingError(f"MLflow tracking server {public_uri(uri)} unreachable: {reason} (set MLFLOW_TRACKING_URI "
                            f"to a running server, or unset it for the local store)") from None
    _reachable.add(uri)


def check_writable(path: str) -> None:
    """TrackingError when the SQLite store at path cannot be created or written (a read-only folder:
    a job submitted to a cluster runs in a read-only copy of its working dir, where the embedded
    store would be), before any work rather than as SQLite's error midway."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=PROBE_TIMEOUT_S)) as db:
            db.execute("BEGIN IMMEDIATE")  # the write lock a run's first write takes
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute(f"PRAGMA user_version = {int(version)}")  # a write (of what is there), rolled back
            db.rollback()
    except (OSError, sqlite3.Error) as e:
        raise TrackingError(f"the MLflow store {path} cannot be written ({e}): set MLFLOW_TRACKING_URI to a writable "
                            f"store or a tracking server (on a cluster, in the job's runtime env: docs/cluster.md)") from None


def serve_command() -> str | None:
    """The command that serves the local store in use on EMBEDDED_UI; None for a tracking server."""
    uri = tracking_uri()
    if uri == f"sqlite:///{REPO_STORE}":
        return "make mlflow-ui"
    if uri.startswith("sqlite:"):
        return f"MLFLOW_BACKEND_STORE_URI={uri} bash mlflow/server.sh"
    return None


def ui_command() -> str:
    """The command that shows the runs of the store in use."""
    command = serve_command()
    return f"{command}   (then open {EMBEDDED_UI})" if command else f"open {tracking_uri()} in a browser"


def ui_base(uri: str | None = None) -> str:
    """The UI address of a tracking store: the server itself, else where `make mlflow-ui` (or
    mlflow/server.sh over that store) serves it."""
    uri = uri or tracking_uri()
    return public_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else EMBEDDED_UI


def ui_link(experiment_id: str, run_id: str | None = None, view: str | None = None, tab: str | None = None,
            base: str | None = None) -> str:
    """The direct UI address of a run's page (its `tab`: model-metrics, artifacts, ...), or of an
    experiment's runs table (opened on the saved view `view` when given), in MLflow's
    model-training view (without ?workflowType= MLflow 3.17 shows its GenAI pages); `base`: the
    UI's address, by default that of the store in use (ui_base)."""
    base = f"{base or ui_base()}/#/experiments/{experiment_id}/runs"
    if run_id:
        return f"{base}/{run_id}" + (f"/{tab}" if tab else "") + "?workflowType=machine_learning"
    return f"{base}?workflowType=machine_learning" + (f"&viewStateShareKey={view}" if view else "")


def store_links(uri: str, base: str) -> list[str]:
    """What `make mlflow-ui` prints about a store served at `base`: the newest sweep's saved view
    (else its run page) and the runs table of each experiment with runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    lines, sweeps = [], []
    for e in client.search_experiments():
        runs = client.search_runs([e.experiment_id], max_results=1)
        if not runs:
            continue
        lines.append(f"experiment {e.name}: {ui_link(e.experiment_id, base=base)}")
        sweeps += client.search_runs([e.experiment_id], "tags.kind = 'sweep'", max_results=1, order_by=["start_time DESC"])
    if sweeps:
        newest = max(sweeps, key=lambda r: r.info.start_time)
        eid, rid = newest.info.experiment_id, newest.info.run_id
        viewed = SHARED_VIEW_PREFIX + rid in client.get_experiment(eid).tags
        link = ui_link(eid, view=rid, base=base) if viewed else ui_link(eid, rid, base=base)
        lines.insert(0, f"newest sweep {newest.info.run_name}: {link}")
    return lines


def run_link(run_id: str) -> str:
    """ui_link of a run of the store in use."""
    return ui_link(client().get_run(run_id).info.experiment_id, run_id)


def open_line(link: str) -> str:
    """A UI link and, for a local store, the command that serves it first."""
    command = serve_command()
    return f"{link}  (serve the store first: {command})" if command else link


def shared_views_supported() -> bool:
    """Whether this MLflow's UI reads saved views in the format save_runs_view writes."""
    import mlflow

    major, minor = (int(x) for x in mlflow.__version__.split(".")[:2])
    return (major, minor) in SHARED_VIEW_VERSIONS


def save_runs_view(experiment_id: str, key: str, parent_run_id: str, params: list[str], metrics: list[str],
                   order_by: str) -> str | None:
    """Save a runs-table view of a parent run's children (a sweep's trials) on its experiment:
    those runs only, sorted by metric order_by (highest first), with the given params and metrics
    (jobs' names) as columns after a Run Name column wide enough for full trial names. Returns
    the UI link that opens it, or None where this MLflow's UI would not read it."""
    if not shared_views_supported():
        return None
    columns = [f"params.`{p}`" for p in params] + [f"metrics.`{metric_key(m)}`" for m in metrics]
    state = {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
             "orderByKey": f"metrics.`{metric_key(order_by)}`", "orderByAsc": False,
             # the run's name, then these columns: full trial names (transformer/transformer/concat, 30
             # characters) and narrow value columns, so a row fits beside MLflow's assistant panel
             # on a 1600-pixel screen
             "selectedColumns": columns, "columnOrder": ["attributes.`Run Name`", *columns, "runDateAndNestInfo"],
             "columnWidths": {"attributes.`Run Name`": RUN_NAME_PX, **{c: 90 if c.startswith("params.") else 110
                                                                       for c in columns}}}
    client().set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + key, json.dumps(state))
    return ui_link(experiment_id, view=key)


def metric_key(name: str) -> str:
    """The MLflow name of a metric the jobs compute (val_uar, train_loss, best_val_uar,
    val_recall_Happy, cv_test_uar_mean). MLflow's run page draws one section of charts per name
    prefix before '/', sections and charts in code-point order, where capitals come first: the
    held-out scores go to Val/, Val_recall/, Test/ (UAR, the headline, before accuracy), the
    training diagnostics to train/, a cross-validation's summary to CV/."""
    best = name.startswith("best_")
    rest = name[len("best_"):] if best else name
    split, _, metric = rest.partition("_")
    if split in ("val", "test") and metric:
        if metric.startswith("recall_"):
            return f"{split.capitalize()}_recall/{metric[len('recall_'):]}"
        metric = "UAR" if metric == "uar" else metric
        return f"{split.capitalize()}/{'best_' if best else ''}{metric}"
    if split == "train" and metric and not best:
        return f"train/{metric}"
    if split == "cv" and metric:
        return "CV/" + re.sub(r"(^|_)uar(?=_|$)", r"\1UAR", metric)
    return name


def metric_history(run_id: str, name: str) -> dict[int, float]:
    """{step: value} of a metric (by the jobs' name, see metric_key) of an MLflow run."""
    return {m.step: m.value for m in client().get_metric_history(run_id, metric_key(name))}


def run_metric(run, name: str, default: float = float("nan")) -> float:
    """The latest value of a metric (by the jobs' name, see metric_key) of an MLflow run."""
    return run.data.metrics.get(metric_key(name), default)


def sqlite_path(uri: str) -> str | None:
    """The database file of a sqlite:/// tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:////") else os.path.abspath(uri[len("sqlite:///"):])


def relocate_artifacts(db_path: str) -> int:
    """Point artifact locations recorded under another copy of the store's folder (a moved or
    copied checkout) at the `artifacts/` folder beside db_path; returns the rows changed.

    A location belongs to the store when it reads file://<some path>/<folder name>/artifacts/...
    with the folder name of db_path's folder (`mlflow` for the embedded store)."""
    if not os.path.exists(db_path):
        return 0
    here = os.path.dirname(os.path.abspath(db_path))
    pattern = re.compile(r"^file://(/.*?/" + re.escape(os.path.basename(here)) + r")/artifacts(?=/|$)")
    columns = (("experiments", "experiment_id", "artifact_location"), ("runs", "run_uuid", "artifact_uri"),
               ("logged_models", "model_id", "artifact_location"))
    changed = 0
    with sqlite3.connect(db_path, timeout=30) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
        for table, key, column in columns:
            if table not in tables:
                continue
            for row_id, location in db.execute(f"select {key}, {column} from {table} where {column} like 'file://%'").fetchall():
                m = pattern.match(location or "")
                if m and m.group(1) != here:
                    db.execute(f"update {table} set {column} = ? where {key} = ?",
                               ("file://" + here + location[m.end(1):], row_id))
                    changed += 1
    return changed


def experiment_id(name: str, description: str | None = None) -> str:
    """Id of experiment `name` in the store in use, created (with its artifact folder) if needed and
    marked for MLflow's model-training view; `description` becomes its description where it has none."""
    from mlflow.tracking import MlflowClient

    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    db = sqlite_path(uri)
    if db and db not in _relocated:  # a moved store: its artifacts are beside it now
        _relocated.add(db)
        if os.path.exists(db):
            relocate_artifacts(db)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older version
            MlflowClient(uri).set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        if description and not found.tags.get(NOTE_TAG):
            MlflowClient(uri).set_experiment_tag(found.experiment_id, NOTE_TAG, description)
        return found.experiment_id
    location = None
    if db:  # a file store: artifacts beside the database, not in ./mlruns
        root = os.path.join(os.path.dirname(db), "artifacts")
        os.makedirs(root, exist_ok=True)
        location = "file://" + os.path.join(root, name)
    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, **({NOTE_TAG: description} if description else {})}
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags=tags)
    except Exception:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def code_version() -> str:
    """The git commit of this checkout (with -dirty when it has changes), else the package version."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if commit:
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return raylib.__version__


def source_tags(job: str) -> dict[str, str]:
    """MLflow's Source of a run: the job that made it and the code version it ran."""
    version = code_version()
    tags = {"mlflow.source.name": job, "mlflow.source.type": "JOB", "code_version": raylib.__version__}
    if version != raylib.__version__:
        tags["mlflow.source.git.commit"] = version.removesuffix("-dirty")
        tags["code_version"] = version
    return tags


def public(value):
    """A config value fit for logging: URIs lose user:password@, secret-looking values are masked."""
    return public_uri(value) if isinstance(value, str) else value


def config_params(cfg) -> dict[str, str]:
    """Flat {name: str(value)} of a job's config: its flags (an inline part's under their own
    names, raylib.config.flag_values), less fields named like secrets and the run's name and
    output switches (NOT_PARAMS)."""
    return {name: str(public(value))[:500] for name, value in flag_values(cfg).items()
            if not SECRET_WORDS.search(name) and name not in NOT_PARAMS}


def require_new_run_name(experiment: str, run_name: str, fix: str) -> None:
    """TrackingError when `experiment` already holds a run named run_name: a second run of that name
    would pass for the first one continued. `fix` says what to do instead."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return
    quote = '"' if "'" in run_name else "'"
    runs = client().search_runs([found.experiment_id], f"attributes.run_name = {quote}{run_name}{quote}",
                                                    max_results=1)
    if runs:
        info, ckpt = runs[0].info, runs[0].data.tags.get("best_checkpoint")
        raise TrackingError(f"experiment {experiment!r} already has a run named {run_name!r} (run {info.run_id}, "
                            f"{info.status}" + (f", checkpoint {ckpt}" if ckpt else "") + f"): {fix}")


def start_run(experiment: str, run_name: str, params: dict, tags: dict | None = None,
              parent_run_id: str | None = None, purpose: str | None = None) -> str:
    """Create a run (child of parent_run_id if given) with params and tags; returns its id.
    `purpose` describes the experiment when it has no description yet."""
    mlflow_client = client()
    all_tags = {k: str(public(v)) for k, v in (tags or {}).items()}
    all_tags["mlflow.runName"] = run_name
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(experiment_id(experiment, purpose), tags=all_tags, run_name=run_name)
    for key, value in params.items():
        mlflow_client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def set_tags(run_id: str, tags: dict) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, str(public(value)))


def describe(run_id: str, text: str) -> None:
    """The run's description (markdown) in the UI."""
    client().set_tag(run_id, NOTE_TAG, text)


def log_metrics(run_id: str, metrics: dict, step: int) -> None:
    """Log finite scalar metrics at step, under their MLflow names (metric_key)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items() if v is not None and np.isfinite(v)]
    if items:
        client().log_batch(run_id, metrics=items)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status)


@contextlib.contextmanager
def ending_runs(*run_ids: str):
    """Inside the block, Ctrl-C (KeyboardInterrupt, or the SystemExit Ray Train turns it into) ends
    these runs as KILLED and becomes Interrupted; any other exception ends them as FAILED."""
    try:
        yield
    except Interrupted:  # the block ended its runs itself
        raise
    except (KeyboardInterrupt, SystemExit):
        for run_id in run_ids:
            end_run(run_id, "KILLED")
        raise Interrupted(f"interrupted; MLflow run {', '.join(run_ids)} ended as KILLED") from None
    except BaseException:
        for run_id in run_ids:
            end_run(run_id, "FAILED")
        raise


def log_artifact(run_id: str, path: str, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, path, artifact_path)
