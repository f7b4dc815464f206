"""Reading a running stack's Prometheus figures: where the runner says they are
(``$WHARF_DATA_DIR/metrics.json``), each service's /metrics, and its samples."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support.stack import RunningStack

Figures = dict[str, list[Sample]]  # service name (as in metrics.json) -> its samples


def exposition(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def samples_of(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there is none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def exact(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample of ``name`` with exactly ``labels`` (None when it is not exported)."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, f"{name}{labels} exported {len(found)} times"
    return found[0] if found else None


def addresses(stack: RunningStack, timeout: float = 10.0) -> dict[str, str]:
    """metrics.json of the stack's data directory. The runner writes it once the gateway
    answers, so it may appear a moment after the registry does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dict(json.loads((stack.data_dir / "metrics.json").read_text()))
        except (OSError, ValueError):
            assert time.monotonic() < deadline, f"no metrics.json in {stack.data_dir}\n{stack.log_tail()}"
            time.sleep(0.05)


def scrape(stack: RunningStack, ready: Callable[[Figures], bool] = lambda _: True,
           timeout: float = 5.0) -> tuple[Figures, dict[str, str]]:
    """Every service's samples and exposition text, once ``ready`` holds or ``timeout`` has
    passed (a request is counted just after its answer has left, so a client can be a moment
    ahead of the figures)."""
    deadline = time.monotonic() + timeout
    while True:
        texts = {name: exposition(address) for name, address in addresses(stack).items()}
        figures = {name: samples_of(text) for name, text in texts.items()}
        if ready(figures) or time.monotonic() >= deadline:
            return figures, texts
        time.sleep(0.1)
