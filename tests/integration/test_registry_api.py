"""The HTTP API against the real stack: error bodies, validation, no partial state."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest
import requests

from services.api.app import create_app
from services.api.settings import GatewaySettings
from services.common import digests, mediatypes
from services.common.internal_auth import ensure_token_file
from services.stack.processes import free_port
from tests.support.stack import RunningStack

OCI = mediatypes.OCI_MANIFEST


def _error_code(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    return str(response.json()["errors"][0]["code"])


def _push_blob(url: str, name: str, data: bytes) -> str:
    digest = digests.of(data)
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data, timeout=10)
    assert response.status_code == 201, response.text
    return digest


def _manifest(config: str, layers: list[str], **extra: object) -> bytes:
    body = {"schemaVersion": 2, "mediaType": OCI,
            "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 5} for d in layers],
            **extra}
    return json.dumps(body).encode()


def test_base_and_request_id(stack: RunningStack) -> None:
    response = requests.get(f"{stack.url}/v2/", headers={"X-Request-Id": "abc-123"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.headers["X-Request-Id"] == "abc-123"


@pytest.mark.parametrize("path,status,code", [
    ("/v2/Upper/tags/list", 400, "NAME_INVALID"),
    ("/v2/a/blobs/sha256:nothex", 400, "DIGEST_INVALID"),
    ("/v2/a/blobs/" + digests.of(b"nothing"), 404, "BLOB_UNKNOWN"),
    ("/v2/a/manifests/" + digests.of(b"nothing"), 404, "MANIFEST_UNKNOWN"),
    ("/v2/a/manifests/no-such-tag", 404, "MANIFEST_UNKNOWN"),
    ("/v2/never/pushed/tags/list", 404, "NAME_UNKNOWN"),
    ("/v2/a/blobs/uploads/" + "0" * 32, 404, "BLOB_UPLOAD_UNKNOWN"),
    ("/v2/_catalog?n=-1", 400, "UNSUPPORTED"),
])
def test_errors_use_the_oci_envelope(stack: RunningStack, path: str, status: int, code: str) -> None:
    response = requests.get(stack.url + path, timeout=10)
    assert response.status_code == status
    assert _error_code(response) == code


def test_manifest_with_unknown_blob_leaves_no_tag(stack: RunningStack) -> None:
    config = _push_blob(stack.url, "strict/a", b"{}")
    missing = digests.of(b"never pushed")
    response = requests.put(f"{stack.url}/v2/strict/a/manifests/v1", data=_manifest(config, [missing]),
                            headers={"Content-Type": OCI}, timeout=10)
    assert response.status_code == 400 and _error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    assert requests.get(f"{stack.url}/v2/strict/a/manifests/v1", timeout=10).status_code == 404


def test_blob_held_by_another_repository_is_mounted_for_a_manifest(stack: RunningStack) -> None:
    config = _push_blob(stack.url, "mount/src", b"{}")
    layer = _push_blob(stack.url, "mount/src", b"layer")
    body = _manifest(config, [layer])
    response = requests.put(f"{stack.url}/v2/mount/dst/manifests/v1", data=body, headers={"Content-Type": OCI},
                            timeout=10)
    assert response.status_code == 201, response.text
    assert requests.head(f"{stack.url}/v2/mount/dst/blobs/{layer}", timeout=10).status_code == 200


def test_digest_mismatch_is_not_visible(stack: RunningStack) -> None:
    claimed = digests.of(b"claimed")
    response = requests.post(f"{stack.url}/v2/bad/digest/blobs/uploads/", params={"digest": claimed},
                             data=b"other", timeout=10)
    assert response.status_code == 400 and _error_code(response) == "DIGEST_INVALID"
    assert requests.head(f"{stack.url}/v2/bad/digest/blobs/{claimed}", timeout=10).status_code == 404
    assert requests.post(f"{stack.url}/v2/bad/digest/blobs/uploads/", params={"mount": claimed},
                         timeout=10).status_code == 202


def test_oversized_manifest_is_refused(stack: RunningStack) -> None:
    body = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    response = requests.put(f"{stack.url}/v2/big/manifests/v1", data=body, headers={"Content-Type": OCI},
                            timeout=30)
    assert response.status_code == 413 and _error_code(response) == "MANIFEST_INVALID"


def test_accept_negotiation_and_headers(stack: RunningStack) -> None:
    config = _push_blob(stack.url, "neg/a", b"{}")
    body = _manifest(config, [])
    put = requests.put(f"{stack.url}/v2/neg/a/manifests/v1", data=body, headers={"Content-Type": OCI}, timeout=10)
    assert put.status_code == 201 and put.headers["Docker-Content-Digest"] == digests.of(body)
    assert put.headers["Location"] == f"/v2/neg/a/manifests/{digests.of(body)}"
    ok = requests.get(f"{stack.url}/v2/neg/a/manifests/v1", headers={"Accept": f"{OCI}, {mediatypes.OCI_INDEX}"},
                      timeout=10)
    assert ok.status_code == 200 and ok.content == body and ok.headers["Content-Type"] == OCI
    refused = requests.get(f"{stack.url}/v2/neg/a/manifests/v1", headers={"Accept": mediatypes.DOCKER_MANIFEST},
                           timeout=10)
    assert refused.status_code == 404 and _error_code(refused) == "MANIFEST_UNKNOWN"
    head = requests.head(f"{stack.url}/v2/neg/a/manifests/v1", timeout=10)
    assert head.headers["Content-Length"] == str(len(body)) and head.content == b""


def test_conditional_requests_follow_rfc_9110(stack: RunningStack) -> None:
    """If-None-Match naming the content's ETag is a 304 for blobs and manifests, GET and HEAD
    (cached or not: the hot-read path hands conditional requests to the views); If-Range other
    than the ETag (another tag, a date) asks for the whole blob, not the range."""
    data = bytes(range(256)) * 4
    blob = _push_blob(stack.url, "cond/a", data)
    body = _manifest(_push_blob(stack.url, "cond/a", b"{}"), [])
    assert requests.put(f"{stack.url}/v2/cond/a/manifests/v1", data=body, headers={"Content-Type": OCI},
                        timeout=10).status_code == 201
    etags = {f"/v2/cond/a/blobs/{blob}": f'"{blob}"', "/v2/cond/a/manifests/v1": f'"{digests.of(body)}"'}
    with requests.Session() as session:
        for path, etag in etags.items():
            for _ in range(3):  # the first GETs fill the read cache: later ones would be hits
                assert session.get(stack.url + path, headers={"Accept": OCI}, timeout=10).status_code == 200
            for method in ("GET", "HEAD"):
                for header in (etag, f'W/{etag}', f'"other", {etag}', "*"):
                    answer = session.request(method, stack.url + path, timeout=10,
                                             headers={"Accept": OCI, "If-None-Match": header})
                    assert answer.status_code == 304 and answer.content == b"", (method, path, header)
                    assert answer.headers["ETag"] == etag and "Content-Type" not in answer.headers
                other = session.request(method, stack.url + path, headers={"Accept": OCI, "If-None-Match": '"x"'},
                                        timeout=10)
                assert other.status_code == 200
        ranged = {"Range": "bytes=0-9"}
        url = f"{stack.url}/v2/cond/a/blobs/{blob}"
        assert session.get(url, headers={**ranged, "If-Range": etags[f"/v2/cond/a/blobs/{blob}"]},
                           timeout=10).content == data[:10]
        for validator in ('"another"', "Wed, 21 Oct 2015 07:28:00 GMT"):
            whole = session.get(url, headers={**ranged, "If-Range": validator}, timeout=10)
            assert whole.status_code == 200 and whole.content == data


def test_tag_pages_carry_a_link(stack: RunningStack) -> None:
    config = _push_blob(stack.url, "pages/a", b"{}")
    body = _manifest(config, [])
    for i in range(5):
        requests.put(f"{stack.url}/v2/pages/a/manifests/t{i}", data=body, headers={"Content-Type": OCI}, timeout=10)
    first = requests.get(f"{stack.url}/v2/pages/a/tags/list", params={"n": 2}, timeout=10)
    assert first.json() == {"name": "pages/a", "tags": ["t0", "t1"]}
    assert first.headers["Link"] == '</v2/pages/a/tags/list?n=2&last=t1>; rel="next"'
    last = requests.get(f"{stack.url}/v2/pages/a/tags/list", params={"n": 2, "last": "t3"}, timeout=10)
    assert last.json()["tags"] == ["t4"] and "Link" not in last.headers


def test_chunked_upload_out_of_order_gets_416_with_range(stack: RunningStack) -> None:
    start = requests.post(f"{stack.url}/v2/chunks/a/blobs/uploads/", timeout=10)
    location = stack.url + start.headers["Location"]
    first = requests.patch(location, data=b"abc", headers={"Content-Range": "0-2"}, timeout=10)
    assert first.status_code == 202 and first.headers["Range"] == "0-2"
    skipped = requests.patch(stack.url + first.headers["Location"], data=b"xyz", headers={"Content-Range": "5-7"},
                             timeout=10)
    assert skipped.status_code == 416 and skipped.headers["Range"] == "0-2"
    done = requests.put(location, params={"digest": digests.of(b"abcdef")}, data=b"def",
                        headers={"Content-Range": "3-5"}, timeout=10)
    assert done.status_code == 201, done.text
    got = requests.get(f"{stack.url}/v2/chunks/a/blobs/{digests.of(b'abcdef')}", headers={"Range": "bytes=1-3"},
                       timeout=10)
    assert got.status_code == 206 and got.content == b"bcd" and got.headers["Content-Range"] == "bytes 1-3/6"



@pytest.mark.parametrize("declared", ["0-9", "0-199"])
def test_a_chunked_body_must_be_as_long_as_its_content_range(stack: RunningStack, declared: str) -> None:
    """Without a Content-Length only the body's end shows its length: longer or shorter than the
    range it claims is 416 with the session's Range, and the session goes on from what it stores."""
    start = requests.post(f"{stack.url}/v2/chunks/declared/blobs/uploads/", timeout=10)
    location = stack.url + start.headers["Location"]

    def chunked() -> Iterator[bytes]:
        yield b"x" * 100  # a generator: requests sends it chunked, without a Content-Length

    answer = requests.patch(location, data=chunked(), headers={"Content-Range": declared}, timeout=10)
    assert answer.status_code == 416, answer.text
    assert answer.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    stored = int(answer.headers["Range"].split("-")[1]) + 1 if answer.headers["Range"] != "0-0" else 0
    assert stored in (0, 100)
    rest = b"y" * 10
    content = b"x" * stored + rest
    done = requests.put(location, params={"digest": digests.of(content)}, data=rest,
                        headers={"Content-Range": f"{stored}-{stored + len(rest) - 1}"}, timeout=10)
    assert done.status_code == 201, done.text

