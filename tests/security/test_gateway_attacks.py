"""Attacks on the HTTP API in token mode: each of these got through before its fix (docs/security.md)."""

from __future__ import annotations

import json
import re
import socket
import urllib.parse

import pytest
import requests

from services.common import digests, mediatypes
from services.common.errors import OCI_CODES
from tests.security.conftest import bearer, manifest, push_blob, push_image, token
from tests.support.stack import RunningStack


def _code(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    return str(response.json()["errors"][0]["code"])


def _raw(stack: RunningStack, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.fixture(scope="module")
def private(target: RunningStack) -> list[str]:
    """Repositories of user a that user b may not see, and a few b may see."""
    for name in ("a/hidden-1", "a/hidden-2", "a/hidden-3", "b/mine-1", "b/mine-2", "pub/open"):
        owner = "a" if name.startswith(("a/", "pub/")) else "b"
        push_image(target, owner, name)
    return ["a/hidden-1", "a/hidden-2", "a/hidden-3"]


def test_catalog_pages_and_cursors_never_name_a_hidden_repository(target: RunningStack, private: list[str]) -> None:
    """Finding 1: the Link cursor was the last name examined before filtering."""
    headers = bearer(token(target, "b", "registry:catalog:*"))
    seen: list[str] = []
    url = f"{target.url}/v2/_catalog?n=1"
    for _ in range(50):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 200
        page = response.json()["repositories"]
        assert len(page) <= 1
        seen += page
        link = response.headers.get("Link", "")
        assert not any(name in urllib.parse.unquote(link) for name in private), link
        if not link:
            break
        url = target.url + re.match(r"<([^>]+)>", link).group(1)  # type: ignore[union-attr]
    assert not set(seen) & set(private)
    # Every repository b may pull is listed, once, in order.
    assert {"b/mine-1", "b/mine-2", "pub/open"} <= set(seen) and seen == sorted(set(seen))
    # A cursor b makes up cannot be used to probe either: the page shows only b's names.
    probe = requests.get(f"{target.url}/v2/_catalog", params={"n": 5, "last": "a/hidden-1"}, headers=headers,
                         timeout=10)
    assert not set(probe.json()["repositories"]) & set(private)


def test_mount_source_cannot_inject_a_challenge_parameter(target: RunningStack) -> None:
    """Finding 4: `from` reached the WWW-Authenticate header unvalidated (a second realm; CRLF gave a 500)."""
    digest = digests.of(b"anything")
    for source in ('a/b",realm="http://evil.example/t?x=', "a/b\r\nX-Evil: 1", "a/b\r\n", "../a"):
        response = requests.post(f"{target.url}/v2/a/x/blobs/uploads/", params={"mount": digest, "from": source},
                                 timeout=10)
        assert response.status_code == 400 and _code(response) == "NAME_INVALID", response.text
        assert "evil" not in response.headers.get("WWW-Authenticate", "")
        assert "X-Evil" not in response.headers
    valid = requests.post(f"{target.url}/v2/a/x/blobs/uploads/", params={"mount": digest, "from": "a/b"},
                          timeout=10)
    assert valid.status_code == 401
    assert valid.headers["WWW-Authenticate"].count("realm=") == 1


def test_an_empty_mount_source_counts_as_absent(target: RunningStack, private: list[str]) -> None:
    """An empty `from` is not a special anonymous mount: b cannot mount a's layer with it."""
    layer = digests.of(b"layer of a/hidden-1")
    headers = bearer(token(target, "b", "repository:b/steal:pull,push"))
    response = requests.post(f"{target.url}/v2/b/steal/blobs/uploads/", params={"mount": layer, "from": ""},
                             headers=headers, timeout=10)
    assert response.status_code == 202  # an ordinary upload session, no mount
    assert requests.head(f"{target.url}/v2/b/steal/blobs/{layer}", headers=headers, timeout=10).status_code == 404


def test_an_encoded_slash_is_refused_not_decoded(target: RunningStack) -> None:
    headers = bearer(token(target, "b", "repository:b/esc:pull,push", "repository:b/esc/x:pull,push"))
    data = b"escaped"
    response = requests.post(f"{target.url}/v2/b/esc%2Fx/blobs/uploads/", params={"digest": digests.of(data)},
                             data=data, headers=headers, timeout=10)
    assert response.status_code == 400 and _code(response) == "NAME_INVALID"
    catalog = requests.get(f"{target.url}/v2/_catalog", headers=bearer(token(target, "b", "registry:catalog:*")),
                           timeout=10).json()["repositories"]
    assert "b/esc" not in catalog and "b/esc/x" not in catalog


def test_a_non_ascii_name_gets_a_json_error(target: RunningStack) -> None:
    answer = _raw(target, "GET /v2/b/été/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"application/json" in head
    assert json.loads(body)["errors"][0]["code"] in OCI_CODES


def _put_manifest(stack: RunningStack, user: str, name: str, body: bytes, tag: str = "t") -> requests.Response:
    headers = {**bearer(token(stack, user, f"repository:{name}:pull,push")),
               "Content-Type": mediatypes.OCI_MANIFEST}
    return requests.put(f"{stack.url}/v2/{name}/manifests/{tag}", data=body, headers=headers, timeout=30)


def test_a_deeply_nested_manifest_is_refused_cleanly(target: RunningStack) -> None:
    body = b'{"schemaVersion": 2, "x": ' + b"[" * 10000 + b"]" * 10000 + b"}"
    response = _put_manifest(target, "b", "b/deep", body)
    assert response.status_code == 400 and _code(response) == "MANIFEST_INVALID"


def test_duplicate_keys_are_refused(target: RunningStack) -> None:
    config = push_blob(target, "b", "b/dup", b"{}")
    layer = push_blob(target, "b", "b/dup", b"checked layer")
    body = manifest(config, 2, [(layer, 13)]).decode()
    doubled = body[:-1] + ', "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "' \
        + digests.of(b"unchecked") + '", "size": 9}]}'
    response = _put_manifest(target, "b", "b/dup", doubled.encode())
    assert response.status_code == 400 and _code(response) == "MANIFEST_INVALID"
    headers = bearer(token(target, "b", "repository:b/dup:pull"))
    assert requests.get(f"{target.url}/v2/b/dup/manifests/t", headers=headers, timeout=10).status_code == 404


@pytest.mark.parametrize("declared", [1, 10239, 10241, 2**63 - 1, 2**64])
def test_a_descriptor_size_must_match_the_stored_blob(target: RunningStack, declared: int) -> None:
    config = push_blob(target, "b", "b/sizes", b"{}")
    layer = push_blob(target, "b", "b/sizes", b"z" * 10240)
    response = _put_manifest(target, "b", "b/sizes", manifest(config, 2, [(layer, declared)]), tag=f"s{declared}")
    assert response.status_code == 400 and _code(response) == "MANIFEST_INVALID", response.text
    headers = bearer(token(target, "b", "repository:b/sizes:pull"))
    assert requests.get(f"{target.url}/v2/b/sizes/manifests/s{declared}", headers=headers,
                        timeout=10).status_code == 404
    right = _put_manifest(target, "b", "b/sizes", manifest(config, 2, [(layer, 10240)]), tag="right")
    assert right.status_code == 201


def test_error_bodies_use_only_the_spec_codes(target: RunningStack) -> None:
    headers = bearer(token(target, "b", "registry:catalog:*", "repository:b/codes:pull,push"))
    digest = push_blob(target, "b", "b/codes", b"0123456789")
    bad_n = requests.get(f"{target.url}/v2/_catalog?n=abc", headers=headers, timeout=10)
    assert bad_n.status_code == 400 and _code(bad_n) in OCI_CODES
    beyond = requests.get(f"{target.url}/v2/b/codes/blobs/{digest}", headers={**headers, "Range": "bytes=50-60"},
                          timeout=10)
    assert beyond.status_code == 416 and (not beyond.content or _code(beyond) in OCI_CODES)
    session = requests.post(f"{target.url}/v2/b/codes/blobs/uploads/", headers=headers, timeout=10)
    skipped = requests.patch(target.url + session.headers["Location"], data=b"abc",
                             headers={**headers, "Content-Range": "5-7"}, timeout=10)
    assert skipped.status_code == 416 and _code(skipped) in OCI_CODES
    bad_tag = requests.delete(f"{target.url}/v2/b/codes/manifests/-bad-", headers=headers, timeout=10)
    assert bad_tag.status_code in (400, 401, 403, 404) and _code(bad_tag) in OCI_CODES


def test_undecodable_basic_credentials_are_a_failed_login(target: RunningStack) -> None:
    for value in ("Basic !!!notbase64", "Basic " + "w6k=", "Bearer"):
        response = requests.get(f"{target.url}/token", params={"service": "wharf"},
                                headers={"Authorization": value}, timeout=10)
        assert response.status_code == 401, (value, response.text)


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(target: RunningStack) -> None:
    response = requests.get(f"{target.url}/v2/", headers={"X-Forwarded-Proto": "https",
                                                         "X-Forwarded-Host": "evil.example"}, timeout=10)
    challenge = response.headers["WWW-Authenticate"]
    assert "evil.example" not in challenge and f'realm="http://{target.host}/token"' in challenge
    hostile_host = requests.get(f"{target.url}/v2/", headers={"Host": 'x",realm="http://evil'}, timeout=10)
    assert "evil" not in hostile_host.headers.get("WWW-Authenticate", "")


def test_a_deleted_accounts_token_lists_nothing_private(target: RunningStack, private: list[str]) -> None:
    from tests.security.conftest import PASSWORDS, admin

    admin(target, "user", "add", "gone", "--password-stdin", stdin="gone-password-1\n")
    PASSWORDS["gone"] = "gone-password-1"
    push_image(target, "gone", "gone/app")
    stale = token(target, "gone", "registry:catalog:*")
    admin(target, "user", "del", "gone")
    response = requests.get(f"{target.url}/v2/_catalog", headers=bearer(stale), timeout=10)
    assert response.status_code == 200, response.text
    listed = response.json()["repositories"]
    assert "gone/app" not in listed and not set(listed) & set(private)
