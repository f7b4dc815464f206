"""HTTP Range parsing for blob GETs."""

from __future__ import annotations

import pytest

from services.api.views.blobs import parse_range
from services.common.errors import RegistryError


@pytest.mark.parametrize("header,expected", [
    (None, None), ("", None), ("bytes=0-0", (0, 0)), ("bytes=500-1499", (500, 1499)), ("bytes=500-", (500, 2047)),
    ("bytes=-500", (1548, 2047)), ("bytes=2000-5000", (2000, 2047)), ("bytes=-5000", (0, 2047)),
    ("items=0-1", None), ("bytes=0-1,3-4", None),
    # Past the 4,300 digits Python converts (these were a 500): as large as they say.
    ("bytes=0-" + "9" * 5000, (0, 2047)), ("bytes=-" + "9" * 5000, (0, 2047)), ("bytes=0" + "0" * 5000 + "-1", (0, 1)),
])
def test_satisfiable_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 2048) == expected


@pytest.mark.parametrize("header", ["bytes=500-0", "bytes=5000-10000", "bytes=2048-", "bytes=-0",
                                    "bytes=" + "9" * 5000 + "-", "bytes=1-0" + "0" * 5000])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_range(header, 2048)
    assert info.value.http_status == 416 and info.value.headers["Content-Range"] == "bytes */2048"
