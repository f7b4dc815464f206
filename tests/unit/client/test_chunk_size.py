"""``--chunk-size``: sizes as people write them, refused when malformed, and the upload it leads to."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import pytest
from wharf_client import Client, ClientOptions, Descriptor, Outcome, push_blob
from wharf_client.blobio import BytesSource
from wharf_client.cli import build_parser, run
from wharf_client.cli.context import EXIT_USAGE, client_options
from wharf_client.digest import of
from wharf_client.options import parse_size

from tests.unit.client.fakeregistry import HOST, FakeRegistry

MakeClient = Callable[..., Client]


@pytest.mark.parametrize(("text", "size"), [("1048576", 1048576), ("16MiB", 16 * 2**20), ("5M", 5 * 2**20),
                                            ("5m", 5 * 2**20), ("5Mi", 5 * 2**20), ("5MB", 5_000_000),
                                            ("512K", 512 * 1024), ("1 GiB", 2**30), ("100b", 100), ("0", 0)])
def test_sizes_are_read_as_written(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5M", "16 MiBs", "M", "sixteen", "0x100", "5P"])
def test_malformed_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize("command", [["push", "layout", "r"], ["copy", "a", "b"], ["blob", "put", "r", "f"],
                                     ["artifact", "push", "r", "--artifact-type", "t"]])
def test_every_upload_command_takes_it(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--chunk-size", "8MiB"])
    options = client_options(args)
    assert options.chunk_size == 8 * 2**20 and options.monolithic_limit == 8 * 2**20


def test_omitted_or_zero_keeps_the_library_defaults() -> None:
    defaults = ClientOptions()
    for extra in ([], ["--chunk-size", "0"]):
        options = client_options(build_parser().parse_args(["blob", "put", "r", "f", *extra]))
        assert (options.chunk_size, options.monolithic_limit) == (defaults.chunk_size, defaults.monolithic_limit)


def test_a_chunk_above_the_monolithic_limit_leaves_that_limit_alone() -> None:
    options = client_options(build_parser().parse_args(["copy", "a", "b", "--chunk-size", "128M"]))
    assert options.chunk_size == 128 * 2**20 and options.monolithic_limit == ClientOptions().monolithic_limit


@pytest.mark.parametrize(("value", "reason"), [("lots", "is not a size"), ("1.5M", "is not a size"),
                                               ("1K", "out of range"), ("5G", "out of range")])
def test_bad_values_are_usage_errors(value: str, reason: str, capsys: pytest.CaptureFixture[str],
                                     tmp_path: pathlib.Path) -> None:
    with pytest.raises(SystemExit) as caught:
        run(["blob", "put", "localhost:1/app", str(tmp_path / "f"), "--chunk-size", value])
    assert caught.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument --chunk-size" in err and reason in err and "Traceback" not in err


def test_the_upload_goes_in_chunks_of_that_size(fake: FakeRegistry, make_client: MakeClient) -> None:
    options = client_options(build_parser().parse_args(["blob", "put", "r", "f", "--chunk-size", "64KiB"]))
    repo = make_client(chunk_size=options.chunk_size, monolithic_limit=options.monolithic_limit) \
        .repository(f"{HOST}/app")
    data = os.urandom(200_000)  # 3 full chunks of 65,536 bytes and one of 3,392
    assert push_blob(repo, BytesSource(data, Descriptor("application/octet-stream", of(data), len(data)))) \
        is Outcome.UPLOADED
    assert [m for m, p in fake.log if "uploads" in p] == ["POST", "PATCH", "PATCH", "PATCH", "PATCH", "PUT"]
    assert fake.blobs[of(data)] == data
