"""Token authentication against the real stack in token mode, including the attacks that must fail."""

from __future__ import annotations

import base64
import json
import pathlib
import time
from collections.abc import Callable
from concurrent import futures

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.common import digests
from tests.support.stack import RunningStack

ADMIN_PASSWORD = "admin-secret-1"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-12", "ci-bot": ""}


def admin_cli(stack: RunningStack, *args: str, stdin: str = "") -> str:
    return stack.admin(ADMIN_PASSWORD, *args, stdin=stdin)


@pytest.fixture(scope="module")
def secure(start_stack: Callable[..., RunningStack]) -> RunningStack:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                             "WHARF_BCRYPT_ROUNDS": "4", "WHARF_LOGIN_FAILURES": "5",
                             "WHARF_KEY_PUBLISH_DELAY": "2"})
    admin_cli(stack, "user", "add", "alice", "--password-stdin", stdin=PASSWORDS["alice"] + "\n")
    admin_cli(stack, "user", "add", "bob", "--password-stdin", stdin=PASSWORDS["bob"] + "\n")
    out = admin_cli(stack, "robot", "add", "ci-bot")
    PASSWORDS["ci-bot"] = out.rsplit(": ", 1)[1].strip()
    admin_cli(stack, "grant", "ci-bot", "team/*", "pull,push")
    admin_cli(stack, "grant", "bob", "alice/shared", "pull")
    admin_cli(stack, "repo", "public", "alice/public")
    return stack


def token(stack: RunningStack, user: str | None, *scopes: str, **params: str) -> dict[str, object]:
    auth = (user, PASSWORDS[user] if user != "admin" else ADMIN_PASSWORD) if user else None
    response = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": list(scopes), **params},
                            auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def bearer(value: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def push_blob(stack: RunningStack, name: str, data: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", params={"digest": digests.of(data)}, data=data,
                         headers=headers, timeout=10)


def claims(tok: object) -> dict[str, object]:
    return dict(jwt.decode(str(tok), options={"verify_signature": False}))


def signing_key(stack: RunningStack) -> tuple[str, ec.EllipticCurvePrivateKey]:
    path = sorted((stack.data_dir / "auth" / "keys").glob("key-*.pem"))[-1]
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return str(jwt.get_unverified_header(str(token(stack, "alice")["token"]))["kid"]), key


def forged(stack: RunningStack, key: object, kid: str, algorithm: str = "ES256", **overrides: object) -> str:
    now = int(time.time())
    body = {"iss": "wharf-auth", "sub": "alice", "aud": "wharf", "exp": now + 300, "nbf": now, "iat": now,
            "jti": "x", "access": [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}]}
    body.update(overrides)
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})  # type: ignore[arg-type]


def test_challenge_names_realm_service_and_scope(secure: RunningStack) -> None:
    response = requests.post(f"{secure.url}/v2/alice/app/blobs/uploads/", params={"mount": digests.of(b"x"),
                                                                                   "from": "alice/other"}, timeout=10)
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="{secure.url}/token",service="wharf",'
        'scope="repository:alice/app:pull,push repository:alice/other:pull"')


def test_owner_pushes_and_pulls_with_claims_per_spec(secure: RunningStack) -> None:
    issued = token(secure, "alice", "repository:alice/app:pull,push", "repository:bob/app:pull")
    body = claims(issued["token"])
    assert body["sub"] == "alice" and body["aud"] == "wharf" and body["iss"] == "wharf-auth"
    assert {"exp", "nbf", "iat", "jti"} <= set(body)
    assert body["access"] == [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]},
                              {"type": "repository", "name": "bob/app", "actions": []}]
    assert push_blob(secure, "alice/app", b"owned", bearer(issued["token"])).status_code == 201
    got = requests.get(f"{secure.url}/v2/alice/app/blobs/{digests.of(b'owned')}", headers=bearer(issued["token"]),
                       timeout=10)
    assert got.status_code == 200 and got.content == b"owned"


