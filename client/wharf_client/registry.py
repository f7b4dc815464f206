"""The registry API: a :class:`Client` for many registries, a :class:`Repository` for one repository.

Operations map one to one onto the distribution spec's endpoints; the
multi-step work (uploads, copies, layouts) lives in other modules and calls these.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import requests
import requests.auth
from requests.adapters import HTTPAdapter

from wharf_client import bodies, mediatypes
from wharf_client import digest as digests
from wharf_client.auth.credentials import CredentialStore, DockerConfig
from wharf_client.auth.tokens import TokenClient
from wharf_client.blobio import BlobReader
from wharf_client.errors import FormatError, NotFoundError, RegistryError
from wharf_client.manifest import MAX_MANIFEST_BYTES, Descriptor, Manifest
from wharf_client.options import ClientOptions
from wharf_client.reference import Reference, parse, validate_repository
from wharf_client.transport import Transport
from wharf_client.untrusted import header_number, parse_json

# [^<>]: an attempt ends at the next "<", so a header of 6 MB of "<" (100 joined lines) is searched in
# linear time; with [^>] each "<" scanned to the end, minutes of CPU for one listing page.
_LINK_RE = re.compile(r'<([^<>]+)>\s*;\s*rel="?next"?')
# Bounds on listings: a registry that keeps answering "next" cannot keep a client forever.
MAX_PAGES = 100_000


class Client:
    """Talks to any number of registries; share one per program. Thread-safe, no global state."""

    def __init__(self, options: ClientOptions | None = None, credentials: CredentialStore | None = None,
                 session: requests.Session | None = None) -> None:
        self.options = options or ClientOptions()
        self.credentials: CredentialStore = credentials if credentials is not None else DockerConfig()
        self.session = session or requests.Session()
        pool = max(self.options.concurrency * 2, 10)
        adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if bodies.cap_redirect_body not in self.session.hooks["response"]:
            # requests reads each redirect's body whole; this caps it first (see bodies).
            self.session.hooks["response"].append(bodies.cap_redirect_body)
        _without_netrc(self.session)
        self.tokens = TokenClient(self.session, timeout=(self.options.timeout[0], 60.0))
        self._transports: dict[str, Transport] = {}
        self._lock = threading.Lock()

    def transport(self, registry: str) -> Transport:
        with self._lock:
            found = self._transports.get(registry)
            if found is None:
                found = Transport(registry, self.session, self.options, self.credentials, self.tokens)
                self._transports[registry] = found
            return found

    def repository(self, reference: Reference | str) -> Repository:
        ref = parse(reference) if isinstance(reference, str) else reference
        return Repository(self, ref.registry, ref.repository)

    def catalog(self, registry: str, page_size: int | None = None) -> Iterator[str]:
        """Every repository name the registry lists (following its pagination)."""
        transport = self.transport(registry)
        yield from _paged(transport, "/v2/_catalog", "repositories", ["registry:catalog:*"], page_size)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _NoCredentials(requests.auth.AuthBase):
    """A session's ``auth`` that adds nothing: its presence stops requests from looking in ``~/.netrc``."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def _without_netrc(session: requests.Session) -> None:
    """Keeps requests from adding ``~/.netrc`` (or ``$NETRC``) credentials to what the client sends.

    requests reads that file for every request without credentials and again on every redirect,
    and its ``default`` entry matches any host: those credentials went to the registry (replacing
    its bearer token), to each realm, and to wherever a redirect pointed, past the client's rule
    that credentials go only to the registry's origin. Proxies and CA bundles from the
    environment still apply (``trust_env`` stays on).
    """
    if session.auth is None:
        session.auth = _NoCredentials()

    def rebuild_auth(prepared: requests.PreparedRequest, response: requests.Response) -> None:
        # requests' own, less its netrc lookup: the header is dropped when the redirect leaves the origin.
        if "Authorization" in prepared.headers and \
                session.should_strip_auth(response.request.url or "", prepared.url or ""):
            del prepared.headers["Authorization"]

    session.rebuild_auth = rebuild_auth  # type: ignore[method-assign,assignment]


def _next_link(response: requests.Response, transport: Transport) -> str | None:
    header = response.headers.get("Link", "")
    found = _LINK_RE.search(header)
    return transport.resolve(response, found.group(1), "Link") if found else None


