"""What a fill's copier hands its caller (services/blobstore/fills.py ``_Ahead``): at the caller's
pace until it is late, then at most the limit held, the rest left to the stored blob."""

from __future__ import annotations

import threading
import time

from services.blobstore.fills import _Ahead


def test_a_caller_that_keeps_up_gets_every_chunk_in_order() -> None:
    ahead = _Ahead(limit=10)
    ahead.offer(b"abc")
    ahead.wait_taken(0.01)  # nobody took it: late from now on
    assert ahead.late
    ahead.offer(b"def")
    ahead.end(None)
    assert [ahead.take(), ahead.take(), ahead.take()] == [b"abc", b"def", None]
    assert not ahead.behind and ahead.offered == 6


def test_the_copier_waits_for_a_caller_within_the_lag() -> None:
    ahead = _Ahead(limit=10)
    ahead.offer(b"abc")
    taker = threading.Timer(0.2, ahead.take)
    taker.start()
    started = time.monotonic()
    ahead.wait_taken(30)
    assert time.monotonic() - started < 10 and not ahead.late
    taker.join()


def test_past_the_limit_nothing_more_is_held_and_the_caller_is_behind() -> None:
    ahead = _Ahead(limit=5)
    for chunk in (b"abc", b"de", b"f", b"gh"):
        ahead.offer(chunk)
    ahead.end(None)
    assert ahead.behind and ahead.offered == 8
    assert [ahead.take(), ahead.take(), ahead.take()] == [b"abc", b"de", None]  # the rest: from storage


def test_a_caller_gone_frees_what_was_held_and_the_copier_goes_on() -> None:
    ahead = _Ahead(limit=10)
    ahead.offer(b"abc")
    ahead.abandon()
    started = time.monotonic()
    ahead.wait_taken(30)
    ahead.offer(b"def")
    assert time.monotonic() - started < 5
    ahead.end(RuntimeError("upstream gone"))
    assert ahead.take() is None and isinstance(ahead.error, RuntimeError)


def test_a_copier_waiting_for_its_caller_goes_on_once_another_asker_waits() -> None:
    """A caller that takes each chunk within the lag set the fill's pace for everyone waiting for
    the blob; once another asker waits (Fills._hurry), the copier waits for nobody."""
    ahead = _Ahead(limit=10)
    ahead.offer(b"abc")
    threading.Timer(0.2, ahead.hurry).start()
    started = time.monotonic()
    ahead.wait_taken(30)
    assert time.monotonic() - started < 5 and ahead.late
    ahead.offer(b"def")
    ahead.wait_taken(30)  # at once: late for good
    assert time.monotonic() - started < 5
