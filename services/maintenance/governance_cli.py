"""`wharf-admin immutable|quota|retention|ratelimit|usage` and `repo delete`: governance rules and
storage, through the metadata service's Governance API.

Like `wharf-admin check` and wharf-gc, these act with the stack's internal secret and find the
stack next to `make run` by themselves (services/maintenance/targets.py), so they work in both
auth modes: whoever can read the data directory (or the Secret) runs the registry. Rules set here
are stored in Redis and apply at once; rules from the policy file (WHARF_POLICY_FILE) are listed
too, marked ``file``, and are changed by editing the file. Every change is in the audit log.
Exit status: 0 done, 1 refused (a bad rule, a file rule), 2 could not run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import click

from services.common import governance
from services.common.errors import RegistryError
from services.common.yaml_section import human_size
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.maintenance.cli import _calls
from services.maintenance.clients import RegistryCalls, Unreachable
from services.maintenance.retention_cli import run as retention_run
from services.maintenance.targets import locate

ACTOR = gpb.Actor(via="wharf-admin")


@contextlib.contextmanager
def _governance(metadata_addr: str | None) -> Iterator[RegistryCalls]:
    """The Governance API beside `make run` (or at ``--metadata-addr``); errors as click's."""
    try:
        with _calls(locate(os.environ, metadata_addr=metadata_addr)) as calls:
            yield calls
    except Unreachable as exc:
        raise click.ClickException(str(exc)) from None
    except RegistryError as err:
        raise click.ClickException(f"{err.code}: {err.message}") from None


def _address_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option("--metadata-addr", help="metadata service gRPC address (default: WHARF_METADATA_ADDR, "
                        "else make run's record, else 127.0.0.1:50052)")(command)


def _json_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")(command)


def _describe(rule: governance.Rule) -> str:
    facts = governance.rule_json(rule)
    return "  ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in facts.items())


def _listing(answer: gpb.Policy, kind: str, as_json: bool) -> None:
    effective = governance.Policy.from_json(answer.document)
    from_file = {rule.key for rule in governance.Policy.from_json(answer.file_document).rules(kind)}
    rules = effective.rules(kind)
    if as_json:
        click.echo(json.dumps([{**governance.rule_json(r), "source": "file" if r.key in from_file else "stored"}
                               for r in rules], indent=2))
        return
    if not rules:
        click.echo(f"no {kind} rules")
    for rule in rules:
        click.echo(f"{'file  ' if rule.key in from_file else 'stored'}  {_describe(rule)}")


def _rule_commands(kind: str, group: click.Group, build: Callable[..., dict[str, Any]],
                   options: list[Callable[..., Any]], key_help: str) -> None:
    """``list``, ``set`` (with ``options``, turned into a rule by ``build``) and ``remove KEY``."""

    @group.command("list")
    @_json_option
    @_address_option
    def list_rules(as_json: bool, metadata_addr: str | None) -> None:
        """The rules in force: the policy file's, then the stored ones."""
        with _governance(metadata_addr) as calls:
            _listing(calls.governance("GetPolicy", gpb.GetPolicyRequest()), kind, as_json)

    def set_rule(metadata_addr: str | None, **values: Any) -> None:
        try:
            rule = governance.parse_rule(kind, build(**values))
        except governance.PolicyError as exc:
            raise click.UsageError(str(exc)) from None
        with _governance(metadata_addr) as calls:
            calls.governance("SetRule", gpb.SetRuleRequest(kind=kind, rule=json.dumps(governance.rule_json(rule)),
                                                           actor=ACTOR))
        click.echo(f"{kind} rule set: {_describe(rule)}")

    command: Callable[..., None] = set_rule
    for option in reversed([*options, _address_option]):
        command = option(command)
    group.command("set", help=f"Add or replace a {kind} rule (stored; applies at once).")(command)

    @group.command("remove")
    @click.argument("key")
    @_address_option
    def remove_rule(key: str, metadata_addr: str | None) -> None:
        with _governance(metadata_addr) as calls:
            calls.governance("RemoveRule", gpb.RemoveRuleRequest(kind=kind, key=key, actor=ACTOR))
        click.echo(f"{kind} rule removed: {key}")

    remove_rule.help = f"Remove a stored {kind} rule, named by {key_help}."


@click.group()
def immutable() -> None:
    """Immutable tags: tags nobody can move or delete (nor the manifests they point at)."""


