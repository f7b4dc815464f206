"""Is a Wharf service up? The probes the runner, `wharf-healthcheck` and the tests share."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.parse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The header in which the gateway's /v2/ answer carries WHARF_INSTANCE_ID (when set).
INSTANCE_HEADER = "X-Wharf-Instance"


def grpc_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def _insecure(url: str) -> ssl.SSLContext | None:
    """A liveness probe of our own gateway: over https it does not verify the certificate
    (often self-signed, or issued for a name other than the probed address)."""
    if not url.startswith("https:"):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# How long an HTTP probe may take in all. A server that answers a byte at a time (each read
# within the socket's one-second timeout) held a probe, and `make run`'s start, for ever.
PROBE_SECONDS = 3.0


def _answer(url: str, seconds: float = PROBE_SECONDS) -> tuple[int, str] | None:
    """The status of ``GET url`` and its instance header, or None when no HTTP answer came (nothing
    there, garbage, or not all of the head within ``seconds``: the socket is then shut). Direct,
    never through a proxy from the environment: this probes a process on this host or pod."""
    parts = urllib.parse.urlsplit(url)
    try:
        if parts.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=1, context=_insecure(url))
        else:
            connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=1)
    except (ValueError, http.client.HTTPException):
        return None
    expired = threading.Event()
    watchdog = threading.Timer(seconds, _shut, (connection, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        if expired.is_set():
            return None  # the head was cut short: http.client takes the end for its end
        return response.status, response.getheader(INSTANCE_HEADER) or ""
    except (OSError, ValueError, http.client.HTTPException):
        return None  # nothing there, or something that is not an HTTP server (it answered garbage)
    finally:
        watchdog.cancel()
        connection.close()


def _shut(connection: http.client.HTTPConnection, expired: threading.Event) -> None:
    expired.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the blocked read returns at once


def gateway_answers(url: str, instance: str) -> bool:
    """True once the gateway started with ``WHARF_INSTANCE_ID=instance`` answers /v2/ (200, or 401
    in token mode) with that id: proof that it is this gateway, not another on the same port."""
    found = _answer(url)
    return found is not None and found[0] in (200, 401) and found[1] == instance


def http_ok(url: str) -> bool:
    """True once the gateway answers /v2/: 200, or 401 when it requires tokens.

    A liveness probe of our own gateway: over https it does not verify the certificate
    (often self-signed, or issued for a name other than the probed address).
    """
    found = _answer(url)
    return found is not None and found[0] in (200, 401)
