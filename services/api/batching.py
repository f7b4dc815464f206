"""Records kept in memory and sent in batches by a background thread, never on a request's path.

Used for what the gateway tells the metadata service without waiting for an answer: the pulls of
mirrored manifests (eviction) and pull events. A record is one dictionary store under a lock;
a batch that cannot be sent is logged and dropped (both are best effort by design: a pull changes
nothing). The thread is started lazily in the process that records, since gunicorn forks its
workers after the app is built.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from services.common.errors import RegistryError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
log = logging.getLogger("wharf.gateway")


class Batcher(Generic[K, V]):
    """Keeps up to ``limit`` records (a later record of the same key replaces the earlier) and
    hands them to ``send`` every ``every`` seconds."""

    def __init__(self, name: str, send: Callable[[dict[K, V]], None], every: float, limit: int,
                 chunk: int = 5000) -> None:
        self._name = name
        self._chunk = chunk  # records per call (the metadata service takes at most 5000 per call)
        self._send = send
        self._every = every
        self._limit = limit
        self._lock = threading.Lock()
        self._records: dict[K, V] = {}
        self._pid = 0

    def add(self, key: K, value: V) -> None:
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            if len(self._records) < self._limit or key in self._records:
                self._records[key] = value

    def add_first(self, key: K, value: V) -> None:
        """``add``, but an earlier record of the same key stays."""
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            if key not in self._records and len(self._records) < self._limit:
                self._records[key] = value

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._records.clear()  # a parent's records are the parent's to send
        threading.Thread(target=self._forever, daemon=True, name=self._name).start()

    def _forever(self) -> None:
        while True:
            time.sleep(self._every)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._records = self._records, {}
        items = list(batch.items())
        for start in range(0, len(items), self._chunk):
            part = dict(items[start:start + self._chunk])
            try:
                self._send(part)
            except RegistryError as err:
                log.warning("a batch was not recorded", extra={"fields": {"what": self._name, "records": len(part),
                                                                          "error": err.message[:200]}})
