"""Text that comes from a registry: made safe to print, and parsed without crashing on hostile nesting.

A registry chooses its error messages, tag and repository names, annotations; printed
raw, an escape sequence in one of them retitles the terminal, clears it or fakes a
line of output. Its JSON may nest deeply enough to exhaust Python's recursion limit,
which ``json.loads`` reports as RecursionError rather than the ValueError callers handle.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 and C1 controls, DEL, and the Unicode bidirectional overrides that reorder what a terminal shows.
_HEADER_NUMBER_RE = re.compile(r"[0-9]{1,19}")
_UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as a repr-style escape (ESC becomes ``\\x1b``)."""
    return _UNPRINTABLE_RE.sub(_escape, text)


def header_number(value: str | None) -> int | None:
    """A header's non-negative integer (Content-Length, Retry-After, OCI-Chunk-Min-Length); None if it is not one.

    Only ASCII digits, at most 19 of them: ``str.isdigit`` also accepts ``²`` (which ``int``
    refuses) and ``int`` refuses more than 4,300 digits, each a crash for a header a registry chose.
    """
    text = (value or "").strip()
    return int(text) if _HEADER_NUMBER_RE.fullmatch(text) else None


def parse_json(data: bytes | str) -> Any:
    """``json.loads``, with too deep nesting reported as the ValueError that malformed JSON raises."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
