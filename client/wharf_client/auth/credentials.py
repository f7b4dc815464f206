"""Credentials from the docker ``config.json``: ``credHelpers``, ``credsStore`` and ``auths``.

Reading and writing the same file docker, podman, skopeo, crane and oras read
means one ``login`` serves every tool. Lookup order is docker's: a per-registry
helper, then the global store, then the inline ``auths`` entry. Helpers are the
``docker-credential-<name>`` programs speaking JSON on stdin/stdout.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import tempfile
import threading
from typing import Any, Protocol

from wharf_client.errors import WharfError
from wharf_client.reference import DEFAULT_REGISTRY, LEGACY_DOCKER_AUTH_KEY

# A helper that hangs must not hang the client.
HELPER_TIMEOUT_SECONDS = 30
# Helpers use this user name to say the secret is an identity (refresh) token.
TOKEN_USERNAME = "<token>"


class CredentialError(WharfError):
    """The config file or a credential helper failed."""


@dataclasses.dataclass(frozen=True)
class Credential:
    """What a registry login holds; an identity token is an OAuth2 refresh token, used instead of the password."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"Credential(username={self.username!r}, secret={'set' if not self.anonymous else 'none'})"


ANONYMOUS = Credential()


class CredentialStore(Protocol):
    """Where credentials for a registry host come from; the library accepts any implementation."""

    def get(self, registry: str) -> Credential: ...


@dataclasses.dataclass(frozen=True)
class StaticCredentials:
    """Credentials given in code: registry host -> credential."""

    entries: dict[str, Credential] = dataclasses.field(default_factory=dict)

    def get(self, registry: str) -> Credential:
        return self.entries.get(registry, ANONYMOUS)


def default_config_path() -> pathlib.Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``: where docker looks."""
    base = os.environ.get("DOCKER_CONFIG")
    return pathlib.Path(base) / "config.json" if base else pathlib.Path.home() / ".docker" / "config.json"


def _auth_keys(registry: str) -> list[str]:
    """The spellings of a registry's key in ``auths`` that docker and others have written."""
    if registry == DEFAULT_REGISTRY:
        return [LEGACY_DOCKER_AUTH_KEY, "docker.io", "index.docker.io", "registry-1.docker.io",
                "https://index.docker.io/v1", "https://registry-1.docker.io"]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"https://{registry}/v2/"]


def _helper_key(registry: str) -> str:
    return LEGACY_DOCKER_AUTH_KEY if registry == DEFAULT_REGISTRY else registry


def run_helper(helper: str, action: str, payload: str) -> str:
    """Runs ``docker-credential-<helper> <action>`` with ``payload`` on stdin; returns stdout."""
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run([program, action], input=payload, capture_output=True, text=True,
                                timeout=HELPER_TIMEOUT_SECONDS, check=False)
    except FileNotFoundError:
        raise CredentialError(f"credential helper {program} is not installed (named in the docker config)") from None
    except subprocess.TimeoutExpired:
        raise CredentialError(f"credential helper {program} {action} did not answer in "
                              f"{HELPER_TIMEOUT_SECONDS}s") from None
    if result.returncode != 0:
        message = (result.stdout.strip() or result.stderr.strip())[:300]
        if action == "get" and "credentials not found" in message.lower():
            return ""
        raise CredentialError(f"credential helper {program} {action} failed: {message}")
    return result.stdout


class DockerConfig:
    """The docker client configuration file: reads credentials, and writes them on login/logout."""

    def __init__(self, path: pathlib.Path | None = None) -> None:
        self.path = path or default_config_path()
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CredentialError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise CredentialError(f"{self.path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CredentialError(f"{self.path} is not a JSON object")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        """Atomic replace, owner-only: the file holds secrets and other tools read it concurrently."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle, temp = tempfile.mkstemp(prefix=".config.json.", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(data, out, indent="\t")
                out.write("\n")
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def helper_for(self, registry: str, data: dict[str, Any] | None = None) -> str:
        data = self._load() if data is None else data
        helpers = data.get("credHelpers") or {}
        for key in _auth_keys(registry):
            if isinstance(helpers, dict) and helpers.get(key):
                return str(helpers[key])
        return str(data.get("credsStore") or "")

    def get(self, registry: str) -> Credential:
        data = self._load()
        helper = self.helper_for(registry, data)
        if helper:
            out = run_helper(helper, "get", _helper_key(registry))
            if out.strip():
                return _from_helper(out, helper)
        auths = data.get("auths") or {}
        for key in _auth_keys(registry):
            entry = auths.get(key) if isinstance(auths, dict) else None
            if isinstance(entry, dict):
                return _from_auth_entry(entry, key)
        return ANONYMOUS

    def store(self, registry: str, credential: Credential) -> str:
        """Saves a login; returns where it went (the helper's name or the file)."""
        with self._lock:
            data = self._load()
            helper = self.helper_for(registry, data)
            if helper:
                username, secret = credential.username, credential.password
                if credential.identity_token:
                    username, secret = TOKEN_USERNAME, credential.identity_token
                run_helper(helper, "store", json.dumps({"ServerURL": _helper_key(registry), "Username": username,
                                                        "Secret": secret}))
                return f"docker-credential-{helper}"
            auths = data.setdefault("auths", {})
            for key in _auth_keys(registry):
                auths.pop(key, None)
            entry: dict[str, str] = {}
            password = "" if credential.identity_token else credential.password
            entry["auth"] = base64.b64encode(f"{credential.username}:{password}".encode()).decode()
            if credential.identity_token:
                entry["identitytoken"] = credential.identity_token
            auths[_helper_key(registry)] = entry
            self._save(data)
            return str(self.path)

    def erase(self, registry: str) -> bool:
        """Forgets a login; True when there was one."""
        with self._lock:
            data = self._load()
            helper = self.helper_for(registry, data)
            removed = False
            if helper:
                try:
                    run_helper(helper, "erase", _helper_key(registry))
                    removed = True
                except CredentialError as exc:
                    if "not found" not in str(exc).lower():
                        raise
            auths = data.get("auths") or {}
            for key in _auth_keys(registry):
                if isinstance(auths, dict) and key in auths:
                    del auths[key]
                    removed = True
            if removed:
                self._save(data)
            return removed


def _from_helper(out: str, helper: str) -> Credential:
    try:
        payload = json.loads(out)
    except ValueError:
        raise CredentialError(f"docker-credential-{helper} get printed something that is not JSON") from None
    username, secret = str(payload.get("Username", "")), str(payload.get("Secret", ""))
    if username == TOKEN_USERNAME:
        return Credential(identity_token=secret)
    return Credential(username=username, password=secret)


def _from_auth_entry(entry: dict[str, Any], key: str) -> Credential:
    username, password = str(entry.get("username", "")), str(entry.get("password", ""))
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=False).decode()
        except (ValueError, UnicodeDecodeError):
            raise CredentialError(f"the auths entry for {key} has an auth value that is not base64") from None
        username, _, password = decoded.partition(":")
    return Credential(username=username, password=password, identity_token=str(entry.get("identitytoken", "")),
                      registry_token=str(entry.get("registrytoken", "")))
