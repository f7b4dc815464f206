"""`wharf-admin events`: the endpoints' backlogs and errors, their dead letters, and replaying them.

It reads Redis directly (the outbox, cursors and status the delivery service keeps:
services/metadata/redis_keys.py) and the endpoints from the events section, like the services; it
needs no account, only what `make run` recorded or WHARF_REDIS_URL. A replay puts a dead letter back
at the end of its repository's outbox shard for that endpoint alone, keeping its event id (so a
consumer that saw it before can tell), and removes it from the dead letters, in one step per event.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import click
import redis

from services.common import redisconn
from services.events import config
from services.events.delivery import backlog, printable_reason
from services.maintenance.targets import locate
from services.metadata import redis_keys as keys

_SCAN_PAGE = 500


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _when(seconds: Any) -> str:
    if not seconds:
        return ""
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC).isoformat().replace("+00:00", "Z")


def _client(redis_url: str | None) -> redis.Redis:
    return redisconn.sync_client(locate(os.environ, redis_url=redis_url).redis_url, socket_timeout=30,
                                 socket_connect_timeout=5)


def _endpoint_names(client: redis.Redis, configured: config.Events) -> list[str]:
    """The configured endpoints, then any the delivery service kept a status for that are configured no more."""
    names = [e.name for e in configured.endpoints]
    for key in client.scan_iter(match="wharf:events:status:*", count=_SCAN_PAGE):
        name = _text(key).rsplit(":", 1)[1]
        if name not in names:
            names.append(name)
    return names


def summary(client: redis.Redis, configured: config.Events) -> list[dict[str, Any]]:
    by_name = {e.name: e for e in configured.endpoints}
    found = []
    for name in _endpoint_names(client, configured):
        status = {_text(k): _text(v) for k, v in client.hgetall(keys.event_status(name)).items()}
        endpoint = by_name.get(name)
        found.append({
            "name": name, "url": endpoint.url if endpoint else "",
            "state": "not configured" if endpoint is None else ("disabled" if endpoint.disabled else "active"),
            "backlog": backlog(client, name), "delivered": int(status.get("delivered", 0)),
            "failed_attempts": int(status.get("failed", 0)), "dead_letters": int(client.xlen(keys.dead_letters(name))),
            "dead_lettered_total": int(status.get("dead", 0)), "overflow_total": int(status.get("overflow", 0)),
            # A receiver's answer, kept printable by the delivery service; cleaned again here for
            # what an older one kept (a raw CR, LF or ESC would forge lines in a terminal).
            "last_error": printable_reason(status.get("last_error", "")),
            "last_error_at": _when(status.get("last_error_at")),
            "last_success_at": _when(status.get("last_success_at"))})
    return found


def dead_letters(client: redis.Redis, name: str, limit: int) -> list[dict[str, Any]]:
    found = []
    for entry_id, fields in client.xrange(keys.dead_letters(name), count=limit):
        f = {_text(k): _text(v) for k, v in fields.items()}
        event = json.loads(f.get("event") or "{}")
        found.append({"dead_letter": _text(entry_id), "reason": f.get("reason", ""),
                      "attempts": int(f.get("attempts") or 0), "at": _when(f.get("at")), "id": event.get("i", ""),
                      "action": event.get("a", ""), "repository": event.get("r", ""), "digest": event.get("d", ""),
                      "tag": event.get("t", "")})
    return found


def replay(client: redis.Redis, name: str, limit: int) -> int:
    """Puts up to ``limit`` of the endpoint's dead letters back into the outbox; how many."""
    script = client.register_script(keys.REPLAY_DEAD_LETTER)
    replayed = 0
    for entry_id, fields in client.xrange(keys.dead_letters(name), count=limit):
        event = json.loads(_text(fields.get(b"event") or b"{}"))
        repository = str(event.get("r", ""))
        replayed += int(script(keys=[keys.dead_letters(name), keys.outbox(keys.outbox_shard(repository))],
                               args=[_text(entry_id), name]))
    return replayed


def _configured() -> config.Events:
    try:
        return config.load(os.environ, secrets=False)
    except config.EventsError as exc:
        raise click.ClickException(str(exc)) from None


def _known(client: redis.Redis, name: str) -> None:
    if name not in _endpoint_names(client, _configured()):
        raise click.ClickException(f"no endpoint {name[:64]!r} is configured or was ever delivered to")


_redis_option = click.option("--redis-url", help="the metadata's Redis (default: WHARF_REDIS_URL, else what make "
                             "run recorded in $WHARF_DATA_DIR, else redis://127.0.0.1:6379/0)")
_json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


@click.group("events", invoke_without_command=True)
@_redis_option
@_json_option
@click.pass_context
def events(ctx: click.Context, redis_url: str | None, as_json: bool) -> None:
    """Event endpoints: backlog, deliveries and last error (subcommands: dead, replay)."""
    ctx.obj = redis_url
    if ctx.invoked_subcommand is not None:
        return
    rows = summary(_client(redis_url), _configured())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no event endpoint is configured (WHARF_EVENTS_FILE, or events: in WHARF_CONFIG)")
    for row in rows:
        click.echo(f"{row['name']} ({row['state']}) {row['url']}\n  backlog {row['backlog']}, delivered "
                   f"{row['delivered']}, failed attempts {row['failed_attempts']}, dead letters {row['dead_letters']} "
                   f"({row['dead_lettered_total']} in all, {row['overflow_total']} by overflow)\n"
                   f"  last success {row['last_success_at'] or 'never'}"
                   + (f"; last error {row['last_error_at']}: {row['last_error']}" if row['last_error'] else ""))


@events.command("dead")
@click.argument("endpoint")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@_json_option
@click.pass_obj
def dead(redis_url: str | None, endpoint: str, limit: int, as_json: bool) -> None:
    """The oldest dead letters of ENDPOINT."""
    client = _client(redis_url)
    _known(client, endpoint)
    rows = dead_letters(client, endpoint, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        target = row["repository"] + (f":{row['tag']}" if row["tag"] else "") + (f"@{row['digest']}"
                                                                              if row["digest"] else "")
        click.echo(f"{row['at']} {row['reason']} (attempts {row['attempts']}) {row['action']} {target} id {row['id']}")


@events.command("replay")
@click.argument("endpoint")
@click.option("--limit", default=100_000, show_default=True, type=click.IntRange(1, 1_000_000))
@_json_option
@click.pass_obj
def replay_command(redis_url: str | None, endpoint: str, limit: int, as_json: bool) -> None:
    """Deliver ENDPOINT's dead letters again (oldest first, after what is waiting already)."""
    client = _client(redis_url)
    _known(client, endpoint)
    replayed = replay(client, endpoint, limit)
    click.echo(json.dumps({"endpoint": endpoint, "replayed": replayed}) if as_json
               else f"{replayed} dead letter(s) of {endpoint} queued again")
