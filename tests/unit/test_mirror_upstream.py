"""The upstream client's parsing and token cache, without sockets (requests are stubbed)."""

from __future__ import annotations

import email.utils
import io
import json
import threading
import time
from collections.abc import Callable

import pytest
import urllib3

from services.common.errors import RegistryError
from services.mirror.upstream import (
    Challenge,
    UpstreamClient,
    UpstreamDenied,
    UpstreamInvalid,
    UpstreamUnavailable,
    parse_challenges,
    parse_retry_after,
)


def test_wharf_and_docker_hub_challenges() -> None:
    wharf = ('Bearer realm="https://wharf.example/token",service="wharf",'
             'scope="repository:alice/app:pull,push repository:alice/other:pull"')
    assert parse_challenges(wharf) == [Challenge("bearer", {
        "realm": "https://wharf.example/token", "service": "wharf",
        "scope": "repository:alice/app:pull,push repository:alice/other:pull"})]
    hub = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
           'scope="repository:library/alpine:pull",error="insufficient_scope"')
    assert parse_challenges(hub)[0].params["error"] == "insufficient_scope"


def test_several_challenges_case_spacing_and_quoting() -> None:
    header = ('Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXeg==, basic REALM = "a \\"quoted\\", realm" ,  '
              'BEARER realm="https://x/token", service=bare-token, realm="ignored duplicate"')
    assert parse_challenges(header) == [
        Challenge("negotiate", {}),
        Challenge("basic", {"realm": 'a "quoted", realm'}),
        Challenge("bearer", {"realm": "https://x/token", "service": "bare-token"}),
    ]


@pytest.mark.parametrize("header", ["", "   ", ",,,", '="x"', "Bearer", "Basic"])
def test_empty_or_bare_challenges(header: str) -> None:
    challenges = parse_challenges(header)
    assert all(c.params == {} for c in challenges) and len(challenges) <= 1


def test_unparsable_tails_are_dropped() -> None:
    assert parse_challenges('Bearer realm="https://x/token", "stray"') == [
        Challenge("bearer", {"realm": "https://x/token"})]
    assert parse_challenges('Bearer realm="unterminated') == [Challenge("bearer", {})]


