"""The process tree of a server under test, read from /proc: names, peak RSS, CPU time, clean-up.

Wharf is several processes (stack supervisor, Redis, metadata, blob store, gunicorn master and
workers), so its memory and CPU are only meaningful per process and summed over the tree.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection

MB = 1_000_000
TICKS = os.sysconf("SC_CLK_TCK")
_MODULES = {"services.stack": "stack supervisor", "services.api": "gateway", "services.blobstore": "blob store",
            "services.metadata": "metadata", "services.auth": "auth"}


def stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [1] ppid, [11] utime, [12] stime, [19] start."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def descendants(root: int) -> dict[int, int]:
    """pid -> ppid of ``root`` and everything below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(stat_fields(int(entry))[1]), []).append(int(entry))
    found, frontier = {root: 0}, [root]
    while frontier:
        parent = frontier.pop()
        for pid in children.get(parent, []):
            found[pid] = parent
            frontier.append(pid)
    return found


def argv_of(pid: int) -> list[str]:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    return []


def process_kind(argv: list[str], parent_argv: list[str]) -> str:
    """'redis', 'blob store', 'gateway master', 'gateway worker', ... from a command line."""
    program = os.path.basename(argv[0]) if argv else "?"
    if "redis-server" in program:
        return "redis"
    if "docker-registry" in program:
        return "distribution"
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else program.replace("wharf-", "services.")
    kind = _MODULES.get(module.replace("services.gateway", "services.api"), program)
    if kind == "gateway":  # without setproctitle, gunicorn workers carry their master's command line
        return "gateway worker" if argv == parent_argv else "gateway master"
    return kind


class Sampler:
    """Peak VmRSS (MB) and CPU seconds per process under ``root`` while the ``with`` block runs.

    The tree is re-read every ``rescan`` samples (a /proc walk costs a few ms); RSS every sample.
    Sampling runs in a forked process, not a thread: a thread would take the GIL from the
    client being measured, and more so for a registry of many processes than for one.
    """

    def __init__(self, root: int, interval: float = 0.05, rescan: int = 10) -> None:
        self.root, self.interval, self.rescan = root, interval, rescan
        self.names: dict[int, str] = {}
        self.peak_mb: dict[str, float] = {}
        self._tree: dict[int, int] = {}
        self._ticks: dict[int, tuple[int, int]] = {}
        self._context = multiprocessing.get_context("fork")
        self._stop = self._context.Event()

    def _name(self, pid: int, ppid: int) -> str:
        if pid not in self.names:
            kind = process_kind(argv_of(pid), argv_of(ppid))
            same = sum(1 for name in self.names.values() if name.split(" #")[0] == kind)
            self.names[pid] = f"{kind} #{same + 1}" if kind == "gateway worker" or same else kind
        return self.names[pid]

    def sample(self, rescan: bool = True) -> None:
        if rescan or not self._tree:
            self._tree = descendants(self.root)
        for pid, ppid in self._tree.items():
            try:
                fields = stat_fields(pid)
                with open(f"/proc/{pid}/status") as handle:
                    rss_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
            except (OSError, StopIteration, IndexError):
                continue  # exited since the scan, or a zombie
            name = self._name(pid, ppid)
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), rss_kb * 1024 / MB)
            ticks = int(fields[11]) + int(fields[12])
            self._ticks[pid] = (self._ticks.get(pid, (ticks, ticks))[0], ticks)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each process used between the first and the last sample."""
        return {self.names[pid]: (last - first) / TICKS for pid, (first, last) in self._ticks.items()}

    def _loop(self, results: Connection) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            self.sample(rescan=count % self.rescan == 0)
        results.send((self.names, self.peak_mb, self._ticks, self._tree))
        results.close()

    def __enter__(self) -> Sampler:
        self.sample()
        self._results, results = self._context.Pipe(duplex=False)
        self._process = self._context.Process(target=self._loop, args=(results,), daemon=True,
                                              name="rss-sampler")
        self._process.start()
        results.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.names, self.peak_mb, self._ticks, self._tree = self._results.recv()
        self._process.join()
        self.sample()


def snapshot(root: int) -> dict[int, str]:
    """pid -> start time of ``root`` and its descendants, to kill exactly those later."""
    started: dict[int, str] = {}
    for pid in descendants(root):
        with contextlib.suppress(OSError, IndexError):
            started[pid] = stat_fields(pid)[19]
    return started


def kill_leftovers(started: dict[int, str]) -> None:
    """SIGKILLs the processes of a snapshot that outlived a graceful stop (same pid and start time)."""
    for pid, start in started.items():
        with contextlib.suppress(OSError, IndexError):
            if stat_fields(pid)[19] == start:
                os.kill(pid, signal.SIGKILL)
