"""`make run` as a newcomer meets it: a second runner on the same data directory or the same port
refuses at once without touching the first, and readiness means the runner's own gateway
answered (issue 13)."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable

import requests

from services.common.health import INSTANCE_HEADER, gateway_answers
from services.stack.processes import free_port
from tests.support.pusher import push_blob
from tests.support.stack import RunningStack

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _runner(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.stack", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_a_second_runner_on_the_same_data_refuses_and_leaves_the_first_alone(
        start_stack: Callable[..., RunningStack]) -> None:
    first = start_stack()
    redis_url_file = first.data_dir / "redis" / "url"
    before = redis_url_file.read_text()
    second = _runner({"WHARF_DATA_DIR": str(first.data_dir), "WHARF_PORT": str(free_port())})
    assert second.returncode == 2
    assert "in use by another Wharf runner" in second.stderr
    assert f"PID {first.process.pid if first.process else ''}" in second.stderr and first.url in second.stderr
    assert redis_url_file.read_text() == before  # nothing of the first was overwritten
    assert push_blob([first.url], "runner/first", b"still serving")


def test_a_busy_port_is_refused_before_anything_starts(start_stack: Callable[..., RunningStack],
                                                       tmp_path: pathlib.Path) -> None:
    first = start_stack()
    second = _runner({"WHARF_DATA_DIR": str(tmp_path / "other"), "WHARF_PORT": str(first.port)})
    assert second.returncode == 2
    assert f"127.0.0.1:{first.port} is already in use" in second.stderr
    assert not (tmp_path / "other" / "redis").exists()
    assert requests.get(f"{first.url}/v2/", timeout=10).status_code == 200


def test_readiness_needs_the_runners_own_gateway(start_stack: Callable[..., RunningStack]) -> None:
    stack = start_stack()
    answer = requests.get(f"{stack.url}/v2/", timeout=10)
    instance = answer.headers[INSTANCE_HEADER]
    assert len(instance) == 32 and gateway_answers(f"{stack.url}/v2/", instance)
    assert not gateway_answers(f"{stack.url}/v2/", "0" * 32)
    assert INSTANCE_HEADER not in requests.get(f"{stack.url}/v2/_catalog", timeout=10).headers  # only on /v2/

    class Impostor(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # something else answering 200 on the port is not the runner's gateway
        assert not gateway_answers(f"http://127.0.0.1:{server.server_port}/v2/", instance)
    finally:
        server.shutdown()


def test_check_mode_reports_every_problem_and_starts_nothing(tmp_path: pathlib.Path) -> None:
    bad = _runner({"WHARF_DATA_DIR": str(tmp_path), "WHARF_PORT": "99999", "WHARF_LOG_LEVEL": "loud",
                   "WHARF_AUTH": "bogus", "WHARF_STORAGE": "s4"}, "--check")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "wharf-stack: WHARF_PORT='99999': expected a number from 1 to 65535",
        "wharf-stack: WHARF_AUTH='bogus': expected none or token",
        "wharf-stack: WHARF_LOG_LEVEL='loud': expected debug or info or warning or error",
        "wharf-stack: WHARF_STORAGE='s4': expected filesystem or s3, or the name of an installed storage extension "
        "(wharf-admin plugins)",
    ]
    good = _runner({"WHARF_DATA_DIR": str(tmp_path)}, "--check")
    assert good.returncode == 0 and "valid" in good.stdout
    assert not any(tmp_path.iterdir())  # a check starts nothing and writes nothing


def test_token_mode_without_a_password_generates_one_that_wharf_admin_finds(
        start_stack: Callable[..., RunningStack]) -> None:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_BCRYPT_ROUNDS": "4"})
    generated = stack.data_dir / "admin-password"
    assert generated.stat().st_mode & 0o777 == 0o600 and len(generated.read_text().strip()) >= 32
    # Redis's append-only file holds the password hashes: its directory is the owner's alone.
    assert (stack.data_dir / "redis").stat().st_mode & 0o777 == 0o700
    assert str(generated) in stack.log_path.read_text()
    env = {k: v for k, v in os.environ.items() if k != "WHARF_ADMIN_PASSWORD"}
    env["WHARF_DATA_DIR"] = str(stack.data_dir)
    added = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "user", "add", "alice",
                            "--password-stdin"], input="alice-password-1\n", env=env, capture_output=True, text=True,
                           timeout=60)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "created user alice"  # text by default, JSON with --json, on every command
    for args, text in ((["grant", "alice", "team/*", "pull"], "alice: team/*=pull"),
                       (["user", "list"], "alice")):
        plain = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", *args], env=env,
                               capture_output=True, text=True, timeout=60)
        as_json = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", *args, "--json"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0 and text in plain.stdout and not plain.stdout.lstrip().startswith(("{", "["))
        assert as_json.returncode == 0 and json.loads(as_json.stdout)
    token = requests.get(f"{stack.url}/token", params={"service": "wharf", "scope": "repository:alice/x:push"},
                         auth=("alice", "alice-password-1"), timeout=10)
    assert token.status_code == 200


def test_wharf_admin_help_asks_nothing_and_an_unreachable_service_is_named(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WHARF_ADMIN_PASSWORD", "WHARF_AUTH_ADDR")}
    env["WHARF_DATA_DIR"] = str(tmp_path)
    helped = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "user", "--help"], env=env,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert helped.returncode == 0 and "Password" not in helped.stderr + helped.stdout
    (tmp_path / "internal-token").write_text("x" * 48)
    address = f"127.0.0.1:{free_port()}"
    failed = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "--auth-addr", address, "user", "list"],
                            env={**env, "WHARF_ADMIN_PASSWORD": "whatever"}, capture_output=True, text=True,
                            timeout=60)
    assert failed.returncode != 0
    assert f"cannot reach the auth service at {address}" in failed.stderr and "--auth-addr" in failed.stderr
