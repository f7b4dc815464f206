"""SIGTERM and SIGINT as a flag that the main thread polls.

A Python signal handler runs in the main thread between two bytecodes, possibly in the
middle of whatever the main thread was doing, including another run of the same handler.
A handler that sets a threading.Event takes the Event's lock; a second signal arriving while
the first handler holds it deadlocks the process. That happened: `make run` gets SIGTERM
twice (the process group's, then make forwarding its own), and the stack hung until killed.
So the handler only sets an attribute, and the waiting side polls it.
"""

from __future__ import annotations

import signal
import time


class StopSignal:
    def __init__(self) -> None:
        self.received = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, *_: object) -> None:
        self.received = True

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> bool:
        """True once a signal came; False when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.received:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        # Stopping now: further SIGTERMs are ignored. Otherwise one arriving while the interpreter
        # exits (which resets Python's handlers to the default) would kill it mid-shutdown.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return True
