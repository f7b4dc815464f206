"""Attacks on the web interface over plain HTTP (no browser: what a hostile page or script can send):
pushed markup reaching a page, cross-site form posts, forged and planted session cookies, and a
login posted from elsewhere. tests/e2e/test_ui_browser.py shows the same in a real browser."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable

import jwt
import pytest
import requests

from tests.support.pusher import OCI_MANIFEST, digest
from tests.support.stack import RunningStack

ADMIN = "ui-attack-admin-1"
USER, PASSWORD = "mallory-target", "target-password-1"
EVIL = "<script>alert(document.cookie)</script>"


@pytest.fixture(scope="module")
def stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN, "WHARF_BCRYPT_ROUNDS": "4"})
    stack.admin(ADMIN, "user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    return stack


def _token(stack: RunningStack, scope: str) -> dict[str, str]:
    answer = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": scope},
                          auth=(USER, PASSWORD), timeout=10)
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def _push(stack: RunningStack, repository: str, tag: str) -> None:
    headers = _token(stack, f"repository:{repository}:pull,push")
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"note": EVIL}}}).encode()
    for blob in (config,):
        answer = requests.post(f"{stack.url}/v2/{repository}/blobs/uploads/", params={"digest": digest(blob)},
                               data=blob, headers=headers, timeout=10)
        assert answer.status_code == 201, answer.text
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(config), "size": len(config)},
                           "annotations": {"org.example.evil": EVIL}}).encode()
    answer = requests.put(f"{stack.url}/v2/{repository}/manifests/{tag}", data=manifest,
                          headers={**headers, "Content-Type": OCI_MANIFEST}, timeout=10)
    assert answer.status_code == 201, answer.text


def _csrf(page: requests.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def _signed_in(stack: RunningStack) -> tuple[requests.Session, str]:
    """A browser-like session signed in through the login form; its CSRF token."""
    browser = requests.Session()
    form = browser.get(f"{stack.url}/ui/login", timeout=10)
    answer = browser.post(f"{stack.url}/ui/login", data={"csrf": _csrf(form), "username": USER,
                                                          "password": PASSWORD},
                          headers={"Origin": stack.url}, allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 303), answer.text
    return browser, _csrf(browser.get(f"{stack.url}/ui/delete", params={"name": f"{USER}/app", "ref": "v1"},
                                      timeout=10))


def test_pushed_markup_is_escaped_and_the_policy_forbids_inline_script(stack: RunningStack) -> None:
    _push(stack, f"{USER}/app", "v1")
    browser, _ = _signed_in(stack)
    page = browser.get(f"{stack.url}/ui/manifest", params={"name": f"{USER}/app", "ref": "v1"}, timeout=10)
    assert page.status_code == 200
    assert EVIL not in page.text and "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page.text
    assert not re.search(r"<script(?![^>]*\bsrc=\"/ui/static/)", page.text)  # only the page's own script file
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_a_cross_site_delete_changes_nothing(stack: RunningStack) -> None:
    _push(stack, f"{USER}/keep", "v1")
    browser, csrf = _signed_in(stack)
    target = {"name": f"{USER}/keep", "ref": "v1"}
    for data, headers in (({**target}, {"Origin": stack.url}),                          # no CSRF token
                          ({**target, "csrf": "0" * 64}, {"Origin": stack.url}),        # a wrong one
                          ({**target, "csrf": csrf}, {"Origin": "http://evil.example"}),  # another site
                          ({**target, "csrf": csrf}, {"Referer": "http://evil.example/page"}),
                          ({**target, "csrf": csrf}, {})):                             # neither header
        refused = browser.post(f"{stack.url}/ui/delete", data=data, headers=headers, allow_redirects=False,
                               timeout=10)
        assert refused.status_code == 403, (headers, refused.status_code)
    tags = requests.get(f"{stack.url}/v2/{USER}/keep/tags/list", headers=_token(stack, f"repository:{USER}/keep:pull"),
                        timeout=10)
    assert tags.json()["tags"] == ["v1"]
    done = browser.post(f"{stack.url}/ui/delete", data={**target, "csrf": csrf}, headers={"Origin": stack.url},
                        allow_redirects=False, timeout=10)
    assert done.status_code in (302, 303)


def test_forged_and_planted_cookies_speak_for_nobody(stack: RunningStack) -> None:
    _push(stack, f"{USER}/private", "v1")
    now = int(time.time())
    forged = jwt.encode({"iss": "wharf-auth", "sub": "admin", "aud": "wharf", "exp": now + 300, "nbf": now,
                         "iat": now, "access": [{"type": "registry", "name": "admin", "actions": ["*"]}]},
                        "not-the-key", algorithm="HS256")
    cookie = base64.urlsafe_b64encode(json.dumps({"sid": "x" * 32, "t": forged, "r": ""}).encode()).decode()
    for value in (cookie.rstrip("="), "%00" * 10, "A" * 5000, "e30"):
        visitor = requests.get(f"{stack.url}/ui/repositories", cookies={"wharf_ui": value}, timeout=10)
        assert f"{USER}/private" not in visitor.text
        page = requests.get(f"{stack.url}/ui/manifest", params={"name": f"{USER}/private", "ref": "v1"},
                            cookies={"wharf_ui": value}, timeout=10)
        assert page.status_code in (401, 403, 404) and EVIL not in page.text
    # A login posted from another site, or without the login page's session, is refused.
    assert requests.post(f"{stack.url}/ui/login", data={"username": USER, "password": PASSWORD},
                         headers={"Origin": stack.url}, allow_redirects=False, timeout=10).status_code == 403
    browser = requests.Session()
    form = browser.get(f"{stack.url}/ui/login", timeout=10)
    planted = browser.cookies.get("wharf_ui")
    assert browser.post(f"{stack.url}/ui/login", data={"csrf": _csrf(form), "username": USER, "password": PASSWORD},
                        headers={"Origin": "http://evil.example"}, allow_redirects=False,
                        timeout=10).status_code == 403
    # Signing in replaces the session id: one planted before is worth nothing after.
    answer = browser.post(f"{stack.url}/ui/login", data={"csrf": _csrf(form), "username": USER,
                                                          "password": PASSWORD},
                          headers={"Origin": stack.url}, allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 303)
    assert browser.cookies.get("wharf_ui") != planted
    set_cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie


def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(stack: RunningStack) -> None:
    """Sign-out ended only the browser's cookie: a copy of it (a shared machine, a proxy's log)
    stayed signed in for the refresh token's 30 days, renewing its access token at will."""
    browser, _ = _signed_in(stack)
    cookie = browser.cookies.get("wharf_ui")
    assert cookie
    fields = json.loads(base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)))
    home = browser.get(f"{stack.url}/", timeout=10)
    answer = browser.post(f"{stack.url}/ui/logout", data={"csrf": _csrf(home)}, headers={"Origin": stack.url},
                          allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 303), answer.text
    refreshed = requests.post(f"{stack.url}/token", data={"grant_type": "refresh_token", "service": "wharf",
                                                           "refresh_token": fields["r"], "client_id": "copy"},
                              timeout=10)
    assert refreshed.status_code == 401, refreshed.text
    # The copy with its access token spoilt must renew it, and cannot any more.
    spoilt = base64.urlsafe_b64encode(json.dumps({**fields, "t": "expired.or.garbage"}).encode()).decode()
    page = requests.get(f"{stack.url}/ui/repository", params={"name": f"{USER}/app"}, timeout=10,
                        cookies={"wharf_ui": spoilt.rstrip("=")})
    assert "Sign out" not in page.text


def test_a_crafted_deleted_message_is_not_shown_and_a_throttled_sign_in_says_when_to_retry(
        stack: RunningStack) -> None:
    browser, _ = _signed_in(stack)
    crafted = "Your account is suspended: call 555-0100"
    page = browser.get(f"{stack.url}/ui/repository", params={"name": f"{USER}/app", "deleted": crafted}, timeout=10)
    assert page.status_code == 200 and "555-0100" not in page.text
    shown = browser.get(f"{stack.url}/ui/repository", params={"name": f"{USER}/app", "deleted": "v1"}, timeout=10)
    assert "v1" in shown.text
    guesser = requests.Session()
    for _ in range(12):
        form = guesser.get(f"{stack.url}/ui/login", timeout=10)
        answer = guesser.post(f"{stack.url}/ui/login", data={"csrf": _csrf(form), "username": "nobody-here",
                                                              "password": "wrong-guess"},
                              headers={"Origin": stack.url}, allow_redirects=False, timeout=10)
        if answer.status_code == 429:
            break
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
