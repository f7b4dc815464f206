"""`wharf-admin check`: finds what is inconsistent between the metadata and the storage, and
repairs what can be repaired without losing anything (services/maintenance/findings.py lists
each kind).

Per repository, in the catalog's order: its tags (does each point at a stored manifest?), its
manifests (is the record there, do the bytes hash to the digest, does each referenced blob
have its link and its bytes, each referenced child manifest its record?) and its blob links
(are the bytes in storage, of the recorded size?); with ``verify``, the bytes of every linked or
referenced blob are streamed through the blob store and hashed, each blob once.

Storage is read through the blob store's gRPC calls (Stat, Read), not a storage driver: the
command then needs the internal secret only (no S3 credentials), works the same for every
backend, and sees what clients get. Every repair is a metadata-service call (DeleteTag,
UnlinkBlob, LinkBlob after PinBlob, as an upload links), made only after looking again at what
it repairs, so that a push between the look and the repair is not undone. Memory is bounded:
pages of Redis replies, one blob's chunk at a time, bounded caches of blob lookups.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from services.api import manifest_rules
from services.common import digests
from services.common.errors import RegistryError
from services.maintenance.clients import CACHE_ENTRIES, BoundedCache, RegistryCalls
from services.maintenance.findings import KINDS, Finding, Summary
from services.maintenance.inventory import Inventory, StoredManifest


class Checker:
    def __init__(self, inventory: Inventory, calls: RegistryCalls, emit: Callable[[Finding], None],
                 verify: bool = False, repair: bool = False, cache_entries: int = CACHE_ENTRIES,
                 mirrored: Callable[[str], bool] = lambda name: False) -> None:
        self._inv = inventory
        self._mirrored = mirrored
        self._calls = calls
        self._emit_to = emit
        self._repair = repair
        self._verify = verify
        self._stat_cache = BoundedCache(cache_entries)
        self._verified = BoundedCache(cache_entries)
        self._reported: set[tuple[str, str, str, str]] = set()
        self.summary = Summary(verify=verify, repair=repair)

    def run(self) -> Summary:
        self.summary.read_only = self._inv.read_only()
        for name in self._inv.repositories():
            # Every finding names its repository: one repository's are all there is to deduplicate
            # (kept for the whole run, a storage that lost its blobs held millions in memory).
            self._reported.clear()
            self.summary.repositories += 1
            self._check_tags(name)
            self._check_manifests(name)
            self._check_links(name)
        return self.summary

    # -- the three looks at a repository -----------------------------------------

    def _check_tags(self, name: str) -> None:
        for page in self._inv.tags(name):
            self.summary.tags += len(page)
            stored = self._inv.manifests_exist(name, [digest for _, digest in page])
            for (tag, digest), ok in zip(page, stored, strict=True):
                if not ok:
                    self._found(Finding("tag_manifest_missing", name, digest, tag=tag),
                                functools.partial(self._drop_tag, name, tag, digest))

    def _check_manifests(self, name: str) -> None:
        for page in self._inv.manifest_digests(name):
            self.summary.manifests += len(page)
            for digest, manifest in zip(page, self._inv.manifests(name, page), strict=True):
                if manifest is None:
                    self._found(Finding("manifest_record_missing", name, digest))
                else:
                    self._check_manifest(name, manifest)

    def _check_manifest(self, name: str, manifest: StoredManifest) -> None:
        digest = manifest.digest
        algorithm = digest.partition(":")[0]
        if algorithm not in digests.ALGORITHMS or digests.of(manifest.content, algorithm) != digest:
            self._found(Finding("manifest_digest_mismatch", name, digest))
        try:
            parsed = manifest_rules.parse(manifest.content, manifest.media_type)
        except RegistryError as err:
            self._found(Finding("manifest_unreadable", name, digest, detail=err.message))
            return
        linked = self._inv.link_sizes(name, parsed.blob_refs)
        for blob, declared, link in zip(parsed.blob_refs, parsed.blob_sizes, linked, strict=True):
            stored = self._stored_size(blob)
            if stored is None:
                where = "linked" if link is not None else "not linked either"
                self._found(Finding("manifest_blob_missing", name, blob, detail=f"named by manifest {digest}; "
                                    f"{where}"))
                continue
            if link is None:
                finding = Finding("manifest_blob_unlinked", name, blob, detail=f"named by manifest {digest}")
                refused = self._not_relinkable(name, blob, declared, stored)
                if refused:
                    finding.reason = refused
                    self._found(finding)
                else:
                    self._found(finding, functools.partial(self._relink, name, blob))
            self._verify_blob(name, blob, stored)
        children = parsed.manifest_refs
        for child, ok in zip(children, self._inv.manifests_exist(name, children), strict=True):
            if not ok:
                self._found(Finding("manifest_child_missing", name, child, detail=f"named by index {digest}"))

    def _not_relinkable(self, name: str, blob: str, declared: int, stored: int) -> str:
        """Why linking the stored blob into the repository is no repair ("" when it is). A link is
        access: whoever may pull the repository may then read the bytes. Only a manifest whose
        references were checked at its push had the blob in the repository; a sparse manifest
        (WHARF_ALLOW_SPARSE_MANIFESTS) or a mirror's names any digest, such as another
        repository's private layer, without having it."""
        if stored != declared:
            return (f"the manifest declares {declared} bytes, the storage holds {stored}: a link would serve a "
                    "blob of another size; push the image again")
        if self._mirrored(name):
            return ("a mirrored repository links a blob only once its upstream delivered it: a pull of it "
                    "fills it")
        if not self._inv.counted_references(name, blob):
            return ("only manifests pushed without their references checked (sparse) name it: the repository "
                    "may never have held it; push the blob to it")
        return ""

    def _check_links(self, name: str) -> None:
        for page in self._inv.blob_links(name):
            self.summary.links += len(page)
            for blob, size in page:
                stored = self._stored_size(blob)
                if stored is None:
                    self._found(Finding("link_blob_missing", name, blob),
                                functools.partial(self._drop_link, name, blob))
                elif stored != size:
                    self._found(Finding("link_size_mismatch", name, blob,
                                        detail=f"the link records {size} bytes, the storage holds {stored}"))
                else:
                    self._verify_blob(name, blob, stored)

    # -- storage ---------------------------------------------------------------

    def _stored_size(self, digest: str, fresh: bool = False) -> int | None:
        known, size = (False, None) if fresh else self._stat_cache.get(digest)
        if not known:
            self.summary.blobs_looked_up += 1
            size = self._calls.stored_size(digest)
            self._stat_cache.put(digest, size)
        return size

    def _verify_blob(self, name: str, digest: str, size: int) -> None:
        if not self._verify or self._verified.get(digest)[0]:
            return
        self._verified.put(digest, size)
        self.summary.blobs_verified += 1
        algorithm = digest.partition(":")[0]
        hasher = digests.hasher(algorithm)
        read = 0
        try:
            for chunk in self._calls.read_blob(digest, size):
                hasher.update(chunk)
                read += len(chunk)
        except RegistryError as err:
            self._found(Finding("blob_unreadable", name, digest, detail=f"{err.code}: {err.message}"))
            return
        finally:
            self.summary.bytes_verified += read
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest or read != size:
            self._found(Finding("blob_digest_mismatch", name, digest,
                                detail=f"the {read} stored bytes hash to {actual}"))

    # -- findings and repairs --------------------------------------------------

    def _found(self, finding: Finding, repair: Callable[[], str] | None = None) -> None:
        """Reports a finding once; repairs it first when asked and it can be repaired."""
        if finding.key in self._reported:
            return
        self._reported.add(finding.key)
        if repair is not None:
            finding.action = KINDS[finding.kind].repair
            if not self._repair:
                finding.reason = "not asked: run with --repair"
            else:
                try:
                    outcome = repair()
                except RegistryError as err:
                    finding.reason = f"the repair failed: {err.code}: {err.message}"
                else:
                    finding.repaired = not outcome
                    finding.reason = outcome
        self.summary.count(finding)
        self._emit_to(finding)

    def _drop_tag(self, name: str, tag: str, digest: str) -> str:
        """Deletes the tag if it still points at the missing manifest; "" when done, else why not.
        The metadata service deletes it only while it is dangling, so a push after this look is kept."""
        if self._inv.tag_target(name, tag) != digest or self._inv.manifests_exist(name, [digest])[0] \
                or not self._calls.delete_tag(name, tag, only_dangling=True):
            return "the tag changed since it was read (a push?): nothing to repair now; check again"
        return ""

    def _drop_link(self, name: str, digest: str) -> str:
        if self._stored_size(digest, fresh=True) is not None:
            return "the blob is in storage now (an upload?): nothing to repair"
        self._calls.unlink_blob(name, digest)
        return ""

    def _relink(self, name: str, digest: str) -> str:
        size = self._calls.link_stored(name, digest)
        self._stat_cache.put(digest, size)
        return "" if size is not None else "the blob left the storage since it was read; check again"
