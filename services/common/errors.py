"""The one error catalogue: every registry error code with its HTTP and gRPC status.

Services raise :class:`RegistryError`; the gRPC interceptor carries the code (and an HTTP
status other than the code's own) in trailing metadata; the gateway turns it back into a
:class:`RegistryError` and renders the OCI ``{"errors": [...]}`` body. Nothing else maps codes
to statuses.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import grpc

# Trailing-metadata keys that carry an error across a gRPC hop.
ERROR_CODE_KEY = "wharf-error-code"
ERROR_DETAIL_KEY = "wharf-error-detail"
# Sent only when the error's HTTP status is not its code's (the blob store's 502 for an upstream's
# wrong answer, an UNAVAILABLE whose default is 503): without it the gateway would answer the default.
ERROR_STATUS_KEY = "wharf-error-status"
# The most missing references a MANIFEST_BLOB_UNKNOWN lists in its detail: the detail travels in
# gRPC trailing metadata (16 KiB at most), where 50 sha512 digests fit easily.
MISSING_LISTED = 50


@dataclasses.dataclass(frozen=True)
class ErrorCode:
    code: str
    message: str
    http_status: int
    grpc_status: grpc.StatusCode


_CATALOGUE: dict[str, ErrorCode] = {}


def _register(code: str, message: str, http_status: int, grpc_status: grpc.StatusCode) -> ErrorCode:
    entry = ErrorCode(code, message, http_status, grpc_status)
    if code in _CATALOGUE:
        raise RuntimeError(f"error code {code} registered twice")
    _CATALOGUE[code] = entry
    return entry


S = grpc.StatusCode
BLOB_UNKNOWN = _register("BLOB_UNKNOWN", "blob unknown to registry", 404, S.NOT_FOUND)
BLOB_UPLOAD_INVALID = _register("BLOB_UPLOAD_INVALID", "blob upload invalid", 400, S.INVALID_ARGUMENT)
BLOB_UPLOAD_UNKNOWN = _register("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404, S.NOT_FOUND)
DIGEST_INVALID = _register("DIGEST_INVALID", "provided digest did not match uploaded content", 400,
                           S.INVALID_ARGUMENT)
MANIFEST_BLOB_UNKNOWN = _register("MANIFEST_BLOB_UNKNOWN", "manifest references a manifest or blob unknown to "
                                  "registry", 400, S.FAILED_PRECONDITION)
MANIFEST_INVALID = _register("MANIFEST_INVALID", "manifest invalid", 400, S.INVALID_ARGUMENT)
MANIFEST_UNKNOWN = _register("MANIFEST_UNKNOWN", "manifest unknown to registry", 404, S.NOT_FOUND)
NAME_INVALID = _register("NAME_INVALID", "invalid repository name", 400, S.INVALID_ARGUMENT)
NAME_UNKNOWN = _register("NAME_UNKNOWN", "repository name not known to registry", 404, S.NOT_FOUND)
SIZE_INVALID = _register("SIZE_INVALID", "provided length did not match content length", 400, S.INVALID_ARGUMENT)
UNAUTHORIZED = _register("UNAUTHORIZED", "authentication required", 401, S.UNAUTHENTICATED)
DENIED = _register("DENIED", "requested access to the resource is denied", 403, S.PERMISSION_DENIED)
UNSUPPORTED = _register("UNSUPPORTED", "the operation is unsupported", 405, S.UNIMPLEMENTED)
TOOMANYREQUESTS = _register("TOOMANYREQUESTS", "too many requests", 429, S.RESOURCE_EXHAUSTED)
# Internal codes between the services. The gateway never writes them into a body: it sends
# TAG_INVALID as MANIFEST_INVALID and RANGE_INVALID as an empty 416 (blob reads) or as
# BLOB_UPLOAD_INVALID with 416 (uploads), see for_http().
TAG_INVALID = _register("TAG_INVALID", "manifest tag did not match URI", 400, S.INVALID_ARGUMENT)
RANGE_INVALID = _register("RANGE_INVALID", "requested range not satisfiable", 416, S.OUT_OF_RANGE)
# Failures the spec has no code for (a backend down, a bug): Distribution's codes for them.
UNAVAILABLE = _register("UNAVAILABLE", "service unavailable", 503, S.UNAVAILABLE)
INTERNAL = _register("INTERNAL", "internal server error", 500, S.INTERNAL)
# Administrative errors of the auth service (never sent by the registry API).
ACCOUNT_EXISTS = _register("ACCOUNT_EXISTS", "account already exists", 409, S.ALREADY_EXISTS)
ACCOUNT_UNKNOWN = _register("ACCOUNT_UNKNOWN", "account unknown", 404, S.NOT_FOUND)
REQUEST_INVALID = _register("REQUEST_INVALID", "invalid request", 400, S.INVALID_ARGUMENT)

# The codes the OCI distribution specification lists; the registry API answers with these
# (plus UNAVAILABLE and INTERNAL for failures the list has no code for).
OCI_CODES = frozenset({"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
                       "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
                       "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"})

_BY_GRPC_STATUS: dict[grpc.StatusCode, ErrorCode] = {
    S.UNAVAILABLE: UNAVAILABLE,
    S.DEADLINE_EXCEEDED: UNAVAILABLE,
    S.RESOURCE_EXHAUSTED: TOOMANYREQUESTS,
    S.UNAUTHENTICATED: UNAUTHORIZED,
    S.PERMISSION_DENIED: DENIED,
}


class RegistryError(Exception):
    """An error a client should see, with its catalogue entry."""

    def __init__(self, error: ErrorCode, message: str | None = None, detail: Any = None,
                 headers: dict[str, str] | None = None, http_status: int | None = None) -> None:
        super().__init__(message or error.message)
        self.error = error
        self.message = message or error.message
        self.detail = detail
        self.headers = dict(headers or {})
        # Only for the few cases where the spec pairs a code with another status (413 for a
        # manifest over the size limit).
        self._http_status = http_status

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def http_status(self) -> int:
        return self._http_status or self.error.http_status

    def body(self) -> bytes:
        entry: dict[str, Any] = {"code": self.error.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        meta: list[tuple[str, str]] = [(ERROR_CODE_KEY, self.error.code)]
        if self.detail is not None:
            meta.append((ERROR_DETAIL_KEY, json.dumps(self.detail)))
        if self.http_status != self.error.http_status:
            meta.append((ERROR_STATUS_KEY, str(self.http_status)))
        return tuple(meta)


def for_http(err: RegistryError) -> RegistryError:
    """``err`` as the registry API may show it: only the spec's codes (and UNAVAILABLE/INTERNAL)."""
    if err.code in OCI_CODES or err.error in (UNAVAILABLE, INTERNAL, RANGE_INVALID):
        return err
    if err.error is TAG_INVALID:
        return RegistryError(MANIFEST_INVALID, err.message, err.detail, err.headers)
    # Administrative codes (ACCOUNT_*, REQUEST_INVALID) keep their status with a spec code.
    status = err.http_status
    substitute = {401: UNAUTHORIZED, 403: DENIED, 404: NAME_UNKNOWN, 429: TOOMANYREQUESTS}.get(status, UNSUPPORTED)
    return RegistryError(substitute, err.message, err.detail, err.headers, http_status=status)


