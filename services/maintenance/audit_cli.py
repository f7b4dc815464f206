"""`wharf-admin audit`: reads the audit log (services/metadata/audit.py), as text or JSON lines.

Like `wharf-admin check`, it acts with the stack's internal secret and finds the metadata
service by itself beside `make run` (services/maintenance/targets.py), in both auth modes: the
audit log is the operator's, and reading it needs no account that could be the one under
suspicion. It pages through QueryAudit: each call scans a bounded part of the log and says
where to go on, so ``--all`` over a million records is many short calls, never one long one.
Exit status: 0 done, 2 could not run.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from services.common.yaml_section import parse_duration
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.maintenance.cli import _calls, _failures
from services.maintenance.clients import RegistryCalls
from services.maintenance.targets import locate

# Records per QueryAudit call (the service's maximum).
PAGE = 1000
DEFAULT_LIMIT = 100
# What a name-like field (account, address, repository, reference) shows as it is in a text line;
# anything else (spaces, parentheses, quotes: a failed login's account is whatever was typed) is
# shown quoted, so that it cannot pass for the line's other columns. A detail is free text, quoted
# only when it holds what could close its brackets or fake a column break.
_PLAIN = re.compile(r"[A-Za-z0-9._@:/*+$%-]+")
_PLAIN_DETAIL = re.compile(r"(?:[^\[\]\"\s]| (?! ))+")


def parse_time(value: str, now: float | None = None) -> int:
    """Milliseconds since the epoch of ``2h`` / ``7d`` / ``30m`` (that long ago) or an ISO 8601
    time (``2024-05-01``, ``2024-05-01T10:00``, with ``Z`` or an offset; UTC when it has none)."""
    text = value.strip()
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        return max(int(((time.time() if now is None else now) - seconds) * 1000), 0)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (30m, 2h, 7d) nor an ISO time "
                                 "(2024-05-01T10:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(int(moment.timestamp() * 1000), 0)


def _when(at_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(at_ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def record_json(record: gpb.AuditRecord) -> dict[str, Any]:
    """A record as one JSON object; every field present (empty when unknown), so a line's shape
    does not depend on what happened."""
    return {"id": record.id, "at": _when(record.at_ms), "at_ms": record.at_ms, "account": record.account,
            "account_kind": record.account_kind, "address": record.address, "user_agent": record.user_agent,
            "action": record.action, "repository": record.repository, "reference": record.reference,
            "result": record.result, "status": record.status, "detail": record.detail,
            "request_id": record.request_id, "via": record.via}


def _shown(value: str, plain: re.Pattern[str] = _PLAIN) -> str:
    """A field as a text line shows it: as it is when plain, else quoted (JSON's escapes)."""
    return value if plain.fullmatch(value) else json.dumps(value)


def record_text(record: gpb.AuditRecord) -> str:
    """One line: when, who (from where), what, on what, result. The service stored printable text
    only; fields that are not plain names are quoted (``_shown``), so none can fake another column."""
    who = _shown(record.account) if record.account else "anonymous"
    repository, reference = (_shown(v) if v else "" for v in (record.repository, record.reference))
    what = repository + (("@" if ":" in record.reference else ":") + reference
                         if repository and reference else reference)
    result = _shown(record.result) + (f" {record.status}" if record.status else "")
    address = _shown(record.address) if record.address else "-"
    line = f"{_when(record.at_ms)}  {who} ({address})  {_shown(record.action)}  {what or '-'}  {result}"
    if record.detail:
        line += f"  [{_shown(record.detail, _PLAIN_DETAIL)}]"
    return line + f"  via {_shown(record.via) if record.via else '-'}"


def records(calls: RegistryCalls, request: gpb.QueryAuditRequest, limit: int | None) -> Iterator[gpb.AuditRecord]:
    """The matching records, page by page, at most ``limit`` (None: all)."""
    found = 0
    while limit is None or found < limit:
        request.limit = PAGE if limit is None else min(PAGE, limit - found)
        page = calls.governance("QueryAudit", request)
        for record in page.records:
            yield record
            found += 1
        if not page.next:
            return
        request.after = page.next


@click.command("audit")
@click.option("--account", default="", help="only what this account did (or tried: a failed login)")
@click.option("--repository", default="", metavar="NAME|PATTERN",
              help="only this repository, or those matching a pattern (team/**, */app)")
@click.option("--action", default="", help="only this action: upload, mount, cancel-upload, push, delete, untag, "
              "delete-blob, login, admin-login, account-create, grant, ...")
@click.option("--since", default="", metavar="WHEN", help="from this time: a duration ago (30m, 2h, 7d) or an ISO "
              "time (2024-05-01T10:00:00Z)")
@click.option("--until", default="", metavar="WHEN", help="up to this time, the same forms")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True,
              help="records to show at most")
@click.option("--all", "everything", is_flag=True, help="every matching record (pages through the whole log)")
@click.option("--oldest-first", is_flag=True, help="oldest first (default: newest first)")
@click.option("--jsonl", is_flag=True, help="JSON lines, one record per line (an export)")
@click.option("--metadata-addr", help="metadata service gRPC address (default: WHARF_METADATA_ADDR, else make "
              "run's record, else 127.0.0.1:50052)")
def audit(account: str, repository: str, action: str, since: str, until: str, limit: int, everything: bool,
          oldest_first: bool, jsonl: bool, metadata_addr: str | None) -> None:
    """Show the audit log: writes, logins and admin changes, who made them, from where, and the result.

    \b
    Example: wharf-admin audit --since 2h
             wharf-admin audit --account alice --repository 'team/**' --since 7d
             wharf-admin audit --action login --jsonl --all > logins.jsonl
    """
    request = gpb.QueryAuditRequest(account=account, repository=repository, action=action,
                                    since_ms=parse_time(since) if since else 0,
                                    until_ms=parse_time(until) if until else 0, oldest_first=oldest_first)
    targets = locate(os.environ, metadata_addr=metadata_addr)
    with _failures(targets), _calls(targets) as calls:
        for record in records(calls, request, None if everything else limit):
            sys.stdout.write((json.dumps(record_json(record)) if jsonl else record_text(record)) + "\n")
        sys.stdout.flush()
