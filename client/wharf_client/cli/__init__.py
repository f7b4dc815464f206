"""The ``wharf`` command: move images and artifacts between registries, OCI layouts and docker tarballs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from wharf_client.cli import cmd_artifact, cmd_auth, cmd_blob, cmd_images, cmd_inspect
from wharf_client.cli.context import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Context,
    add_common_options,
    report_error,
)
from wharf_client.errors import WharfError
from wharf_client.options import _VERSION


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on exit code 2 and no stack trace."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"wharf: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wharf", description="Move container images and artifacts without Docker: "
                     "between registries, OCI image layouts and docker tarballs.")
    parser.add_argument("--version", action="version", version=f"wharf {_VERSION}")
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in (cmd_auth, cmd_images, cmd_inspect, cmd_blob, cmd_artifact):
        module.register(commands, common)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit code (tests call this in-process)."""
    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="wharf: %(message)s")
        logging.getLogger("wharf_client").setLevel(logging.DEBUG)
    try:
        ctx = Context.from_args(args)
        try:
            return int(args.run(ctx))
        finally:
            ctx.client.close()
    except KeyboardInterrupt:
        print("wharf: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (WharfError, OSError) as error:
        return report_error(error, as_json)
    except Exception as error:
        # A bug, not a registry's answer: still one line, unless -v asks for the trace.
        if getattr(args, "verbose", False):
            raise
        return report_error(InternalError(f"unexpected {type(error).__name__}: {error} (run with -v for details)"),
                            as_json)


class InternalError(WharfError):
    """An error the client did not anticipate."""


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))