def lookup(code: str) -> ErrorCode | None:
    return _CATALOGUE.get(code)


def from_rpc_error(err: grpc.RpcError) -> RegistryError:
    """Rebuilds the registry error a service raised, or classifies a transport failure."""
    code_fn = getattr(err, "code", None)
    status = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    message = details_fn() if callable(details_fn) else None
    meta_fn = getattr(err, "trailing_metadata", None)
    meta = dict(meta_fn() or ()) if callable(meta_fn) else {}
    entry = lookup(meta.get(ERROR_CODE_KEY, ""))
    detail = None
    if ERROR_DETAIL_KEY in meta:
        try:
            detail = json.loads(meta[ERROR_DETAIL_KEY])
        except ValueError:
            detail = None
    if entry is not None:
        headers = {}
        if isinstance(detail, dict) and isinstance(detail.get("retry_after"), int):
            headers["Retry-After"] = str(detail["retry_after"])
        return RegistryError(entry, message or None, detail, headers=headers, http_status=_carried_status(meta))
    entry = _BY_GRPC_STATUS.get(status, INTERNAL)
    if entry is UNAVAILABLE:
        return RegistryError(UNAVAILABLE, "a backend service is unavailable, retry later")
    return RegistryError(entry)


def _carried_status(meta: dict[str, Any]) -> int | None:
    """The HTTP status a service sent with its error, or None (the code's own): metadata crosses a
    process boundary, so anything but an error status (400..599) is ignored, not trusted."""
    raw = meta.get(ERROR_STATUS_KEY)
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) != 3:
        return None
    status = int(raw)
    return status if 400 <= status <= 599 else None
