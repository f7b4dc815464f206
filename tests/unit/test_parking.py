"""The parking lot's choice of the connection that gives its slot to a new one (services/api/parking.py)."""

from __future__ import annotations

import socket

import gevent.lock
from gevent import socket as green_socket

from services.api.parking import ParkingLot, keep


def _parked(lot: ParkingLot, pool: gevent.lock.BoundedSemaphore, served: bool) -> socket.socket:
    """Parks one end of a new socket pair in ``lot`` (taking a slot of ``pool``); returns the other."""
    ours, theirs = green_socket.socketpair()
    assert pool.acquire(blocking=False)
    lot.park(keep(ours), 60, lambda sock: None, pool, served)
    return theirs


def _closed(peer: socket.socket) -> bool:
    peer.settimeout(0.5)
    try:
        return peer.recv(1) == b""
    except TimeoutError:
        return False


def test_connections_that_had_an_answer_give_way_first_oldest_first() -> None:
    closed: list[None] = []
    lot = ParkingLot(lambda: closed.append(None))
    pool = gevent.lock.BoundedSemaphore(3)
    fresh = _parked(lot, pool, served=False)  # parked first, but before its first request
    first, second = _parked(lot, pool, served=True), _parked(lot, pool, served=True)
    assert pool.locked() and len(lot) == 3

    assert lot.close_oldest()
    assert not pool.locked() and len(lot) == 2 and len(closed) == 1
    assert _closed(first) and not _closed(second) and not _closed(fresh)

    assert lot.close_oldest() and _closed(second) and not _closed(fresh)
    assert lot.close_oldest() and _closed(fresh)  # the last left
    assert not lot.close_oldest() and len(lot) == 0 and len(closed) == 3
    for peer in (fresh, first, second):
        peer.close()
