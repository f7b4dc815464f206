"""Waiting for something another process does: polled, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> bool:
    """Whether ``check`` held within ``timeout`` seconds (asked once more at the end)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if check():
            return True
        time.sleep(every)
    return check()