def test_unavailable_backends_give_503_json(tmp_path: pathlib.Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    token_file = ensure_token_file(tmp_path / "internal-token")
    settings = GatewaySettings(blobstore_addr=dead, metadata_addr=dead, rpc_timeout=2.0, access_log=False,
                               internal_token_file=str(token_file))
    client = create_app(settings).test_client()
    response = client.get("/v2/some/repo/manifests/latest")
    assert response.status_code == 503
    assert response.get_json()["errors"][0]["code"] == "UNAVAILABLE"
    # Starting an upload needs no backend (the gateway seals the session's id itself); the first
    # bytes do, and are refused with a 503 the client can retry.
    upload = client.post("/v2/some/repo/blobs/uploads/")
    assert upload.status_code == 202
    chunk = client.patch(upload.headers["Location"], data=b"abc", content_type="application/octet-stream")
    assert chunk.status_code == 503 and b"Traceback" not in chunk.data
    assert chunk.get_json()["errors"][0]["code"] == "UNAVAILABLE"


def test_truncated_monolithic_upload_commits_nothing(stack: RunningStack) -> None:
    """A body shorter than its Content-Length (the client went away) must not become a blob."""
    import socket

    data = b"x" * 4096
    digest = digests.of(data)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(f"POST /v2/trunc/a/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {len(data) + 100}\r\n\r\n".encode() + data)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)
    assert requests.head(f"{stack.url}/v2/trunc/a/blobs/{digest}", timeout=10).status_code == 404
    assert requests.post(f"{stack.url}/v2/other/a/blobs/uploads/", params={"mount": digest},
                         timeout=10).status_code == 202


