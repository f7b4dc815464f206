"""Hostile review against the OCI distribution spec (2026-12-03): Accept negotiation of manifests.

Media types are case-insensitive (RFC 9110, 8.3.1) and a weight is 0 to 1 with at most three
decimals (12.4.2). An Accept naming a manifest type in capitals was read as naming none, so any
type was served, even one it refused with q=0; float() read "q=nan" as a refusal; "*/*;q=0"
was taken as accepting anything."""

from __future__ import annotations

import pytest

from services.api.views.manifests import accepts
from services.common import mediatypes

OCI, LIST = mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST_LIST


@pytest.mark.parametrize("headers,media_type,expected", [
    ([OCI.upper()], OCI, True),
    ([OCI.upper()], LIST, False),  # names a manifest type (in capitals), not this one
    ([f"{OCI.upper()};q=0"], OCI, False),  # refused, whatever the case
    ([f"{OCI};Q=0"], OCI, False),
    ([f"{OCI};q=0.000"], OCI, False),
    (["APPLICATION/*"], OCI, True),
    ([OCI], OCI.upper(), True),
    ([f"{OCI};q=nan"], OCI, True),  # not a weight: ignored, as "q=bogus" is
    ([f"{OCI};q=-1"], OCI, True),
    ([f"{OCI};q=1e-9"], OCI, True),
    ([f"{OCI};q=0.001"], OCI, True),
    # The most specific range decides (12.5.1): a refused wildcard refuses what nothing accepts.
    (["*/*;q=0"], OCI, False),
    ([f"*/*;q=0, {OCI}"], OCI, True),
    (["application/*;q=0, */*"], OCI, False),
    ([f"application/*;q=0, {OCI}"], OCI, True),
])
def test_media_types_and_weights_are_read_as_rfc_9110_writes_them(headers: list[str], media_type: str,
                                                                   expected: bool) -> None:
    assert accepts(headers, media_type) is expected
