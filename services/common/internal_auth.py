"""Trust between the services: every internal gRPC call carries the stack's shared secret.

Reaching a service's port is not proof of being part of the stack (a pod in the same
network, a local user on a shared host). Each call therefore carries a secret read from
``WHARF_INTERNAL_TOKEN_FILE`` (generated into the data directory by ``make run``, a
Secret in deploy/) as call metadata; the servers compare it in constant time and answer
anything else with UNAUTHENTICATED. The gRPC health service stays open, because
Kubernetes' native gRPC probes cannot send metadata and health reveals nothing.
"""

from __future__ import annotations

import hmac
import os
import pathlib
import secrets
from collections.abc import Callable
from typing import Any

import grpc

from services.common.settings import SettingsError

TOKEN_KEY = "x-wharf-internal-token"
TOKEN_VARIABLE = "WHARF_INTERNAL_TOKEN_FILE"
# A secret shorter than this is a placeholder, not a secret.
MIN_TOKEN_LENGTH = 32
# Methods any caller may use: health checking.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token(path: str) -> str:
    """The secret in ``path``; a missing, unreadable or short file stops the service with a clear message."""
    if not path:
        raise SettingsError(f"{TOKEN_VARIABLE} must name a file holding the stack's shared secret "
                            "(make run generates one; see docs/security.md)")
    try:
        value = pathlib.Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{TOKEN_VARIABLE}={path!r}: cannot read it ({exc.strerror})") from None
    if len(value) < MIN_TOKEN_LENGTH:
        raise SettingsError(f"{TOKEN_VARIABLE}={path!r}: the secret must have at least {MIN_TOKEN_LENGTH} characters")
    return value


def ensure_token_file(path: pathlib.Path) -> pathlib.Path:
    """Creates ``path`` with a new random secret (owner-only) unless it exists; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return path


def is_authentic(metadata: Any, token: str) -> bool:
    """True when the call's metadata carries ``token`` (constant-time comparison)."""
    presented = ""
    for key, value in metadata or ():
        if key == TOKEN_KEY and isinstance(value, str):
            presented = value
            break
    return hmac.compare_digest(presented.encode(), token.encode())


def is_open(method: str) -> bool:
    return method.startswith(OPEN_PREFIXES)


class _TokenClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the secret to every call made on the channel, whatever its shape."""

    def __init__(self, token: str) -> None:
        self._pair = (TOKEN_KEY, token)

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._pair]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def authenticated_channel(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` with the stack's secret on every call."""
    return grpc.intercept_channel(channel, _TokenClientInterceptor(token))
