"""`wharf-admin`: account and policy administration over the auth service's gRPC API.

Every call authenticates as an admin (``--user``, default ``admin``; the
password from WHARF_ADMIN_PASSWORD or a prompt). `status`, `check`, `export` and `import`
need no account: they live in services/stack/status.py and services/maintenance/.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import secrets
import sys
from collections.abc import Callable
from typing import Any

import click
import grpc

from services.common import plugins
from services.common.errors import from_rpc_error
from services.common.internal_auth import TOKEN_VARIABLE, authenticated_channel, read_token
from services.common.settings import SettingsError
from services.events.admin import events as events_command
from services.gen.wharf.auth.v1 import auth_pb2 as pb
from services.gen.wharf.auth.v1 import auth_pb2_grpc as pb_grpc
from services.maintenance.audit_cli import audit as audit_command
from services.maintenance.cli import COMMANDS as MAINTENANCE_COMMANDS
from services.maintenance.governance_cli import COMMANDS as GOVERNANCE_COMMANDS
from services.maintenance.governance_cli import repo_delete
from services.stack import records
from services.stack.status import status

DEFAULT_ADDRESS = "127.0.0.1:50053"
TIMEOUT = 15.0


def _data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("WHARF_DATA_DIR", "./data"))


def _default_address() -> str:
    """WHARF_AUTH_ADDR, else the address `make run` recorded under WHARF_DATA_DIR, else the default port."""
    return records.setting(os.environ, "WHARF_AUTH_ADDR", _data_dir(), records.AUTH_ADDRESS, DEFAULT_ADDRESS)


def _internal_token() -> str:
    """The stack's internal secret: WHARF_INTERNAL_TOKEN_FILE, else the file `make run` keeps in WHARF_DATA_DIR."""
    path = os.environ.get(TOKEN_VARIABLE) or str(_data_dir() / records.INTERNAL_TOKEN)
    try:
        return read_token(path)
    except SettingsError as exc:
        raise click.ClickException(f"{exc}; point {TOKEN_VARIABLE} (or WHARF_DATA_DIR) at the stack's") from None


def _password(user: str) -> str:
    """WHARF_ADMIN_PASSWORD; for ``admin``, the password `make run` generated into the data
    directory when none was given; else a prompt."""
    if os.environ.get("WHARF_ADMIN_PASSWORD"):
        return os.environ["WHARF_ADMIN_PASSWORD"]
    generated = records.read(_data_dir(), records.ADMIN_PASSWORD) if user == "admin" else None
    if generated:
        return generated
    return str(click.prompt(f"Password of {user}", hide_input=True, err=True))


class Admin:
    """The auth service's admin API. Nothing is asked or opened until the first call, so that
    ``--help`` of any command needs neither a password nor a running service."""

    def __init__(self, address: str, user: str) -> None:
        self._address = address
        self._user = user
        self._stub: Any = None
        self._metadata: tuple[tuple[str, str], ...] = ()

    def call(self, method: str, request: Any) -> Any:
        if self._stub is None:
            channel = authenticated_channel(grpc.insecure_channel(self._address), _internal_token())
            self._stub = pb_grpc.AuthStub(channel)
            token = base64.b64encode(f"{self._user}:{_password(self._user)}".encode()).decode()
            self._metadata = (("authorization", f"Basic {token}"),)
        try:
            return getattr(self._stub, method)(request, timeout=TIMEOUT, metadata=self._metadata)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise click.ClickException(
                    f"cannot reach the auth service at {self._address}; point --auth-addr (or WHARF_AUTH_ADDR) "
                    "at it, or WHARF_DATA_DIR at the data directory of the `make run` that started it") from None
            error = from_rpc_error(err)
            raise click.ClickException(f"{error.code}: {error.message}") from None


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        # The same rule as `wharf login --password-stdin`: a Windows line ending is not part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("New password", hide_input=True, confirmation_prompt=True))


