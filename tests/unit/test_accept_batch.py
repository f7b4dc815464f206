"""The gateway's gevent server accepts connections in batches, whatever gunicorn asks for.

gunicorn sets ``max_accept = 1`` when it runs several workers; a worker whose loop turns were
slow (500 clients connecting at once) then left new connections in the kernel's listen queue
for seconds (services/api/worker.py, ``_BatchAcceptingServer``).
"""

from __future__ import annotations

import inspect
import socket
import threading
import time

import gevent
import pytest
from gunicorn.workers.ggevent import GeventWorker

from services.api.worker import ACCEPT_BATCH, _BatchAcceptingServer, listen_queue

CLIENTS = 100
TURN = 0.02  # how long each turn of the loop is kept busy by other work
BUSY = 10  # greenlets sharing that work


def test_gunicorn_still_builds_its_servers_by_that_name_and_sets_one() -> None:
    """What the worker's patch replaces: if gunicorn stops building ``StreamServer`` in
    ``GeventWorker.run`` (or stops setting 1), this patch must be revisited."""
    source = inspect.getsource(GeventWorker.run)
    assert "StreamServer(" in source
    assert "max_accept = 1" in source


@pytest.mark.parametrize(("waiting", "workers", "share"), [(40, 2, 20), (41, 2, 21), (40, 1, 40),
                                                           (200, 2, ACCEPT_BATCH), (0, 2, 1)])
def test_a_worker_takes_its_share_of_what_waits(waiting: int, workers: int, share: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's 1 is ignored; a worker takes the waiting connections over the workers, so a
    burst of keep-alive connections does not all land on the first worker to wake."""
    monkeypatch.setattr(_BatchAcceptingServer, "workers", workers)
    server = _BatchAcceptingServer(("127.0.0.1", 0), handle=lambda sock, addr: None, backlog=512)
    server.init_socket()
    clients = [socket.create_connection(server.address) for _ in range(waiting)]
    try:
        server.max_accept = 1  # what gunicorn sets
        assert listen_queue(server.socket) == waiting
        assert server.max_accept == share
    finally:
        server.close()
        for sock in clients:
            sock.close()


def test_a_burst_of_connections_is_accepted_in_few_turns_of_a_busy_loop() -> None:
    """With every turn of the loop taking TURN seconds of other work, one accept per turn would
    need CLIENTS * TURN = 2 s for the burst; in batches it takes a few turns."""
    accepted: list[float] = []
    held: list[socket.socket] = []

    def handle(sock: socket.socket, addr: object) -> None:
        accepted.append(time.monotonic())
        held.append(sock)

    server = _BatchAcceptingServer(("127.0.0.1", 0), handle=handle)
    server.max_accept = 1  # what gunicorn sets
    server.start()
    port = server.address[1]
    stop = False

    def busy() -> None:
        """One of BUSY greenlets that each hold the loop for a share of every turn, as a busy
        worker's requests do; each waits on a timer, so the loop polls between turns."""
        while not stop:
            time.sleep(TURN / BUSY)  # not gevent's: holds the loop
            gevent.sleep(0.001)

    clients: list[socket.socket] = []
    connected: list[float] = []

    def connect() -> None:
        for _ in range(CLIENTS):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        connected.append(time.monotonic())

    burners = [gevent.spawn(busy) for _ in range(BUSY)]
    try:
        gevent.sleep(0.1)
        # Timed from the burst's last handshake (the kernel completes them; the connections then
        # wait in the listen queue) to the last connection's handler.
        connector = threading.Thread(target=connect)
        connector.start()
        deadline = time.monotonic() + 30
        while (connector.is_alive() or len(accepted) < CLIENTS) and time.monotonic() < deadline:
            gevent.sleep(0.001)
        assert connected and len(accepted) == CLIENTS
        took = max(0.0, accepted[-1] - connected[0])
        if took >= CLIENTS * TURN / 2:
            pytest.fail(f"{CLIENTS} connections took {took:.2f} s to be accepted (one per turn: "
                        f"{CLIENTS * TURN:.1f} s)")
    finally:
        stop = True
        gevent.joinall(burners)
        server.stop()
        for sock in clients + held:
            sock.close()
