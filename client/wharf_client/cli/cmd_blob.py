"""``wharf blob get|put``: single blobs by digest, streamed and verified."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator

from wharf_client import digest as digests
from wharf_client.blobio import IO_CHUNK, FileSource, copy_stream, new_partial
from wharf_client.cli.context import Context, UsageError, add_upload_options
from wharf_client.errors import NotFoundError
from wharf_client.manifest import Descriptor
from wharf_client.reference import parse
from wharf_client.upload import push_blob


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    blob = commands.add_parser("blob", help="get or put one blob")
    actions = blob.add_subparsers(dest="blob_command", metavar="ACTION", required=True)
    get = actions.add_parser(
        "get", parents=[common], help="download a blob (verified against its digest)",
        description="Downloads a blob and checks it against its digest. With -o, the file appears only once "
                    "the bytes are verified. To standard output the bytes are streamed as they arrive, before "
                    "the check: on a mismatch the command exits 6 after the output, so a pipeline must check "
                    "the exit status (or use -o) before trusting what it read.")
    get.add_argument("reference", help="repository@digest, e.g. localhost:5000/app@sha256:...")
    get.add_argument("-o", "--output", type=pathlib.Path,
                     help="file to write, only once verified (default: standard output, streamed unverified)")
    get.set_defaults(run=run_get)
    put = actions.add_parser("put", parents=[common], help="upload a file as a blob; prints its digest")
    put.add_argument("repository", help="REGISTRY/REPO the blob goes into")
    put.add_argument("file", help="file to upload, or - for standard input")
    add_upload_options(put)
    put.set_defaults(run=run_put)


def run_get(ctx: Context) -> int:
    ref = parse(ctx.args.reference)
    if not ref.digest:
        raise UsageError("blob get needs repository@digest")
    repo = ctx.client.repository(ref)
    size = repo.blob_size(ref.digest)
    if size is None:
        raise NotFoundError("HEAD", f"{ref.name}@{ref.digest}", 404, [], "blob unknown")
    descriptor = Descriptor("application/octet-stream", ref.digest, size)
    output: pathlib.Path | None = ctx.args.output
    with ctx.bars("get") as bars, repo.open_blob(descriptor) as reader:
        bar = bars.single(ref.digest.split(":", 1)[1][:12], size)
        if output is None:
            copy_stream(reader, sys.stdout.buffer, bar)  # type: ignore[arg-type]
            sys.stdout.buffer.flush()
        else:
            handle, partial = new_partial(output)  # never a planted symbolic link's target
            try:
                with os.fdopen(handle, "wb") as out:
                    copy_stream(reader, out, bar)  # type: ignore[arg-type]
                os.replace(partial, output)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
    if output is not None:
        ctx.emit({"digest": ref.digest, "size": size, "output": str(output)}, None)
    return 0


@contextlib.contextmanager
def _spooled(name: str) -> Iterator[pathlib.Path]:
    """The file to upload; standard input is spooled to a temporary file first (its size must be known)."""
    if name != "-":
        path = pathlib.Path(name)
        if not path.is_file():
            raise UsageError(f"{name}: no such file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="wharf-blob-") as scratch:
        path = pathlib.Path(scratch) / "stdin"
        with open(path, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, IO_CHUNK)
        yield path


def run_put(ctx: Context) -> int:
    ref = parse(ctx.args.repository)
    repo = ctx.client.repository(ref)
    with _spooled(ctx.args.file) as path:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(IO_CHUNK):
                digest.update(chunk)
        descriptor = Descriptor("application/octet-stream", digests.validate("sha256:" + digest.hexdigest()),
                                path.stat().st_size)
        with ctx.bars("put") as bars:
            outcome = push_blob(repo, FileSource(path, descriptor),
                                progress=bars.single(descriptor.digest.split(":", 1)[1][:12], descriptor.size))
    ctx.emit({"repository": ref.name, "digest": descriptor.digest, "size": descriptor.size,
              "outcome": outcome.value}, descriptor.digest)
    return 0
