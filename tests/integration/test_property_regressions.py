"""Regressions for the defects the property tests (tests/e2e/test_properties_*.py, issue 20) found,
each with the example that showed it."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Callable

import pytest
import requests

from services.common import digests, mediatypes
from tests.support.stack import RunningStack

OCI = mediatypes.OCI_MANIFEST
CONFIG = b'{"architecture":"amd64","os":"linux"}'


def _code(response: requests.Response) -> str:
    return str(response.json()["errors"][0]["code"])


def _push_blob(url: str, name: str, data: bytes) -> str:
    digest = digests.of(data)
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data, timeout=30)
    assert response.status_code == 201, response.text
    return digest


def _manifest_text(config_digest: str, extra: str = "", schema_version: str = "2", layers: str = "[]") -> str:
    return (f'{{"schemaVersion": {schema_version}, "mediaType": "{OCI}", "config": {{"mediaType": '
            f'"{mediatypes.OCI_CONFIG}", "digest": "{config_digest}", "size": {len(CONFIG)}}}, '
            f'"layers": {layers}{extra}}}')


def _raw_get(url: str, path: str) -> tuple[int, str]:
    """GET with the request line as given (requests would normalize "//" and re-encode)."""
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    code = json.loads(body)["errors"][0]["code"] if body.startswith(b'{"errors"') else ""
    return response.status, code


@pytest.mark.parametrize("body", [
    # A lone surrogate has no UTF-8 form: it reached the metadata service's protobuf strings (500).
    '"annotations": {"a": "\\ud800"}',
    '"artifactType": "\\udfff"',
    # Not JSON at all, but Python's parser took them (201).
    '"x": NaN',
    '"x": -Infinity',
])
def test_manifest_json_that_was_stored_or_crashed(stack: RunningStack, body: str) -> None:
    config_digest = _push_blob(stack.url, "regress/json", CONFIG)
    content = _manifest_text(config_digest, ", " + body).encode()
    response = requests.put(f"{stack.url}/v2/regress/json/manifests/t", data=content, timeout=30,
                            headers={"Content-Type": OCI})
    assert (response.status_code, _code(response)) == (400, "MANIFEST_INVALID"), response.text


@pytest.mark.parametrize("encode", [
    lambda text: text.encode("utf-16"),               # json.loads guessed the encoding (201)
    lambda text: b"\xef\xbb\xbf" + text.encode(),     # a BOM, which JSON texts must not carry
    lambda text: text.replace('"schemaVersion": 2', '"schemaVersion": 2.0').encode(),  # 2.0 == 2 in Python
    lambda text: text.replace('"schemaVersion": 2', '"schemaVersion": 2e0').encode(),
], ids=["utf-16", "bom", "schema-2.0", "schema-2e0"])
def test_manifest_encodings_and_versions_that_were_stored(stack: RunningStack,
                                                          encode: Callable[[str], bytes]) -> None:
    config_digest = _push_blob(stack.url, "regress/encoding", CONFIG)
    content = encode(_manifest_text(config_digest))
    response = requests.put(f"{stack.url}/v2/regress/encoding/manifests/t", data=content, timeout=30,
                            headers={"Content-Type": OCI})
    assert (response.status_code, _code(response)) == (400, "MANIFEST_INVALID"), response.text
    assert requests.get(f"{stack.url}/v2/regress/encoding/tags/list", timeout=30).json()["tags"] in ([], None)


def test_thousands_of_unknown_layers_get_a_whole_refusal(stack: RunningStack) -> None:
    """The missing list (225 KB) overflowed the gRPC trailing metadata: the client got
    MANIFEST_BLOB_UNKNOWN with the message "Stream removed (received metadata size exceeds hard limit
    ...)" and no detail. Now the detail lists the first 50."""
    config_digest = _push_blob(stack.url, "regress/many", CONFIG)
    layers = json.dumps([{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:%064x" % (i + 1),
                          "size": 1} for i in range(3000)])
    response = requests.put(f"{stack.url}/v2/regress/many/manifests/t", timeout=60, headers={"Content-Type": OCI},
                            data=_manifest_text(config_digest, layers=layers).encode())
    assert response.status_code == 400, response.text
    error = response.json()["errors"][0]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert error["detail"]["missing"] == ["sha256:%064x" % (i + 1) for i in range(50)]
    assert "2950 more" in error["message"] and "Stream removed" not in error["message"]


def test_more_mountable_layers_than_one_refusal_lists(stack: RunningStack) -> None:
    """Blobs linked only in another repository are mounted in batches of the refusal's list."""
    layers = [f"layer {i}".encode() for i in range(120)]
    descriptors = json.dumps([{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": _push_blob(stack.url, "regress/source", layer), "size": len(layer)}
                              for layer in layers])
    config_digest = _push_blob(stack.url, "regress/source", CONFIG)
    content = _manifest_text(config_digest, layers=descriptors).encode()
    response = requests.put(f"{stack.url}/v2/regress/mounted/manifests/t", data=content, timeout=60,
                            headers={"Content-Type": OCI})
    assert response.status_code == 201, response.text
    assert requests.get(f"{stack.url}/v2/regress/mounted/manifests/t", timeout=30).content == content


@pytest.mark.parametrize("first,last", [(str(2**63), str(2**63 + 2)), (str(10**20), str(10**20 + 2)),
                                        ("0", "9" * 5000)])
def test_content_range_past_int64_is_416(stack: RunningStack, first: str, last: str) -> None:
    """The offset reached the blob store's int64 field: 500 (past 4,300 digits, Python's int()
    refused it: 500 too)."""
    started = requests.post(f"{stack.url}/v2/regress/range/blobs/uploads/", timeout=30)
    location = started.headers["Location"]
    response = requests.patch(stack.url + location, data=b"abc", timeout=30,
                              headers={"Content-Range": f"{first}-{last}"})
    assert (response.status_code, _code(response)) == (416, "BLOB_UPLOAD_INVALID"), response.text
    assert response.headers["Range"] == "0-0"


@pytest.mark.parametrize("path", [
    "/v2/%2Fa/tags/list",   # was a 308 redirect to /v2/a/tags/list: "/a" read as "a"
    "/v2//a/tags/list",     # the same, unencoded
    "/v2/a%0Ab/tags/list",  # was 404 UNSUPPORTED: the path rule did not match across a newline
    "/v2/a/b%0A/manifests/latest",
])
def test_names_with_slashes_or_newlines_are_name_invalid(stack: RunningStack, path: str) -> None:
    assert _raw_get(stack.url, path) == (400, "NAME_INVALID")
