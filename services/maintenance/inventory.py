"""Reads of the registry's metadata in Redis, for check and export: in pages, never KEYS.

Keys come from services/metadata/redis_keys.py, the one module that names them; nothing here
writes. Repositories come in lexical order (ZRANGEBYLEX pages of the catalog); a repository's
blob links, manifests and tags come from HSCAN/SSCAN, so memory stays bounded by a page.
SCAN may return an element twice when the hash or set is resized during the scan; callers
tolerate that (check reports a finding once, import is idempotent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import redis

from services.common.redisconn import text
from services.metadata import redis_keys as keys

PAGE = 500


@dataclasses.dataclass(frozen=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes
    subject: str


class Inventory:
    def __init__(self, client: redis.Redis, page: int = PAGE) -> None:
        self._r = client
        self._page = page

    def read_only(self) -> bool:
        """Whether an operator holds the registry read-only (every write script refuses)."""
        return bool(self._r.exists(keys.MAINTENANCE))

    def repositories(self) -> Iterator[str]:
        last = ""
        while True:
            found = [text(n) for n in self._r.zrangebylex(keys.CATALOG, f"({last}" if last else "-", "+", start=0,
                                                           num=self._page)]
            yield from found
            if len(found) < self._page:
                return
            last = found[-1]

    def _hash_pages(self, key: str) -> Iterator[list[tuple[str, str]]]:
        cursor = 0
        while True:
            cursor, found = self._r.hscan(key, cursor, count=self._page)
            if found:
                yield [(text(k), text(v)) for k, v in found.items()]
            if cursor == 0:
                return

    def blob_links(self, name: str) -> Iterator[list[tuple[str, int]]]:
        """Pages of (digest, size): the blobs the repository links."""
        for page in self._hash_pages(keys.blobs(name)):
            yield [(digest, int(size or 0)) for digest, size in page]

    def tags(self, name: str) -> Iterator[list[tuple[str, str]]]:
        """Pages of (tag, manifest digest)."""
        yield from self._hash_pages(keys.tags(name))

    def manifest_digests(self, name: str) -> Iterator[list[str]]:
        """Pages of the digests the repository's manifest set lists."""
        cursor = 0
        while True:
            cursor, found = self._r.sscan(keys.manifests(name), cursor, count=self._page)
            if found:
                yield [text(d) for d in found]
            if cursor == 0:
                return

    def manifests(self, name: str, digests: list[str]) -> list[StoredManifest | None]:
        """The stored manifests (None where the record is missing), in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for digest in digests:
            pipe.hmget(keys.manifest(name, digest), "type", "body", "subject")
        found: list[StoredManifest | None] = []
        for digest, (media_type, body, subject) in zip(digests, pipe.execute(), strict=True):
            found.append(None if media_type is None else StoredManifest(digest, text(media_type), bytes(body or b""),
                                                                        text(subject)))
        return found

    def manifests_exist(self, name: str, digests: list[str]) -> list[bool]:
        if not digests:
            return []
        pipe = self._r.pipeline(transaction=False)
        for digest in digests:
            pipe.exists(keys.manifest(name, digest))
        return [bool(n) for n in pipe.execute()]

    def link_sizes(self, name: str, digests: list[str]) -> list[int | None]:
        """The sizes the repository's links record (None where it does not link the blob)."""
        if not digests:
            return []
        return [None if size is None else int(size) for size in self._r.hmget(keys.blobs(name), digests)]

    def counted_references(self, name: str, digest: str) -> int:
        """How many of the repository's manifests were stored with the blob among their checked (or,
        for a mirror's, counted) references; 0 for a blob only sparse manifests name."""
        return int(self._r.hget(keys.refs(name), digest) or 0)

    def tag_target(self, name: str, tag: str) -> str | None:
        found = self._r.hget(keys.tags(name), tag)
        return None if found is None else text(found)
