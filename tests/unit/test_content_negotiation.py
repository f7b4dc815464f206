"""Accept header handling for manifest GETs."""

from __future__ import annotations

import pytest

from services.api.views.manifests import accepts
from services.common import mediatypes

OCI, DOCKER, INDEX = mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST, mediatypes.OCI_INDEX


@pytest.mark.parametrize("headers,media_type,expected", [
    ([], OCI, True),
    (["*/*"], OCI, True),
    ([f"{OCI}, {INDEX}"], OCI, True),
    ([DOCKER, INDEX], OCI, False),  # names manifest types, not this one
    (["application/json"], OCI, True),  # names no manifest type: not negotiating
    ([f"{OCI};q=0, */*"], OCI, False),  # explicitly refused
    ([f"{OCI};q=0.5"], OCI, True),
    ([f"{DOCKER};q=0.9, {OCI};q=0.8"], OCI, True),
    ([f"{OCI}; q=bogus"], OCI, True),
])
def test_accepts(headers: list[str], media_type: str, expected: bool) -> None:
    assert accepts(headers, media_type) is expected
