"""Tracing against a hostile client's `traceparent` (hostile review of the operations surfaces,
docs/security.md): a client may join its request to its own trace, but may not decide that the
registry keeps no trace of it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from tests.support import otlp
from tests.support.stack import RunningStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory, receiver: otlp.OtlpReceiver) -> Iterator[RunningStack]:
    stack = RunningStack(tmp_path_factory.mktemp("ops-traced"), {"WHARF_OTLP_ENDPOINT": receiver.endpoint,
                                                                  "OTEL_BSP_SCHEDULE_DELAY": "200"}).start()
    yield stack
    stack.stop()


def test_a_client_cannot_switch_the_registrys_tracing_off(traced_stack: RunningStack,
                                                          receiver: otlp.OtlpReceiver) -> None:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    # Flags 00: "I did not sample this". Believed, the gateway and every service behind it
    # recorded nothing: a client could hide its requests from the operator's traces.
    # A repository nobody pushed: a miss is never cached, so the gateway always asks the metadata
    # service (a catalog page may be answered from the gateway's read cache).
    answer = requests.get(f"{traced_stack.url}/v2/nobody/{os.urandom(4).hex()}/tags/list", timeout=10,
                          headers={"traceparent": f"00-{trace_id}-{span_id}-00"})
    assert answer.status_code == 404
    # Each service exports on its own schedule: wait for both server spans.
    spans = receiver.wait_for(lambda found: {s.service for s in found if s.kind == otlp.SERVER}
                              >= {"wharf-gateway", "wharf-metadata"}, timeout=15, trace_id=trace_id)
    server = otlp.one(spans, "the gateway's server span", otlp.served_by("wharf-gateway"))
    assert server.parent_span_id == span_id  # still the client's trace, as with flags 01
    assert any(s.service == "wharf-metadata" for s in spans), spans


@pytest.mark.parametrize("value", ["garbage", "ff-" + "1" * 32 + "-" + "2" * 16 + "-01",
                                   "00-" + "0" * 32 + "-" + "2" * 16 + "-01", "00-" + "a" * 600])
def test_a_malformed_traceparent_starts_a_trace_of_our_own(traced_stack: RunningStack, receiver: otlp.OtlpReceiver,
                                                           value: str) -> None:
    request_id = os.urandom(8).hex()
    answer = requests.get(f"{traced_stack.url}/v2/_catalog", timeout=10,
                          headers={"traceparent": value, "X-Request-Id": request_id})
    assert answer.status_code == 200

    def mine(found: list[otlp.ReceivedSpan]) -> list[otlp.ReceivedSpan]:
        return [s for s in found if s.service == "wharf-gateway" and s.kind == otlp.SERVER
                and s.attributes.get("wharf.request_id") == answer.headers.get("X-Request-Id")]

    spans = mine(receiver.wait_for(lambda found: bool(mine(found)), timeout=10))
    assert len(spans) == 1, spans
    assert spans[0].parent_span_id == "" and spans[0].trace_id != "0" * 32


def test_an_invented_method_names_no_span(traced_stack: RunningStack, receiver: otlp.OtlpReceiver) -> None:
    import socket

    invented = [f"INVENTED{os.urandom(4).hex().upper()}" for _ in range(3)]
    for method in invented:
        with socket.create_connection(("127.0.0.1", traced_stack.port), timeout=10) as sock:
            sock.sendall(f"{method} /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert sock.recv(64).startswith(b"HTTP/1.1 405")

    def others(found: list[otlp.ReceivedSpan]) -> list[otlp.ReceivedSpan]:
        return [s for s in found if s.service == "wharf-gateway" and s.kind == otlp.SERVER
                and s.attributes.get("http.response.status_code") == 405]

    spans = others(receiver.wait_for(lambda found: len(others(found)) >= len(invented), timeout=10))
    assert len(spans) >= len(invented)
    named = {s.name for s in spans} | {str(s.attributes.get("http.request.method")) for s in spans}
    assert named.isdisjoint(invented), named
    assert {(s.name, s.attributes.get("http.request.method")) for s in spans} == {("HTTP", "_OTHER")}