def json_option(command: Callable[..., None]) -> Callable[..., None]:
    """``--json`` on every command: text by default, the same facts as JSON with it."""
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")(command)


def _say(as_json: bool, payload: Any, text: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else text)


def _grants_text(account: dict[str, Any]) -> str:
    return ", ".join(f"{p}={','.join(x)}" for p, x in account["grants"].items()) or "-"


def _show(account: pb.Account) -> dict[str, Any]:
    return {"name": account.name, "kind": account.kind, "admin": account.admin,
            "grants": {g.pattern: list(g.actions) for g in account.grants}}


@click.group()
@click.option("--auth-addr", default=_default_address, show_default="WHARF_AUTH_ADDR or ./data/auth/address",
              help="auth service gRPC address")
@click.option("--user", default="admin", show_default=True, help="admin account to act as")
@click.pass_context
def main(ctx: click.Context, auth_addr: str, user: str) -> None:
    """Manage Wharf accounts, grants and public repositories."""
    ctx.obj = Admin(auth_addr, user)


@main.group()
def user() -> None:
    """User accounts."""


@user.command("add")
@click.argument("name")
@click.option("--admin", "make_admin", is_flag=True, help="make the account an administrator")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@json_option
@click.pass_obj
def user_add(admin: Admin, name: str, password_stdin: bool, make_admin: bool, as_json: bool) -> None:
    """Create a user, who owns the repositories under NAME/.

    \b
    Example: printf '%s\\n' "$PASSWORD" | wharf-admin user add alice --password-stdin
    """
    account = admin.call("CreateAccount", pb.CreateAccountRequest(name=name, password=_new_password(password_stdin),
                                                                  kind="user", admin=make_admin))
    _say(as_json, {"created": _show(account)}, f"created user {account.name}")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@json_option
@click.pass_obj
def user_passwd(admin: Admin, name: str, password_stdin: bool, as_json: bool) -> None:
    """Set a password (and revoke the account's refresh tokens)."""
    admin.call("SetPassword", pb.SetPasswordRequest(name=name, password=_new_password(password_stdin)))
    _say(as_json, {"password_changed": name}, f"password of {name} changed")


@user.command("del")
@click.argument("name")
@json_option
@click.pass_obj
def user_del(admin: Admin, name: str, as_json: bool) -> None:
    """Delete an account (user or robot)."""
    admin.call("DeleteAccount", pb.AccountRef(name=name))
    _say(as_json, {"deleted": name}, f"deleted {name}")


@user.command("list")
@json_option
@click.pass_obj
def user_list(admin: Admin, as_json: bool) -> None:
    """List accounts with their grants."""
    accounts = [_show(a) for a in admin.call("ListAccounts", pb.ListAccountsRequest()).accounts]
    _say(as_json, accounts, "\n".join(f"{a['name']:<24} {a['kind']:<6} {'admin' if a['admin'] else '':<6} "
                                      f"{_grants_text(a)}" for a in accounts))


@main.group()
def robot() -> None:
    """Robot accounts (for CI): no namespace of their own, only grants."""


@robot.command("add")
@click.argument("name")
@json_option
@click.pass_obj
def robot_add(admin: Admin, name: str, as_json: bool) -> None:
    """Create a robot with a generated password, printed once."""
    password = secrets.token_urlsafe(32)[:40]
    admin.call("CreateAccount", pb.CreateAccountRequest(name=name, password=password, kind="robot"))
    _say(as_json, {"created": name, "password": password},
         f"created robot {name}; its password (shown once): {password}")


@main.command()
@click.argument("name")
@click.argument("pattern")
@click.argument("actions")
@json_option
@click.pass_obj
def grant(admin: Admin, name: str, pattern: str, actions: str, as_json: bool) -> None:
    """Let NAME do ACTIONS (pull,push,delete or *) on repositories matching PATTERN.

    In PATTERN, * matches within one path component and ** (a whole component) crosses "/":
    team/* is team/app but not team/app/x; team/** is everything under team.

    \b
    Example: wharf-admin grant ci-bot 'team/**' pull,push
    """
    account = _show(admin.call("Grant", pb.GrantRequest(name=name, grant=pb.Grant(pattern=pattern,
                                                                                  actions=actions.split(",")))))
    _say(as_json, account, f"{name}: {_grants_text(account)}")


