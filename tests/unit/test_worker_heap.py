"""The gateway worker gives freed heap back once a burst of transfers has ended (worker.notify)."""

from __future__ import annotations

import os
import types

import pytest

from services.api import worker
from services.api.http_metrics import HttpMetrics


def _worker(monkeypatch: pytest.MonkeyPatch, trims: list[int]) -> worker.GatewayWorker:
    monkeypatch.setattr(worker, "_TRIM", lambda pad: trims.append(pad) or 1)
    one = worker.GatewayWorker.__new__(worker.GatewayWorker)
    one.tmp = types.SimpleNamespace(notify=lambda: None)  # gunicorn's heartbeat file
    one.ppid = os.getppid()
    one.__dict__["_figures"] = HttpMetrics()
    return one


def test_the_heap_is_trimmed_once_when_the_transfers_end(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    one = _worker(monkeypatch, trims)
    one.notify()
    assert trims == []  # nothing ran: nothing to give back
    one._figures.transfers["upload"] = 250
    one.notify()
    one._figures.transfers["upload"] = 1
    one.notify()
    assert trims == []  # never under transfers still running
    one._figures.transfers["upload"] = 0
    one.notify()
    one.notify()
    assert trims == [0]
    one._figures.transfers["download"] = 3
    one.notify()
    one._figures.transfers["download"] = 0
    one.notify()
    assert trims == [0, 0]


def test_glibcs_trim_is_found_here() -> None:
    assert worker._malloc_trim() is not None  # these machines run glibc; elsewhere it is None
