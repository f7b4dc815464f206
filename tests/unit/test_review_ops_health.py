"""The probes of services/common/health.py against a port where something other than Wharf
answers (hostile review of the operations surfaces): an answer, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from services.common.health import gateway_answers, grpc_serving, http_ok


@pytest.fixture()
def not_http() -> Iterator[int]:
    """A loopback port whose server greets every connection like an SSH server, then hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(10)

    def serve() -> None:
        try:
            while True:
                client, _ = server.accept()
                with client:
                    client.settimeout(2)
                    try:
                        client.recv(4096)
                        client.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                    except OSError:
                        pass
        except OSError:
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    server.close()


def test_the_probes_say_no_to_a_server_that_is_not_http(not_http: int) -> None:
    url = f"http://127.0.0.1:{not_http}/v2/"
    assert http_ok(url) is False
    assert gateway_answers(url, "instance") is False
    assert grpc_serving(f"127.0.0.1:{not_http}") is False


def test_wharf_healthcheck_fails_in_one_line(not_http: int) -> None:
    done = subprocess.run([sys.executable, "-m", "services.common.healthcheck", f"http://127.0.0.1:{not_http}"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture()
def trickling() -> Iterator[int]:
    """A loopback port whose server starts an HTTP answer, then sends a header line every 0.3 s
    for ever (each read of the probe within its socket timeout)."""
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def trickle(client: socket.socket) -> None:
        with client:
            try:
                client.recv(4096)
                client.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.is_set():
                    client.sendall(b"X-Slow: 1\r\n")
                    time.sleep(0.3)
            except OSError:
                return

    def serve() -> None:
        try:
            while True:
                client, _ = server.accept()
                threading.Thread(target=trickle, args=(client,), daemon=True).start()
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    yield int(server.getsockname()[1])
    stop.set()
    server.close()


@pytest.mark.parametrize("probe", ["http_ok", "gateway_answers"])
def test_a_trickling_server_cannot_hold_a_probe(trickling: int, probe: str) -> None:
    import time

    url = f"http://127.0.0.1:{trickling}/v2/"
    found: list[bool] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: found.append(http_ok(url) if probe == "http_ok"
                                                          else gateway_answers(url, "instance")), daemon=True)
    worker.start()
    worker.join(15)
    assert found == [False], f"the probe still waits after {time.monotonic() - started:.1f} s"
    assert time.monotonic() - started < 10