def test_token_for_one_repository_fails_on_another(secure: RunningStack) -> None:
    tok = token(secure, "alice", "repository:alice/app:pull,push")["token"]
    response = requests.get(f"{secure.url}/v2/alice/other/tags/list", headers=bearer(tok), timeout=10)
    assert response.status_code == 401 and 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_push_with_a_pull_only_token_is_denied(secure: RunningStack) -> None:
    tok = token(secure, "bob", "repository:alice/shared:pull,push")["token"]
    assert claims(tok)["access"] == [{"type": "repository", "name": "alice/shared", "actions": ["pull"]}]
    response = push_blob(secure, "alice/shared", b"nope", bearer(tok))
    assert response.status_code == 403 and response.json()["errors"][0]["code"] == "DENIED"
    # The message names who, the action attempted and the repository (not "may not pull,push").
    assert response.json()["errors"][0]["message"] == "bob may not push to alice/shared"


def test_anonymous_push_is_refused_and_public_pull_allowed(secure: RunningStack) -> None:
    assert push_blob(secure, "alice/public", b"anon", {}).status_code == 401
    anon = token(secure, None, "repository:alice/public:pull,push")["token"]
    assert claims(anon)["access"] == [{"type": "repository", "name": "alice/public", "actions": ["pull"]}]
    assert push_blob(secure, "alice/public", b"anon", bearer(anon)).status_code == 403
    response = requests.get(f"{secure.url}/v2/alice/public/blobs/{digests.of(b'anon')}", headers=bearer(anon),
                            timeout=10)
    assert response.status_code == 404  # allowed to look, nothing there


def test_robot_uses_its_grants_only(secure: RunningStack) -> None:
    tok = token(secure, "ci-bot", "repository:team/app:pull,push", "repository:ci-bot/own:push")["token"]
    access = claims(tok)["access"]
    assert access == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
                      {"type": "repository", "name": "ci-bot/own", "actions": []}]


def test_expired_foreign_none_tampered_and_confused_tokens_fail(secure: RunningStack) -> None:
    kid, key = signing_key(secure)
    url = f"{secure.url}/v2/alice/app/tags/list"
    assert requests.get(url, headers=bearer(forged(secure, key, kid)), timeout=10).status_code in (200, 404)
    expired = forged(secure, key, kid, exp=int(time.time()) - 120)
    other_key = ec.generate_private_key(ec.SECP256R1())
    foreign = forged(secure, other_key, kid)
    wrong_aud = forged(secure, key, kid, aud="elsewhere")
    wrong_iss = forged(secure, key, kid, iss="mallory")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": kid}).encode()).rstrip(b"=").decode()
    good = forged(secure, key, kid)
    payload = good.split(".")[1]
    none_alg = f"{header}.{payload}."
    evil = json.loads(base64.urlsafe_b64decode(payload + "=="))
    evil["access"][0]["name"] = "bob/app"
    tampered_payload = base64.urlsafe_b64encode(json.dumps(evil).encode()).rstrip(b"=").decode()
    tampered = ".".join([good.split(".")[0], tampered_payload, good.split(".")[2]])
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    hmac_header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    import hashlib
    import hmac
    signing_input = hmac_header.rstrip(b"=") + b"." + payload.encode()
    mac = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    confused = (signing_input + b"." + mac).decode()
    for bad in [expired, foreign, wrong_aud, wrong_iss, none_alg, tampered, confused, "garbage"]:
        response = requests.get(url, headers=bearer(bad), timeout=10)
        assert response.status_code == 401, bad
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_refresh_tokens_work_until_revoked(secure: RunningStack) -> None:
    issued = token(secure, "alice", "repository:alice/app:pull", offline_token="true")
    refresh = issued["refresh_token"]
    form = {"grant_type": "refresh_token", "refresh_token": refresh, "service": "wharf",
            "scope": "repository:alice/app:pull", "client_id": "tests"}
    again = requests.post(f"{secure.url}/token", data=form, timeout=10)
    assert again.status_code == 200 and claims(again.json()["access_token"])["sub"] == "alice"
    admin_cli(secure, "token", "revoke", "alice")
    revoked = requests.post(f"{secure.url}/token", data=form, timeout=10)
    assert revoked.status_code == 401


