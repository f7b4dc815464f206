"""The reference check of an event delivery's signature (services/events/envelope.py, ``verify``),
which a receiver runs on a header anyone can send."""

from __future__ import annotations

import pytest

from services.events import envelope


@pytest.mark.parametrize("header", ["sha256=é", "sha256=\udcff", "sha256=\ud800", "", "sha256=" + "0" * 64, "☃" * 71])
def test_a_forged_signature_is_refused_not_an_error(header: str) -> None:
    """Before: a header holding any non-ASCII character raised TypeError (compare_digest refuses
    such strings), so a receiver built on ``verify`` answered 500 instead of refusing."""
    assert envelope.verify(b"key", b'{"events": []}', header) is False


def test_the_right_signature_is_accepted() -> None:
    payload = b'{"events": []}'
    assert envelope.verify(b"key", payload, envelope.signature(b"key", payload)) is True
