"""What `wharf-admin check` can find: every kind once, with what it means, whether --repair fixes
it (and with which metadata call), and, when it does not, why not and what an operator can do."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    meaning: str
    repair: str  # the metadata call --repair makes; "" when it makes none
    why_not: str  # for a kind --repair leaves alone: why, and what to do instead


def _kind(name: str, meaning: str, repair: str = "", why_not: str = "") -> Kind:
    return Kind(name, meaning, repair, why_not)


KINDS: dict[str, Kind] = {k.name: k for k in [
    _kind("tag_manifest_missing", "a tag points at a manifest the repository does not store", "DeleteTag"),
    _kind("manifest_record_missing", "the repository's manifest list names a manifest whose record is gone",
          why_not="no metadata call removes a listing without its record (DeleteManifest needs the record); "
                  "clients cannot see it (a GET by digest answers 404), so it is harmless"),
    _kind("manifest_digest_mismatch", "the stored manifest bytes do not hash to the manifest's digest",
          why_not="the pushed bytes are lost; delete the manifest (DELETE /v2/<name>/manifests/<digest>) and "
                  "push the image again"),
    _kind("manifest_unreadable", "the stored manifest is not one Wharf accepts (docs/formats.md)",
          why_not="its references cannot be known; delete the manifest and push the image again"),
    _kind("manifest_blob_unlinked", "a manifest refers to a blob the storage holds but the repository does not "
          "link", "LinkBlob"),
    _kind("manifest_blob_missing", "a manifest refers to a blob whose bytes are not in storage",
          why_not="the bytes are gone: push the image that holds the blob again (its link to the missing bytes, "
                  "if any, is removed by the link_blob_missing repair, so the client uploads them), or delete "
                  "the manifest"),
    _kind("manifest_child_missing", "an index refers to a manifest the repository does not store",
          why_not="the child's bytes are not known here: push the child (or the whole index) again, or delete "
                  "the index"),
    _kind("link_blob_missing", "the repository links a blob whose bytes are not in storage (a HEAD answers 200, "
          "a GET fails, and a client skips the upload that would restore it)", "UnlinkBlob"),
    _kind("link_size_mismatch", "a blob link records a size other than the stored blob's",
          why_not="one of them is wrong; run with --verify: if the bytes match their digest, push the image "
                  "again after unlinking (DELETE /v2/<name>/blobs/<digest>)"),
    _kind("blob_digest_mismatch", "--verify: the stored bytes do not hash to the blob's digest",
          why_not="the blob store keeps a digest's first bytes (an upload of the right ones finds the digest "
                  "stored): remove the blob from storage (blobs/<algorithm>/<2 hex>/<hex>/), run check --repair "
                  "(which then unlinks it), and push the image again"),
    _kind("blob_unreadable", "--verify: the blob store could not stream the blob",
          why_not="see the detail; check the blob store's log and storage"),
]}


@dataclasses.dataclass
class Finding:
    kind: str
    repository: str
    digest: str = ""
    tag: str = ""
    detail: str = ""
    repaired: bool = False
    action: str = ""  # the call made (repaired), or the one --repair would make
    reason: str = ""  # why it was not repaired

    def __post_init__(self) -> None:
        kind = KINDS[self.kind]  # an unknown kind is a bug here, not a finding
        if not kind.repair:
            self.reason = kind.why_not

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.kind, self.repository, self.digest, self.tag

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": self.kind, "repository": self.repository}
        if self.digest:
            found["digest"] = self.digest
        if self.tag:
            found["tag"] = self.tag
        found["meaning"] = KINDS[self.kind].meaning
        if self.detail:
            found["detail"] = self.detail
        found["repaired"] = self.repaired
        if self.action:
            found["action"] = self.action
        if not self.repaired:
            found["reason"] = self.reason
        return found


@dataclasses.dataclass
class Summary:
    repositories: int = 0
    tags: int = 0
    manifests: int = 0
    links: int = 0
    blobs_looked_up: int = 0
    blobs_verified: int = 0
    bytes_verified: int = 0
    findings: int = 0
    repaired: int = 0
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    verify: bool = False
    repair: bool = False
    read_only: bool = False

    @property
    def remaining(self) -> int:
        return self.findings - self.repaired

    def count(self, finding: Finding) -> None:
        self.findings += 1
        self.repaired += finding.repaired
        self.by_kind[finding.kind] = self.by_kind.get(finding.kind, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "remaining": self.remaining}