@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/head/a/tags/list"])
def test_head_works_wherever_get_does(stack: RunningStack, path: str) -> None:
    _push_blob(stack.url, "head/a", b"{}")
    body = _manifest(digests.of(b"{}"), [])
    requests.put(f"{stack.url}/v2/head/a/manifests/v1", data=body, headers={"Content-Type": OCI}, timeout=10)
    assert requests.head(stack.url + path, timeout=10).status_code == 200
    assert requests.post(stack.url + "/v2/", timeout=10).status_code == 405



@pytest.mark.parametrize("path", ["/v2/", "/v2/alice/x/blobs/uploads/0123", "/v2/a/manifests/v1", "/token", "/"])
def test_options_is_a_method_outside_the_table_like_any_other(path: str, stack: RunningStack) -> None:
    """Flask's automatic OPTIONS answered every path, unauthenticated and as HTML, listing methods."""
    answer = requests.options(stack.url + path, timeout=10)
    assert answer.status_code == 405 and answer.json()["errors"][0]["code"] == "UNSUPPORTED"

def test_sessions_the_gateway_started_live_and_end_like_stored_ones(stack: RunningStack) -> None:
    """A POST costs no blob store call (services/common/upload_ids.py): the session is an id the
    gateway sealed, taken as an empty session until bytes arrive. It must answer as a stored one:
    status, a cancelled or refused session unknown afterwards, and no id usable elsewhere."""
    def start(name: str) -> str:
        answer = requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", timeout=10)
        assert answer.status_code == 202 and answer.headers["Range"] == "0-0", answer.text
        return stack.url + answer.headers["Location"]

    location = start("sealed/a")
    status = requests.get(location, timeout=10)
    assert status.status_code == 204 and status.headers["Range"] == "0-0"
    upload_id = location.rsplit("/", 1)[1]
    assert status.headers["Docker-Upload-UUID"] == upload_id
    # Another repository's URL with this id, an altered id and a made-up one of the same shape: unknown.
    altered = upload_id[:-1] + ("0" if upload_id[-1] != "0" else "1")
    for url in (f"{stack.url}/v2/sealed/b/blobs/uploads/{upload_id}", location[:-len(upload_id)] + altered,
                location[:-len(upload_id)] + "ab" * 28):
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            answer = requests.request(method, url, params={"digest": digests.of(b"x")} if method == "PUT" else None,
                                      data=b"x" if method in ("PATCH", "PUT") else None, timeout=10)
            assert answer.status_code == 404 and _error_code(answer) == "BLOB_UPLOAD_UNKNOWN", (method, url)

    # Finished with its whole body in the PUT: the blob is there. Nothing is kept per finished
    # session (services/blobstore/blobs.py, _end): should the client use the URL again, it is a
    # new empty session of the same repository, never the old one's bytes.
    data = b"sealed session bytes"
    done = requests.put(location, params={"digest": digests.of(data)}, data=data, timeout=10)
    assert done.status_code == 201, done.text
    assert requests.get(f"{stack.url}/v2/sealed/a/blobs/{digests.of(data)}", timeout=10).content == data
    again = requests.get(location, timeout=10)
    assert again.status_code == 204 and again.headers["Range"] == "0-0"

    # Cancelled before any byte: unknown afterwards, and a second cancel says so.
    cancelled = start("sealed/a")
    assert requests.delete(cancelled, timeout=10).status_code == 204
    for method in ("GET", "PATCH", "DELETE"):
        answer = requests.request(method, cancelled, data=b"late" if method == "PATCH" else None, timeout=10)
        assert answer.status_code == 404 and _error_code(answer) == "BLOB_UPLOAD_UNKNOWN", method

    # The empty blob (PUT without a body) and a mismatching digest, each on a fresh session.
    empty_blob = start("sealed/a")
    made = requests.put(empty_blob, params={"digest": digests.of(b"")}, timeout=10)
    assert made.status_code == 201, made.text
    mismatch = start("sealed/a")
    refused = requests.put(mismatch, params={"digest": digests.of(b"claimed")}, data=b"actual", timeout=10)
    assert refused.status_code == 400 and _error_code(refused) == "DIGEST_INVALID"
    assert requests.head(f"{stack.url}/v2/sealed/a/blobs/{digests.of(b'claimed')}", timeout=10).status_code == 404
    assert requests.get(mismatch, timeout=10).status_code == 404

    # Written to, then finished: the general path, and the session ends there too.
    chunked = start("sealed/a")
    first = requests.patch(chunked, data=b"chunk one, ", timeout=10)
    assert first.status_code == 202 and first.headers["Range"] == "0-10"
    whole = b"chunk one, chunk two"
    final = requests.put(chunked, params={"digest": digests.of(whole)}, data=b"chunk two", timeout=10)
    assert final.status_code == 201, final.text
    reused = requests.get(chunked, timeout=10)
    assert reused.status_code == 204 and reused.headers["Range"] == "0-0"  # nothing of the finished one
    assert requests.get(f"{stack.url}/v2/sealed/a/blobs/{digests.of(whole)}", timeout=10).content == whole
