"""Digests, names, the error catalogue and settings parsing."""

from __future__ import annotations

import dataclasses
import hashlib

import grpc
import pytest

from services.common import digests, errors, names
from services.common.settings import SettingsError, env, load


def test_digest_parse_accepts_registered_algorithms() -> None:
    sha256 = "sha256:" + hashlib.sha256(b"x").hexdigest()
    sha512 = "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert digests.parse(sha256)[0] == "sha256"
    assert digests.parse(sha512)[0] == "sha512"
    assert digests.of(b"x", "sha512") == sha512


@pytest.mark.parametrize("value", ["", "sha256:abc", "sha256:baddigeststring", "md5:" + "a" * 32,
                                   "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:../../etc/passwd",
                                   "sha512:" + "a" * 64, "sha256:" + "a" * 64 + "\n"])
def test_digest_parse_rejects_invalid(value: str) -> None:
    with pytest.raises(errors.RegistryError) as info:
        digests.parse(value)
    assert info.value.code == "DIGEST_INVALID"
    assert info.value.http_status == 400


@pytest.mark.parametrize("name", ["a", "library/ubuntu", "a/b/c", "foo.bar", "foo__bar", "foo-----bar", "a0/b_1"])
def test_valid_names(name: str) -> None:
    assert names.is_valid_name(name)


@pytest.mark.parametrize("name", ["", "A", "a/", "/a", "a//b", "a..b", "-a", "a_", "a___b", "a/.b", "a" * 256,
                                  "a/../b", "a/b\n", "a\n"])
def test_invalid_names(name: str) -> None:
    assert not names.is_valid_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert names.is_valid_tag(tag)


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a:b", "v1\n"])
def test_invalid_tags(tag: str) -> None:
    assert not names.is_valid_tag(tag)


def test_error_body_is_the_oci_envelope() -> None:
    err = errors.RegistryError(errors.MANIFEST_UNKNOWN, "nope", detail={"tag": "x"})
    assert err.body() == b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "nope", "detail": {"tag": "x"}}]}'
    assert err.http_status == 404


class _FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode, meta: tuple[tuple[str, str], ...] = ()) -> None:
        self._status, self._meta = status, meta

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return "details"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._meta


def test_rpc_error_round_trip_keeps_code_and_detail() -> None:
    original = errors.RegistryError(errors.RANGE_INVALID, "bad offset", detail={"size": 3})
    rebuilt = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, original.trailing_metadata()))
    assert rebuilt.code == "RANGE_INVALID" and rebuilt.detail == {"size": 3} and rebuilt.http_status == 416


@pytest.mark.parametrize("status", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_transport_failures_become_503(status: grpc.StatusCode) -> None:
    assert errors.from_rpc_error(_FakeRpcError(status)).http_status == 503


def test_unknown_failures_become_500_without_details() -> None:
    rebuilt = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNKNOWN))
    assert rebuilt.http_status == 500 and rebuilt.message == errors.INTERNAL.message


@dataclasses.dataclass(frozen=True)
class _Settings:
    required: str = env("T_REQUIRED")
    port: int = env("T_PORT", 5000)
    flag: bool = env("T_FLAG", False)


def test_settings_load_converts_and_fails_fast() -> None:
    loaded = load(_Settings, {"T_PORT": "6000", "T_FLAG": "yes", "T_REQUIRED": "x"})
    assert (loaded.port, loaded.flag, loaded.required) == (6000, True, "x")
    with pytest.raises(SettingsError, match="T_REQUIRED"):
        load(_Settings, {})
    with pytest.raises(SettingsError, match="T_PORT"):
        load(_Settings, {"T_PORT": "many", "T_REQUIRED": "x"})
    with pytest.raises(SettingsError, match="T_FLAG"):
        load(_Settings, {"T_FLAG": "maybe", "T_REQUIRED": "x"})


def test_services_keep_each_streams_receive_window_at_its_initial_size() -> None:
    """What a gRPC service buffers for a caller is bounded per stream only while the window does
    not grow with the bandwidth-delay estimate: with it on, 500 slow uploads into a lagging disk
    grew the blob store to 1.2-1.3 GB (bench/load_bench.py (b); docs/performance.md)."""
    from services.common.grpcserver import SERVER_OPTIONS

    assert ("grpc.http2.bdp_probe", 0) in SERVER_OPTIONS
    assert not any(key == "grpc.http2.lookahead_bytes" for key, _ in SERVER_OPTIONS)
