"""URIs -> filesystems: local paths, file://, s3:// (s3fs) and any other fsspec protocol.

The S3 endpoint is taken from AWS_ENDPOINT_URL when set (any S3-compatible store); credentials
come from the usual AWS environment/instance chain and are never logged.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec
from fsspec.core import url_to_fs

from raylib.errors import StorageError

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"  # hidden: pyarrow, Ray and our readers skip names starting with "." or "_"


_USERINFO = re.compile(r"(://)[^/@]*@")


def public_uri(uri: str) -> str:
    """uri without any user:password@ part, fit for logs, MLflow and provenance."""
    return _USERINFO.sub(r"\1", uri)


def is_remote(uri: str) -> bool:
    """True for URIs with a protocol other than file://."""
    return "://" in uri and not uri.startswith("file://")


def uri_of(path: str, like: str) -> str:
    """The URI of `path`, a path inside the filesystem of `like` as fsspec gives it (bucket/key):
    like's scheme put back when like is remote; the path itself otherwise."""
    if not is_remote(like) or "://" in path:
        return path
    return like.split("://", 1)[0] + "://" + path.lstrip("/")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    kwargs = {}
    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint_url"] = endpoint
    return url_to_fs(uri, **kwargs)


def join(base: str, *parts: str) -> str:
    """Join URI/path segments with '/' (os.path.join for plain local paths)."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def read_bytes(uri: str) -> bytes:
    """Whole object as bytes; FileNotFoundError names the URI."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} not found") from None


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Paths (inside the filesystem) of the files under uri ending with suffix, sorted."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    return sorted(p for p in fs.find(path) if p.endswith(suffix))


@contextmanager
def atomic_write(uri: str, mode: str = "wb") -> Iterator:
    """Open uri for writing so that readers never see a partial file.

    Object stores publish an object only when its upload completes, so remote URIs are written
    in place; local files are written to a hidden temporary sibling and renamed into place.
    """
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open(path, mode) as f:
            yield f
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
    try:
        with fs.open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def remove_stale_temporaries(uri: str) -> int:
    """Delete temporary files an interrupted writer left under uri; returns how many."""
    fs, _ = filesystem(uri)
    stale = [p for p in list_files(uri) if p.rsplit("/", 1)[-1].startswith(TMP_PREFIX)]
    for p in stale:
        fs.rm(p)
    return len(stale)


# ---- retries -----------------------------------------------------------------------------------

WRITE_RETRIES = 3  # extra attempts after a failed write; each attempt already includes botocore's
RETRY_DELAY_S = 2.0  # first pause between attempts; doubles each time


def transient(e: BaseException) -> bool:
    """True for errors a retry may cure: lost connections, timeouts, 5xx from an object store.
    Missing files, permissions and bad arguments are not."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    name, module = type(e).__name__, type(e).__module__
    if module.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3")):
        return any(w in name for w in ("Connection", "Timeout", "Endpoint", "ReadTimeout", "ClientPayload",
                                       "ServerDisconnected", "IncompleteRead"))
    if isinstance(e, OSError):  # s3fs maps 5xx / throttling to OSError subclasses
        return True
    return False


def with_retries(what: str, fn, retries: int = WRITE_RETRIES, delay_s: float = RETRY_DELAY_S):
    """fn() with up to `retries` more attempts on transient errors, pausing delay_s, 2*delay_s, ...
    Returns (result, attempts). Raises StorageError naming `what` and the cause when all fail."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(), attempt
        except Exception as e:
            if not transient(e):
                raise
            cause = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if attempt > retries:
                raise StorageError(f"{what} failed after {attempt} attempt(s): {cause}") from None
            pause = delay_s * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.0f s (attempt %d of %d)", what, cause, pause, attempt + 1, retries + 1)
            time.sleep(pause)
