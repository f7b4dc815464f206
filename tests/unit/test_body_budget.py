"""request_input.BodyBudget: a worker's bytes for request-body pieces, first come first served,
and every BodyPieces gives back all it took however its body ends (a leak would stall uploads)."""

from __future__ import annotations

import io
import threading
import time

import pytest

from services.api import request_input
from services.api.request_input import BodyBudget, BodyPieces
from tests.security.test_body_reader import _FailsAfter


def _taking(budget: BodyBudget, size: int, stop: threading.Event, order: list[int]) -> threading.Thread:
    def take() -> None:
        if budget.take(size, stop):
            order.append(size)
    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def test_waiters_are_served_in_order_and_a_large_one_is_not_passed_over() -> None:
    budget = BodyBudget(100)
    never = threading.Event()
    assert budget.take(80, never) == 80
    order: list[int] = []
    large = _taking(budget, 50, never, order)
    time.sleep(0.1)
    small = _taking(budget, 10, never, order)  # 20 are free, but the large one came first
    small.join(0.3)
    assert order == [] and small.is_alive()
    # Room for the large one alone (20 + 30): it goes first, and the small one still waits behind
    # it. (Room for both at once would wake both, and their threads record in either order.)
    budget.give(30)
    large.join(2)
    small.join(0.3)
    assert order == [50] and small.is_alive()
    budget.give(50)
    small.join(2)
    assert order == [50, 10]
    budget.give(60)
    assert budget.take(100, never) == 100


def test_a_waiter_that_is_stopped_leaves_the_line() -> None:
    budget = BodyBudget(100)
    never, stop = threading.Event(), threading.Event()
    budget.take(100, never)
    order: list[int] = []
    stopped = _taking(budget, 90, stop, order)
    time.sleep(0.1)
    behind = _taking(budget, 10, never, order)
    stop.set()
    stopped.join(2)
    budget.give(20)
    behind.join(2)
    assert order == [10]
    budget.give(90)  # the first holder's rest: all of it is free again
    assert budget.take(100, never) == 100


class _Ready(io.BytesIO):
    """A body of known length whose pieces are always in the kernel (wire.SocketBody's shape)."""

    def wait_ready(self, size: int) -> int:
        return size


class _ReadyThenFails(_FailsAfter):
    def wait_ready(self, size: int) -> int:
        return size


@pytest.mark.parametrize("ending", ["read whole", "closed early", "client failed"])
def test_a_body_gives_back_all_it_took(ending: str) -> None:
    budget = request_input._BUDGET
    assert budget._free == budget.total
    if ending == "client failed":
        body = BodyPieces(_ReadyThenFails(3), None)  # type: ignore[arg-type]
        with pytest.raises(ConnectionResetError):
            list(body)
    else:
        body = BodyPieces(_Ready(b"y" * (3 << 20)), 3 << 20)
        if ending == "read whole":
            assert sum(len(piece) for piece in body) == 3 << 20
        else:
            next(body)
            time.sleep(0.2)  # the reader has read ahead
            assert budget._free < budget.total
    body.close()
    deadline = time.monotonic() + 3
    while budget._free != budget.total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert budget._free == budget.total


def test_a_body_that_fills_as_bytes_come_takes_no_share() -> None:
    """A chunked body's piece fills at the client's pace: were it counted, a few hundred silent
    clients would hold the whole budget and stall every other upload of the worker."""
    budget = request_input._BUDGET
    body = BodyPieces(io.BytesIO(b"z" * (2 << 20)), None)
    next(body)
    time.sleep(0.2)
    assert budget._free == budget.total
    body.close()
