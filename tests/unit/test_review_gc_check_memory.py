"""Hostile review (2026-12-03): `wharf-admin check` on a storage that lost its blobs keeps memory
bounded by one repository's findings, not the registry's (200,000 missing blobs took it from 94 to
124 MB: every finding's key was kept for the whole run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from services.maintenance.check import Checker
from services.maintenance.findings import Finding


class _LostStorage:
    """Inventory and calls at once: 100 repositories of 50 links each, no blob in storage."""

    def read_only(self) -> bool:
        return False

    def repositories(self) -> Iterator[str]:
        return iter(f"lost/r{i}" for i in range(100))

    def tags(self, name: str) -> Iterator[list[tuple[str, str]]]:
        return iter([])

    def manifest_digests(self, name: str) -> Iterator[list[str]]:
        return iter([])

    def blob_links(self, name: str) -> Iterator[list[tuple[str, int]]]:
        yield [(f"sha256:{name[-2:]:0>2}{j:062x}", 10) for j in range(50)]

    def stored_size(self, digest: str) -> int | None:
        return None


def test_findings_are_deduplicated_per_repository_only() -> None:
    both = _LostStorage()
    found: list[Finding] = []
    checker = Checker(cast(Any, both), cast(Any, both), found.append)
    sizes = []
    original = checker._check_links

    def watched(name: str) -> None:
        original(name)
        sizes.append(len(checker._reported))

    checker._check_links = watched  # type: ignore[method-assign]
    checker.run()
    assert len(found) == 100 * 50 and {f.kind for f in found} == {"link_blob_missing"}
    assert max(sizes) == 50
