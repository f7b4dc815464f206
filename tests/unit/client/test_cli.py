"""The command line's contract without a registry: usage errors, exit codes, one-line errors."""

from __future__ import annotations

import json
import pathlib

import pytest
from wharf_client.cli import build_parser, run
from wharf_client.cli.context import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_code,
)
from wharf_client.errors import (
    AuthenticationError,
    DigestMismatch,
    ErrorEntry,
    NotFoundError,
    RegistryError,
    TransportError,
)


def test_every_issue_command_is_there() -> None:
    parser = build_parser()
    for argv in (["login", "r"], ["logout", "r"], ["push", "p", "r"], ["pull", "r", "p"], ["copy", "a", "b"],
                 ["tags", "r"], ["catalog", "r"], ["inspect", "r", "--raw"], ["digest", "r"], ["tag", "r", "t"],
                 ["delete", "r"], ["blob", "get", "r"], ["blob", "put", "r", "f"],
                 ["artifact", "push", "r", "f", "--artifact-type", "t", "--subject", "s"],
                 ["artifact", "pull", "r"], ["referrers", "r"]):
        assert parser.parse_args([*argv, "--json", "--plain-http"]).run is not None


@pytest.mark.parametrize("argv", [["inspect", "Bad Ref"], ["frobnicate"], ["copy", "only-one"],
                                  ["tags", "x", "--page-size", "0"], ["pull", "a", "b", "--platform", "linux"]])
def test_usage_errors_exit_2_without_a_traceback(argv: list[str], capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.chdir(tmp_path)  # a command may name a relative output path
    with pytest.raises(SystemExit) as caught:
        code = run(argv)
        raise SystemExit(code)
    assert caught.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_login_without_a_password_on_a_pipe(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             tmp_path: pathlib.Path) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert run(["login", "localhost:1", "-u", "alice", "--docker-config", str(tmp_path)]) == EXIT_USAGE
    assert "--password-stdin" in capsys.readouterr().err


def test_json_errors_are_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", "Bad Ref", "--json"]) == EXIT_USAGE
    payload = json.loads(capsys.readouterr().out)
    assert payload["error"]["exit_code"] == EXIT_USAGE and "invalid reference" in payload["error"]["message"]


def test_exit_codes() -> None:
    assert exit_code(AuthenticationError("GET", "u", 401)) == EXIT_AUTH
    assert exit_code(NotFoundError("GET", "u", 404)) == EXIT_NOT_FOUND
    assert exit_code(RegistryError("GET", "u", 400, [ErrorEntry("MANIFEST_UNKNOWN", "")])) == EXIT_NOT_FOUND
    assert exit_code(TransportError("down")) == EXIT_UNREACHABLE
    assert exit_code(DigestMismatch("a", "b")) == EXIT_INTEGRITY
    assert exit_code(RegistryError("PUT", "u", 500)) == EXIT_FAILED


def test_a_misspelt_option_shows_the_commands_usage_and_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["push", "--chunksize=5M", "layout", "r/x:y"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: wharf push") and "--chunksize: did you mean --chunk-size?" in err


def test_transfer_options_only_where_they_do_something(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["pull", "r", "p", "--concurrency", "8"]).concurrency == 8
    with pytest.raises(SystemExit):
        run(["tags", "r/x", "--concurrency", "8"])
    assert "--concurrency is an option of" in capsys.readouterr().err


def test_an_artifact_type_is_optional() -> None:
    args = build_parser().parse_args(["artifact", "push", "r/x:1", "f"])
    assert args.artifact_type == "application/vnd.unknown.artifact.v1"


def test_a_login_lockout_is_an_authentication_failure() -> None:
    locked = RegistryError("POST", "http://r/token", 429, [ErrorEntry("TOOMANYREQUESTS", "retry in 300 s", None)])
    assert exit_code(locked) == EXIT_AUTH
    throttled = RegistryError("GET", "http://r/v2/x/tags/list", 429, [])
    assert exit_code(throttled) != EXIT_AUTH


def test_every_command_explains_its_arguments_and_shows_examples() -> None:
    import argparse

    from wharf_client.cli import EXAMPLES

    parser = build_parser()
    for path in EXAMPLES:
        current = parser
        for word in path.split():
            [action] = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
            current = action.choices[word]
        assert "examples:" in current.format_help(), path
        undocumented = [a.dest for a in current._actions if not a.help and a.dest != "help"]
        assert not undocumented, (path, undocumented)
