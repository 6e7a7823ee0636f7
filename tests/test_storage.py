"""Retrying storage operations: which errors are retried, how many times, and the error at the end."""

import pytest

from raylib import storage
from raylib.errors import StorageError


def flaky(failures, exc):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "written"

    return fn, calls


def test_transient_errors_are_retried_until_success():
    fn, calls = flaky(2, ConnectionRefusedError(111, "Connection refused"))
    assert storage.with_retries("writing x", fn, retries=3, delay_s=0.001) == ("written", 3)
    assert len(calls) == 3


def test_a_store_that_stays_down_ends_in_one_clear_error():
    fn, calls = flaky(10, ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(StorageError) as e:
        storage.with_retries("writing s3://b/part-1.parquet", fn, retries=2, delay_s=0.001)
    assert len(calls) == 3
    assert str(e.value) == ("writing s3://b/part-1.parquet failed after 3 attempt(s): "
                            "ConnectionRefusedError: [Errno 111] Connection refused")


def test_errors_a_retry_cannot_cure_are_raised_at_once():
    for exc in (FileNotFoundError("no such bucket"), PermissionError("denied"), ValueError("bad")):
        fn, calls = flaky(1, exc)
        with pytest.raises(type(exc)):
            storage.with_retries("writing x", fn, retries=5, delay_s=0.001)
        assert len(calls) == 1


def test_botocore_connection_errors_count_as_transient():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError, ReadTimeoutError

    assert storage.transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert storage.transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert not storage.transient(NoCredentialsError())


def test_a_listed_path_gets_back_the_scheme_of_its_root():
    from raylib import storage

    assert storage.uri_of("bucket/runs/a/model.pt", "s3://bucket/runs") == "s3://bucket/runs/a/model.pt"
    assert storage.uri_of("/bucket/x", "gs://bucket") == "gs://bucket/x"
    assert storage.uri_of("s3://bucket/x", "s3://bucket") == "s3://bucket/x"  # already a URI
    assert storage.uri_of("/data/runs/a", "/data/runs") == "/data/runs/a"  # local: the path itself
    assert storage.uri_of("/data/runs/a", "file:///data/runs") == "/data/runs/a"
