"""An error's HTTP status survives the gRPC hop (services/common/errors.py).

The blob store answers an upstream's wrong or refused answer with UNAVAILABLE and status 502; the
gateway used to rebuild it with the code's default, 503, which tells a client to retry something
that will fail the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from services.api.clients import BlobStoreClient
from services.common import errors
from services.common.grpcserver import ServiceInterceptor
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb


class _FakeRpcError(grpc.RpcError):
    """What a gRPC client sees of a failed call: status, details, trailing metadata."""

    def __init__(self, status: grpc.StatusCode, details: str, meta: tuple[tuple[str, str], ...]) -> None:
        self._status, self._details, self._meta = status, details, meta

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._meta


def _over_grpc(err: errors.RegistryError) -> errors.RegistryError:
    """``err`` raised in a service, through its interceptor, as the gateway rebuilds it."""
    context = _AbortingContext()
    interceptor = ServiceInterceptor("wharf.blobstore.v1.BlobStore", "token")
    with pytest.raises(_Aborted):
        asyncio.run(interceptor._fail(err, "/wharf.blobstore.v1.BlobStore/Fill", 0.0, context))  # type: ignore[arg-type]
    return errors.from_rpc_error(_FakeRpcError(context.status, context.details, context.trailing))


class _Aborted(Exception):
    pass


class _AbortingContext:
    """The part of grpc.aio.ServicerContext the interceptor's failure path uses."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.status = grpc.StatusCode.OK
        self.details = ""

    def set_trailing_metadata(self, meta: tuple[tuple[str, str], ...]) -> None:
        self.trailing = tuple(meta)

    async def abort(self, status: grpc.StatusCode, details: str) -> None:
        self.status, self.details = status, details
        raise _Aborted


def test_an_upstream_error_keeps_its_502() -> None:
    sent = errors.RegistryError(errors.UNAVAILABLE, "upstream answered other bytes", detail={"upstream": "up"},
                                http_status=502)
    seen = _over_grpc(sent)
    assert (seen.code, seen.http_status, seen.message, seen.detail) == \
        ("UNAVAILABLE", 502, "upstream answered other bytes", {"upstream": "up"})
    assert errors.for_http(seen).http_status == 502


def test_a_code_with_its_own_status_sends_none() -> None:
    sent = errors.RegistryError(errors.UNAVAILABLE, "down", detail={"retry_after": 30})
    assert errors.ERROR_STATUS_KEY not in dict(sent.trailing_metadata())
    seen = _over_grpc(sent)
    assert seen.http_status == 503 and seen.headers == {"Retry-After": "30"}


def test_an_explicit_default_status_sends_none() -> None:
    sent = errors.RegistryError(errors.MANIFEST_UNKNOWN, http_status=404)
    assert errors.ERROR_STATUS_KEY not in dict(sent.trailing_metadata())


@pytest.mark.parametrize("raw", ["200", "302", "399", "600", "999", "5o2", "-502", " 502", "502.0", "",
                                 "\u0665\u0660\u0662", "0502", "1" * 5000])
def test_a_status_that_is_no_error_status_is_ignored(raw: str) -> None:
    meta = ((errors.ERROR_CODE_KEY, "UNAVAILABLE"), (errors.ERROR_STATUS_KEY, raw))
    seen = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x", meta))
    assert seen.code == "UNAVAILABLE" and seen.http_status == 503


@pytest.mark.parametrize("status", [400, 413, 502, 599])
def test_any_error_status_is_restored(status: int) -> None:
    meta = ((errors.ERROR_CODE_KEY, "UNAVAILABLE"), (errors.ERROR_STATUS_KEY, str(status)))
    assert errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x", meta)).http_status == status


def test_a_status_without_a_known_code_is_not_trusted() -> None:
    meta = ((errors.ERROR_CODE_KEY, "NO_SUCH_CODE"), (errors.ERROR_STATUS_KEY, "418"))
    seen = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNKNOWN, "x", meta))
    assert seen.code == "INTERNAL" and seen.http_status == 500


# -- the blob store client's fill: an error after the first chunk --------------------------------


class _FillCall:
    """A Fill call whose stream fails after ``chunks``."""

    def __init__(self, chunks: list[bpb.Chunk], failure: grpc.RpcError) -> None:
        self._chunks, self._failure = iter(chunks), failure

    def __iter__(self) -> Iterator[bpb.Chunk]:
        return self

    def __next__(self) -> bpb.Chunk:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise self._failure
        return chunk

    def cancel(self) -> None:
        pass


class _Caller:
    def __init__(self, call: _FillCall) -> None:
        self._call = call

    def streaming(self, method: str, request: Any) -> _FillCall:
        return self._call


def test_a_fill_failing_midway_raises_the_registry_error() -> None:
    """A mirrored blob whose bytes mismatch the digest is found out after its first chunk: the
    rest of the stream ends in the service's error (502), not a raw RpcError (a 500)."""
    mismatch = errors.RegistryError(errors.UNAVAILABLE, "upstream sent other bytes", http_status=502)
    failure = _FakeRpcError(grpc.StatusCode.UNAVAILABLE, mismatch.message, mismatch.trailing_metadata())
    call = _FillCall([bpb.Chunk(total=6, data=b"abc"), bpb.Chunk(data=b"def")], failure)
    client = BlobStoreClient(_Caller(call), b"k" * 32)  # type: ignore[arg-type]
    total, stored, first, rest, _ = client.fill("docker.io", "library/alpine", "sha256:" + "0" * 64)
    assert (total, stored, first) == (6, False, b"abc")
    assert next(rest) == b"def"
    with pytest.raises(errors.RegistryError) as raised:
        next(rest)
    assert raised.value.http_status == 502 and raised.value.code == "UNAVAILABLE"