@main.command()
@click.argument("name")
@click.argument("pattern")
@json_option
@click.pass_obj
def revoke(admin: Admin, name: str, pattern: str, as_json: bool) -> None:
    """Remove NAME's grant on PATTERN."""
    account = _show(admin.call("Revoke", pb.RevokeRequest(name=name, pattern=pattern)))
    _say(as_json, account, f"{name}: {_grants_text(account)}")


@main.group()
def repo() -> None:
    """Repositories: who may pull them (public), and deleting a whole one."""


@repo.command("public")
@click.argument("pattern")
@json_option
@click.pass_obj
def repo_public(admin: Admin, pattern: str, as_json: bool) -> None:
    """Let anyone, even anonymous clients, pull repositories matching PATTERN (globs as in `grant`)."""
    admin.call("SetVisibility", pb.SetVisibilityRequest(pattern=pattern, public=True))
    _say(as_json, {"public": pattern}, f"{pattern} is public")


@repo.command("private")
@click.argument("pattern")
@json_option
@click.pass_obj
def repo_private(admin: Admin, pattern: str, as_json: bool) -> None:
    """Undo `repo public PATTERN`."""
    admin.call("SetVisibility", pb.SetVisibilityRequest(pattern=pattern, public=False))
    _say(as_json, {"private": pattern}, f"{pattern} is private")


@repo.command("list-public")
@json_option
@click.pass_obj
def repo_list_public(admin: Admin, as_json: bool) -> None:
    """List the public patterns."""
    patterns = list(admin.call("ListPublic", pb.ListPublicRequest()).patterns)
    _say(as_json, patterns, "\n".join(patterns))


@main.group()
def token() -> None:
    """Refresh tokens."""


@token.command("revoke")
@click.argument("name")
@json_option
@click.pass_obj
def token_revoke(admin: Admin, name: str, as_json: bool) -> None:
    """Revoke every refresh token of NAME (access tokens expire on their own)."""
    revoked = admin.call("RevokeRefreshTokens", pb.AccountRef(name=name)).revoked
    _say(as_json, {"name": name, "revoked": revoked}, f"revoked {revoked} refresh token(s) of {name}")


@main.group()
def keys() -> None:
    """Token signing keys."""


@keys.command("rotate")
@json_option
@click.pass_obj
def keys_rotate(admin: Admin, as_json: bool) -> None:
    """Start signing with a new key; the old one verifies until its tokens expire."""
    keys = [{"kid": key.kid, "algorithm": key.algorithm}
            for key in admin.call("RotateSigningKey", pb.RotateSigningKeyRequest()).keys]
    _say(as_json, keys, "\n".join(f"{key['kid']} {key['algorithm']}" for key in keys))


# `wharf-admin status` reads metrics and health endpoints, no account: services/stack/status.py.
main.add_command(status)
# `wharf-admin check`, `export` and `import` act with the stack's internal secret, no account.
for _command in MAINTENANCE_COMMANDS:
    main.add_command(_command)
# `wharf-admin events` reads the outbox and the delivery service's records in Redis, no account.
main.add_command(events_command)
# `wharf-admin plugins` lists the installed extensions (this machine's packages).
main.add_command(plugins.command())
# `wharf-admin audit` reads the audit log with the stack's internal secret, no account.
main.add_command(audit_command)
# Governance (immutable tags, quotas, retention, rate limits, usage): the internal secret, no account.
for _command in GOVERNANCE_COMMANDS:
    main.add_command(_command)
repo.add_command(repo_delete)


if __name__ == "__main__":
    main()
