"""The export file format (services/maintenance/fileformat.py) and the import's first pass, which
must refuse a damaged file or an unfit target before writing anything (no services here: a fake
stands in for the gRPC calls)."""

from __future__ import annotations

import gzip
import json
import pathlib
from typing import Any

import pytest

from services.maintenance import fileformat
from services.maintenance.findings import KINDS, Finding
from services.maintenance.importer import Importer, ImportRefused
from tests.e2e.images import canonical_json, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = b"{}"
MANIFEST = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], "config": {
    "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(CONFIG), "size": len(CONFIG)}})


class FakeCalls:
    """What the first pass asks: stored sizes and where tags point. Any write is a test failure."""

    def __init__(self, stored: dict[str, int], tags: dict[tuple[str, str], str] | None = None) -> None:
        self.stored = stored
        self.tags = tags or {}

    def stored_size(self, digest: str) -> int | None:
        return self.stored.get(digest)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        return self.tags.get((repository, reference))

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the first pass called {name}")


def write_export(path: pathlib.Path, name: str = "team/app") -> pathlib.Path:
    writer = fileformat.Writer(path)
    writer.write(fileformat.repository(name))
    writer.write(fileformat.blob(name, sha256(CONFIG), len(CONFIG)))
    writer.write(fileformat.manifest(name, sha256(MANIFEST), OCI_MANIFEST, "", ["v1"], MANIFEST))
    writer.write(fileformat.end({"repositories": 1, "blobs": 1, "manifests": 1, "tags": 1}))
    writer.commit()
    return path


def lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("name", ["registry.jsonl", "registry.jsonl.gz"])
def test_written_records_read_back(tmp_path: pathlib.Path, name: str) -> None:
    path = write_export(tmp_path / name)
    assert not (tmp_path / (name + ".partial")).exists()
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as file:
            head = json.loads(file.readline())
    else:
        head = json.loads(lines(path)[0])
    assert (head["format"], head["version"]) == ("wharf-metadata", 1) and head["created"].endswith("Z")
    records = list(fileformat.read(path))
    assert [r.type for r in records] == ["repository", "blob", "manifest", "end"]
    assert records[2].content == MANIFEST and records[2].tags == ("v1",) and records[2].line == 4
    report = Importer(FakeCalls({sha256(CONFIG): len(CONFIG)}), path).look()  # type: ignore[arg-type]
    assert (report.repositories, report.blobs, report.manifests, report.tags) == (1, 1, 1, 1)


@pytest.mark.parametrize(("change", "message"), [
    (lambda ls: ['{"format": "wharf-metadata", "version": 2}\n', *ls[1:]], "this Wharf reads up to version 1"),
    (lambda ls: ['{"hello": 1}\n', *ls[1:]], "not a Wharf export"),
    (lambda ls: [*ls[:3], ls[3].replace('"content":"', '"content":"AAAA'), *ls[4:]], "line 4: the content does not"),
    (lambda ls: [*ls[:2], '{"type": "tarball", "repository": "a", "digest": "x"}\n', *ls[2:]], "line 3"),
    (lambda ls: [*ls[:2], ls[2].replace('"size":2', '"size":-1'), *ls[3:]], "line 3: size must be"),
])
def test_damaged_files_are_refused_with_the_line(tmp_path: pathlib.Path, change: Any, message: str) -> None:
    path = write_export(tmp_path / "registry.jsonl")
    path.write_text("".join(change(lines(path))))
    with pytest.raises(fileformat.FormatError, match=message):
        list(fileformat.read(path))


def test_the_first_pass_refuses_before_any_write(tmp_path: pathlib.Path) -> None:
    path = write_export(tmp_path / "registry.jsonl")
    stored = {sha256(CONFIG): len(CONFIG)}
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("".join(lines(path)[:-1]))
    with pytest.raises(ImportRefused, match="no end record"):
        Importer(FakeCalls(stored), truncated).look()  # type: ignore[arg-type]
    miscounted = tmp_path / "miscounted.jsonl"
    miscounted.write_text("".join(lines(path)[:-1]) + lines(path)[-1].replace('"blobs":1', '"blobs":2'))
    with pytest.raises(ImportRefused, match="the end record counts"):
        Importer(FakeCalls(stored), miscounted).look()  # type: ignore[arg-type]
    with pytest.raises(ImportRefused, match=r"1 blob link\(s\) name blobs the target's storage does not hold"):
        Importer(FakeCalls({}), path).look()  # type: ignore[arg-type]
    assert Importer(FakeCalls({}), path, allow_missing=True).look().blobs == 1  # type: ignore[arg-type]
    with pytest.raises(ImportRefused, match="the storage holds 3"):
        Importer(FakeCalls({sha256(CONFIG): 3}), path, allow_missing=True).look()  # type: ignore[arg-type]
    moved = FakeCalls(stored, {("team/app", "v1"): sha256(b"another")})
    with pytest.raises(ImportRefused, match="team/app:v1 already points at"):
        Importer(moved, path).look()  # type: ignore[arg-type]
    same = FakeCalls(stored, {("team/app", "v1"): sha256(MANIFEST)})
    assert Importer(same, path).look().tags == 1  # type: ignore[arg-type]


def test_every_finding_says_how_it_is_repaired_or_why_not() -> None:
    for kind in KINDS.values():
        assert bool(kind.repair) != bool(kind.why_not), kind.name
        assert kind.repair in {"", "DeleteTag", "UnlinkBlob", "LinkBlob"}
    finding = Finding("manifest_blob_missing", "team/app", sha256(b"x"))
    assert finding.to_json()["reason"] == KINDS["manifest_blob_missing"].why_not
    with pytest.raises(KeyError):
        Finding("no_such_kind", "team/app")
