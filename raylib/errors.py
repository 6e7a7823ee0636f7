"""Project exception types: each names the thing that failed and, where one exists, the fix."""


def exception_line(e: BaseException) -> str:
    """'TypeName: first line of the message', short enough for the store's error column."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


class RaylibError(Exception):
    """Base class of every error this package raises on purpose."""


class ClipError(RaylibError):
    """A clip could not be read or processed; `uri` names it, `cause` says why in a few words."""

    def __init__(self, uri: str, cause: str):
        self.uri = uri
        self.cause = cause
        super().__init__(f"clip {uri}: {cause}")

    def __reduce__(self):  # keep (uri, cause) across Ray's pickling
        return (type(self), (self.uri, self.cause))


class NoVideoStream(ClipError):
    """A readable file without a video stream (an audio file): extraction keeps its audio alone."""


class SourceError(RaylibError):
    """A dataset folder or manifest cannot be turned into clip records."""


class WeightsError(RaylibError):
    """A checkpoint is missing, unsafe, or does not match the architecture."""


class StorageError(RaylibError):
    """The store (local folder or object store) could not be read or written, after retries."""


class StoreError(RaylibError):
    """A feature store breaks its rules (mixed recipes, a clip stored twice) or does not fit the job."""


class TrackingError(RaylibError):
    """The MLflow tracking server cannot be reached, or refuses a run as asked (its name is taken)."""


class ClusterError(RaylibError):
    """The Ray cluster can never hold what a job asks for (and no autoscaler can add nodes)."""


class Interrupted(RaylibError):
    """The job was stopped (SIGINT, Ctrl-C) and its MLflow runs ended as KILLED."""
