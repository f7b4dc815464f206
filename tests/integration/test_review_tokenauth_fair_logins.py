"""Password logins take turns between client addresses (hostile review of token auth, 2026-12-03).

Measured on a stack at bcrypt's real cost: one client sent 120 logins of made-up names at once
(no account needed, each name new, so the login throttle never applied); a real user's login
from another address behind them waited out the gateway's deadline (503 after 10 s). The login
threads took calls first come, first served; now each address queues on its own
(services/auth/fair.py).
"""

from __future__ import annotations

import base64
import http.client
import threading
import time
from collections.abc import Callable
from concurrent import futures

import pytest
import requests

from tests.support.stack import RunningStack

ADMIN_PASSWORD = "fair-admin-secret-1"
FLOOD = 30
WORKERS = 2


@pytest.fixture(scope="module")
def small_pool(start_stack: Callable[..., RunningStack]) -> RunningStack:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                             "WHARF_BCRYPT_ROUNDS": "10", "WHARF_AUTH_WORKERS": str(WORKERS)})
    stack.admin(ADMIN_PASSWORD, "user", "add", "dev", "--password-stdin", stdin="dev-secret-123\n")
    return stack


def _login_from(stack: RunningStack, source: str, name: str, password: str) -> int:
    """A login sent from ``source`` (another loopback address: another client to the gateway)."""
    host, port = stack.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60, source_address=(source, 0))
    try:
        credentials = base64.b64encode(f"{name}:{password}".encode()).decode()
        connection.request("GET", "/token?service=wharf", headers={"Authorization": f"Basic {credentials}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_flood_of_logins_from_one_address_does_not_queue_another_addresses_login(small_pool: RunningStack) -> None:
    done: list[float] = []
    lock = threading.Lock()

    def flood(number: int) -> int:
        status = requests.get(f"{small_pool.url}/token", params={"service": "wharf"},
                              auth=(f"nobody{number}", "some-password"), timeout=60).status_code
        with lock:
            done.append(time.monotonic())
        return status

    with futures.ThreadPoolExecutor(FLOOD) as pool:
        flooding = [pool.submit(flood, n) for n in range(FLOOD)]
        time.sleep(0.5)  # the flood is queued in the auth service
        assert _login_from(small_pool, "127.0.0.2", "dev", "dev-secret-123") == 200
        answered = time.monotonic()
        # (503: on a loaded machine the gateway may give up on the flood's last ones)
        assert {f.result() for f in flooding} <= {401, 503}
    ahead = sum(1 for at in done if at < answered)
    # First come, first served, the login waited for (nearly) the whole flood; taking turns, it
    # waits for about one check per thread.
    assert ahead <= FLOOD // 2, f"{ahead} of {FLOOD} flooding logins were answered first"
