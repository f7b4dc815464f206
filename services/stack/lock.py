"""One runner per data directory: a second `make run` on the same data refuses at once.

Two runners on one data directory would start two Redis servers on one append-only file and
overwrite the files through which `wharf-gc` and `wharf-admin` find the running stack. The
lock is an ``flock`` on ``<data dir>/stack.lock``: the kernel drops it when the runner exits,
however it exits (a crash, SIGKILL), so a stale lock never needs cleaning up. The file says
who holds it, for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket

LOCK_FILE = "stack.lock"


def holder(data_dir: pathlib.Path) -> dict[str, object]:
    """What the runner holding ``data_dir`` recorded (its pid and URL), or {} when none did."""
    with contextlib.suppress(OSError, ValueError):
        found = json.loads((data_dir / LOCK_FILE).read_bytes() or b"{}")
        if isinstance(found, dict):
            return found
    return {}


class DataDirInUse(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, data_dir: pathlib.Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._path = data_dir / LOCK_FILE
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            raise DataDirInUse(f"{data_dir} is in use by another Wharf runner{holder}; stop it, or give this one "
                               "its own WHARF_DATA_DIR") from None

    def _holder(self) -> str:
        held = holder(self._path.parent)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return f" (PID {int(held['pid'])}, serving {str(held['url'])[:200]})"  # type: ignore[call-overload]
        return ""

    def record(self, url: str) -> None:
        """Writes who holds the lock, for a second runner's message."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "url": url}).encode(), 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def port_is_free(host: str, port: int) -> bool:
    """Whether the gateway can bind ``host:port`` (with SO_REUSEADDR, as it does: a port in
    TIME_WAIT is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
