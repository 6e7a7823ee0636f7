"""URIs -> filesystems: local paths, file://, s3:// (s3fs) and any other fsspec protocol.

The S3 endpoint is taken from AWS_ENDPOINT_URL when set (any S3-compatible store); credentials
come from the usual AWS environment/instance chain and are never logged.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec
from fsspec.core import url_to_fs


def is_remote(uri: str) -> bool:
    """True for URIs with a protocol other than file://."""
    return "://" in uri and not uri.startswith("file://")


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


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    """Whole object as bytes; FileNotFoundError names the URI."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} not found") from None


@contextmanager
def atomic_write(uri: str, mode: str = "wb") -> Iterator:
    """Write to a temporary sibling, then move into place: readers never see a partial file."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
    try:
        with fs.open(tmp, mode) as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
