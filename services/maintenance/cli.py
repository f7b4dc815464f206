"""`wharf-admin check`, `export` and `import`: options, connections, output, exit codes.

They act with the stack's internal secret (as wharf-gc does), not an account: whoever runs them
can read the data directory (or the Secret) that holds it. Exit codes: 0 done and clean; 1 done,
with problems (check: problems remain; export: manifests skipped); 2 could not run (a service or
Redis unreachable, a bad file, an import refused or stopped).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, Any

import click
import redis

from services.common import redisconn
from services.common.errors import RegistryError
from services.common.internal_auth import read_token
from services.common.settings import SettingsError
from services.maintenance import fileformat
from services.maintenance.check import Checker
from services.maintenance.clients import RegistryCalls, Unreachable
from services.maintenance.export import Exporter
from services.maintenance.findings import Finding
from services.maintenance.importer import Importer, ImportFailed, ImportRefused
from services.maintenance.inventory import Inventory
from services.maintenance.targets import Targets, locate
from services.mirror import config as mirror_config


class CannotRun(click.ClickException):
    exit_code = 2


def _target_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed([
        click.option("--redis-url", help="the metadata's Redis (default: WHARF_REDIS_URL, else what make run "
                     "recorded in $WHARF_DATA_DIR, else redis://127.0.0.1:6379/0)"),
        click.option("--metadata-addr", help="metadata service gRPC address (default: WHARF_METADATA_ADDR, else "
                     "make run's record, else 127.0.0.1:50052)"),
        click.option("--blobstore-addr", help="a blob store's gRPC address (default: WHARF_BLOBSTORE_ADDR, else "
                     "make run's record, else 127.0.0.1:50051)"),
    ]):
        command = option(command)
    return command


def _shown(url: str) -> str:
    """A Redis URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


@contextlib.contextmanager
def _calls(targets: Targets) -> Iterator[RegistryCalls]:
    try:
        token = read_token(targets.token_file)
    except SettingsError as exc:
        raise CannotRun(f"{exc}; point WHARF_INTERNAL_TOKEN_FILE (or WHARF_DATA_DIR) at the stack's") from None
    with RegistryCalls(targets, token) as calls:
        yield calls


@contextlib.contextmanager
def _inventory(targets: Targets) -> Iterator[Inventory]:
    client = redisconn.sync_client(targets.redis_url, socket_timeout=30, socket_connect_timeout=5)
    try:
        yield Inventory(client)
    finally:
        client.close()


@contextlib.contextmanager
def _failures(targets: Targets) -> Iterator[None]:
    """Turns what stops a command into one line and exit status 2."""
    try:
        yield
    except redis.RedisError as exc:
        raise CannotRun(f"Redis at {_shown(targets.redis_url)}: {str(exc).rstrip('.')}; point --redis-url (or "
                        "WHARF_REDIS_URL, or WHARF_DATA_DIR) at the registry's") from None
    except Unreachable as exc:
        raise CannotRun(f"{exc}; point --metadata-addr / --blobstore-addr (or WHARF_DATA_DIR) at the registry's "
                        "services") from None
    except RegistryError as exc:
        raise CannotRun(f"{exc.code}: {exc.message}") from None
    except (fileformat.FormatError, ImportRefused, ImportFailed, OSError) as exc:
        raise CannotRun(str(exc)) from None


def _warn(text: str) -> None:
    click.echo(f"wharf-admin: {text}", err=True)