_rule_commands("immutable", immutable,
               lambda repositories, tags: {"repositories": repositories, "tags": tags},
               [click.argument("repositories"), click.option("--tags", default="*", show_default=True,
                                                             help="tag glob (* any run, ? one character)")],
               "REPOSITORIES:TAGS, as `list` shows it")


@click.group()
def quota() -> None:
    """Storage quotas per namespace (a repository name's first component)."""


_rule_commands("quota", quota, lambda namespace, size: {"namespace": namespace, "size": size},
               [click.argument("namespace"), click.argument("size")], "NAMESPACE")


@click.group()
def retention() -> None:
    """Retention rules: which tags and untagged manifests go, and running them."""


def _retention_rule(repositories: str, keep_last: int | None, keep_tags: tuple[str, ...], older_than: str | None,
                    untagged_older_than: str | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"repositories": repositories}
    for key, value in (("keep_last", keep_last), ("keep_tags", list(keep_tags)), ("older_than", older_than),
                       ("untagged_older_than", untagged_older_than)):
        if value not in (None, []):
            rule[key] = value
    return rule


_rule_commands("retention", retention, _retention_rule, [
    click.argument("repositories"),
    click.option("--keep-last", type=click.IntRange(min=0), help="keep the N most recently pushed tags"),
    click.option("--keep-tags", multiple=True, help="a tag glob never removed (repeatable)"),
    click.option("--older-than", help="remove tags pushed longer ago (e.g. 30d)"),
    click.option("--untagged-older-than", help="remove untagged manifests that arrived longer ago (e.g. 7d)"),
], "REPOSITORIES")
retention.add_command(retention_run)


@click.group()
def ratelimit() -> None:
    """Rate limits per account and per client address, by repository pattern."""


_rule_commands("ratelimit", ratelimit, lambda repositories, rps, burst, push_bytes: {
    k: v for k, v in {"repositories": repositories, "requests_per_second": rps, "burst": burst,
                      "push_bytes_per_second": push_bytes}.items() if v is not None}, [
    click.argument("repositories"),
    click.option("--rps", type=click.FloatRange(min=0, min_open=True), required=True, help="requests per second"),
    click.option("--burst", type=click.IntRange(min=1), help="requests allowed at once (default: the rate)"),
    click.option("--push-bytes", help="bytes per second a client may push (e.g. 50MiB)"),
], "REPOSITORIES")


@click.command()
@click.argument("namespace", required=False, default="")
@click.option("--repositories", is_flag=True, help="also each repository's usage")
@_json_option
@_address_option
def usage(namespace: str, repositories: bool, as_json: bool, metadata_addr: str | None) -> None:
    """Storage per namespace (unique blobs plus manifests), with bytes held by uploads in progress
    and the quota; per repository with --repositories (a blob two repositories link counts in each)."""
    with _governance(metadata_addr) as calls:
        answer = calls.governance("Usage", gpb.UsageRequest(namespace=namespace, repositories=repositories))
    rows = [{"namespace": n.namespace, "bytes": n.bytes, "held_by_uploads": n.reserved, "limit": n.limit or None,
             "repositories": [{"name": r.name, "bytes": r.bytes} for r in n.repositories]}
            for n in answer.namespaces]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        limit = f" of {human_size(row['limit'])} ({100 * row['bytes'] / row['limit']:.0f}%)" if row["limit"] else ""
        held = f", {human_size(row['held_by_uploads'])} held by uploads" if row["held_by_uploads"] else ""
        click.echo(f"{row['namespace']:<32} {human_size(row['bytes'])}{limit}{held}")
        for repository in row["repositories"]:
            click.echo(f"  {repository['name']:<40} {human_size(repository['bytes'])}")


@click.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@_address_option
def repo_delete(name: str, yes: bool, metadata_addr: str | None) -> None:
    """Delete a whole repository: every tag, manifest and blob link (wharf-gc then frees the bytes).
    Refused while one of its tags is immutable."""
    if not yes:
        click.confirm(f"Delete every tag, manifest and blob link of {name}?", abort=True)
    with _governance(metadata_addr) as calls:
        done = calls.governance("DeleteRepository", gpb.DeleteRepositoryRequest(repository=name, actor=ACTOR))
    click.echo(f"deleted {name}: {done.tags} tags, {done.manifests} manifests, {done.blobs} blob links "
               "(wharf-gc frees the bytes nothing else links)")


COMMANDS = (immutable, quota, retention, ratelimit, usage)
