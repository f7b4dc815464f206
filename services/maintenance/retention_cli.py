"""`wharf-admin retention run`: applies the retention rules now, or shows what they would delete.

It acts with the stack's internal secret, as `wharf-admin check` and wharf-gc do, and finds the
metadata service by itself beside `make run` (services/maintenance/targets.py); the run happens
in the metadata service (services/metadata/retention.py), so its deletions invalidate the
gateways' caches and reach the event outbox like any delete. Exit status: 0 done, 2 could not run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from services.common.errors import RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.maintenance.cli import CannotRun, _calls
from services.maintenance.clients import Unreachable
from services.maintenance.targets import locate
from services.metadata.retention_plan import human

# A run walks the whole catalog; the deadline only stops a run that hangs.
RUN_TIMEOUT = 3600.0


def _item_json(item: gpb.RetentionItem) -> dict[str, Any]:
    return {"repository": item.repository, "tag": item.tag, "digest": item.digest, "reason": item.reason,
            "at_ms": item.at_ms}


def report_json(report: gpb.RetentionReport, dry_run: bool) -> dict[str, Any]:
    return {"dry_run": dry_run, "repositories": report.repositories,
            "deleted": [_item_json(i) for i in report.deleted], "deleted_more": report.deleted_more,
            "kept": [_item_json(i) for i in report.kept], "kept_more": report.kept_more}


def _line(item: gpb.RetentionItem, now_ms: int) -> str:
    what = f"{item.repository}:{item.tag}" if item.tag else f"{item.repository}@{item.digest}"
    when = f" (pushed {human(max(0, now_ms - item.at_ms) / 1000)} ago)" \
        if item.at_ms else ""
    return f"  {what}{when}\n      {item.reason}"


def report_text(report: gpb.RetentionReport, dry_run: bool) -> str:
    now_ms = int(time.time() * 1000)
    lines = [f"{'would delete' if dry_run else 'deleted'}:" if report.deleted else
             f"{'would delete' if dry_run else 'deleted'}: nothing"]
    lines += [_line(item, now_ms) for item in report.deleted]
    if report.deleted_more:
        lines.append(f"  ... and {report.deleted_more} more")
    if report.kept:
        lines.append("kept (a rule would delete them, something protects them):")
        lines += [_line(item, now_ms) for item in report.kept]
    if report.kept_more:
        lines.append(f"  ... and {report.kept_more} more")
    tags = sum(1 for i in report.deleted if i.tag)
    lines.append(f"{report.repositories} repositories under a retention rule; "
                 f"{'would delete' if dry_run else 'deleted'} {len(report.deleted) + report.deleted_more} "
                 f"({tags} tags, {len(report.deleted) - tags} untagged manifests"
                 f"{', and more' if report.deleted_more else ''}); kept {len(report.kept) + report.kept_more}")
    return "\n".join(lines)


@click.command("run")
@click.option("--dry-run", is_flag=True, help="show what the rules would delete; delete nothing")
@click.option("--repositories", "pattern", default="", metavar="PATTERN",
              help="only repositories matching this pattern (e.g. 'ci/**'); default: every one a rule covers")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--metadata-addr", help="metadata service gRPC address (default: WHARF_METADATA_ADDR, else make "
              "run's record, else 127.0.0.1:50052)")
@click.option("--timeout", type=click.FloatRange(min=1), default=RUN_TIMEOUT, show_default=True,
              help="seconds to wait for the run")
def run(dry_run: bool, pattern: str, as_json: bool, metadata_addr: str | None, timeout: float) -> None:
    """Apply the retention rules now (or, with --dry-run, list what they would delete).

    Deletes the tags the rules select and the untagged manifests older than their
    untagged_older_than; tags that are immutable, match keep_tags or are among the keep_last
    newest stay (listed as kept). wharf-gc then frees the storage.

    \b
    Example: wharf-admin retention run --dry-run --repositories 'ci/**'
             wharf-admin retention run --json
    """
    targets = locate(os.environ, metadata_addr=metadata_addr)
    request = gpb.RetentionRequest(dry_run=dry_run, repositories=pattern,
                                   actor=gpb.Actor(account="", via="wharf-admin"))
    try:
        with _calls(targets) as calls:  # the internal secret, as wharf-admin check reads it
            report = calls.governance("RunRetention", request, timeout)
    except Unreachable as exc:
        raise CannotRun(f"{exc}; point --metadata-addr (or WHARF_DATA_DIR) at the registry's") from None
    except RegistryError as exc:
        raise CannotRun(f"{exc.code}: {exc.message}") from None
    if as_json:
        json.dump(report_json(report, dry_run), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        click.echo(report_text(report, dry_run))


if __name__ == "__main__":
    run()
