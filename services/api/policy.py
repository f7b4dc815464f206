"""The governance rules as the gateway sees them: fetched from the metadata service, refreshed in
the background, never on a request's path once known.

The gateway needs the rules to decide what to ask the metadata service at all: an upload to a
namespace with a quota holds its bytes as they arrive (services/api/quotas.py); without a quota it
costs nothing. The metadata service enforces every rule again in its write scripts, so a gateway a
refresh behind lets through nothing the rules forbid: at worst an upload streams its bytes before
the commit's link refuses them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from services.common.errors import RegistryError
from services.common.governance import Policy, PolicyError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb

log = logging.getLogger("wharf.gateway.policy")
REFRESH_SECONDS = 2.0
FIRST_RETRY_SECONDS = 0.1  # until the rules are first known: retried this soon, doubling up to the refresh


class PolicyCache:
    """``current()``: the last rules fetched. The first call in a process fetches them (with the
    call's deadline); after that a background thread refreshes them every ``every`` seconds.

    Until a fetch has succeeded there are no rules (``loaded`` is false): nothing is limited and no
    quota is held (the metadata service still enforces its rules), so a process whose first fetch
    failed retries after ``FIRST_RETRY_SECONDS``, doubling up to ``every``, rather than going a whole
    refresh without its rate limits."""

    def __init__(self, fetch: Callable[[], gpb.Policy], every: float = REFRESH_SECONDS) -> None:
        self._fetch = fetch
        self._every = every
        self._policy = Policy()
        self._version = ""
        self.loaded = False
        self._pid = 0
        self._lock = threading.Lock()

    def current(self) -> Policy:
        if self._pid != os.getpid():
            self._start()
        return self._policy

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._refresh()
            self._pid = os.getpid()
        threading.Thread(target=self._forever, daemon=True, name="policy-refresh").start()

    def _forever(self) -> None:
        retry = FIRST_RETRY_SECONDS
        while True:
            if self.loaded:
                time.sleep(self._every)
            else:
                time.sleep(min(retry, self._every))
                retry *= 2
            self._refresh()

    def _refresh(self) -> None:
        try:
            answer = self._fetch()
        except RegistryError as err:
            log.warning("governance rules not refreshed", extra={"fields": {"error": err.message[:200]}})
            return
        key = f"{answer.version}:{len(answer.document)}:{hash(answer.document)}"
        if key == self._version:
            return
        try:
            self._policy = Policy.from_json(answer.document)
            self._version = key
            self.loaded = True
        except (PolicyError, ValueError) as exc:
            log.error("governance rules unreadable", extra={"fields": {"error": str(exc)[:200]}})
