"""Hostile review (2026-12-03): the file `wharf-admin export` writes holds every private
repository's names and manifests; it is its owner's alone, and a name planted at its
``.partial`` (in a shared directory such as /tmp) cannot make the export write elsewhere."""

from __future__ import annotations

import gzip
import os
import pathlib
import stat

import pytest

from services.maintenance import fileformat


def _write(path: pathlib.Path) -> None:
    writer = fileformat.Writer(path)
    writer.write(fileformat.repository("team/private"))
    writer.write(fileformat.end({"repositories": 1, "blobs": 0, "manifests": 0, "tags": 0}))
    writer.commit()


@pytest.mark.parametrize("name", ["export.jsonl", "export.jsonl.gz"])
def test_an_export_is_readable_by_its_owner_only(tmp_path: pathlib.Path, name: str) -> None:
    old = os.umask(0o022)
    try:
        _write(tmp_path / name)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert [r.repository for r in fileformat.read(tmp_path / name)] == ["team/private", ""]
    if name.endswith(".gz"):
        with gzip.open(tmp_path / name) as unpacked:
            assert unpacked.read().count(b"\n") == 3


def test_a_leftover_partial_file_is_replaced_and_made_private(tmp_path: pathlib.Path) -> None:
    partial = tmp_path / "export.jsonl.partial"
    partial.write_text("a crashed run's bytes, much longer than the export that follows it " * 100)
    partial.chmod(0o644)
    _write(tmp_path / "export.jsonl")
    assert stat.S_IMODE((tmp_path / "export.jsonl").stat().st_mode) == 0o600
    assert len(list(fileformat.read(tmp_path / "export.jsonl"))) == 2
    assert not partial.exists()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_link_planted_at_the_partial_name_is_not_written_through(tmp_path: pathlib.Path, link: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    partial = tmp_path / "export.jsonl.partial"
    (partial.symlink_to if link == "symlink" else partial.hardlink_to)(victim)
    with pytest.raises(fileformat.FormatError, match=r"export\.jsonl\.partial"):
        fileformat.Writer(tmp_path / "export.jsonl")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "export.jsonl").exists()


def test_a_second_export_to_the_same_file_does_not_empty_the_first(tmp_path: pathlib.Path) -> None:
    """A cron export and a manual one to one file: the second truncated the partial file the
    first was writing, which then renamed a file starting with zeros into place."""
    first = fileformat.Writer(tmp_path / "export.jsonl")
    first.write(fileformat.repository("team/a"))
    with pytest.raises(fileformat.FormatError, match="another export"):
        fileformat.Writer(tmp_path / "export.jsonl")
    first.write(fileformat.end({"repositories": 1, "blobs": 0, "manifests": 0, "tags": 0}))
    first.commit()
    assert [r.type for r in fileformat.read(tmp_path / "export.jsonl")] == ["repository", "end"]
    _write(tmp_path / "export.jsonl")  # once it is done, the next export goes ahead