def test_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    later = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(90, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize("url", ["http://registry.example", "ftp://registry.example", "registry.example",
                                 "https://user:hunter2@registry.example", "https://registry.example/v2/",
                                 "https://registry.example?x=1", "https://"])
def test_unusable_upstream_urls(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        UpstreamClient(url)
    assert "hunter2" not in str(caught.value)


def test_plain_http_needs_insecure() -> None:
    assert UpstreamClient("http://127.0.0.1:5000", insecure=True).host == "127.0.0.1:5000"
    assert UpstreamClient("https://registry-1.docker.io/").host == "registry-1.docker.io"


def _no_requests(*args: object, **kwargs: object) -> urllib3.BaseHTTPResponse:
    raise AssertionError("a request was sent")


@pytest.mark.parametrize("call", [
    lambda c: c.manifest("Library/Demo", "v1"), lambda c: c.manifest("a/b", "bad tag"),
    lambda c: c.manifest("a/../b", "v1"), lambda c: c.manifest("a/b", "sha256:abc"),
    lambda c: c.manifest("a/b", "v1/../../x"), lambda c: c.blob("a/b", "sha256:" + "0" * 63),
    lambda c: c.blob("a/b?x=1", "sha256:" + "0" * 64), lambda c: c.blob("a/b", "sha256:" + "G" * 64),
    lambda c: c.referrers("a/b", "md5:" + "0" * 32), lambda c: c.referrers("a/b\n", "sha256:" + "0" * 64),
])
def test_malformed_input_is_refused_before_any_request(call: Callable[[UpstreamClient], object],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client = UpstreamClient("https://registry.example")
    monkeypatch.setattr(client, "_send", _no_requests)
    with pytest.raises(RegistryError):
        call(client)


def test_errors_name_the_host() -> None:
    error = UpstreamUnavailable("registry-1.docker.io", "unreachable (timed out)", retry_after=3.0)
    assert str(error) == "upstream registry-1.docker.io unreachable (timed out)"
    assert (error.host, error.retry_after) == ("registry-1.docker.io", 3.0)


def _answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> urllib3.HTTPResponse:
    return urllib3.HTTPResponse(body=io.BytesIO(body), headers={"Content-Length": str(len(body)), **(headers or {})},
                                status=status, preload_content=False)


@pytest.mark.parametrize(("answer", "expected"), [
    ({"token": "abc", "expires_in": 300}, ("abc", 300.0)),
    ({"access_token": "abc"}, ("abc", 60.0)),
    ({"token": "abc", "access_token": "other", "expires_in": 0}, ("abc", 60.0)),
    ({"token": "abc", "expires_in": True}, ("abc", 60.0)),
    ({"token": "abc", "expires_in": "300"}, ("abc", 60.0)),
])
def test_token_answers(answer: dict[str, object], expected: tuple[str, float],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    client = UpstreamClient("https://registry.example", "user", "secret")
    sent: list[tuple[str, dict[str, str]]] = []

    def send(method: str, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        sent.append((url, headers))
        return _answer(200, json.dumps(answer).encode())

    monkeypatch.setattr(client, "_send", send)
    assert client._fetch_token("https://auth.example/token?x=1", "svc", "repository:a:pull repository:b:pull") \
        == expected
    assert sent[0][0] == "https://auth.example/token?x=1&service=svc&scope=repository%3Aa%3Apull" \
                         "&scope=repository%3Ab%3Apull"
    assert sent[0][1]["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(("status", "body", "error"), [
    (200, b'{"token": "with space"}', UpstreamInvalid), (200, b'{"token": ""}', UpstreamInvalid),
    (200, b"not json", UpstreamInvalid), (200, b'["token"]', UpstreamInvalid),
    (401, b"", UpstreamDenied), (403, b"", UpstreamDenied), (503, b"", UpstreamUnavailable),
    (302, b"", UpstreamInvalid),
])
def test_unusable_token_answers(status: int, body: bytes, error: type[Exception],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    client = UpstreamClient("https://registry.example", "user", "secret")
    monkeypatch.setattr(client, "_send", lambda method, url, headers: _answer(status, body))
    with pytest.raises(error) as caught:
        client._fetch_token("https://auth.example/token", "svc", "repository:a:pull")
    assert "secret" not in str(caught.value) and "with space" not in str(caught.value)


def test_credentials_go_to_an_http_realm_only_when_insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    secure = UpstreamClient("https://registry.example", "user", "secret")
    monkeypatch.setattr(secure, "_send", _no_requests)
    with pytest.raises(UpstreamInvalid, match="not https"):
        secure._fetch_token("http://auth.example/token", "svc", "repository:a:pull")
    anonymous = UpstreamClient("https://registry.example")
    monkeypatch.setattr(anonymous, "_send", lambda method, url, headers: _answer(200, b'{"token": "t"}'))
    assert anonymous._fetch_token("http://auth.example/token", "svc", "repository:a:pull") == ("t", 60.0)


def test_one_fetch_per_scope_for_concurrent_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    client = UpstreamClient("https://registry.example")
    fetched: list[str] = []

    def fetch(realm: str, service: str, scope: str) -> tuple[str, float]:
        time.sleep(0.2)  # long enough for every caller to be waiting
        fetched.append(scope)
        return f"token-{len(fetched)}", 300.0

    monkeypatch.setattr(client, "_fetch_token", fetch)
    got: list[str] = []
    keys = [("https://auth/token", "svc", f"repository:{name}:pull") for name in ("a", "b")]
    threads = [threading.Thread(target=lambda k=key: got.append(client._token(k, None)))
               for key in keys for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(fetched) == ["repository:a:pull", "repository:b:pull"]
    assert sorted(set(got)) == ["token-1", "token-2"] and len(got) == 20
    # A token the upstream refused is not handed out again; its replacement is cached.
    stale = client._token(keys[0], None)
    fresh = client._token(keys[0], stale)
    assert fresh != stale and client._token(keys[0], stale) == fresh and len(fetched) == 3


def test_a_failed_fetch_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    client = UpstreamClient("https://registry.example")
    calls: list[int] = []

    def fetch(realm: str, service: str, scope: str) -> tuple[str, float]:
        calls.append(1)
        if len(calls) == 1:
            raise UpstreamUnavailable("auth", "unreachable (timed out)")
        return "ok", 300.0

    monkeypatch.setattr(client, "_fetch_token", fetch)
    with pytest.raises(UpstreamUnavailable):
        client._token(("r", "s", "scope"), None)
    assert client._token(("r", "s", "scope"), None) == "ok"
    assert client._flights == {}
