"""An upstream registry that answers every request with a blob's head at once and its body a
byte at a time: the slow or hostile upstream a mirror must not let hold it."""

from __future__ import annotations

import socket
import threading
import time


class TrickleServer:
    """Answers any request ``200`` with ``Content-Length: size`` and then one byte every
    ``interval`` seconds, on a loopback port, until closed."""

    def __init__(self, size: int = 1024 * 1024, interval: float = 0.2) -> None:
        self.size, self.interval = size, interval
        self.requests = 0
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client: socket.socket) -> None:
        with client:
            try:
                client.recv(65536)
                self.requests += 1
                client.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                               f"Content-Length: {self.size}\r\n\r\n".encode())
                for _ in range(self.size):
                    if self._closed.wait(self.interval):
                        return
                    client.sendall(b"x")
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        time.sleep(self.interval)
