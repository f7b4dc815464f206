"""`wharf-admin import FILE`: writes an export (fileformat.py) into a registry, through the
metadata service's calls only, so that its scripts build every derived index as a push would.

Two passes over the file, each streamed:

1. **Look** (writes nothing): every line is checked (format, digests, base64, the manifest bytes
   against their digest, each manifest as Wharf accepts it), repositories come once each, the
   ``end`` record is there and its counts match; each blob is looked up in the target's
   storage (the blob store's Stat) and each tag in the target's metadata. A blob the storage
   does not hold (unless ``allow_missing``), a stored blob of another size, or a tag that
   already points at another manifest stops the import here, with the list; so does a tag the
   file gives to two manifests, or a subject other than the one the manifest's bytes name.
2. **Write**, in the file's order (blob links, then manifests, children before parents): each
   blob is pinned, looked up and linked with its stored size, as an upload is (so garbage
   collection cannot take the bytes in between); each manifest is put with its tags and the
   references and referrer descriptor a push would give.

Every write is idempotent: an import that stopped (a service restarted, a blob went missing)
can be run again, and importing into a registry that already holds some of the content
changes nothing there.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

from services.api import manifest_rules
from services.common.errors import MANIFEST_BLOB_UNKNOWN, RegistryError
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.maintenance import fileformat
from services.maintenance.clients import CACHE_ENTRIES, BoundedCache, RegistryCalls

# How many problems of each kind the refusal lists (all are counted).
LISTED = 20
PROGRESS_EVERY = 5000


class ImportRefused(RuntimeError):
    """The file or the target is not fit for the import; nothing was written."""


class ImportFailed(RuntimeError):
    """A write was refused part-way; what came before it is in the registry (run the import again)."""


@dataclasses.dataclass
class ImportReport:
    file: str = ""
    repositories: int = 0
    blobs: int = 0
    manifests: int = 0
    tags: int = 0
    missing_blobs_linked: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Problems:
    missing: list[str] = dataclasses.field(default_factory=list)
    missing_count: int = 0
    other: list[str] = dataclasses.field(default_factory=list)
    other_count: int = 0

    def add_missing(self, text: str) -> None:
        self.missing_count += 1
        if len(self.missing) < LISTED:
            self.missing.append(text)

    def add_other(self, text: str) -> None:
        self.other_count += 1
        if len(self.other) < LISTED:
            self.other.append(text)


class Importer:
    def __init__(self, calls: RegistryCalls, path: pathlib.Path, allow_missing: bool = False,
                 warn: Callable[[str], None] = lambda text: None) -> None:
        self._calls = calls
        self._path = path
        self._allow_missing = allow_missing
        self._warn = warn
        self._sizes = BoundedCache(CACHE_ENTRIES)

    def run(self, dry_run: bool = False) -> ImportReport:
        planned = self.look()
        if dry_run:
            planned.dry_run = True
            return planned
        return self.write()

    # -- pass 1 ----------------------------------------------------------------

    def look(self) -> ImportReport:
        report = ImportReport(file=str(self._path))
        problems = _Problems()
        current = ""
        tagged: dict[str, str] = {}  # the current repository's tags in the file -> their manifest
        ended = False
        for record in fileformat.read(self._path):
            if ended:
                raise ImportRefused(f"{self._path}: line {record.line}: a record after the end record")
            if record.type == "end":
                ended = True
                found = {"repositories": report.repositories, "blobs": report.blobs,
                         "manifests": report.manifests, "tags": report.tags}
                expected = {k: record.counts.get(k) for k in found}
                if expected != found:
                    raise ImportRefused(f"{self._path}: the end record counts {expected}, the file holds {found}")
            elif record.type == "repository":
                if record.repository <= current:
                    raise ImportRefused(f"{self._path}: line {record.line}: repository {record.repository} out of "
                                        "order (each comes once, in lexical order)")
                current = record.repository
                tagged = {}
                report.repositories += 1
            elif record.repository != current:
                raise ImportRefused(f"{self._path}: line {record.line}: a record of {record.repository} outside "
                                    "its repository's records")
            elif record.type == "blob":
                report.blobs += 1
                self._look_at_blob(record, problems)
            else:
                report.manifests += 1
                report.tags += len(record.tags)
                self._look_at_manifest(record, problems, tagged)
        if not ended:
            raise ImportRefused(f"{self._path}: no end record: the file is truncated")
        self._refuse_if(problems)
        return report

    def _stored_size(self, digest: str) -> int | None:
        known, size = self._sizes.get(digest)
        if not known:
            size = self._calls.stored_size(digest)
            self._sizes.put(digest, size)
        return size

    def _look_at_blob(self, record: fileformat.Record, problems: _Problems) -> None:
        stored = self._stored_size(record.digest)
        if stored is None:
            problems.add_missing(f"{record.repository}@{record.digest}")
        elif stored != record.size:
            problems.add_other(f"line {record.line}: {record.digest}: the file says {record.size} "
                                         f"bytes, the storage holds {stored}")

    def _look_at_manifest(self, record: fileformat.Record, problems: _Problems, tagged: dict[str, str]) -> None:
        try:
            parsed = manifest_rules.parse(record.content, record.media_type)
        except RegistryError as err:
            raise ImportRefused(f"{self._path}: line {record.line}: manifest {record.digest} is not one Wharf "
                                f"accepts: {err.message}") from None
        # The subject is the content's, as a push stores it: a file naming another one would list
        # the manifest among the referrers (and serve it with OCI-Subject) of a manifest it does
        # not refer to, and retention and the collector would delete it with that one.
        if record.subject and record.subject != parsed.subject:
            raise ImportRefused(f"{self._path}: line {record.line}: manifest {record.digest} names subject "
                                f"{parsed.subject or 'none'}; the file says {record.subject}")
        for tag in record.tags:
            # A tag twice in the file would move during the import (or stop it part-way at an
            # immutable tag): refused here, before anything is written.
            # (Memory: the tags of one repository, as the export's.)
            first = tagged.setdefault(tag, record.digest)
            if first != record.digest:
                raise ImportRefused(f"{self._path}: line {record.line}: {record.repository}:{tag} is given to "
                                    f"{first} and to {record.digest}")
            target = self._calls.manifest_digest(record.repository, tag)
            if target is not None and target != record.digest:
                problems.add_other(f"line {record.line}: {record.repository}:{tag} already points at "
                                             f"{target}, the file at {record.digest}")

    def _refuse_if(self, problems: _Problems) -> None:
        lines = []
        if problems.missing_count and not self._allow_missing:
            lines.append(f"{problems.missing_count} blob link(s) name blobs the target's storage does not hold "
                         "(restore the storage first, or pass --allow-missing to link them anyway):")
            lines += [f"  {item}" for item in problems.missing]
            if problems.missing_count > len(problems.missing):
                lines.append(f"  ... and {problems.missing_count - len(problems.missing)} more")
        elif problems.missing_count:
            self._warn(f"{problems.missing_count} blob(s) are not in the target's storage; linking them anyway "
                       "(--allow-missing): pulls of them will fail until their bytes are back")
        if problems.other_count:
            lines.append(f"{problems.other_count} conflict(s) with the target:")
            lines += [f"  {item}" for item in problems.other]
            if problems.other_count > len(problems.other):
                lines.append(f"  ... and {problems.other_count - len(problems.other)} more")
        if lines:
            raise ImportRefused("nothing was imported:\n" + "\n".join(lines))

    # -- pass 2 ----------------------------------------------------------------

    def write(self) -> ImportReport:
        report = ImportReport(file=str(self._path))
        for record in fileformat.read(self._path):
            if record.type == "repository":
                report.repositories += 1
            elif record.type == "blob":
                report.blobs += 1
                report.missing_blobs_linked += self._link(record)
            elif record.type == "manifest":
                report.manifests += 1
                report.tags += len(record.tags)
                self._put(record)
            done = report.blobs + report.manifests
            if done and done % PROGRESS_EVERY == 0 and record.type != "repository":
                self._warn(f"imported {report.blobs} blob links and {report.manifests} manifests so far")
        return report

    def _link(self, record: fileformat.Record) -> int:
        """Links the blob with its stored size; 1 when it was linked without its bytes (--allow-missing)."""
        if self._calls.link_stored(record.repository, record.digest) is not None:
            return 0
        if not self._allow_missing:
            raise ImportFailed(f"line {record.line}: blob {record.digest} of {record.repository} left the storage "
                               "during the import")
        self._calls.link_blob(record.repository, record.digest, record.size)
        return 1

    def _put(self, record: fileformat.Record) -> None:
        # The first pass found each tag absent or already the file's; on a live registry a push may
        # have moved one since (a long first pass), and the put would move it back over the push.
        # Looked at again right before the put, which narrows that window to one call; closing it
        # needs a tag write conditional on the tag's target in the metadata service's script.
        for tag in record.tags:
            target = self._calls.manifest_digest(record.repository, tag)
            if target is not None and target != record.digest:
                raise ImportFailed(f"line {record.line}: {record.repository}:{tag} was pushed to {target} during "
                                   f"the import; not moved to {record.digest} (what came before is imported; "
                                   "run the import again to see every conflict)")
        parsed = manifest_rules.parse(record.content, record.media_type)
        descriptor = mpb.Descriptor(media_type=parsed.media_type, digest=record.digest, size=len(record.content),
                                    artifact_type=parsed.artifact_type, annotations=parsed.annotations)
        request = mpb.PutManifestRequest(
            repository=record.repository, digest=record.digest, media_type=parsed.media_type,
            content=record.content, tags=list(record.tags), blob_references=parsed.blob_refs,
            manifest_references=parsed.manifest_refs, subject=parsed.subject,
            descriptor=descriptor, blob_reference_sizes=parsed.blob_sizes,
            manifest_reference_sizes=parsed.manifest_sizes)
        try:
            self._calls.put_manifest(request)
        except RegistryError as err:
            why = f"{err.code}: {err.message}"
            if err.error is MANIFEST_BLOB_UNKNOWN and isinstance(err.detail, dict):
                why += f" (missing: {', '.join(err.detail.get('missing', [])[:5])})"
            raise ImportFailed(f"line {record.line}: manifest {record.digest} of {record.repository} was refused: "
                               f"{why}") from None
