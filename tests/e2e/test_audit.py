"""Issue 19, the audit log, end to end: a token-mode stack, skopeo pushing, deleting, being
refused and failing to log in, wharf-admin changing accounts, then `wharf-admin audit --jsonl`
showing each with who, from where, what and the result, its filters, hostile values stored
bounded and clean, and anonymous pulls not recorded at all."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.images import write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

ADMIN = "audit-admin-pw1"
USER, PASSWORD = "dora", "dora-secret-1"
# What a header can carry past the HTTP parser: tabs, bytes beyond ASCII, length (CR, LF and other
# controls are refused by it; they reach the audit log through the Basic credentials' name instead).
HOSTILE_AGENT = b"evil\t\xe9\xff<script>" + b"A" * 5000


@pytest.fixture(scope="module")
def secure(start_stack: Callable[..., RunningStack]) -> RunningStack:
    return start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN, "WHARF_BCRYPT_ROUNDS": "4"})


def _admin(stack: RunningStack, *args: str, password: str = ADMIN, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """wharf-admin beside the stack, told nothing but its data directory (as beside `make run`)."""
    told = ("WHARF_REDIS_URL", "WHARF_METADATA_ADDR", "WHARF_BLOBSTORE_ADDR", "WHARF_INTERNAL_TOKEN_FILE")
    env = {k: v for k, v in os.environ.items() if k not in told}
    env.update(WHARF_DATA_DIR=str(stack.data_dir), WHARF_ADMIN_PASSWORD=password)
    return subprocess.run([sys.executable, "-m", "services.auth.admin_cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60)


def audit(stack: RunningStack, *args: str) -> list[dict[str, Any]]:
    result = _admin(stack, "audit", "--jsonl", "--all", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _request(stack: RunningStack, method: str, path: str, headers: dict[str, str] | None = None,
             data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(stack.url + path, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _token(stack: RunningStack, scope: str) -> str:
    status, body = _request(stack, "GET", "/token?" + urllib.parse.urlencode({"service": "wharf", "scope": scope}),
                            {"Authorization": _basic(USER, PASSWORD)})
    assert status == 200, body
    return str(json.loads(body)["token"])


def _wait_for(stack: RunningStack, check: Callable[[list[dict[str, Any]]], bool], *args: str) -> list[dict[str, Any]]:
    """The audit log once ``check`` holds and no more records arrive. Records come in batches,
    each gateway worker's at most a second apart (services/api/audit.py), so a read that meets
    ``check`` may still precede a batch: CI once counted 33 records, then 43 a moment later."""
    deadline = time.monotonic() + 15
    while True:
        records = audit(stack, *args)
        if time.monotonic() > deadline:
            return records
        if check(records):
            time.sleep(1.5)  # past the next flush of every worker
            settled = audit(stack, *args)
            if len(settled) == len(records) or time.monotonic() > deadline:
                return settled
            continue
        time.sleep(0.3)


def _find(records: list[dict[str, Any]], **want: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in want.items())]


def test_writes_logins_and_admin_changes_are_recorded_with_who_where_what_and_result(
        secure: RunningStack, tmp_path: pathlib.Path) -> None:
    started_ms = int(time.time() * 1000)
    # Admin changes (through the auth service), one of them refused, and a failed admin login.
    assert _admin(secure, "user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    assert _admin(secure, "user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n").returncode != 0
    assert _admin(secure, "repo", "public", f"{USER}/public").returncode == 0
    assert _admin(secure, "user", "list", password="not-the-password").returncode != 0

    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")
    image = write_oci_index_layout(tmp_path / "in", "v1")
    layout = f"oci:{tmp_path / 'in'}:v1"
    creds = f"--dest-creds={USER}:{PASSWORD}"
    skopeo.copy(layout, f"docker://{secure.host}/{USER}/app:v1", "--all", creds)
    skopeo.copy(layout, f"docker://{secure.host}/{USER}/public:v1", "--all", creds)
    # A denied push (someone else's namespace) and a failed login.
    denied = subprocess.run([*skopeo.argv, "copy", "--all", "--dest-tls-verify=false", creds, layout,
                             f"docker://{secure.host}/someone/else:v1"], env=skopeo.env, capture_output=True,
                            timeout=120)
    assert denied.returncode != 0
    # The same, refused at the first write itself (a client that does not look first).
    token = _token(secure, "repository:someone/else:pull,push")
    assert _request(secure, "POST", "/v2/someone/else/blobs/uploads/", {"Authorization": f"Bearer {token}"})[0] == 403
    bad = subprocess.run([*skopeo.argv, "login", "--tls-verify=false", "-u", USER, "-p", "wrong-password",
                          secure.host], env=skopeo.env, capture_output=True, timeout=60)
    assert bad.returncode != 0
    # A tag delete and a manifest delete, over HTTP with a token.
    token = _token(secure, f"repository:{USER}/app:pull,push,delete")
    bearer = {"Authorization": f"Bearer {token}"}
    status, _ = _request(secure, "PUT", f"/v2/{USER}/app/manifests/v2", {**bearer, "Content-Type": image.media_type},
                         image.root)
    assert status == 201
    assert _request(secure, "DELETE", f"/v2/{USER}/app/manifests/v2", bearer)[0] == 202
    assert _request(secure, "DELETE", f"/v2/{USER}/app/manifests/{image.digest}", bearer)[0] == 202
    # Anonymous pulls of a public repository: no login, nothing written, nothing recorded.
    status, body = _request(secure, "GET", "/token?" + urllib.parse.urlencode(
        {"service": "wharf", "scope": f"repository:{USER}/public:pull"}))
    assert status == 200
    anonymous = {"Authorization": f"Bearer {json.loads(body)['token']}", "Accept": image.media_type}
    assert _request(secure, "GET", f"/v2/{USER}/public/manifests/v1", anonymous)[0] == 200

    # Each gateway worker sends its own batch: wait for the last of each kind asserted below
    # (the failed /token login once arrived after the rest, from the other worker).
    records = _wait_for(secure, lambda rs: bool(_find(rs, action="delete", result="ok")
                                                and _find(rs, action="admin-login", result="UNAUTHORIZED")
                                                and _find(rs, action="login", account=USER, result="UNAUTHORIZED")
                                                and _find(rs, repository="someone/else", action="upload")))
    for record in records:
        assert record["at_ms"] >= started_ms - 5000 and record["via"] in ("gateway", "auth"), record
        assert record["address"] in ("127.0.0.1", "unix"), record
    # Admin changes: who (admin), what, the result; never a password.
    created = _find(records, action="account-create", reference=USER)
    assert [r["result"] for r in created] == ["ACCOUNT_EXISTS", "ok"], created  # newest first
    assert all(r["account"] == "admin" and r["account_kind"] == "user" and r["via"] == "auth" for r in created)
    assert _find(records, action="visibility", reference=f"{USER}/public", detail="public", result="ok")
    assert _find(records, action="admin-login", account="admin", result="ok")
    assert _find(records, action="admin-login", account="admin", result="UNAUTHORIZED")
    assert PASSWORD not in json.dumps(records) and ADMIN not in json.dumps(records)
    # Pushes: blobs, manifests and the tag, by dora, from the loopback address.
    pushed = _find(records, action="push", repository=f"{USER}/app", reference="v1")
    assert pushed and pushed[0]["result"] == "ok" and pushed[0]["status"] == 201 and pushed[0]["account"] == USER
    assert f"digest {image.digest}" in pushed[0]["detail"]
    assert pushed[0]["user_agent"].startswith("skopeo/")
    assert _find(records, action="upload", repository=f"{USER}/app", result="ok", status=201)
    # The refused push is recorded with the account that tried, and the code and status it got:
    # skopeo is refused at its first look at the repository (a HEAD), a direct POST at the write.
    refused = _find(records, repository="someone/else")
    assert {r["action"] for r in refused} == {"pull", "upload"}, refused
    assert all(r["result"] == "DENIED" and r["status"] == 403 and r["account"] == USER for r in refused), \
        json.dumps(refused, indent=1)
    # Logins at /token: the successful ones and the failed one, with the account attempted.
    assert _find(records, action="login", account=USER, result="ok", via="gateway")
    assert _find(records, action="login", account=USER, result="UNAUTHORIZED", status=401)
    # Deletes: a tag, then the manifest by digest.
    assert _find(records, action="untag", repository=f"{USER}/app", reference="v2", result="ok", status=202)
    assert _find(records, action="delete", repository=f"{USER}/app", reference=image.digest, result="ok")
    # Anonymous token requests are not logins; the anonymous pull is no write.
    assert not _find(records, action="login", account="")
    assert not _find(records, repository=f"{USER}/public", account="")
    # Newest first.
    assert [r["id"] for r in records] == sorted((r["id"] for r in records),
                                                key=lambda i: tuple(map(int, i.split("-"))), reverse=True)

    # Filters: account, repository (a name, a pattern), action, time.
    assert {r["account"] for r in audit(secure, "--account", USER)} == {USER}
    assert {r["repository"] for r in audit(secure, "--repository", f"{USER}/app")} == {f"{USER}/app"}
    assert {r["repository"] for r in audit(secure, "--repository", f"{USER}/**")} == {f"{USER}/app",
                                                                                      f"{USER}/public"}
    assert {r["action"] for r in audit(secure, "--action", "login")} == {"login"}
    assert len(audit(secure, "--since", "10m")) == len(records)
    assert audit(secure, "--until", "2000-01-01") == []
    later = _admin(secure, "audit", "--since", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime(time.time() + 3600)))
    assert later.returncode == 0 and later.stdout == ""
    # Paging: small pages reach every record once.
    paged = _admin(secure, "audit", "--jsonl", "--limit", str(len(records)))
    assert [json.loads(line)["id"] for line in paged.stdout.splitlines()] == [r["id"] for r in records]
    oldest = audit(secure, "--oldest-first")
    assert [r["id"] for r in oldest] == [r["id"] for r in reversed(records)]
    # The text form: one line per record.
    text = _admin(secure, "audit", "--account", USER, "--action", "push", "--limit", "1")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 1 and " push " in text.stdout


def _raw_request(stack: RunningStack, head: bytes) -> bytes:
    """Sends a request head byte for byte (http.client refuses what a hostile client sends)."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as connection:
        connection.sendall(head)
        return connection.recv(65536)


def test_hostile_values_come_back_bounded_and_printable(secure: RunningStack) -> None:
    huge_user = "mallory\r\n" + "m" * 5000
    answer = _raw_request(secure, b"GET /token?service=wharf HTTP/1.1\r\nHost: " + secure.host.encode() +
                          b"\r\nAuthorization: " + _basic(huge_user, "x").encode() + b"\r\nUser-Agent: " +
                          HOSTILE_AGENT + b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    records = _wait_for(secure, lambda rs: bool(rs), "--action", "login", "--account", "mallory??" + "m" * 247)
    assert len(records) == 1, records
    [record] = records
    assert record["result"] == "UNAUTHORIZED" and record["status"] == 401
    assert record["user_agent"] == ("evil???<script>" + "A" * 5000)[:256]
    assert record["account"] == "mallory??" + "m" * 247
    for value in record.values():
        if isinstance(value, str):
            assert value.isprintable() and value.isascii() and len(value) <= 1000, value
    # A bad filter is refused with the error catalogue's code, not a traceback.
    refused = _admin(secure, "audit", "--repository", "Not A Name")
    assert refused.returncode == 2 and "REQUEST_INVALID" in refused.stderr
