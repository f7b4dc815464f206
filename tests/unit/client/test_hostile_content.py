"""Content from a hostile registry written locally or printed: tarball member names, partial files, terminals."""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import tarfile
from collections.abc import Callable

import pytest
from wharf_client import Client, Descriptor, DigestMismatch
from wharf_client import mediatypes as mt
from wharf_client.artifact import pull_artifact
from wharf_client.blobio import BytesSource
from wharf_client.cli.cmd_auth import _password
from wharf_client.cli.context import Context, report_error
from wharf_client.dockerarchive import DockerArchiveTarget
from wharf_client.errors import ErrorEntry, FormatError, NotFoundError
from wharf_client.manifest import image_manifest

from services.auth.admin_cli import _new_password
from tests.unit.client.builders import sha256
from tests.unit.client.fakeregistry import HOST, FakeRegistry

ZSTD = b"\x28\xb5\x2f\xfd" + b"not really zstd"


def source(data: bytes, media_type: str) -> BytesSource:
    return BytesSource(data, Descriptor(media_type, sha256(data), len(data)))


# -- 4. diff_ids become member names only when they are digests ------------------------------------


@pytest.mark.parametrize("diff_id", ["sha256:../../../../tmp/escaped", "nocolon", "sha256:/etc/passwd", 7,
                                     "sha256:" + "0" * 63])
@pytest.mark.parametrize("layer_type", [mt.OCI_LAYER_ZSTD, mt.OCI_LAYER])
def test_a_diff_id_that_is_not_a_digest_writes_no_tarball(tmp_path: pathlib.Path, diff_id: object,
                                                          layer_type: str) -> None:
    layer = source(ZSTD if layer_type == mt.OCI_LAYER_ZSTD else b"plain tar bytes", layer_type)
    config = source(json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode(),
                    mt.OCI_CONFIG)
    target = DockerArchiveTarget(tmp_path / "out" / "image.tar")
    try:
        for item in (config, layer):
            target.put_blob(item, lambda _: None)
        with pytest.raises(FormatError, match="not a digest"):
            target.put_manifest(image_manifest(config.descriptor, [layer.descriptor]), None, True)
    finally:
        target.close()
    assert list((tmp_path / "out").iterdir()) == []


def test_a_zstd_layer_with_a_digest_diff_id_is_written_under_it(tmp_path: pathlib.Path) -> None:
    layer = source(ZSTD, mt.OCI_LAYER_ZSTD)
    diff_id = sha256(b"whatever it unpacks to")
    config = source(json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode(), mt.OCI_CONFIG)
    target = DockerArchiveTarget(tmp_path / "image.tar")
    for item in (config, layer):
        target.put_blob(item, lambda _: None)
    target.put_manifest(image_manifest(config.descriptor, [layer.descriptor]), None, True)
    target.close()
    with tarfile.open(tmp_path / "image.tar") as tar:
        names = tar.getnames()
    assert f"{diff_id.split(':')[1]}/layer.tar" in names
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)


# -- 9. a pulled artifact file that fails verification leaves nothing behind ------------------------


def test_an_artifact_file_that_fails_its_digest_leaves_no_partial(fake: FakeRegistry,
                                                                  make_client: Callable[..., Client],
                                                                  tmp_path: pathlib.Path) -> None:
    declared = b"expected content\n"
    titled = {mt.TITLE_ANNOTATION: "bad.txt"}
    layer = Descriptor("text/plain", sha256(declared), len(declared), annotations=titled)
    fake.blobs[layer.digest] = b"EVIL content!!!!\n"  # the same size, other bytes
    config = source(b"{}", mt.OCI_EMPTY)
    fake.blobs[config.descriptor.digest] = b"{}"
    manifest = image_manifest(config.descriptor, [layer], artifact_type="application/x-test")
    fake.manifests[("app", "v1")] = (manifest.content, manifest.media_type)
    with pytest.raises(DigestMismatch):
        pull_artifact(make_client().repository(f"{HOST}/app"), "v1", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # neither bad.txt nor .bad.txt.partial


# -- 8. the command line prints the registry's words inert ------------------------------------------


def test_cli_output_and_errors_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(json=False, quiet=False)
    ctx = Context(args, None, None)  # type: ignore[arg-type]
    ctx.emit({}, "ok\n\x1b]0;PWNED-TITLE\x07\x1b[2J\x1b[31mred\u202e")
    error = NotFoundError("GET", f"http://{HOST}/v2/x/manifests/v1", 404,
                          [ErrorEntry("MANIFEST_UNKNOWN\x1b[2J", "\x1b[31mfake: Login Succeeded")])
    report_error(error, as_json=False)
    report_error(FormatError("manifest \x1b[2J is bad"), as_json=False)
    out, err = capsys.readouterr()
    assert out == "ok\n\\x1b]0;PWNED-TITLE\\x07\\x1b[2J\\x1b[31mred\\u202e\n"
    assert "\x1b" not in err and err.count("\n") == 2
    assert "MANIFEST_UNKNOWN\\x1b[2J: \\x1b[31mfake: Login Succeeded" in err


# -- 12. the same password from the same standard input, on both sides ------------------------------


@pytest.mark.parametrize("line", ["s3cret\n", "s3cret\r\n", "s3cret"])
def test_password_stdin_is_read_alike_by_login_and_admin(monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(line))
    login = _password(argparse.Namespace(password_stdin=True, password=None))
    monkeypatch.setattr("sys.stdin", io.StringIO(line))
    assert login == _new_password(True) == "s3cret"
