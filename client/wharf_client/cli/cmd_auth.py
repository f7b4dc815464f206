"""``wharf login`` and ``wharf logout``: verify credentials against the registry, keep them in the docker config."""

from __future__ import annotations

import argparse
import getpass
import sys

from wharf_client.auth.credentials import Credential
from wharf_client.cli.context import Context, LoginFailed, UsageError
from wharf_client.errors import AuthenticationError
from wharf_client.reference import parse_registry


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    login = commands.add_parser("login", parents=[common], help="log in to a registry (writes the docker config)")
    login.add_argument("registry", help="registry host, e.g. localhost:5000 or docker.io")
    login.add_argument("-u", "--username", help="account name (asked for on a terminal when missing)")
    login.add_argument("-p", "--password", help="password (visible in the process list: prefer --password-stdin)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    login.set_defaults(run=run_login)
    logout = commands.add_parser("logout", parents=[common], help="forget the credentials of a registry")
    logout.add_argument("registry", help="HOST[:PORT] of the registry")
    logout.set_defaults(run=run_logout)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        if args.password:
            raise UsageError("--password and --password-stdin are exclusive")
        return sys.stdin.readline().rstrip("\r\n")
    if args.password is not None:
        return str(args.password)
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    raise UsageError("no password: pass --password-stdin (or run on a terminal to be asked)")


def verify_login(ctx: Context, registry: str, credential: Credential) -> Credential:
    """Proves the credentials work; returns what to store (a refresh token in place of the password if offered)."""
    transport = ctx.client.transport(registry)
    challenge = transport.ping()
    if challenge is None:
        return credential  # the registry asks for no authentication: nothing to prove
    if challenge.scheme == "basic":
        transport.use_credential(credential)
        response = transport.request("GET", "/v2/")
        response.close()
        return credential
    tokens = ctx.client.tokens
    issued = tokens.password_grant(challenge, credential, transport.verify, https_only=transport.https_only)
    if issued is not None:
        refresh = getattr(issued, "refresh_token", "")
        return Credential(username=credential.username, identity_token=refresh) if refresh else credential
    tokens.fetch(challenge, [], credential, transport.verify, https_only=transport.https_only)
    return credential


def run_login(ctx: Context) -> int:
    args = ctx.args
    registry = parse_registry(args.registry)
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise UsageError("no user name: pass -u/--username")
        username = input("Username: ").strip()
    password = _password(args)
    if not username or not password:
        raise UsageError("user name and password must not be empty")
    try:
        stored = verify_login(ctx, registry, Credential(username=username, password=password))
    except AuthenticationError as err:
        raise LoginFailed(f"login to {registry} as {username} failed: {err}") from None
    where = ctx.config.store(registry, stored)
    ctx.emit({"registry": registry, "username": username, "storedIn": where,
              "refreshToken": bool(stored.identity_token)}, "Login Succeeded")
    return 0


def run_logout(ctx: Context) -> int:
    registry = parse_registry(ctx.args.registry)
    removed = ctx.config.erase(registry)
    text = f"Removing login credentials for {registry}" if removed else f"Not logged in to {registry}"
    ctx.emit({"registry": registry, "removed": removed}, text)
    return 0
