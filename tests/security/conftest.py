"""The attack suite's target: a real stack in token mode with two users, a robot and public repositories.

``a`` and ``b`` own their namespaces; the robot ``bot`` may push to ``team/*``; ``pub/*`` is
public. Tests attack it as an outside client would: over HTTP, or straight at the
internal gRPC ports.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest
import requests

from services.common import digests, mediatypes
from tests.support.stack import RunningStack

ADMIN_PASSWORD = "attack-admin-secret"
USERS = {"a": "a-password-123", "b": "b-password-123"}
PASSWORDS = dict(USERS)  # and the robot's, once the target made it
LOGIN_FAILURES = 5


def admin(stack: RunningStack, *args: str, stdin: str = "") -> str:
    return stack.admin(ADMIN_PASSWORD, *args, stdin=stdin)


@pytest.fixture(scope="package")
def target(start_stack: Callable[..., RunningStack]) -> Iterator[RunningStack]:
    stack = start_stack(keep=True, env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                             "WHARF_BCRYPT_ROUNDS": "4", "WHARF_LOGIN_FAILURES": str(LOGIN_FAILURES),
                             "WHARF_ACCESS_LOG": "true"})
    for user, password in USERS.items():  # not PASSWORDS: a second set-up (another package's) found "bot" there
        admin(stack, "user", "add", user, "--password-stdin", stdin=password + "\n")
    robot = admin(stack, "robot", "add", "bot")
    PASSWORDS["bot"] = robot.rsplit(": ", 1)[1].strip()
    admin(stack, "grant", "bot", "team/*", "pull,push")
    admin(stack, "repo", "public", "pub/*")
    admin(stack, "grant", "a", "pub/*", "pull,push")
    yield stack


def token(stack: RunningStack, user: str | None, *scopes: str) -> str:
    auth = (user, PASSWORDS[user]) if user else None
    response = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": list(scopes)}, auth=auth,
                            timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def push_blob(stack: RunningStack, user: str, name: str, data: bytes) -> str:
    digest = digests.of(data)
    headers = bearer(token(stack, user, f"repository:{name}:pull,push"))
    response = requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data,
                             headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    return digest


def push_image(stack: RunningStack, user: str, name: str, tag: str = "v1") -> str:
    """A one-layer image; returns its manifest digest."""
    config = push_blob(stack, user, name, b"{}")
    layer = push_blob(stack, user, name, f"layer of {name}".encode())
    body = manifest(config, 2, [(layer, len(f"layer of {name}"))])
    headers = {**bearer(token(stack, user, f"repository:{name}:pull,push")),
               "Content-Type": mediatypes.OCI_MANIFEST}
    response = requests.put(f"{stack.url}/v2/{name}/manifests/{tag}", data=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    return response.headers["Docker-Content-Digest"]


def manifest(config: str, config_size: int, layers: list[tuple[str, int]]) -> bytes:
    import json

    return json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                                  "size": config_size},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
                                  for d, s in layers]}).encode()


def service_env(stack: RunningStack) -> dict[str, dict[str, str]]:
    """The environment of each of the stack's service processes, by the variable that names its role."""
    roles = {"WHARF_METADATA_LISTEN": "metadata", "WHARF_BLOBSTORE_LISTEN": "blobstore",
             "WHARF_AUTH_LISTEN": "auth", "WHARF_METADATA_ADDR": "gateway"}
    found: dict[str, dict[str, str]] = {}
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            raw = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"python" not in cmdline or b"setpriv" in cmdline:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if env.get("WHARF_DATA_DIR") != str(stack.data_dir.resolve()):
            continue
        for variable, role in roles.items():
            if variable in env and role not in found:
                found[role] = env
                break
    return found
