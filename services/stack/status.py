"""`wharf-admin status`: one screen on the running stack, from its metrics and health endpoints.

It reads the services' metrics addresses from ``$WHARF_DATA_DIR/metrics.json`` (what `make run`
writes) or from ``--metrics name=host:port`` options (any deployment), scrapes each, and says
what an operator asks first: is every service up, which release, how busy, how full. It needs
no credentials: ``/metrics`` serves figures, not data.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families

from services.common import metrics_endpoint
from services.common.yaml_section import human_size
from services.stack import lock, records

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for found, value in samples.get(name, []) if all(found.get(k) == v for k, v in labels.items()))


def _probe(url: str) -> str:
    import requests

    try:
        answer = requests.get(f"{url}/v2/", timeout=5)
    except requests.RequestException as exc:
        return f"unreachable ({type(exc).__name__})"
    return f"answers {answer.status_code}"


def gather(addresses: Mapping[str, str], registry_url: str = "") -> dict[str, Any]:
    """The facts the screen shows, as data (``--json`` prints them)."""
    services: dict[str, Any] = {}
    scraped: dict[str, Samples] = {}
    for name, address in sorted(addresses.items()):
        try:
            scraped[name] = samples = _samples(metrics_endpoint.scrape(address))
        except (OSError, ValueError) as exc:
            services[name] = {"address": address, "up": False, "error": str(exc)[:200]}
            continue
        info = samples.get("wharf_build_info", [({}, 0.0)])[0][0]
        started = _total(samples, "process_start_time_seconds")
        services[name] = {"address": address, "up": True, "version": info.get("version", "?"),
                          "memory_bytes": _total(samples, "process_resident_memory_bytes"),
                          "uptime_seconds": round(time.time() - started) if started else None}
    gateway = next((s for n, s in scraped.items() if n.startswith("gateway")), {})
    blobstores = [s for n, s in scraped.items() if n.startswith("blobstore")]
    metadata = next((s for n, s in scraped.items() if n.startswith("metadata")), {})
    hits = _total(gateway, "wharf_read_cache_lookups_total", result="hit")
    lookups = _total(gateway, "wharf_read_cache_lookups_total")
    requests_total = _total(gateway, "wharf_http_requests_total")
    errors = sum(v for labels, v in gateway.get("wharf_http_requests_total", []) if labels.get("status", "")[:1] == "5")
    return {
        "registry": {"url": registry_url, "state": _probe(registry_url) if registry_url else "unknown"},
        "services": services,
        "requests": {"served": requests_total, "server_errors": errors,
                     "in_flight": _total(gateway, "wharf_http_requests_in_flight"),
                     "connections": _total(gateway, "wharf_http_connections_open"),
                     "transfers": _total(gateway, "wharf_http_transfers_in_flight")},
        "uploads_open": max((_total(s, "wharf_upload_sessions_open") for s in blobstores), default=None),
        "cache": {"leases": _total(gateway, "wharf_read_cache_lease"),
                  "bytes": _total(gateway, "wharf_read_cache_bytes"),
                  "hit_ratio": round(hits / lookups, 3) if lookups else None,
                  "watchers": _total(metadata, "wharf_metadata_watchers")},
        "storage": {"blobs": max((_total(s, "wharf_storage_blobs") for s in blobstores), default=None),
                    "bytes": max((_total(s, "wharf_storage_blob_bytes") for s in blobstores), default=None)},
        "gc": {"last_success": _total(metadata, "wharf_gc_last_success_timestamp_seconds") or None,
               "bytes_removed": _total(metadata, "wharf_gc_bytes_removed_total")},
    }


def render(facts: dict[str, Any]) -> str:
    lines = [f"registry   {facts['registry']['url'] or '?'}: {facts['registry']['state']}", "services"]
    for name, service in facts["services"].items():
        if not service["up"]:
            lines.append(f"  {name:<12} DOWN  {service['address']}  {service['error']}")
            continue
        uptime = service["uptime_seconds"]
        lines.append(f"  {name:<12} up    {service['address']:<22} wharf {service['version']}  "
                     f"{human_size(service['memory_bytes'])} resident"
                     + (f", up {uptime} s" if uptime is not None else ""))
    req = facts["requests"]
    lines.append(f"requests   {req['served']:.0f} served, {req['server_errors']:.0f} server errors; now "
                 f"{req['in_flight']:.0f} in flight, {req['transfers']:.0f} transfers, {req['connections']:.0f} "
                 "connections")
    if facts["uploads_open"] is not None:
        lines.append(f"uploads    {facts['uploads_open']:.0f} sessions open")
    cache = facts["cache"]
    ratio = f"{cache['hit_ratio']:.1%} hits" if cache["hit_ratio"] is not None else "no lookups yet"
    lines.append(f"cache      {cache['leases']:.0f} gateway processes hold a lease, {cache['watchers']:.0f} watching; "
                 f"{human_size(cache['bytes'])} cached; {ratio}")
    storage = facts["storage"]
    if storage["blobs"] is not None:
        lines.append(f"storage    {storage['blobs']:.0f} blobs, {human_size(storage['bytes'] or 0)}")
    gc = facts["gc"]
    last = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(gc["last_success"])) if gc["last_success"] else "never"
    lines.append(f"gc         last success {last}; {human_size(gc['bytes_removed'])} removed in all")
    return "\n".join(lines)


def addresses_from(data_dir: pathlib.Path, given: tuple[str, ...]) -> dict[str, str]:
    if given:
        pairs = [item.partition("=") for item in given]
        bad = [item for item, (_, sep, value) in zip(given, pairs, strict=True) if not sep or not value]
        if bad:
            raise click.BadParameter(f"expected name=host:port, got {bad[0]!r}", param_hint="--metrics")
        return {name: value for name, _, value in pairs}
    recorded = records.read(data_dir, records.METRICS)
    if not recorded:
        raise click.ClickException(f"no {data_dir / records.METRICS}: run it beside `make run` (or set "
                                   "WHARF_DATA_DIR), or name each service's metrics with --metrics name=host:port")
    return dict(json.loads(recorded))


@click.command("status")
@click.option("--metrics", "given", multiple=True, metavar="NAME=HOST:PORT",
              help="a service's metrics address (repeat; default: what make run wrote to metrics.json)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
def status(given: tuple[str, ...], as_json: bool) -> None:
    """One screen on the running stack: services up, versions, requests, uploads, cache, storage.

    \b
    Example: wharf-admin status            (beside make run)
             wharf-admin status --metrics gateway=10.0.0.5:9100 --metrics blobstore=10.0.0.6:9102
    """
    data_dir = pathlib.Path(os.environ.get("WHARF_DATA_DIR", "./data"))
    facts = gather(addresses_from(data_dir, given), str(lock.holder(data_dir).get("url", "")))
    click.echo(json.dumps(facts, indent=2) if as_json else render(facts))
    if not all(service["up"] for service in facts["services"].values()):
        raise SystemExit(1)
