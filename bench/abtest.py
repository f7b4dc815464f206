"""What the A/B benchmarks share (auth_bench: auth off/on; metrics_bench: metrics off/on): two
stacks side by side, the modes alternating in ABBA order round after round (the machine is
noisy: 2 cores, other work may run), medians, and the variant's overhead against the base."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common import Server, cell, print_grid, wharf

Runs = dict[str, list[dict[str, float]]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_stacks(stacks: ExitStack, tmp: Path, modes: Mapping[str, Mapping[str, str]], what: str) -> dict[str, Server]:
    """One Wharf stack per mode (its environment), each in ``tmp/<mode>``, stopped with ``stacks``."""
    servers = {}
    for mode, env in modes.items():
        (tmp / mode).mkdir()
        servers[mode] = stacks.enter_context(wharf(tmp / mode, env, name=f"wharf {what}={mode}"))
    return servers


def alternate(modes: tuple[str, str], rounds: int, run: Callable[[str], dict[str, float]],
              describe: Callable[[dict[str, float]], str]) -> Runs:
    """``run(mode)`` for each mode, ``rounds`` times, in ABBA order."""
    runs: Runs = {mode: [] for mode in modes}
    for number in range(rounds):
        for mode in (modes if number % 2 == 0 else modes[::-1]):
            runs[mode].append(run(mode))
            log(f"round {number + 1} {mode}: {describe(runs[mode][-1])}")
    return runs


def overhead(runs: Runs, base: str, variant: str, key: str, higher_is_better: bool = True) -> dict[str, Any]:
    """Medians of ``key`` per mode and the variant's overhead: how much worse it is, as a fraction
    of the base (fewer per second, or more per request), per round and of the medians."""
    def cost(b: float, v: float) -> float:
        return (b - v) / b if higher_is_better else (v - b) / b

    medians = {mode: statistics.median(run[key] for run in runs[mode]) for mode in (base, variant)}
    per_round = [cost(b[key], v[key]) for b, v in zip(runs[base], runs[variant], strict=True)]
    return {"median": medians, "overhead": cost(medians[base], medians[variant]), "per_round": per_round}


def print_overheads(runs: Runs, base: str, variant: str, rows: list[tuple[str, str, bool, int, float | None]]) -> None:
    """One table: per figure (label, key, higher is better, digits, target overhead or None), each
    mode's rounds and median, then the overhead row with its verdict."""
    rounds = len(runs[base])
    lines = []
    for label, key, better_high, digits, target in rows:
        found = overhead(runs, base, variant, key, better_high)
        for mode in (base, variant):
            lines.append([f"{mode} {label}", *[cell(run[key], digits) for run in runs[mode]],
                          cell(found["median"][mode], digits), ""])
        verdict = "" if target is None else f"< {target:.0%} {'ok' if found['overhead'] < target else 'MISS'}"
        lines.append([f"  overhead % ({label})", *[cell(100 * o) for o in found["per_round"]],
                      cell(100 * found["overhead"]), verdict])
    print_grid(["figure", *[f"round {n + 1}" for n in range(rounds)], "median", "target"], lines)


def report(runs: Runs, base: str, variant: str, rows: list[tuple[str, str, bool, int, float | None]],
           as_json: bool, heading: str, load_note: str) -> None:
    """The A/B result: JSON (every run, each figure's overhead, the load) or the heading and the table."""
    if as_json:
        summary = {key: overhead(runs, base, variant, key, high) for _, key, high, _, _ in rows}
        print(json.dumps({"runs": runs, "summary": summary, "load": load_note}, indent=2))
        return
    print(f"\n{heading};\n{load_note}\n")
    print_overheads(runs, base, variant, rows)
