"""The gateway's ``/metrics``: the figures of all its worker processes in one scrape.

The gateway is several processes (gunicorn's master and its workers), and a scrape must see
them as one. prometheus-client's multiprocess mode would do it by writing every increment to
a memory-mapped file, which measured here 1.4 us per counter increment and 2.5 us per
histogram observation (0.5 and 0.9 us in memory): several percent of a cached manifest GET.
So each worker keeps its figures in memory, as a single process would, and answers a
snapshot of them on a Unix socket in a private directory; the master serves ``WHARF_METRICS_ADDR``
and, per scrape, reads every worker's snapshot and adds them up. Counters, histograms and
gauges are summed (connections, transfers, memory and CPU add up across processes), except
the gauges that are not amounts: the earliest start time, the lowest file limit.

A worker that exits hands its counters over so that the sums never go backwards (which
Prometheus would read as a reset): it writes its last exposition at exit, and the master,
told that it exited, keeps its counters and histograms from that file (or, after a crash,
from the last scrape).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from services.common.settings import split_address

log = logging.getLogger("wharf.gateway.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Gauges that are not amounts: across processes, the lowest value is the gateway's (every
# process says build info 1: the gateway too).
_LOWEST = frozenset({"process_start_time_seconds", "process_max_fds", "wharf_build_info"})
# How long the master waits for one worker's figures (a worker busy past this is left out once).
WORKER_TIMEOUT = 2.0
_Key = tuple[str, tuple[tuple[str, str], ...]]


def snapshot(registry: CollectorRegistry) -> bytes:
    """A registry's families as JSON ([name, type, help, [[sample, labels, value], ...]], ...): what a
    worker hands the master. JSON, not the text format: the master decodes it in C, where
    prometheus-client's text parser took it 25 ms per scrape of two workers."""
    return json.dumps([[family.name, family.type, family.documentation,
                        [[sample.name, sample.labels, sample.value] for sample in family.samples]]
                       for family in registry.collect()]).encode()


class Sums:
    """Families added up sample by sample: name -> (type, help, {(sample, labels): value})."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, dict[_Key, float]]] = {}

    def add(self, raw: bytes | str, kinds: Iterable[str] = ("counter", "gauge", "histogram", "summary", "unknown")
            ) -> None:
        """Adds a :func:`snapshot` (ValueError when it is not one)."""
        wanted = set(kinds)
        for name, kind, doc, samples_of in json.loads(raw):
            if kind not in wanted:
                continue
            for sample, labels, value in samples_of:
                self._put(name, kind, doc, (sample, tuple(sorted(labels.items()))), value)

    def _put(self, name: str, kind: str, doc: str, key: _Key, value: float) -> None:
        """Adds one sample: summed, or for the gauges that are not amounts, the lowest kept."""
        _, _, samples = self.families.setdefault(name, (kind, doc, {}))
        if key not in samples:
            samples[key] = value
        elif name in _LOWEST:
            samples[key] = min(samples[key], value)
        else:
            samples[key] += value

    def merged_with(self, *others: Sums) -> Sums:
        total = Sums()
        for sums in (self, *others):
            for name, (kind, doc, samples) in sums.families.items():
                for key, value in samples.items():
                    total._put(name, kind, doc, key, value)
        return total

    def metrics(self) -> Iterator[Metric]:
        for name, (kind, doc, samples) in sorted(self.families.items()):
            metric = Metric(name, doc, kind)
            metric.samples = [Sample(sample, dict(labels), value) for (sample, labels), value in samples.items()]
            yield metric


class _Merged(Collector):
    def __init__(self, sums: Sums) -> None:
        self._sums = sums

    def collect(self) -> Iterator[Metric]:
        return self._sums.metrics()


def render(sums: Sums) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(sums))
    return generate_latest(registry)


class MetricsHub:
    """Both halves: the master's (:meth:`start`, :meth:`worker_exited`, :meth:`exposition`) and
    each worker's (:meth:`serve_worker`, :meth:`worker_exiting`). Built in the master before
    the workers fork, so they share its private directory."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._directory = tempfile.mkdtemp(prefix="wharf-gateway-metrics-")
        self._server: Any = None
        self._master = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._master)
        self._last: dict[int, bytes] = {}  # pid -> its last snapshot the master read
        self._retired = Sums()  # what exited workers counted

    # -- the master ----------------------------------------------------------------------------

    def start(self) -> None:
        """Serves the aggregate at the address (in the master, once it is ready)."""
        from gevent.pywsgi import WSGIServer

        host, port = split_address(self._address)
        self._server = WSGIServer((host, port), self._wsgi, log=None, error_log=log)
        self._server.start()

    def forget_in_child(self) -> None:
        """A forked worker inherits the master's listening socket: it must not answer on it."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.close()
            self._server = None

    def worker_exited(self, pid: int) -> None:
        final = self._path(pid, "final")
        try:
            with open(final, "rb") as handle:
                text = handle.read()
        except OSError:
            text = self._last.get(pid, b"[]")
        with contextlib.suppress(ValueError):
            self._retired.add(text, kinds=("counter", "histogram"))
        self._last.pop(pid, None)
        for leftover in (final, self._path(pid, "sock")):
            with contextlib.suppress(OSError):
                os.unlink(leftover)

    def close(self) -> None:
        self.forget_in_child()
        shutil.rmtree(self._directory, ignore_errors=True)

    def exposition(self) -> bytes:
        live = Sums()
        live.add(snapshot(self._master))
        for path in glob.glob(os.path.join(self._directory, "*.sock")):
            pid = int(os.path.basename(path).split(".")[0])
            try:
                text = _read_socket(path)
                live.add(text)
            except (OSError, ValueError) as exc:
                log.debug("a worker's figures were not read", extra={"fields": {"pid": pid, "error": str(exc)}})
                continue
            self._last[pid] = text
        return render(live.merged_with(self._retired))

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"the gateway's figures are at /metrics\n"]
        body = self.exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else []

    # -- a worker --------------------------------------------------------------------------------

    def serve_worker(self, registry: CollectorRegistry) -> None:
        """Answers the master with this worker's exposition (in the worker, on its hub)."""
        from gevent.server import StreamServer

        path = self._path(os.getpid(), "sock")
        with contextlib.suppress(OSError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)

        def answer(conn: socket.socket, _: Any) -> None:
            with contextlib.closing(conn):
                conn.sendall(snapshot(registry))

        StreamServer(listener, answer).start()

    def worker_exiting(self, registry: CollectorRegistry) -> None:
        """Leaves this worker's last figures for the master (written whole, then renamed)."""
        final = self._path(os.getpid(), "final")
        with contextlib.suppress(OSError):
            with open(final + ".tmp", "wb") as handle:
                handle.write(snapshot(registry))
            os.replace(final + ".tmp", final)

    def _path(self, pid: int, kind: str) -> str:
        return os.path.join(self._directory, f"{pid}.{kind}")


def _read_socket(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WORKER_TIMEOUT)
        sock.connect(path)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)