def test_oauth_password_grant_issues_refresh_token(secure: RunningStack) -> None:
    form = {"grant_type": "password", "username": "bob", "password": PASSWORDS["bob"], "service": "wharf",
            "client_id": "docker", "access_type": "offline", "scope": "repository:bob/app:pull,push"}
    response = requests.post(f"{secure.url}/token", data=form, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["refresh_token"] and claims(body["access_token"])["access"][0]["actions"] == ["pull", "push"]



def test_the_oauth_answer_names_what_was_granted_and_a_star_refused_in_part_is_403(secure: RunningStack) -> None:
    """The "scope" of the OAuth answer is the granted subset (RFC 6749, 5.1), not the request
    echoed back; a "*" granted in part refuses the rest by name, so a DELETE gets 403 DENIED
    (asking again would not help), not 401."""
    form = {"grant_type": "password", "username": "ci-bot", "password": PASSWORDS["ci-bot"], "service": "wharf",
            "client_id": "probe", "scope": "repository:team/app:* repository:alice/private:pull"}
    body = requests.post(f"{secure.url}/token", data=form, timeout=10).json()
    assert body["scope"] == "repository:team/app:pull,push"
    deleted = requests.delete(f"{secure.url}/v2/team/app/manifests/{digests.of(b'x')}",
                              headers=bearer(body["access_token"]), timeout=10)
    assert deleted.status_code == 403 and deleted.json()["errors"][0]["code"] == "DENIED"

def test_a_refused_login_at_the_token_endpoint_carries_a_challenge(secure: RunningStack) -> None:
    """Found by the API fuzzer: /token answered 401 without WWW-Authenticate, which RFC 9110 requires."""
    challenge = 'Basic realm="wharf", charset="UTF-8"'
    refused = [
        requests.get(f"{secure.url}/token", params={"service": "wharf"}, auth=("mallory", "wrong-password"),
                     timeout=10),
        requests.get(f"{secure.url}/token", headers={"Authorization": "Bearer not-basic"}, timeout=10),
        requests.post(f"{secure.url}/token", data={"grant_type": "password", "username": "mallory",
                                                   "password": "wrong-password"}, timeout=10),
    ]
    for response in refused:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == challenge
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_catalog_needs_an_account_and_is_filtered(secure: RunningStack) -> None:
    alice = token(secure, "alice", "repository:alice/app:pull,push")["token"]
    push_blob(secure, "alice/app", b"cat", bearer(alice))
    assert requests.get(f"{secure.url}/v2/_catalog", timeout=10).status_code == 401
    anon = token(secure, None, "registry:catalog:*")["token"]
    assert requests.get(f"{secure.url}/v2/_catalog", headers=bearer(anon), timeout=10).status_code == 403
    bob = token(secure, "bob", "registry:catalog:*")["token"]
    listed = requests.get(f"{secure.url}/v2/_catalog", headers=bearer(bob), timeout=10)
    assert listed.status_code == 200 and "alice/app" not in listed.json()["repositories"]
    mine = token(secure, "alice", "registry:catalog:*")["token"]
    assert "alice/app" in requests.get(f"{secure.url}/v2/_catalog", headers=bearer(mine),
                                       timeout=10).json()["repositories"]


def test_repeated_wrong_passwords_are_rate_limited(secure: RunningStack) -> None:
    statuses = []
    for _ in range(20):
        response = requests.get(f"{secure.url}/token", params={"service": "wharf"}, auth=("bob", "wrong-password"),
                                timeout=10)
        statuses.append(response.status_code)
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    # Even the right password waits out the lockout, for that account and address.
    locked = requests.get(f"{secure.url}/token", params={"service": "wharf"}, auth=("bob", PASSWORDS["bob"]),
                          timeout=10)
    assert locked.status_code == 429


@pytest.fixture(scope="module")
def real_cost(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """Token mode with bcrypt at its real cost (12: a quarter of a second a check) and a small pool
    of auth threads, where a storm of logins shows."""
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                             "WHARF_AUTH_WORKERS": "4"})
    admin_cli(stack, "user", "add", "fleet", "--password-stdin", stdin="fleet-secret-1\n")
    return stack


