"""Regression tests for what the API fuzzer (tests/e2e/test_fuzz_api.py) found, against the real stack."""

from __future__ import annotations

import pytest
import requests

from services.common import digests
from tests.support.stack import RunningStack


@pytest.mark.parametrize("method,path", [
    ("POST", "/v2/%3F/blobs/uploads/"),
    ("GET", "/v2/a/%23b/tags/list"),
    ("GET", "/v2/a%3Fb/manifests/latest"),
    ("HEAD", "/v2/%3F%3F/blobs/" + digests.of(b"x")),
])
def test_a_name_with_an_encoded_query_or_fragment_mark_is_name_invalid(stack: RunningStack, method: str,
                                                                      path: str) -> None:
    """A decoded "?" or "#" in a name matched no route (404 "no such endpoint"); like any invalid
    name it is 400 NAME_INVALID, and nothing is created."""
    response = requests.request(method, stack.url + path, timeout=10)
    assert response.status_code == 400
    if method != "HEAD":
        assert response.json()["errors"][0]["code"] == "NAME_INVALID"
    catalog = requests.get(f"{stack.url}/v2/_catalog", timeout=10).json()["repositories"]
    assert not [name for name in catalog if "?" in name or "#" in name]


def test_the_openapi_document_is_served_without_credentials(stack: RunningStack) -> None:
    answer = requests.get(f"{stack.url}/openapi.yaml", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/yaml")
    head = requests.head(f"{stack.url}/openapi.yaml", timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(answer.content))
    assert requests.post(f"{stack.url}/openapi.yaml", timeout=10).status_code == 405
