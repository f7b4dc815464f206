"""The auth service's login pool takes turns between client addresses (services/auth/fair.py)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

from services.auth.fair import FairPool


def _wait_until_running(future: concurrent.futures.Future[Any]) -> None:
    deadline = time.monotonic() + 10
    while not future.running():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_lane_with_a_backlog_waits_behind_a_newcomer() -> None:
    pool = FairPool(1, "test-fair")
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = pool.lane("flood").submit(gate.wait, 10)
        _wait_until_running(blocker)
        flood = [pool.lane("flood").submit(order.append, f"flood{n}") for n in range(5)]
        newcomer = pool.lane("user").submit(order.append, "user")
        gate.set()
        waited: list[concurrent.futures.Future[Any]] = [blocker, *flood, newcomer]
        for future in waited:
            future.result(timeout=10)
    finally:
        pool.shutdown()
    assert order.index("user") <= 1, order  # first come, first served put it sixth


def test_a_call_whose_caller_gave_up_is_skipped_and_errors_reach_the_caller() -> None:
    pool = FairPool(1, "test-fair")
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = pool.lane("a").submit(gate.wait, 10)
        _wait_until_running(blocker)
        abandoned = pool.lane("a").submit(ran.append, "abandoned")
        assert abandoned.cancel()
        failing = pool.lane("b").submit(int, "not a number")
        gate.set()
        blocker.result(timeout=10)
        assert isinstance(failing.exception(timeout=10), ValueError)
    finally:
        pool.shutdown(cancel_futures=True)
    assert ran == []


def test_a_lone_lane_has_every_thread_and_a_newcomer_takes_the_next_free_one() -> None:
    """No thread idles while calls wait (one busy address alone keeps the whole pool); once another
    address waits, the next free thread is its, ahead of the flood's backlog."""
    pool = FairPool(4, "test-fair")
    gates = [threading.Event() for _ in range(6)]
    order: list[str] = []
    try:
        flood = [pool.lane("flood").submit(lambda n=n: (gates[n].wait(10), order.append(f"flood{n}")))
                 for n in range(6)]
        for future in flood[:4]:
            _wait_until_running(future)
        time.sleep(0.2)
        assert sum(1 for future in flood if future.running()) == 4
        newcomer = pool.lane("user").submit(order.append, "user")
        gates[0].set()  # one thread frees: the newcomer's, not the flood's fifth call
        assert newcomer.result(timeout=5) is None
        for gate in gates:
            gate.set()
        assert all(future.result(timeout=10) for future in flood)
    finally:
        for gate in gates:
            gate.set()
        pool.shutdown()
    assert order.index("user") == 1, order
