"""The ``wharf`` command: move images and artifacts between registries, OCI layouts and docker tarballs."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Sequence

from wharf_client.cli import cmd_artifact, cmd_auth, cmd_blob, cmd_images, cmd_inspect, cmd_mirror
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


# Shown under each command's --help.
EXAMPLES = {
    "login": ["wharf login registry.example.com -u alice",
              "printf '%s\\n' \"$TOKEN\" | wharf login ghcr.io -u bot --password-stdin"],
    "push": ["wharf push ./layout localhost:5000/team/app:1.0",
             "wharf push app.tar localhost:5000/team/app:1.0 --name app:1.0"],
    "pull": ["wharf pull localhost:5000/team/app:1.0 ./layout",
             "wharf pull localhost:5000/team/app:1.0 app.tar --platform linux/arm64"],
    "copy": ["wharf copy docker.io/library/alpine:3.20 localhost:5000/mirror/alpine",
             "wharf cp -r localhost:5000/a:1 localhost:5001/a:1"],
    "tags": ["wharf tags localhost:5000/team/app", "wharf tags localhost:5000/team/app --json"],
    "catalog": ["wharf catalog localhost:5000"],
    "inspect": ["wharf inspect localhost:5000/team/app:1.0",
                "wharf inspect localhost:5000/team/app:1.0 --platform linux/arm64 --config"],
    "digest": ["wharf digest localhost:5000/team/app:1.0"],
    "tag": ["wharf tag localhost:5000/team/app:1.0 1 latest"],
    "blob get": ["wharf blob get localhost:5000/team/app@sha256:<hex> -o layer.tar.gz"],
    "blob put": ["wharf blob put localhost:5000/team/app ./file"],
    "artifact push": ["wharf artifact push localhost:5000/team/app:sbom sbom.json:application/spdx+json "
                      "--subject localhost:5000/team/app:1.0"],
    "artifact pull": ["wharf artifact pull localhost:5000/team/app:sbom -o ./out"],
    "referrers": ["wharf referrers localhost:5000/team/app:1.0 --json"],
    "mirror-config": ["wharf mirror-config wharf.example:5000 --client docker",
                      "wharf mirror-config wharf.example:5000 --client containerd "
                      "| sudo tee /etc/containerd/certs.d/docker.io/hosts.toml",
                      "wharf mirror-config 127.0.0.1:5000 --client podman --prefix ghcr.io --insecure"],
}


def _add_examples(parser: argparse.ArgumentParser) -> None:
    for path, lines in EXAMPLES.items():
        current = parser
        for word in path.split():
            [action] = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
            current = action.choices[word]
        current.formatter_class = argparse.RawDescriptionHelpFormatter
        current.epilog = ((current.epilog + "\n\n") if current.epilog else "") + "examples:\n" + \
            "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wharf", description="Move container images and artifacts without Docker: "
                     "between registries, OCI image layouts and docker tarballs.")
    parser.add_argument("--version", action="version", version=f"wharf {_VERSION}")
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in (cmd_auth, cmd_images, cmd_inspect, cmd_blob, cmd_artifact, cmd_mirror):
        module.register(commands, common)
    _add_examples(parser)
    return parser


def _command_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub)command's own parser that ``argv`` names, deepest first: its usage is what helps."""
    current = parser
    for word in argv:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            if word.startswith("-"):
                continue
            break
        current = actions[0].choices[word]
    return current


def _options_by_command(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = {o for a in sub._actions for o in a.option_strings}
                found.update(_options_by_command(sub, f"{prefix}{name} "))
    return found


def _suggest(parser: argparse.ArgumentParser, command: argparse.ArgumentParser, unknown: list[str]) -> str:
    known = [option for action in command._actions for option in action.option_strings]
    elsewhere = _options_by_command(parser)
    hints = []
    for word in (w.split("=", 1)[0] for w in unknown if w.startswith("-")):
        close = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
        owners = sorted(name for name, options in elsewhere.items() if word in options)
        if close:
            hints.append(f"{word}: did you mean {close[0]}?")
        elif owners:
            hints.append(f"{word} is an option of {', '.join(owners[:6])}, not of this command")
    return ("; " + "; ".join(hints)) if hints else ""


def run(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit code (tests call this in-process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # The command's usage, not the top level's, with the option the user probably meant.
        command = _command_parser(parser, argv)
        command.error(f"unrecognized arguments: {' '.join(unknown)}{_suggest(parser, command, unknown)}")
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
