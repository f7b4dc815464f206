"""What the API fuzzer (tests/e2e/test_fuzz_api.py) needs around a live registry: credentials per
auth mode, and a snapshot of the state a request could touch, so that a refused request can be
shown to have left nothing behind.

The snapshot is cheap, taken before every fuzzed call and again after a refused one: the catalog,
the tags of the repository the request names, the blobs and manifests its digests name (a
link), and the upload session it names (its size). That covers every resource a write can
create: a repository (catalog), a tag, a blob link, a manifest, the bytes of a session.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import requests

from services.common.names import is_valid_name
from tests.support.stack import RunningStack

TIMEOUT = 10


@dataclasses.dataclass
class Target:
    """A live registry, and how the fuzzer and the snapshots authenticate to it."""

    stack: RunningStack
    mode: str  # "none" or "token"
    user: tuple[str, str] | None = None  # the account that pushes in its own namespace (token mode)
    admin: tuple[str, str] | None = None  # the account the snapshots read everything with (token mode)
    session: requests.Session = dataclasses.field(default_factory=requests.Session)
    _tokens: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    # Manifests the registry accepted (201): a refused push of the same bytes finds them stored.
    accepted: set[str] = dataclasses.field(default_factory=set)

    def token(self, who: tuple[str, str], name: str) -> str:
        key = (who[0], name)
        if key not in self._tokens:
            scopes = ["registry:catalog:*"] + ([f"repository:{name}:pull,push,delete"] if name else [])
            answer = self.session.get(f"{self.stack.url}/token", params={"service": "wharf", "scope": scopes},
                                      auth=who, timeout=TIMEOUT)
            assert answer.status_code == 200, answer.text
            self._tokens[key] = str(answer.json()["token"])
        return self._tokens[key]

    def headers_as(self, who: tuple[str, str] | None, name: str) -> dict[str, str]:
        if self.mode != "token" or who is None:
            return {}
        return {"Authorization": f"Bearer {self.token(who, name)}"}

    def read(self, method: str, path: str, name: str = "", **params: Any) -> requests.Response:
        """A read with the snapshot's rights: everything (admin in token mode)."""
        return self.session.request(method, f"{self.stack.url}{path}", params=params or None,
                                    headers=self.headers_as(self.admin, name), timeout=TIMEOUT,
                                    allow_redirects=False)


def repository_of(path_parameters: dict[str, Any] | None) -> str:
    """The repository a templated path names (c1/c2/...), or "" when it names none or an invalid one."""
    params = path_parameters or {}
    components = [params[f"c{i}"] for i in range(1, 10) if f"c{i}" in params]
    name = "/".join(str(c) for c in components)
    return name if components and is_valid_name(name) else ""


def digests_named(case: Any) -> list[str]:
    """Digests a request names in its path or query (blob, upload commit, mount, manifest)."""
    found = []
    for value in [*(case.path_parameters or {}).values(), *(case.query or {}).values()]:
        if isinstance(value, str) and value.startswith(("sha256:", "sha512:")):
            found.append(value)
    return found


@dataclasses.dataclass(frozen=True)
class Snapshot:
    catalog: tuple[str, ...]
    tags: tuple[int, tuple[str, ...]]
    blobs: tuple[tuple[str, int], ...]
    manifests: tuple[tuple[str, int], ...]
    upload: tuple[int, str]


def _all_pages(target: Target, path: str, key: str, name: str = "") -> tuple[int, tuple[str, ...]]:
    answer = target.read("GET", path, name, n=10000)
    if answer.status_code != 200:
        return answer.status_code, ()
    return 200, tuple(answer.json()[key])


def snapshot(target: Target, case: Any) -> Snapshot:
    name = repository_of(case.path_parameters)
    catalog = _all_pages(target, "/v2/_catalog", "repositories")[1]
    if not name:
        return Snapshot(catalog, (0, ()), (), (), (0, ""))
    tags = _all_pages(target, f"/v2/{name}/tags/list", "tags", name)
    named = sorted(set(digests_named(case)))
    blobs = tuple((d, target.read("HEAD", f"/v2/{name}/blobs/{d}", name).status_code) for d in named)
    manifests = tuple((d, target.read("HEAD", f"/v2/{name}/manifests/{d}", name).status_code) for d in named)
    upload = (0, "")
    upload_id = (case.path_parameters or {}).get("upload_id")
    if isinstance(upload_id, str) and upload_id.isalnum():
        status = target.read("GET", f"/v2/{name}/blobs/uploads/{upload_id}", name)
        upload = (status.status_code, status.headers.get("Range", ""))
    return Snapshot(catalog, tags, blobs, manifests, upload)


def left_behind(target: Target, case: Any, before: Snapshot, response: Any) -> list[str]:
    """What a refused request changed: empty when it left the registry as it found it."""
    after = snapshot(target, case)
    problems = []
    if after.catalog != before.catalog:
        problems.append(f"catalog changed: {sorted(set(after.catalog) ^ set(before.catalog))}")
    if after.tags != before.tags:
        problems.append(f"tags changed: {before.tags} -> {after.tags}")
    if after.blobs != before.blobs:
        problems.append(f"blob links changed: {before.blobs} -> {after.blobs}")
    if after.manifests != before.manifests:
        problems.append(f"manifests changed: {before.manifests} -> {after.manifests}")
    # A refused commit removes its session (docs/api.md); nothing else may change one.
    finished = case.method.upper() == "PUT" and after.upload[0] == 404
    if after.upload != before.upload and not finished:
        problems.append(f"upload session changed: {before.upload} -> {after.upload}")
    name = repository_of(case.path_parameters)
    body = getattr(response.request, "body", None) if hasattr(response, "request") else None
    if name and "/manifests/" in case.path and case.method.upper() == "PUT" and isinstance(body, bytes | str):
        sent = body.encode() if isinstance(body, str) else body
        digest = "sha256:" + hashlib.sha256(sent).hexdigest()
        if digest not in target.accepted and \
                target.read("HEAD", f"/v2/{name}/manifests/{digest}", name).status_code != 404:
            problems.append(f"the refused manifest {digest} is stored")
    return problems
