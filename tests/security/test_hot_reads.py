"""The hot-read path (services/api/hot_reads.py) answers cache hits before Flask: a warm cache must
never answer a caller, a path or an Accept header that the full path would refuse."""

from __future__ import annotations

import socket

import requests

from services.common import mediatypes
from tests.security.conftest import bearer, push_image, token
from tests.support.stack import RunningStack

# Every gateway worker's cache gets warm after a few fresh connections.
_WARM = 8


def _warm(stack: RunningStack, name: str, reference: str, auth: dict[str, str]) -> None:
    for _ in range(_WARM):
        with requests.Session() as fresh:
            response = fresh.get(f"{stack.url}/v2/{name}/manifests/{reference}",
                                 headers={**auth, "Accept": mediatypes.OCI_MANIFEST}, timeout=10)
            assert response.status_code == 200


def _each_worker(method: str, url: str, headers: dict[str, str]) -> set[int]:
    statuses = set()
    for _ in range(_WARM):
        with requests.Session() as fresh:
            statuses.add(fresh.request(method, url, headers=headers, timeout=10).status_code)
    return statuses


def test_a_warm_cache_never_answers_without_the_right_token(target: RunningStack) -> None:
    digest = push_image(target, "a", "a/hot-private")
    owner = bearer(token(target, "a", "repository:a/hot-private:pull"))
    _warm(target, "a/hot-private", "v1", owner)
    layer = requests.get(f"{target.url}/v2/a/hot-private/manifests/v1", timeout=10,
                         headers={**owner, "Accept": mediatypes.OCI_MANIFEST}).json()["layers"][0]["digest"]
    for method, path in (("GET", "manifests/v1"), ("HEAD", "manifests/v1"), ("GET", f"manifests/{digest}"),
                         ("HEAD", f"blobs/{layer}")):
        url = f"{target.url}/v2/a/hot-private/{path}"
        assert _each_worker(method, url, owner) == {200}, (method, path)
        assert _each_worker(method, url, {}) == {401}, (method, path)  # anonymous
        other = bearer(token(target, "b", "repository:a/hot-private:pull"))  # asked for it and was refused
        assert _each_worker(method, url, other) == {403}, (method, path)
        foreign = bearer(token(target, "a", "repository:a/other:pull"))  # a's token, for another repository
        assert _each_worker(method, url, foreign) == {401}, (method, path)
        assert _each_worker(method, url, bearer(owner["Authorization"][7:] + "x")) == {401}, (method, path)
    # The challenge on a refused hit is the full path's, scope included.
    refused = requests.get(f"{target.url}/v2/a/hot-private/manifests/v1", timeout=10)
    assert 'scope="repository:a/hot-private:pull"' in refused.headers["WWW-Authenticate"]
    assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_a_warm_cache_still_negotiates_and_refuses_encoded_names(target: RunningStack) -> None:
    push_image(target, "a", "a/hot-negotiate")
    owner = bearer(token(target, "a", "repository:a/hot-negotiate:pull"))
    _warm(target, "a/hot-negotiate", "v1", owner)
    url = f"{target.url}/v2/a/hot-negotiate/manifests/v1"
    refusing = {**owner, "Accept": f"{mediatypes.DOCKER_MANIFEST}, {mediatypes.OCI_MANIFEST};q=0"}
    assert _each_worker("GET", url, refusing) == {404}
    assert requests.get(url, headers=refusing, timeout=10).json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    encoded = requests.get(f"{target.url}/v2/a%2Fhot-negotiate/manifests/v1", headers=owner, timeout=10)
    assert encoded.status_code == 400 and encoded.json()["errors"][0]["code"] == "NAME_INVALID"


def test_hits_carry_the_same_headers_as_misses(target: RunningStack) -> None:
    """The first request of a fresh repository is a miss (the full path); the later ones are hits."""
    push_image(target, "a", "a/hot-headers")
    owner = bearer(token(target, "a", "repository:a/hot-headers:pull"))
    url = f"{target.url}/v2/a/hot-headers/manifests/v1"
    volatile = {"date", "x-request-id", "connection"}

    def seen(method: str) -> set[tuple[tuple[str, str], ...]]:
        found = set()
        for _ in range(_WARM):
            with requests.Session() as fresh:
                response = fresh.request(method, url, headers={**owner, "Accept": mediatypes.OCI_MANIFEST},
                                         timeout=10)
                found.add(tuple(sorted((k.lower(), v) for k, v in response.headers.items()
                                       if k.lower() not in volatile)))
        return found

    assert len(seen("GET")) == 1 and len(seen("HEAD")) == 1
    echoed = requests.get(url, headers={**owner, "Accept": mediatypes.OCI_MANIFEST, "X-Request-Id": "trace-1"},
                          timeout=10)
    assert echoed.headers["X-Request-Id"] == "trace-1"
    forged = requests.get(url, headers={**owner, "Accept": mediatypes.OCI_MANIFEST, "X-Request-Id": "a\tb"},
                          timeout=10)
    assert forged.headers["X-Request-Id"] != "a\tb" and len(forged.headers["X-Request-Id"]) == 32


