"""Challenges, scope merging, the token cache, and the docker config with credential helpers."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import stat
import sys

import pytest
from wharf_client.auth import challenge
from wharf_client.auth.credentials import Credential, CredentialError, DockerConfig
from wharf_client.auth.tokens import Token, TokenCache, covers, merge_scopes


def test_challenge_with_several_schemes_and_quoted_commas() -> None:
    header = ('Basic realm="basic, realm", Bearer realm="https://auth.example/token",service="registry.example",'
              'scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"')
    found = challenge.parse(header)
    assert [c.scheme for c in found] == ["basic", "bearer"]
    assert found[0].realm == "basic, realm"
    bearer = challenge.preferred(header)
    assert bearer is not None and bearer.realm == "https://auth.example/token"
    assert bearer.service == "registry.example" and bearer.error == "insufficient_scope"
    assert bearer.scopes == ["repository:a/b:pull,push", "repository:c:pull"]
    assert challenge.preferred("") is None


def test_scopes_merge_and_cover() -> None:
    assert merge_scopes(["repository:a:pull", "repository:a:push", "registry:catalog:*"]) == [
        "registry:catalog:*", "repository:a:pull,push"]
    assert covers(["repository:a:pull,push"], ["repository:a:pull"])
    assert not covers(["repository:a:pull"], ["repository:a:pull,push"])
    assert not covers(["repository:a:pull"], ["repository:b:pull"])
    assert covers(["repository:a:*"], ["repository:a:delete"])


def test_token_cache_reuses_covering_tokens_until_expiry() -> None:
    now = [100.0]
    cache = TokenCache(lambda: now[0])
    key = ("realm", "svc", "alice")
    cache.add(key, Token("t1", ("repository:a:pull,push",), 150.0))
    assert cache.find(key, ["repository:a:pull"]).value == "t1"  # type: ignore[union-attr]
    assert cache.find(key, ["repository:b:pull"]) is None
    assert cache.find(("realm", "svc", "bob"), ["repository:a:pull"]) is None
    now[0] = 151.0
    assert cache.find(key, ["repository:a:pull"]) is None


def _config(tmp_path: pathlib.Path, payload: dict[str, object]) -> DockerConfig:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(payload))
    return DockerConfig(path)


def test_auths_entries_in_every_spelling(tmp_path: pathlib.Path) -> None:
    encoded = base64.b64encode(b"alice:pa:ss").decode()
    config = _config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": encoded},
        "http://localhost:5000": {"username": "bob", "password": "pw"},
        "ghcr.io": {"auth": base64.b64encode(b"carol:").decode(), "identitytoken": "refresh"}}})
    assert config.get("docker.io") == Credential("alice", "pa:ss")
    assert config.get("localhost:5000") == Credential("bob", "pw")
    assert config.get("ghcr.io") == Credential("carol", "", identity_token="refresh")
    assert config.get("other.example").anonymous


def test_store_and_erase_keep_other_settings(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, {"auths": {}, "psFormat": "table"})
    config.store("localhost:5000", Credential("alice", "secret"))
    data = json.loads(config.path.read_text())
    assert data["psFormat"] == "table"
    assert base64.b64decode(data["auths"]["localhost:5000"]["auth"]) == b"alice:secret"
    assert stat.S_IMODE(config.path.stat().st_mode) == 0o600
    config.store("localhost:5000", Credential("alice", identity_token="rt"))
    assert json.loads(config.path.read_text())["auths"]["localhost:5000"]["identitytoken"] == "rt"
    assert config.get("localhost:5000") == Credential("alice", "", identity_token="rt")
    assert config.erase("localhost:5000") and not config.erase("localhost:5000")
    assert config.get("localhost:5000").anonymous


@pytest.fixture()
def helper(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A docker-credential-fake on PATH that keeps its secrets in a JSON file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    store = tmp_path / "helper-store.json"
    store.write_text("{}")
    script = bin_dir / "docker-credential-fake"
    script.write_text(f"""#!{sys.executable}
import json, sys
store = {str(store)!r}
data = json.load(open(store))
action = sys.argv[1]
if action == "get":
    key = sys.stdin.read().strip()
    if key not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    print(json.dumps({{"ServerURL": key, **data[key]}}))
elif action == "store":
    item = json.load(sys.stdin)
    data[item["ServerURL"]] = {{"Username": item["Username"], "Secret": item["Secret"]}}
    json.dump(data, open(store, "w"))
elif action == "erase":
    data.pop(sys.stdin.read().strip(), None)
    json.dump(data, open(store, "w"))
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return store


def test_credential_helpers_per_registry_and_global(tmp_path: pathlib.Path, helper: pathlib.Path) -> None:
    helper.write_text(json.dumps({"registry.example": {"Username": "alice", "Secret": "s1"},
                                  "tokens.example": {"Username": "<token>", "Secret": "refresh"}}))
    config = _config(tmp_path, {"credHelpers": {"registry.example": "fake"},
                                "auths": {"registry.example": {"auth": base64.b64encode(b"not:used").decode()}}})
    assert config.get("registry.example") == Credential("alice", "s1")
    store_config = _config(tmp_path, {"credsStore": "fake"})
    assert store_config.get("tokens.example") == Credential(identity_token="refresh")
    assert store_config.get("missing.example").anonymous
    assert store_config.store("new.example", Credential("bob", "pw")) == "docker-credential-fake"
    assert store_config.get("new.example") == Credential("bob", "pw")
    assert "new.example" not in json.loads(store_config.path.read_text()).get("auths", {})
    assert store_config.erase("new.example")
    assert store_config.get("new.example").anonymous


def test_missing_helper_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, {"credsStore": "does-not-exist-here"})
    with pytest.raises(CredentialError, match="docker-credential-does-not-exist-here is not installed"):
        config.get("registry.example")


def test_malformed_config_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CredentialError, match="not valid JSON"):
        DockerConfig(tmp_path / "config.json").get("x")
