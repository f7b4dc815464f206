"""A thread pool that takes turns between callers: password logins, one lane per client address.

Why: every login with a password costs a bcrypt check (a quarter of a second at cost 12), and the
login threads took calls first come, first served. One client with no account at all, sending 120
logins of made-up names at once (each a new name, so no throttle applied), filled the queue: a
real user's login behind them waited out the gateway's 10 s deadline (503), and the next one took
4.4 s. Here each lane (a client address, IPv6 per /64, as the login throttle counts them) queues on
its own, and a free thread takes the next call of the lane after the last one served; and a lane
on half the threads or more gets another only while no other lane waits (bcrypt is CPU: a check
shares the cores with every check running, so a flood on every thread made another caller's one
check as slow as all of them together). A flood from one address waits behind itself; any other
caller gets the next free thread, ahead of the flood. Nothing is refused that was not before; a
call whose caller gave up while it queued (its future cancelled) is skipped, as ThreadPoolExecutor
does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class FairPool:
    def __init__(self, workers: int, name: str) -> None:
        self._lanes: collections.OrderedDict[str, collections.deque[_Item]] = collections.OrderedDict()
        self._running: collections.Counter[str] = collections.Counter()
        self._per_lane = max(1, workers // 2)
        self._ready = threading.Condition()
        self._closed = False
        for number in range(workers):
            threading.Thread(target=self._work, name=f"{name}_{number}", daemon=True).start()

    def lane(self, key: str) -> concurrent.futures.Executor:
        """An executor whose calls queue in ``key``'s lane (for ``loop.run_in_executor``)."""
        return _Lane(self, key)

    def submit_to(self, key: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._lanes.setdefault(key, collections.deque()).append((future, fn, args, kwargs))
            self._ready.notify()
        return future

    def _next(self) -> tuple[str, _Item] | None:
        """The next call: from the first lane in line that runs on fewer than its share of threads,
        else (no other lane waiting) from the first lane in line: a thread is never left idle while
        calls wait, so one busy address alone still has every thread."""
        with self._ready:
            while True:
                key = next((k for k in self._lanes if self._running[k] < self._per_lane), None)
                if key is None:
                    key = next(iter(self._lanes), None)
                if key is not None:
                    queue = self._lanes.pop(key)
                    item = queue.popleft()
                    if queue:
                        self._lanes[key] = queue  # to the back of the line: every other lane goes first
                    self._running[key] += 1
                    return key, item
                if self._closed and not self._lanes:
                    return None
                self._ready.wait()

    def _done(self, key: str) -> None:
        with self._ready:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
            self._ready.notify_all()  # the lane may have calls waiting for a thread it may now use

    def _work(self) -> None:
        while (taken := self._next()) is not None:
            key, (future, fn, args, kwargs) = taken
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # as ThreadPoolExecutor: the caller gets it
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            finally:
                self._done(key)

    def shutdown(self, cancel_futures: bool = False) -> None:
        with self._ready:
            self._closed = True
            if cancel_futures:
                for queue in self._lanes.values():
                    for future, *_ in queue:
                        future.cancel()
                self._lanes.clear()
            self._ready.notify_all()


class _Lane(concurrent.futures.Executor):
    def __init__(self, pool: FairPool, key: str) -> None:
        self._pool = pool
        self._key = key

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self._pool.submit_to(self._key, fn, args, kwargs)