def _paged(transport: Transport, path: str, key: str, scopes: list[str], page_size: int | None) -> Iterator[str]:
    url: str | None = path
    params: dict[str, Any] | None = {"n": page_size} if page_size else None
    seen_urls: set[str] = set()
    for _ in range(MAX_PAGES):
        if url is None or url in seen_urls:
            return
        seen_urls.add(url)
        response = transport.request("GET", url, scopes=scopes, params=params)  # its body read, bounded
        try:
            names = parse_json(response.content).get(key) or []
        except (ValueError, AttributeError):
            raise FormatError(f"{response.url}: the listing is not JSON with {key!r}") from None
        if not isinstance(names, list):
            raise FormatError(f"{response.url}: {key!r} in the listing is not a list")
        yield from (str(n) for n in names)
        url, params = _next_link(response, transport), None
        if not names:
            return


class Repository:
    """One repository in one registry."""

    def __init__(self, client: Client, registry: str, name: str) -> None:
        self.client = client
        self.registry = registry
        self.name = validate_repository(name)
        self.transport = client.transport(registry)

    def __repr__(self) -> str:
        return f"Repository({self.registry}/{self.name})"

    @property
    def pull(self) -> list[str]:
        return [f"repository:{self.name}:pull"]

    @property
    def push(self) -> list[str]:
        return [f"repository:{self.name}:pull,push"]

    def reference(self, identifier: str | None = None) -> Reference:
        ref = Reference(self.registry, self.name)
        if identifier is None:
            return ref
        return ref.with_digest(identifier) if digests.is_digest(identifier) else ref.with_tag(identifier)

    # -- manifests -------------------------------------------------------------------------------

    def get_manifest(self, reference: str, accept: str = mediatypes.MANIFEST_ACCEPT) -> Manifest:
        """The manifest's exact bytes; verified against the digest when ``reference`` is one."""
        # Read (bounded) by the transport, which sends the GET again if the body breaks off.
        response = self.transport.request("GET", f"/v2/{self.name}/manifests/{reference}", scopes=self.pull,
                                          headers={"Accept": accept}, body_limit=MAX_MANIFEST_BYTES)
        content = response.content
        expected = reference if digests.is_digest(reference) else None
        served = response.headers.get("Docker-Content-Digest", "")
        manifest = Manifest.parse(content, response.headers.get("Content-Type", ""), expected)
        if not expected and digests.is_digest(served) and digests.algorithm_of(served) != "sha256":
            manifest = Manifest.parse(content, manifest.media_type, served)
        return manifest

    def head_manifest(self, reference: str, accept: str = mediatypes.MANIFEST_ACCEPT) -> Descriptor | None:
        """The descriptor of ``reference`` without its body; None when it does not exist."""
        response = self.transport.request("HEAD", f"/v2/{self.name}/manifests/{reference}", scopes=self.pull,
                                          headers={"Accept": accept}, expect=(200, 404))
        response.close()
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest", "")
        media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        size = header_number(response.headers.get("Content-Length"))
        if not digests.is_digest(digest) or size is None or media_type not in mediatypes.MANIFESTS:
            # Not every registry sends the digest on HEAD; the body then tells.
            manifest = self.get_manifest(reference, accept)
            return manifest.descriptor()
        return Descriptor(media_type, digest, size)

    def put_manifest(self, manifest: Manifest, reference: str | None = None) -> PutResult:
        """PUT by tag (or by its digest when ``reference`` is None)."""
        target = reference or manifest.digest
        response = self.transport.request("PUT", f"/v2/{self.name}/manifests/{target}", scopes=self.push,
                                          headers={"Content-Type": manifest.media_type}, body=manifest.content,
                                          expect=(201, 200, 202))
        response.close()
        served = response.headers.get("Docker-Content-Digest", "")
        if served and served != manifest.digest and digests.algorithm_of(served) == "sha256":
            raise FormatError(f"{self.registry}/{self.name}: the registry stored the manifest as {served}, "
                              f"not {manifest.digest}")
        return PutResult(manifest.digest, bool(response.headers.get("OCI-Subject")))

    def delete_manifest(self, digest: str) -> None:
        digests.validate(digest)
        response = self.transport.request("DELETE", f"/v2/{self.name}/manifests/{digest}",
                                          scopes=[f"repository:{self.name}:delete"], expect=(202, 200, 204))
        response.close()

    def delete_tag(self, tag: str) -> None:
        response = self.transport.request("DELETE", f"/v2/{self.name}/manifests/{tag}",
                                          scopes=[f"repository:{self.name}:delete"], expect=(202, 200, 204))
        response.close()

    def tags(self, page_size: int | None = None) -> Iterator[str]:
        yield from _paged(self.transport, f"/v2/{self.name}/tags/list", "tags", self.pull, page_size)

    # -- blobs -----------------------------------------------------------------------------------

    def blob_size(self, digest: str, scopes: list[str] | None = None) -> int | None:
        """The blob's size when the repository has it (HEAD); None otherwise.

        A push passes its push scopes, so the token it gets here serves the upload too.
        """
        response = self.transport.request("HEAD", f"/v2/{self.name}/blobs/{digest}", scopes=scopes or self.pull,
                                          expect=(200, 404))
        response.close()
        if response.status_code == 404:
            return None
        length = header_number(response.headers.get("Content-Length"))
        return 0 if length is None else length

    def get_blob_response(self, digest: str, offset: int = 0) -> requests.Response:
        """A streaming GET from ``offset`` (redirects followed); the caller closes it."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.transport.request("GET", f"/v2/{self.name}/blobs/{digest}", scopes=self.pull,
                                          headers=headers, expect=(200, 206), stream=True)
        if offset and response.status_code == 200:
            # The server ignored Range: skip what we already have.
            skip = offset
            while skip > 0:
                data = response.raw.read(min(skip, 1024 * 1024))
                if not data:
                    break
                skip -= len(data)
        return response

    def open_blob(self, descriptor: Descriptor, offset: int = 0) -> BlobReader:
        """A stream of the blob that verifies size and digest when read from the start to the end."""
        return BlobReader(self, descriptor, offset)

    def fetch_blob(self, descriptor: Descriptor, limit: int = 64 * 1024 * 1024) -> bytes:
        """A small blob (a config) in memory, verified."""
        if descriptor.size > limit:
            raise FormatError(f"blob {descriptor.digest} is {descriptor.size} bytes, over the {limit} byte limit "
                              "for reading into memory")
        with self.open_blob(descriptor) as reader:
            return reader.read()

    def delete_blob(self, digest: str) -> None:
        response = self.transport.request("DELETE", f"/v2/{self.name}/blobs/{digests.validate(digest)}",
                                          scopes=[f"repository:{self.name}:delete"], expect=(202, 200, 204))
        response.close()

    # -- referrers -------------------------------------------------------------------------------

    def referrers(self, digest: str, artifact_type: str = "") -> list[Descriptor]:
        """Manifests whose subject is ``digest``: the referrers API, else the ``sha256-<hex>`` tag schema."""
        digests.validate(digest)
        params = {"artifactType": artifact_type} if artifact_type else None
        response = self.transport.request("GET", f"/v2/{self.name}/referrers/{digest}", scopes=self.pull,
                                          params=params, expect=(200, 404, 400, 405), body_limit=MAX_MANIFEST_BYTES)
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        body = response.content if response.status_code == 200 else b""
        if response.status_code == 200 and content_type == mediatypes.OCI_INDEX:
            found = Manifest.parse(body, mediatypes.OCI_INDEX).children
            if artifact_type and not response.headers.get("OCI-Filters-Applied"):
                found = [d for d in found if d.artifact_type == artifact_type]
            return found
        fallback = self.referrers_tag_index(digest)
        children = fallback.children if fallback else []
        return [d for d in children if not artifact_type or d.artifact_type == artifact_type]

    def referrers_tag_index(self, digest: str) -> Manifest | None:
        """The index kept under the referrers tag of ``digest``, for registries without the API."""
        try:
            return self.get_manifest(referrers_tag(digest), mediatypes.OCI_INDEX)
        except NotFoundError:
            return None
        except RegistryError as err:
            if err.code == "MANIFEST_UNKNOWN":
                return None
            raise


class PutResult:
    """What a manifest PUT told: the digest, and whether the registry indexed its subject itself."""

    def __init__(self, digest: str, subject_indexed: bool) -> None:
        self.digest = digest
        self.subject_indexed = subject_indexed


def referrers_tag(digest: str) -> str:
    """``sha256:abc...`` -> ``sha256-abc...``: the tag schema fallback of the OCI distribution spec."""
    algorithm, _, hex_part = digests.validate(digest).partition(":")
    return f"{algorithm[:32]}-{hex_part[:64]}"