def _login(stack: RunningStack, auth: tuple[str, str] | None) -> int:
    return requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": "repository:fleet/x:pull"},
                        auth=auth, timeout=60).status_code


def test_a_storm_of_identical_logins_costs_one_password_check(real_cost: RunningStack) -> None:
    """One account's password sent by 60 clients at once (a node pool scaling up, a CI fleet):
    every one gets a token. Each was a bcrypt check; the throttle let a few run and refused the
    rest after a wait: 100 at once took 10 s, and 22 were refused (429, or 503 past the gateway's
    deadline; with this stack's 4 threads, 60 took 13 s). Now identical logins share one check
    (services/auth/verified.py): measured here 0.4 s."""
    started = time.monotonic()
    with futures.ThreadPoolExecutor(60) as pool:
        assert list(pool.map(lambda _: _login(real_cost, ("fleet", "fleet-secret-1")), range(60))) == [200] * 60
    assert time.monotonic() - started < 6


def test_password_checks_queue_no_other_token(real_cost: RunningStack) -> None:
    """30 logins of names no account has (each checked against a dummy hash, at the same cost)
    fill the auth service's threads for seconds; an anonymous token meanwhile is answered at once,
    since logins have a pool of their own (before, it waited behind them)."""
    with futures.ThreadPoolExecutor(30) as pool:
        logins = [pool.submit(_login, real_cost, (f"nobody{i}", "some-password")) for i in range(30)]
        time.sleep(0.5)  # the logins are in the auth service
        waits = []
        for _ in range(5):
            started = time.monotonic()
            assert _login(real_cost, None) == 200
            waits.append(time.monotonic() - started)
            time.sleep(0.2)
        assert {login.result() for login in logins} == {401}
    assert max(waits) < 1.5, waits


def test_key_rotation_keeps_old_tokens_valid(secure: RunningStack) -> None:
    old = token(secure, "alice", "repository:alice/app:pull")["token"]
    admin_cli(secure, "keys", "rotate")
    # The new key is published first and signs once the publish delay (2 s here) has passed.
    assert jwt.get_unverified_header(token(secure, "alice")["token"])["kid"] == jwt.get_unverified_header(old)["kid"]
    deadline = time.monotonic() + 10
    while True:
        new = token(secure, "alice", "repository:alice/app:pull")["token"]
        if jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]:
            break
        assert time.monotonic() < deadline, "the rotated key never started signing"
        time.sleep(0.2)
    for tok in (old, new):
        response = requests.get(f"{secure.url}/v2/alice/app/blobs/{digests.of(b'owned')}", headers=bearer(tok),
                                timeout=10)
        assert response.status_code in (200, 404)


def test_a_login_form_that_cannot_be_read_is_the_clients_error(secure: RunningStack) -> None:
    """A form body with a malformed chunk was an internal error (500, a traceback per request), and
    the audit hook's read of a web UI form logged a traceback of its own per request."""
    import socket

    def answer(path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", secure.port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         "Transfer-Encoding: chunked\r\n\r\nzz\r\ngrant_type=password\r\n0\r\n\r\n".encode())
            data = b""
            while piece := sock.recv(65536):
                data += piece
        return data

    before = len(pathlib.Path(secure.log_path).read_bytes())
    head, _, body = answer("/token").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert json.loads(body)["errors"][0]["message"] == "the request body could not be read: a chunk size is malformed"
    for path in ("/ui/login", "/ui/delete"):
        assert answer(path).split(b" ")[1].startswith(b"4")
    time.sleep(0.5)
    lines = pathlib.Path(secure.log_path).read_bytes()[before:].decode(errors="replace").splitlines()
    assert not [line for line in lines if '"level": "error"' in line or "Traceback" in line], lines


def test_secrets_never_reach_the_logs(secure: RunningStack) -> None:
    log = pathlib.Path(secure.log_path).read_text(errors="replace")
    for secret in [ADMIN_PASSWORD, PASSWORDS["alice"], PASSWORDS["bob"]]:
        assert secret not in log
