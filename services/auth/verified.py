"""Recently verified logins, so that a storm of identical ones costs one password check.

Why: docker, containerd and CI runners send the account's password with every token request
(docker only keeps a refresh token when the registry offers one and the client asks), so a node
pool scaling up, or a hundred CI jobs of one robot starting together, is a burst of identical
logins. Each was a bcrypt check of a quarter of a second of CPU, and the throttle let a few run
at once and refused the rest ("too many logins at once") after a wait: 100 simultaneous logins
of one robot took 10 s, 7 were refused with 429 and 15 ran past the gateway's deadline (503).

Now the first of identical logins checks the password while the others wait for it
(:meth:`VerifiedLogins.flight`), and a right password is remembered for ``ttl`` seconds as an
HMAC under a key that lives only in this process's memory, never the password. A remembered
login is let in only while the backend's credential stamp (for the built-in accounts, the stored
bcrypt hash) is unchanged: a new password, or the account's removal, ends it at once. It still
answers TOOMANYREQUESTS while the account is locked, and it clears the failures counted since,
as a checked right password does (a user's typos between two logins do not stay counted). A
wrong password is never remembered, so every guess still costs a checked, counted attempt.

Only backends that give a stamp take part (``IdentityBackend.credential_stamp``); for any other
(LDAP, a third party's), every login asks the backend, as before.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator

# How long a verified password is remembered, and for how many accounts at most (least recently
# verified forgotten first).
TTL = 60.0
MAX_ACCOUNTS = 10_000
# How long an identical login waits for the one checking the password before checking it itself.
FLIGHT_WAIT = 10.0


@dataclasses.dataclass(frozen=True)
class Verified:
    mac: bytes
    backend: str
    stamp: str
    until: float


class VerifiedLogins:
    def __init__(self, ttl: float = TTL, max_accounts: int = MAX_ACCOUNTS) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl
        self._max = max_accounts
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, Verified] = collections.OrderedDict()
        self._flights: dict[tuple[str, bytes], threading.Event] = {}

    def mac(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, name.encode() + b"\0" + password.encode(), hashlib.sha256).digest()

    def find(self, name: str, mac: bytes) -> Verified | None:
        """The remembered login of ``name`` when ``mac`` is its password's and it has not expired."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None or entry.until < time.monotonic() or not hmac.compare_digest(entry.mac, mac):
            return None
        return entry

    def remember(self, name: str, mac: bytes, backend: str, stamp: str) -> None:
        with self._lock:
            self._entries[name] = Verified(mac, backend, stamp, time.monotonic() + self._ttl)
            self._entries.move_to_end(name)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def forget(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    @contextlib.contextmanager
    def flight(self, name: str, mac: bytes) -> Iterator[None]:
        """The first of identical logins in flight goes at once; the others wait until it has
        finished (up to FLIGHT_WAIT), then look for the login it remembered, and check the
        password themselves only when there is none (it was wrong, or the backend gives no stamp)."""
        key = (name, mac)
        with self._lock:
            running = self._flights.get(key)
            if running is None:
                done = self._flights[key] = threading.Event()
        if running is not None:
            running.wait(FLIGHT_WAIT)
            yield
            return
        try:
            yield
        finally:
            with self._lock:
                del self._flights[key]
            done.set()