def _raw(stack: RunningStack, head: str) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh socket; (status, headers by lower-case name, body)."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    top, _, body = answer.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_the_version_check_on_the_hot_path_answers_as_the_full_path(target: RunningStack) -> None:
    """``/v2/`` is answered before Flask for a caller the full path lets through, and only then: the
    same status, headers and body as the full path (reached here with a chunked, empty body,
    which the hot path never takes)."""
    valid = token(target, "a")
    volatile = {"date", "x-request-id", "connection", "transfer-encoding"}
    for method in ("GET", "HEAD"):
        for path in ("/v2/", "/v2"):
            base = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {valid}\r\nConnection: close\r\n"
            hot = _raw(target, base + "\r\n")
            full = _raw(target, base + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            assert hot[0] == full[0] == 200, (method, path, hot, full)
            assert {k: v for k, v in hot[1].items() if k not in volatile} == \
                   {k: v for k, v in full[1].items() if k not in volatile}, (method, path)
            assert hot[2] == full[2] == (b"{}" if method == "GET" else b"")
            assert hot[1]["x-request-id"]
        assert _each_worker(method, f"{target.url}/v2/", {}) == {401}
        assert _each_worker(method, f"{target.url}/v2/", bearer(valid + "x")) == {401}
        assert _each_worker(method, f"{target.url}/v2/", bearer(valid)) == {200}
    challenge = requests.get(f"{target.url}/v2/", timeout=10)
    assert challenge.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert challenge.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_a_tag_list_on_the_hot_path_answers_as_the_full_path_and_stays_current(target: RunningStack) -> None:
    """A repository's whole tag list is answered before Flask once cached: to the same callers, with
    the same status, headers and body as the full path (reached with a chunked, empty body), and
    never stale: a tag pushed or deleted shows on every worker's next answer."""
    name = "a/hot-tags"
    push_image(target, "a", name, "v1")
    owner = bearer(token(target, "a", f"repository:{name}:pull,push,delete"))
    url = f"{target.url}/v2/{name}/tags/list"
    assert _each_worker("GET", url, owner) == {200}
    volatile = {"date", "x-request-id", "connection", "transfer-encoding"}
    base = f"GET /v2/{name}/tags/list HTTP/1.1\r\nHost: x\r\n{'Authorization: ' + owner['Authorization']}\r\n" \
           "Connection: close\r\n"
    for _ in range(_WARM):
        hot = _raw(target, base + "\r\n")
        full = _raw(target, base + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert hot[0] == full[0] == 200 and hot[2] == full[2] == b'{"name": "a/hot-tags", "tags": ["v1"]}'
        assert {k: v for k, v in hot[1].items() if k not in volatile} == \
               {k: v for k, v in full[1].items() if k not in volatile}
    assert _each_worker("GET", url, {}) == {401}
    assert _each_worker("GET", url, bearer(token(target, "b", f"repository:{name}:pull"))) == {403}
    assert _each_worker("GET", url, bearer(token(target, "a", "repository:a/other:pull"))) == {401}
    # Coherent: a new tag, then a deleted one, on every worker at once.
    push_image(target, "a", name, "v2")
    for _ in range(_WARM):
        with requests.Session() as fresh:
            assert fresh.get(url, headers=owner, timeout=10).json()["tags"] == ["v1", "v2"]
    assert requests.delete(f"{target.url}/v2/{name}/manifests/v1", headers=owner, timeout=10).status_code == 202
    for _ in range(_WARM):
        with requests.Session() as fresh:
            assert fresh.get(url, headers=owner, timeout=10).json()["tags"] == ["v2"]
    # A page (n, last) goes the full way, with its Link: the hot path reads no query.
    push_image(target, "a", name, "v3")
    for _ in range(_WARM):
        with requests.Session() as fresh:
            assert fresh.get(url, headers=owner, timeout=10).json()["tags"] == ["v2", "v3"]
            assert fresh.get(url, params={"last": "v2"}, headers=owner, timeout=10).json()["tags"] == ["v3"]
            first = fresh.get(url, params={"n": 1}, headers=owner, timeout=10)
            assert first.json()["tags"] == ["v2"] and "last=v2" in first.headers["Link"]
