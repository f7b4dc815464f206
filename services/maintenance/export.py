"""`wharf-admin export FILE`: the registry's metadata as a portable file (fileformat.py).

Reads Redis in pages (inventory.py), writes as it reads. Per repository: its record, its blob
links (HSCAN), its image manifests (SSCAN), then its indexes with every child before its parent
(ties in digest order). Memory grows with the largest single repository's tags and indexes
(digests only, never manifest bodies), not with the number of repositories, blobs or image
manifests.

Only what an import can take is written: a manifest whose record is gone, that Wharf would
not accept, or whose blobs (or child manifests) the repository does not hold, is skipped and
reported (with the tags that point at it), so that the file always imports; `wharf-admin check`
says what is wrong with them. The export reads a live registry without stopping it: a push
during the export may be partly in the file (a manifest whose blob links were read before they
were made is skipped, or stops the import that needs them). For a point-in-time file, export
while nothing writes, or from a copy of Redis (docs/backup.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from services.api import manifest_rules
from services.common import mediatypes
from services.common.errors import RegistryError
from services.maintenance import fileformat
from services.maintenance.inventory import Inventory, StoredManifest

# How many skipped manifests the report lists (all are counted, and each is warned about).
LISTED = 100
_DONE, _SKIPPED = "done", "skipped"


@dataclasses.dataclass
class ExportReport:
    file: str = ""
    repositories: int = 0
    blobs: int = 0
    manifests: int = 0
    tags: int = 0
    skipped_manifests: int = 0
    skipped_tags: int = 0
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"repositories": self.repositories, "blobs": self.blobs, "manifests": self.manifests,
                "tags": self.tags}

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Exporter:
    def __init__(self, inventory: Inventory, writer: fileformat.Writer, warn: Callable[[str], None]) -> None:
        self._inv = inventory
        self._out = writer
        self._warn = warn
        self.report = ExportReport(file=str(writer.path))

    def run(self) -> ExportReport:
        for name in self._inv.repositories():
            self._repository(name)
        self._out.write(fileformat.end(self.report.counts()))
        return self.report

    def _repository(self, name: str) -> None:
        self._out.write(fileformat.repository(name))
        self.report.repositories += 1
        for page in self._inv.blob_links(name):
            for digest, size in page:
                self._out.write(fileformat.blob(name, digest, size))
                self.report.blobs += 1
        tags_of: dict[str, list[str]] = {}
        for tag_page in self._inv.tags(name):
            for tag, target in tag_page:
                tags_of.setdefault(target, []).append(tag)
        skipped: set[str] = set()
        indexes = self._images(name, tags_of, skipped)
        self._indexes(name, indexes, tags_of, skipped)
        for digest, tags in sorted(tags_of.items()):
            self.report.skipped_tags += len(tags)
            self._warn(f"{name}: not exported: tag(s) {', '.join(sorted(tags))} -> {digest} (manifest not exported)")

    def _images(self, name: str, tags_of: dict[str, list[str]], skipped: set[str]) -> dict[str, list[str]]:
        """Writes the image manifests; returns the indexes (digest -> children) for later."""
        indexes: dict[str, list[str]] = {}
        for page in self._inv.manifest_digests(name):
            for digest, manifest in zip(page, self._inv.manifests(name, page), strict=True):
                parsed = self._parsed(name, digest, manifest, skipped)
                if manifest is None or parsed is None:
                    continue
                if parsed.manifest_refs or parsed.media_type in mediatypes.INDEXES:
                    indexes[digest] = sorted(parsed.manifest_refs)
                    continue
                linked = self._inv.link_sizes(name, parsed.blob_refs)
                wrong = [(b, s, link) for b, s, link in zip(parsed.blob_refs, parsed.blob_sizes, linked, strict=True)
                         if link != s]
                if wrong:
                    blob, declared, link = wrong[0]
                    self._skip(name, digest, skipped, f"blob {blob} is not linked in the repository" if link is None
                               else f"blob {blob}: the manifest declares {declared} bytes, the link {link}")
                    continue
                self._write(name, manifest, tags_of)
        return indexes

    def _indexes(self, name: str, indexes: dict[str, list[str]], tags_of: dict[str, list[str]],
                 skipped: set[str]) -> None:
        """Writes the indexes, every child before its parent (depth first, without recursion)."""
        state: dict[str, str] = {}
        for root in sorted(indexes):
            if root in state:
                continue
            path = [(root, iter(indexes[root]))]
            on_path = {root}
            while path:
                digest, children = path[-1]
                child = next(children, None)
                if child is not None:
                    if child in indexes and child not in state and child not in on_path:
                        path.append((child, iter(indexes[child])))
                        on_path.add(child)
                    continue
                path.pop()
                on_path.discard(digest)
                state[digest] = self._index(name, digest, indexes, state, tags_of, skipped)

    def _index(self, name: str, digest: str, indexes: dict[str, list[str]], state: dict[str, str],
               tags_of: dict[str, list[str]], skipped: set[str]) -> str:
        children = indexes[digest]
        others = [c for c in children if c not in indexes]
        stored = dict(zip(others, self._inv.manifests_exist(name, others), strict=True))
        for child in children:
            written = state.get(child) == _DONE if child in indexes else stored[child] and child not in skipped
            if not written:
                self._skip(name, digest, skipped, f"child manifest {child} is not exported")
                return _SKIPPED
        [manifest] = self._inv.manifests(name, [digest])
        if manifest is None:
            self._skip(name, digest, skipped, "deleted during the export")
            return _SKIPPED
        self._write(name, manifest, tags_of)
        return _DONE

    def _parsed(self, name: str, digest: str, manifest: StoredManifest | None,
                skipped: set[str]) -> manifest_rules.ParsedManifest | None:
        if manifest is None:
            self._skip(name, digest, skipped, "the manifest list names it but its record is gone")
            return None
        try:
            return manifest_rules.parse(manifest.content, manifest.media_type)
        except RegistryError as err:
            self._skip(name, digest, skipped, f"not a manifest Wharf accepts: {err.message}")
            return None

    def _write(self, name: str, manifest: StoredManifest, tags_of: dict[str, list[str]]) -> None:
        tags = sorted(tags_of.pop(manifest.digest, []))
        self._out.write(fileformat.manifest(name, manifest.digest, manifest.media_type, manifest.subject, tags,
                                            manifest.content))
        self.report.manifests += 1
        self.report.tags += len(tags)

    def _skip(self, name: str, digest: str, skipped: set[str], reason: str) -> None:
        skipped.add(digest)
        self.report.skipped_manifests += 1
        if len(self.report.skipped) < LISTED:
            self.report.skipped.append({"repository": name, "digest": digest, "reason": reason})
        self._warn(f"{name}: not exported: manifest {digest}: {reason}")
