"""A burst of SIGTERMs (make forwards one after the process group got one) must stop, never hang."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROGRAM = ("from services.common.signals import StopSignal\n"
           "stop = StopSignal()\n"
           "print('ready', flush=True)\n"
           "assert stop.wait()\n"
           "print('stopped', flush=True)\n")


def test_repeated_signals_stop_the_waiter() -> None:
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", PROGRAM], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for _ in range(50):
            os.kill(child.pid, signal.SIGTERM)
        assert child.wait(10) == 0
        assert child.stdout.read().strip() == "stopped"


def test_wait_times_out_without_a_signal() -> None:
    from services.common.signals import StopSignal

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert StopSignal().wait(timeout=0.05) is False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