class _JsonReport:
    """``{"findings": [...], "summary": {...}}`` written as findings come (bounded memory), and
    always closed: a failure part-way still leaves valid JSON, with an "error"."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._count = 0
        out.write('{"findings": [')

    def finding(self, finding: Finding) -> None:
        self._out.write(("," if self._count else "") + "\n  " + json.dumps(finding.to_json()))
        self._out.flush()
        self._count += 1

    def close(self, summary: dict[str, Any], error: str = "") -> None:
        tail = {"summary": summary, **({"error": error} if error else {})}
        self._out.write(("\n" if self._count else "") + "]," + json.dumps(tail, indent=2)[1:] + "\n")
        self._out.flush()


def _mirrors() -> mirror_config.Mirrors:
    """The mirrored prefixes, read as wharf-gc reads them (no upstream credentials needed)."""
    try:
        return mirror_config.load(os.environ, secrets=False)
    except mirror_config.MirrorsError as exc:
        raise CannotRun(str(exc)) from None


@click.command("check")
@click.option("--verify", is_flag=True, help="also stream every linked or referenced blob and hash it")
@click.option("--repair", is_flag=True, help="fix what can be fixed safely (drop tags of missing manifests, "
              "unlink blobs missing from storage, relink stored blobs a manifest needs)")
@_target_options
def check(verify: bool, repair: bool, redis_url: str | None, metadata_addr: str | None,
          blobstore_addr: str | None) -> None:
    """Check the metadata against itself and the storage; print a JSON report.

    Finds tags of missing manifests, manifests whose blobs are unlinked or not stored, indexes
    whose children are not stored, links to blobs missing from storage, and (--verify) blobs
    whose bytes do not match their digest. Exit status: 0 clean, 1 problems remain (with
    --repair: after repairing), 2 could not check.

    \b
    Example: wharf-admin check --verify          (beside make run)
             wharf-admin check --repair
    """
    targets = locate(os.environ, redis_url, metadata_addr, blobstore_addr)
    with _failures(targets), _inventory(targets) as inventory, _calls(targets) as calls:
        if repair and inventory.read_only():
            raise CannotRun("the registry is read-only for maintenance (wharf:maintenance is set): --repair "
                            "cannot write; check without --repair, or once it is lifted")
        report = _JsonReport(sys.stdout)
        checker = Checker(inventory, calls, report.finding, verify=verify, repair=repair,
                          mirrored=_mirrors().is_mirrored)
        try:
            summary = checker.run()
        except (redis.RedisError, Unreachable, RegistryError) as exc:
            report.close(checker.summary.to_json(), error=str(exc))
            raise
        report.close(summary.to_json())
    if summary.remaining:
        sys.exit(1)


@click.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--redis-url", help="the metadata's Redis (default: WHARF_REDIS_URL, else what make run recorded "
              "in $WHARF_DATA_DIR, else redis://127.0.0.1:6379/0); a copy restored from a backup works too")
def export(file: pathlib.Path, redis_url: str | None) -> None:
    """Write the registry's metadata to FILE (JSON lines; FILE.gz: compressed).

    Repositories, blob links, manifests (exact bytes) and tags, for `wharf-admin import` into
    another (or a rebuilt) registry; docs/backup.md documents the format. Blob bytes are not
    in the file: copy the storage, or share it. Prints a JSON summary; exit status 1 when some
    manifests could not be exported (listed; run `wharf-admin check`).
    """
    targets = locate(os.environ, redis_url)
    with _failures(targets), _inventory(targets) as inventory:
        writer = fileformat.Writer(file)
        try:
            report = Exporter(inventory, writer, _warn).run()
        except BaseException:
            writer.abort()
            raise
        writer.commit()
    click.echo(json.dumps(report.to_json(), indent=2))
    if report.skipped_manifests or report.skipped_tags:
        sys.exit(1)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option("--allow-missing", is_flag=True, help="link blobs the target's storage does not hold anyway")
@click.option("--dry-run", is_flag=True, help="check the file and the target, write nothing")
@click.option("--metadata-addr", help="metadata service gRPC address (default: WHARF_METADATA_ADDR, else make "
              "run's record, else 127.0.0.1:50052)")
@click.option("--blobstore-addr", help="a blob store's gRPC address (default: WHARF_BLOBSTORE_ADDR, else make "
              "run's record, else 127.0.0.1:50051)")
def import_(file: pathlib.Path, allow_missing: bool, dry_run: bool, metadata_addr: str | None,
            blobstore_addr: str | None) -> None:
    """Write the metadata in FILE (from `wharf-admin export`) into this registry.

    The registry may be empty or hold other content; the blobs must be in its storage already
    (restore or copy them first). Nothing is written when the file is damaged, a blob is
    missing from storage (unless --allow-missing) or a tag would move. Writes go through the
    metadata service, as pushes do; running it again is harmless. Prints a JSON summary.
    """
    targets = locate(os.environ, metadata_addr=metadata_addr, blobstore_addr=blobstore_addr)
    with _failures(targets), _calls(targets) as calls:
        report = Importer(calls, file, allow_missing, _warn).run(dry_run)
    click.echo(json.dumps(report.to_json(), indent=2))


COMMANDS = (check, export, import_)
