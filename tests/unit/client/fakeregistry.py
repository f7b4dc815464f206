"""An in-memory registry behind a requests transport adapter: protocol tests without sockets.

It speaks enough of the distribution API for the client's upload, manifest,
listing, referrers and auth paths, and can misbehave on request (ignore monolithic POST
bodies like Distribution 2.8, drop a PATCH midway, answer 429 with Retry-After,
demand bearer tokens), so each client branch is exercised deterministically.
:meth:`FakeRegistry.override` turns any route hostile (endless bodies, foreign
``Location`` headers, a ``Range`` that never advances), and :class:`OtherHost`
stands for a host the registry points at, recording what reached it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable
from typing import IO, Any

import requests
import urllib3
from requests.adapters import BaseAdapter

HOST = "fake.test"
OTHER = "other.test"

# What an override answers: status, headers, and the body as bytes or a stream (endless, or breaking off).
Answer = tuple[int, dict[str, str], bytes | IO[bytes]]


@dataclasses.dataclass
class Behaviour:
    monolithic_post: bool = True             # False: POST ?digest= ignores the body and answers 202
    drop_patch_after: int | None = None      # drop the first PATCH after this many body bytes were stored
    throttle_first: int = 0                  # answer this many requests with 429 first
    retry_after: str = "0"
    bearer: bool = False                     # demand tokens from /token
    basic: bool = False                      # demand HTTP Basic with the password
    truncate_patch_once: int | None = None   # after the next PATCH, the session keeps only this many bytes
    password: str = "secret"
    referrers_api: bool = False              # serve /referrers/ and answer OCI-Subject (else: tag schema only)


class FakeRegistry(BaseAdapter):
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        super().__init__()
        self.behaviour = behaviour or Behaviour()
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.log: list[tuple[str, str]] = []
        self.body_bytes = 0  # every request body byte received, to prove what a resume re-sent
        self.token_requests: list[dict[str, Any]] = []
        self._overrides: list[tuple[str, re.Pattern[str], Callable[[requests.PreparedRequest], Answer]]] = []

    def override(self, method: str, path: str, answer: Callable[[requests.PreparedRequest], Answer]) -> None:
        """Answers ``method`` requests whose path matches the regex ``path`` with ``answer(request)``."""
        self._overrides.append((method, re.compile(path), answer))

    # -- adapter -------------------------------------------------------------------------------

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:  # type: ignore[override]
        url = urllib.parse.urlsplit(request.url or "")
        query = urllib.parse.parse_qs(url.query)
        method = request.method or "GET"
        self.log.append((method, url.path))
        if self.behaviour.throttle_first > 0:
            self.behaviour.throttle_first -= 1
            return self._respond(request, 429, {"Retry-After": self.behaviour.retry_after},
                                 _errors("TOOMANYREQUESTS", "slow down"))
        if url.path == "/token":
            return self._token(request, query)
        if self.behaviour.bearer and not (request.headers.get("Authorization") or "").startswith("Bearer tok-"):
            challenge = f'Bearer realm="http://{HOST}/token",service="fake"'
            return self._respond(request, 401, {"WWW-Authenticate": challenge}, _errors("UNAUTHORIZED", "token"))
        if self.behaviour.basic and request.headers.get("Authorization") != _basic("alice", self.behaviour.password):
            return self._respond(request, 401, {"WWW-Authenticate": 'Basic realm="fake"'}, b"")
        for wanted, pattern, answer in self._overrides:
            if wanted == method and pattern.search(url.path):
                return self._respond(request, *answer(request))
        status, headers, body = self._route(request, method, url.path, query)
        return self._respond(request, status, headers, body)

    def close(self) -> None:
        pass

    def _respond(self, request: requests.PreparedRequest, status: int, headers: dict[str, str],
                 body: bytes | IO[bytes]) -> requests.Response:
        return respond(request, status, headers, body)

    # -- endpoints -----------------------------------------------------------------------------

    def _token(self, request: requests.PreparedRequest, query: dict[str, list[str]]) -> requests.Response:
        form = urllib.parse.parse_qs(_read(request.body).decode()) if request.method == "POST" else {}
        self.token_requests.append({"method": request.method, "query": query, "form": form,
                                    "auth": request.headers.get("Authorization", "")})
        if form.get("grant_type") == ["password"] and form.get("password") != [self.behaviour.password]:
            return self._respond(request, 401, {}, _errors("UNAUTHORIZED", "invalid username or password"))
        payload = {"token": f"tok-{uuid.uuid4().hex[:8]}", "expires_in": 300}
        if form.get("access_type") == ["offline"]:
            payload["refresh_token"] = "refresh-1"
        return self._respond(request, 200, {"Content-Type": "application/json"}, json.dumps(payload).encode())

    def _route(self, request: requests.PreparedRequest, method: str, path: str,
               query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if path == "/v2/":
            return 200, {}, b"{}"
        found = re.match(r"^/v2/(?P<name>.+?)/(?P<kind>blobs/uploads|blobs|manifests|tags|referrers)/?"
                         r"(?P<rest>[^/]*)$", path)
        if not found or (found.group("kind") == "referrers" and not self.behaviour.referrers_api):
            return 404, {}, _errors("UNSUPPORTED", "no route")
        name, kind, rest = found.group("name"), found.group("kind"), found.group("rest")
        if kind == "referrers":
            return 200, {"Content-Type": "application/vnd.oci.image.index.v1+json"}, self._referrers(name, rest)
        if kind == "blobs/uploads":
            return self._upload(request, method, name, rest, query)
        if kind == "blobs":
            if rest not in self.blobs:
                return 404, {}, b"" if method == "HEAD" else _errors("BLOB_UNKNOWN", "blob unknown")
            data = self.blobs[rest]
            return 200, {"Content-Length": str(len(data)), "Docker-Content-Digest": rest}, \
                b"" if method == "HEAD" else data
        if kind == "manifests":
            return self._manifest(request, method, name, rest)
        tags = sorted(tag for (repo, tag) in self.manifests if repo == name and not tag.startswith("sha256:"))
        return 200, {"Content-Type": "application/json"}, json.dumps({"name": name, "tags": tags}).encode()

    def _upload(self, request: requests.PreparedRequest, method: str, name: str, upload_id: str,
                query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if method == "POST":
            digest = query.get("digest", [""])[0]
            body = _read(request.body)
            if digest and self.behaviour.monolithic_post:
                return self._commit(name, digest, bytearray(body))
            new_id = uuid.uuid4().hex
            self.uploads[new_id] = bytearray()
            return 202, {"Location": f"/v2/{name}/blobs/uploads/{new_id}", "Range": "0-0"}, b""
        if upload_id not in self.uploads:
            return 404, {}, _errors("BLOB_UPLOAD_UNKNOWN", "upload unknown")
        data = self.uploads[upload_id]
        location = {"Location": f"/v2/{name}/blobs/uploads/{upload_id}"}
        if method == "GET":
            return 204, {**location, "Range": f"0-{max(len(data) - 1, 0)}"}, b""
        if method == "PATCH":
            start = int((request.headers.get("Content-Range") or f"{len(data)}-").split("-")[0])
            if start != len(data):
                return 416, {**location, "Range": f"0-{max(len(data) - 1, 0)}"}, _errors("RANGE_INVALID", "range")
            limit = self.behaviour.drop_patch_after
            if limit is not None:
                self.behaviour.drop_patch_after = None
                data.extend(_read(request.body, limit))
                self.body_bytes += limit
                raise requests.exceptions.ConnectionError("connection reset by fake registry")
            data.extend(_read(request.body, counter=self))
            if self.behaviour.truncate_patch_once is not None:
                del data[self.behaviour.truncate_patch_once:]
                self.behaviour.truncate_patch_once = None
            return 202, {**location, "Range": f"0-{max(len(data) - 1, 0)}"}, b""
        if method == "PUT":
            data.extend(_read(request.body, counter=self))
            del self.uploads[upload_id]
            return self._commit(name, query.get("digest", [""])[0], data)
        return 405, {}, _errors("UNSUPPORTED", method)

    def _commit(self, name: str, digest: str, data: bytearray) -> tuple[int, dict[str, str], bytes]:
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            return 400, {}, _errors("DIGEST_INVALID", f"got {actual}")
        self.blobs[digest] = bytes(data)
        return 201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}, b""

    def _manifest(self, request: requests.PreparedRequest, method: str, name: str,
                  reference: str) -> tuple[int, dict[str, str], bytes]:
        if method == "PUT":
            content = _read(request.body)
            digest = "sha256:" + hashlib.sha256(content).hexdigest()
            media_type = request.headers.get("Content-Type", "")
            self.manifests[(name, digest)] = (content, media_type)
            self.manifests[(name, reference)] = (content, media_type)
            headers = {"Docker-Content-Digest": digest}
            subject = json.loads(content).get("subject")
            if subject and self.behaviour.referrers_api:
                headers["OCI-Subject"] = subject["digest"]
            return 201, headers, b""
        if (name, reference) not in self.manifests:
            return 404, {}, b"" if method == "HEAD" else _errors("MANIFEST_UNKNOWN", "manifest unknown")
        content, media_type = self.manifests[(name, reference)]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": "sha256:" + hashlib.sha256(content).hexdigest(),
                   "Content-Length": str(len(content))}
        return 200, headers, b"" if method == "HEAD" else content

    def _referrers(self, name: str, subject: str) -> bytes:
        found = []
        for (repo, reference), (content, media_type) in sorted(self.manifests.items()):
            payload = json.loads(content)
            if repo != name or not reference.startswith("sha256:") or \
                    (payload.get("subject") or {}).get("digest") != subject:
                continue
            entry = {"mediaType": media_type, "digest": reference, "size": len(content),
                     "artifactType": payload.get("artifactType") or payload.get("config", {}).get("mediaType", "")}
            if payload.get("annotations"):
                entry["annotations"] = payload["annotations"]
            found.append(entry)
        return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": found}).encode()


class OtherHost(BaseAdapter):
    """Another host the registry names (storage, a thief): records each request, answers ``answer``."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        super().__init__()
        self.answer: Answer = (status, headers or {}, body)
        self.requests: list[tuple[str, str, str]] = []  # method, url, Authorization header

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:  # type: ignore[override]
        self.requests.append((request.method or "", request.url or "", request.headers.get("Authorization", "")))
        return respond(request, *self.answer)

    def close(self) -> None:
        pass


def respond(request: requests.PreparedRequest, status: int, headers: dict[str, str],
            body: bytes | IO[bytes]) -> requests.Response:
    """A response as requests' own adapter builds it: the body streams from ``body`` as from a socket."""
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    if isinstance(body, bytes):
        response.headers.setdefault("Content-Length", str(len(body)))
    stream = io.BytesIO(body) if isinstance(body, bytes) else body
    response.raw = urllib3.HTTPResponse(body=stream, headers=response.headers, status=status,
                                        preload_content=False, request_method=request.method)
    response.url = request.url or ""
    response.request = request
    response.reason = "fake"
    return response


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def _read(body: Any, limit: int | None = None, counter: FakeRegistry | None = None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes | str):
        data = body.encode() if isinstance(body, str) else body
    else:
        parts = []
        total = 0
        while limit is None or total < limit:
            chunk = body.read(65536 if limit is None else min(65536, limit - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        data = b"".join(parts)
    data = data if limit is None else data[:limit]
    if counter is not None:
        counter.body_bytes += len(data)
    return data
