"""Is a Wharf service up? The probes the runner, `wharf-healthcheck` and the tests share."""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request

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


def gateway_answers(url: str, instance: str) -> bool:
    """True once the gateway started with ``WHARF_INSTANCE_ID=instance`` answers /v2/ (200, or 401
    in token mode) with that id: proof that it is this gateway, not another on the same port."""
    request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=1, context=_insecure(url)) as response:
            return bool(response.status == 200 and response.headers.get(INSTANCE_HEADER) == instance)
    except urllib.error.HTTPError as err:
        return err.code == 401 and err.headers.get(INSTANCE_HEADER) == instance
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False  # nothing there, or something that is not an HTTP server (it answered garbage)


def http_ok(url: str) -> bool:
    """True once the gateway answers /v2/: 200, or 401 when it requires tokens.

    A liveness probe of our own gateway: over https it does not verify the certificate
    (often self-signed, or issued for a name other than the probed address).
    """
    try:
        with urllib.request.urlopen(url, timeout=1, context=_insecure(url)) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as err:
        return err.code == 401
    except (urllib.error.URLError, OSError):
        return False
