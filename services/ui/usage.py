"""The usage page: storage per namespace and per repository, from the quota counters (the
Governance API's ``Usage``), as bars; and, for admins, recent activity from the audit log
(``QueryAudit``).

Who sees what:

- No authentication: everything, storage and activity (the registry has no accounts; the page says so).
- An admin (a token the auth service issued for ``registry:admin:*`` grants it, which only admin
  accounts get: services/auth/policy.py): everything, as without authentication.
- Anyone else: only repositories ``Authorizer.pullable`` lets through (the catalog's rule). A
  namespace is shown when at least one of its repositories is; its own figures (bytes, bytes held
  by uploads, quota) only when the visitor may pull *any* name in it (their own namespace, a
  grant or a public pattern covering it), and otherwise only the sum of the visible repositories,
  so no figure counts what the visitor may not see. Whether the namespace is whole is asked of
  the policy with a made-up name (``_probe``), never decided by comparing the visible repositories
  with those stored: that comparison told a visitor whether a namespace held repositories hidden
  from them. No activity: that section is not on the page and ``/ui/activity`` answers 403.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any

from flask import Response

from services.common import scopes
from services.common.errors import DENIED, NAME_INVALID, NAME_UNKNOWN, RegistryError
from services.common.governance import namespace_of
from services.common.names import is_valid_name
from services.common.scopes import Scope
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.ui.views import Visitor, argument, issue, page, render

if TYPE_CHECKING:
    from services.api.context import Context

# Rows shown at most (the largest first).
_ROWS_MAX = 500
_ACTIVITY_ON_USAGE = 20
_ACTIVITY_PAGE = 100
ADMIN_SCOPE = Scope(scopes.REGISTRY, scopes.ADMIN, ("*",))


@dataclasses.dataclass(frozen=True)
class Row:
    """One bar of the chart: a namespace or a repository."""

    name: str
    bytes: int
    percent: float          # of the largest row shown (the bar's length)
    complete: bool = True   # a namespace's own figures (else: the sum of its visible repositories)
    held: int = 0           # bytes held by uploads in progress (namespaces)
    limit: int = 0          # the quota (namespaces), 0 none
    repositories: int = 0   # visible repositories counted (namespaces seen in part)

    @property
    def of_limit(self) -> float:
        return min(100.0, 100.0 * self.bytes / self.limit) if self.limit else 0.0

    @property
    def held_of_limit(self) -> float:
        return min(100.0 - self.of_limit, 100.0 * self.held / self.limit) if self.limit else 0.0


def is_admin(ctx: Context, visitor: Visitor) -> bool:
    """Whether the signed-in account is an admin: the auth service grants ``registry:admin:*`` to
    admins only, and the token is verified like any other (False without token auth: nobody is)."""
    if not ctx.authorizer.issues_tokens or not visitor.signed_in or not visitor.session.refresh:
        return False
    issued = issue(ctx, scopes=[str(ADMIN_SCOPE)], refresh_token=visitor.session.refresh)
    return ctx.authorizer.grants("Bearer " + issued.token, [ADMIN_SCOPE])


def sees_everything(ctx: Context, visitor: Visitor) -> bool:
    return not ctx.authorizer.issues_tokens or is_admin(ctx, visitor)


def _scaled(rows: list[Row]) -> list[Row]:
    rows = sorted(rows, key=lambda r: (-r.bytes, r.name))[:_ROWS_MAX]
    largest = max((r.bytes for r in rows), default=0)
    return [dataclasses.replace(r, percent=100.0 * r.bytes / largest if largest else 0.0) for r in rows]


def _probe(namespace: str) -> str:
    """A name in ``namespace`` that nobody chose (random each time): the policy lets the visitor
    pull it only when a rule covers the whole namespace, whatever it holds."""
    return f"{namespace}/p{secrets.token_hex(8)}"


def _namespace_row(found: gpb.NamespaceUsage, visible: list[gpb.RepositoryUsage], whole: bool) -> Row:
    if whole:
        return Row(found.namespace, found.bytes, 0.0, True, found.reserved, found.limit, len(visible))
    return Row(found.namespace, sum(r.bytes for r in visible), 0.0, False, repositories=len(visible))


def namespaces(ctx: Context, everything: bool) -> list[Row]:
    """The namespaces the visitor may see, largest first."""
    if everything:
        return _scaled([_namespace_row(n, [], True) for n in ctx.clients.governance.usage().namespaces])
    found = list(ctx.clients.governance.usage(repositories=True).namespaces)
    probes = {n.namespace: _probe(n.namespace) for n in found}
    visible = ctx.authorizer.pullable_set([r.name for n in found for r in n.repositories] + list(probes.values()))
    rows = []
    for namespace in found:
        shown = [r for r in namespace.repositories if r.name in visible]
        if shown:
            rows.append(_namespace_row(namespace, shown, probes[namespace.namespace] in visible))
    return _scaled(rows)


def namespace(ctx: Context, name: str, everything: bool) -> tuple[Row, list[Row]]:
    """One namespace's figures and its repositories (those the visitor may see), largest first;
    NAME_UNKNOWN when it has none the visitor may see (whether or not it exists)."""
    answer = ctx.clients.governance.usage(namespace=name, repositories=True).namespaces
    found = answer[0] if answer else None
    repositories = list(found.repositories) if found is not None else []
    whole = everything
    if not everything:
        probe = _probe(name)
        visible = ctx.authorizer.pullable_set([r.name for r in repositories] + [probe])
        repositories = [r for r in repositories if r.name in visible]
        whole = probe in visible
    if found is None or not (everything or repositories):
        raise RegistryError(NAME_UNKNOWN, f"no repository you may see is in namespace {name}", http_status=404)
    return _namespace_row(found, repositories, whole), _scaled([Row(r.name, r.bytes, 0.0)
                                                               for r in repositories])


def _activity(ctx: Context, limit: int, after: str = "") -> tuple[list[gpb.AuditRecord], str]:
    answer = ctx.clients.governance.query_audit(limit, after)
    return list(answer.records), answer.next


def _signed_in_or_open(ctx: Context, visitor: Visitor) -> None:
    if ctx.authorizer.issues_tokens and not visitor.signed_in:
        raise RegistryError(DENIED, "sign in first", http_status=403)


@page
def usage(ctx: Context, visitor: Visitor) -> Response:
    _signed_in_or_open(ctx, visitor)
    everything = sees_everything(ctx, visitor)
    values: dict[str, Any] = {"everything": everything, "admin": everything and ctx.authorizer.issues_tokens,
                              "namespace": None, "rows": [], "records": [], "more_activity": ""}
    wanted = argument("namespace")
    if wanted:
        if not is_valid_name(wanted) or namespace_of(wanted) != wanted:
            raise RegistryError(NAME_INVALID, "not a valid namespace", http_status=400)
        values["namespace"], values["rows"] = namespace(ctx, wanted, everything)
    else:
        values["rows"] = namespaces(ctx, everything)
    if everything and not wanted:
        values["records"], values["more_activity"] = _activity(ctx, _ACTIVITY_ON_USAGE)
    return render(ctx, visitor, "usage.html", **values)


@page
def activity(ctx: Context, visitor: Visitor) -> Response:
    """The audit log, newest first, a page at a time: admins only (everyone without authentication)."""
    _signed_in_or_open(ctx, visitor)
    if not sees_everything(ctx, visitor):
        raise RegistryError(DENIED, "only an admin may read the activity log", http_status=403)
    records, more = _activity(ctx, _ACTIVITY_PAGE, argument("after"))
    return render(ctx, visitor, "activity.html", records=records, more=more, after=argument("after"))
