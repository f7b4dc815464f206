"""Hostile export files (a hostile review of governance and backup): `wharf-admin import` must
refuse a damaged or crafted file with a one-line FormatError or ImportRefused (exit status 2),
before writing anything, without reading an endless line into memory, and must never store what
the manifest's own bytes do not say (no services here: a fake stands in for the gRPC calls, as
in test_maintenance_file.py)."""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from services.maintenance import fileformat
from services.maintenance.importer import Importer, ImportRefused
from tests.e2e.images import canonical_json, sha256
from tests.unit.test_maintenance_file import CONFIG, MANIFEST, OCI_MANIFEST, FakeCalls

HEAD = json.dumps({"format": fileformat.FORMAT, "version": 1}) + "\n"


def records(path: pathlib.Path) -> list[fileformat.Record]:
    return list(fileformat.read(path))


def test_a_file_that_is_not_utf8_or_nested_too_deeply_is_a_format_error(tmp_path: pathlib.Path) -> None:
    # Before: UnicodeDecodeError and RecursionError tracebacks out of wharf-admin.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(HEAD.encode() + b'{"type": "repository", "name": "\xff"}\n')
    with pytest.raises(fileformat.FormatError, match="line 2 is not UTF-8"):
        records(bad)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(HEAD + "[" * 100_000 + "\n")
    with pytest.raises(fileformat.FormatError, match="line 2"):
        records(deep)
    deep.write_text("[" * 100_000 + "\n")
    with pytest.raises(fileformat.FormatError, match="line 1 is not JSON"):
        records(deep)


def test_a_gzip_file_cut_short_is_a_format_error(tmp_path: pathlib.Path) -> None:
    # Before: EOFError, which click reports as "Aborted!" with exit status 1.
    body = HEAD + "".join(json.dumps({"type": "repository", "name": f"r{i:05d}"}) + "\n" for i in range(20_000))
    whole = gzip.compress(body.encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[:-20])
    with pytest.raises(fileformat.FormatError, match="damaged or cut short"):
        records(cut)
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(whole[:200] + bytes(b ^ 0xFF for b in whole[200:400]) + whole[400:])
    with pytest.raises(fileformat.FormatError):
        records(damaged)


def test_an_endless_line_is_refused_without_reading_it_whole(tmp_path: pathlib.Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a 200 KB gzip file of one 200 MB line took 466 MB of memory to read (a 10 MB one,
    # ten gigabytes); the limit is lowered here to keep the test small.
    monkeypatch.setattr(fileformat, "MAX_LINE", 1024 * 1024, raising=False)
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as out:
        out.write(HEAD.encode() + b'{"type": "repository", "name": "a"')
        for _ in range(8):
            out.write(b" " * 1024 * 1024)
        out.write(b"}\n")
    with pytest.raises(fileformat.FormatError, match="line 2 is longer than"):
        records(bomb)


def test_a_blob_size_beyond_int64_is_a_format_error(tmp_path: pathlib.Path) -> None:
    # Before: read as valid; with --allow-missing the link's request failed with a ValueError traceback.
    path = tmp_path / "big.jsonl"
    path.write_text(HEAD + json.dumps({"type": "blob", "repository": "team/app", "digest": sha256(CONFIG),
                                       "size": 2**63}) + "\n")
    with pytest.raises(fileformat.FormatError, match="size"):
        records(path)


def export_with(path: pathlib.Path, manifests: list[tuple[bytes, str, list[str]]]) -> pathlib.Path:
    writer = fileformat.Writer(path)
    writer.write(fileformat.repository("team/app"))
    writer.write(fileformat.blob("team/app", sha256(CONFIG), len(CONFIG)))
    for content, subject, tags in manifests:
        writer.write(fileformat.manifest("team/app", sha256(content), OCI_MANIFEST, subject, tags, content))
    writer.write(fileformat.end({"repositories": 1, "blobs": 1, "manifests": len(manifests),
                                 "tags": sum(len(tags) for _, _, tags in manifests)}))
    writer.commit()
    return path


def importer(path: pathlib.Path) -> Importer:
    return Importer(FakeCalls({sha256(CONFIG): len(CONFIG)}), path)  # type: ignore[arg-type]


def test_a_subject_the_manifest_does_not_name_is_refused(tmp_path: pathlib.Path) -> None:
    # Before: imported, and the manifest was listed among the referrers of (and served with
    # OCI-Subject naming) a manifest its bytes do not refer to.
    path = export_with(tmp_path / "subject.jsonl", [(MANIFEST, sha256(b"some other manifest"), [])])
    with pytest.raises(ImportRefused, match="names subject none; the file says"):
        importer(path).look()
    referrer = canonical_json({**json.loads(MANIFEST), "subject": {
        "mediaType": OCI_MANIFEST, "digest": sha256(MANIFEST), "size": len(MANIFEST)}})
    path = export_with(tmp_path / "other.jsonl", [(MANIFEST, "", []), (referrer, sha256(b"another"), [])])
    with pytest.raises(ImportRefused, match=f"names subject {sha256(MANIFEST)}"):
        importer(path).look()
    # The content's own subject (or none said) imports.
    path = export_with(tmp_path / "right.jsonl", [(MANIFEST, "", []), (referrer, sha256(MANIFEST), [])])
    assert importer(path).look().manifests == 2


def test_a_tag_the_file_gives_to_two_manifests_is_refused_before_anything_is_written(tmp_path: pathlib.Path) -> None:
    # Before: the first pass passed; the import then moved the tag from one to the other (or,
    # at an immutable tag, stopped part-way, the first manifest written).
    other = canonical_json({**json.loads(MANIFEST), "annotations": {"a": "b"}})
    path = export_with(tmp_path / "twice.jsonl", [(MANIFEST, "", ["v1"]), (other, "", ["v1"])])
    with pytest.raises(ImportRefused, match="team/app:v1 is given to"):
        importer(path).look()
    # The same manifest twice with its tags is fine.
    path = export_with(tmp_path / "same.jsonl", [(MANIFEST, "", ["v1"]), (MANIFEST, "", ["v1", "v2"])])
    assert importer(path).look().tags == 3
