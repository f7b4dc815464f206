"""The gateway's pull events: one per client and thing per flush, built off the request's path."""

from __future__ import annotations

from typing import Any

from services.api.events import PullEvents


class Recorded:
    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def record_pull_events(self, events: list[Any]) -> None:
        self.batches.append(events)


def test_repeated_pulls_by_one_client_are_one_event_and_distinct_clients_each_one() -> None:
    metadata = Recorded()
    pulls = PullEvents(1.0, metadata)  # type: ignore[arg-type]
    environ = {"HTTP_USER_AGENT": "docker/27", "HTTP_HOST": "reg:5000", "REQUEST_METHOD": "GET"}
    for n in range(100):
        pulls.note(environ, "alice", "10.0.0.1", f"r{n}", "team/app", "sha256:" + "a" * 64, "m", 7, "v1")
    pulls.note(environ, "alice", "10.0.0.2", "other", "team/app", "sha256:" + "a" * 64, "m", 7, "v1")
    pulls.note(environ, "alice", "10.0.0.1", "blob", "team/app", "sha256:" + "b" * 64, "", 9, blob=True)
    pulls.flush()
    [batch] = metadata.batches
    assert [(e.origin.address, e.origin.request_id, e.blob) for e in batch] == [
        ("10.0.0.1", "r0", False), ("10.0.0.2", "other", False), ("10.0.0.1", "blob", True)]
    assert batch[0].origin.user_agent == "docker/27" and batch[0].tag == "v1" and batch[0].at_ms > 0
    pulls.flush()
    assert len(metadata.batches) == 1  # nothing new: no call


def test_no_share_records_nothing() -> None:
    assert not PullEvents(0.0, Recorded()).enabled  # type: ignore[arg-type]


def test_a_large_flush_goes_in_calls_the_metadata_service_accepts() -> None:
    metadata = Recorded()
    pulls = PullEvents(1.0, metadata)  # type: ignore[arg-type]
    for n in range(12_000):
        pulls.note({}, "", f"10.0.{n // 250}.{n % 250}", "r", "team/app", "sha256:" + "a" * 64, "m", 7)
    pulls.flush()
    assert [len(batch) for batch in metadata.batches] == [5000, 5000, 2000]
