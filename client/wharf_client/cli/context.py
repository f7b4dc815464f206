"""What every command shares: the client built from the flags, output in text or JSON, exit codes.

Errors become one line on stderr naming what failed and the registry's reason,
and an exit code a script can branch on; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any

from wharf_client.auth.credentials import CredentialError, DockerConfig
from wharf_client.cli.progress import BlobBars
from wharf_client.errors import (
    AmbiguousImage,
    AuthenticationError,
    DigestMismatch,
    FormatError,
    ImageNotFound,
    InvalidReference,
    NotFoundError,
    PlatformNotFound,
    ProtocolError,
    RegistryError,
    TransportError,
    UnsupportedOperation,
    WharfError,
)
from wharf_client.options import GIB, KIB, ClientOptions, RegistryOptions, parse_size
from wharf_client.reference import parse_registry
from wharf_client.registry import Client
from wharf_client.untrusted import printable

# Exit codes (docs/client.md lists them): stable, so scripts can rely on them.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_UNREACHABLE = 5
EXIT_INTEGRITY = 6
EXIT_INTERRUPTED = 130

# --chunk-size bounds: below, a blob becomes thousands of requests; above, a resend costs too much.
MIN_CHUNK_SIZE = 64 * KIB
MAX_CHUNK_SIZE = 4 * GIB


class UsageError(WharfError):
    """Arguments that parse but do not make sense together."""


class LoginFailed(WharfError):
    """The registry refused the credentials given to ``wharf login``."""


def exit_code(error: BaseException) -> int:
    if isinstance(error, AuthenticationError | CredentialError | LoginFailed):
        return EXIT_AUTH
    if isinstance(error, NotFoundError | PlatformNotFound | ImageNotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, RegistryError) and error.status == 429 and "/token" in (error.url or ""):
        return EXIT_AUTH  # a login lockout
    if isinstance(error, RegistryError) and error.code in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"):
        return EXIT_NOT_FOUND
    if isinstance(error, TransportError | ProtocolError):
        return EXIT_UNREACHABLE
    if isinstance(error, DigestMismatch | FormatError):
        return EXIT_INTEGRITY
    if isinstance(error, InvalidReference | UsageError | UnsupportedOperation | AmbiguousImage):
        return EXIT_USAGE
    return EXIT_FAILED


def add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no summary")
    group.add_argument("-v", "--verbose", action="store_true", help="log HTTP retries and resumes to stderr")
    group.add_argument("--plain-http", action="store_true", help="speak HTTP, not HTTPS, to every registry")
    group.add_argument("--insecure", action="store_true", help="skip TLS verification for every registry")
    group.add_argument("--plain-http-registry", action="append", default=[], metavar="HOST",
                       help="speak HTTP to this registry only (repeatable)")
    group.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                       help="skip TLS verification for this registry only (repeatable)")
    group.add_argument("--docker-config", type=pathlib.Path, metavar="DIR",
                       help="directory of the docker config.json (default $DOCKER_CONFIG or ~/.docker)")


def chunk_size(text: str) -> int:
    """``--chunk-size``: a size such as 16MiB, 5M or 1048576; 0 keeps the library's default."""
    try:
        size = parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if size and not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: a chunk is 0 (the default) or "
                                         "between 64KiB and 4GiB")
    return size


def add_transfer_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that move several blobs (push, pull, copy, artifact push and pull)."""
    parser.add_argument("--concurrency", type=int, default=4, metavar="N", help="blobs moved at once (default 4)")


def add_upload_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that upload blobs (push, copy, blob put, artifact push)."""
    parser.add_argument("--chunk-size", type=chunk_size, default=0, metavar="SIZE",
                        help="upload blobs larger than SIZE in PATCH chunks of SIZE (e.g. 16MiB, 5M, 1048576); "
                             "default: one request up to 16MiB, 64MiB chunks above")


def client_options(args: argparse.Namespace) -> ClientOptions:
    """The library settings the flags ask for."""
    registries: dict[str, RegistryOptions] = {}
    for host in {*args.plain_http_registry, *args.insecure_registry}:
        name = parse_registry(host)
        registries[name] = RegistryOptions(plain_http=host in args.plain_http_registry or args.plain_http,
                                           insecure=host in args.insecure_registry or args.insecure)
    options = ClientOptions(registries=registries, concurrency=getattr(args, "concurrency", 4),
                            default_registry_options=RegistryOptions(args.plain_http, args.insecure))
    chunk = int(getattr(args, "chunk_size", 0) or 0)
    if chunk:
        # A chunk size is a cap on one request: blobs above it are chunked even under the monolithic limit.
        options = dataclasses.replace(options, chunk_size=chunk,
                                      monolithic_limit=min(options.monolithic_limit, chunk))
    return options


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    client: Client
    config: DockerConfig

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        if not 1 <= getattr(args, "concurrency", 4) <= 64:
            raise UsageError("--concurrency must be between 1 and 64")
        options = client_options(args)
        config = DockerConfig(args.docker_config / "config.json" if args.docker_config else None)
        return cls(args, Client(options, config), config)

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def bars(self, verb: str = "copy") -> BlobBars:
        enabled = sys.stderr.isatty() and not self.args.quiet and not self.args.json
        return BlobBars(enabled, verb)

    def emit(self, payload: Any, text: str | None = None) -> None:
        """The command's result: JSON when asked, else ``text`` (skipped with --quiet).

        Text holds what the registry sent (tags, names, annotations, titles), so each line
        is escaped for the terminal; JSON escapes control characters itself.
        """
        if self.json:
            print(json.dumps(payload, indent=2))
        elif text is not None and not self.args.quiet:
            print(terminal_lines(text))

    def info(self, text: str) -> None:
        """A status line for a person (stderr): never mixed into stdout output."""
        if not self.args.quiet and not self.json:
            print(terminal_lines(text), file=sys.stderr)


def terminal_lines(text: str) -> str:
    """``text`` safe for a terminal: its lines kept, every control character in them escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))


def report_error(error: BaseException, as_json: bool) -> int:
    code = exit_code(error)
    message = printable(str(error) or type(error).__name__)  # it may quote the registry: keep it one inert line
    if isinstance(error, ProtocolError):
        message = f"registry protocol error: {message}"
    elif isinstance(error, TransportError):
        message = f"registry unreachable: {message}"
    print(f"wharf: error: {message}", file=sys.stderr)
    if as_json:
        detail: dict[str, Any] = {"message": message, "exit_code": code, "kind": type(error).__name__}
        if isinstance(error, RegistryError):
            detail.update(status=error.status, codes=error.codes, url=error.url, method=error.method)
        print(json.dumps({"error": detail}, indent=2))
    return code
