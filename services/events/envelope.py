"""What a delivery looks like on the wire: Distribution's envelope, or CloudEvents 1.0.

**distribution** (the default): ``application/vnd.docker.distribution.events.v1+json``,
``{"events": [...]}``, each event with Distribution's fields (id, timestamp, action, target with
mediaType/size/length/digest/repository/url/tag and fromRepository for a mount, request with
id/addr/host/method/useragent, actor with name, source with addr/instanceID), so that a consumer
written for Distribution's notifications reads Wharf's unchanged.

**cloudevents**: CloudEvents 1.0 in structured mode, a batch (``application/cloudevents-batch+json``):
a JSON array of events whose ``type`` is ``io.wharf.registry.<action>``, ``subject`` the
repository with the tag or digest, and ``data`` the target, request and actor above.

Event ids are ``<shard>-<stream id>`` of the event in the outbox: the same on every redelivery,
so a consumer can drop a duplicate by id (delivery is at least once).

Every delivery to an endpoint with a secret carries ``X-Wharf-Signature-256: sha256=<hex>``, the
HMAC-SHA256 of the body under that secret (the consumer recomputes it over the raw body and compares
in constant time), and ``X-Wharf-Delivery``, the first and last event ids of the batch.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
from typing import Any

from services.common.client_address import valid_host

DISTRIBUTION_TYPE = "application/vnd.docker.distribution.events.v1+json"
CLOUDEVENTS_TYPE = "application/cloudevents-batch+json"
SIGNATURE_HEADER = "X-Wharf-Signature-256"
DELIVERY_HEADER = "X-Wharf-Delivery"


@dataclasses.dataclass(frozen=True)
class Event:
    """One outbox entry, as read from its stream."""

    id: str
    at_ms: int
    action: str
    repository: str
    digest: str = ""
    media_type: str = ""
    size: int | None = None
    tag: str = ""
    source: str = ""
    origin: dict[str, str] = dataclasses.field(default_factory=dict)
    only: str = ""

    @classmethod
    def from_entry(cls, shard: int, entry_id: str, fields: dict[str, str]) -> Event:
        """From the stream entry's fields (redis_keys: n, a, r, d, m, s, t, f, o, and w, i, only)."""
        try:
            origin = json.loads(fields.get("o") or "{}")
        except ValueError:
            origin = {}
        size = fields.get("s", "")
        return cls(id=fields.get("i") or f"{shard}-{entry_id}",
                   at_ms=int(fields.get("w") or entry_id.split("-", 1)[0]), action=fields.get("a", ""),
                   repository=fields.get("r", ""), digest=fields.get("d", ""), media_type=fields.get("m", ""),
                   size=int(size) if size.isdigit() else None, tag=fields.get("t", ""), source=fields.get("f", ""),
                   origin=origin if isinstance(origin, dict) else {}, only=fields.get("only", ""))

    def dead_letter(self) -> str:
        """The event as a dead letter keeps it (REPLAY_DEAD_LETTER puts these fields back)."""
        return json.dumps({"i": self.id, "w": str(self.at_ms), "a": self.action, "r": self.repository,
                           "d": self.digest, "m": self.media_type, "s": "" if self.size is None else str(self.size),
                           "t": self.tag, "f": self.source,
                           "o": json.dumps(self.origin, separators=(",", ":"), sort_keys=True)},
                          separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the events come from: the registry's external URL (or "") and this replica's id."""

    public_url: str
    instance: str


def _timestamp(at_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(at_ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _host(event: Event) -> str:
    """The Host the event's request named, when it is a well-formed ``host[:port]`` (else ""): without
    WHARF_PUBLIC_URL it becomes the target's url and the source's addr for every consumer, and a
    Host such as ``evil.example/x?`` must not make that any URL the client likes."""
    host = event.origin.get("host", "")
    return host if valid_host(host) else ""


def _base_url(event: Event, source: Source) -> str:
    if source.public_url:
        return source.public_url.rstrip("/")
    host = _host(event)
    return f"http://{host}" if host else ""


def _target(event: Event, source: Source) -> dict[str, Any]:
    target: dict[str, Any] = {"repository": event.repository}
    if event.media_type:
        target["mediaType"] = event.media_type
    if event.digest:
        target["digest"] = event.digest
    if event.size is not None:
        target["size"] = event.size
        target["length"] = event.size
    if event.tag:
        target["tag"] = event.tag
    if event.source:
        target["fromRepository"] = event.source
    base = _base_url(event, source)
    if base and event.digest:
        kind = "blobs" if event.media_type == "application/octet-stream" else "manifests"
        target["url"] = f"{base}/v2/{event.repository}/{kind}/{event.digest}"
    return target


def _request(event: Event) -> dict[str, str]:
    o = event.origin
    found = {"id": o.get("request_id", ""), "addr": o.get("address", ""), "host": o.get("host", ""),
             "method": o.get("method", ""), "useragent": o.get("user_agent", "")}
    return {k: v for k, v in found.items() if v}


def _actor(event: Event) -> dict[str, str]:
    name = event.origin.get("account", "")
    return {"name": name} if name else {}


def distribution_event(event: Event, source: Source) -> dict[str, Any]:
    return {"id": event.id, "timestamp": _timestamp(event.at_ms), "action": event.action,
            "target": _target(event, source), "request": _request(event), "actor": _actor(event),
            "source": {"addr": source.public_url.split("://", 1)[-1].rstrip("/") or _host(event),
                       "instanceID": source.instance}}


def cloud_event(event: Event, source: Source) -> dict[str, Any]:
    subject = event.repository + (f":{event.tag}" if event.tag else (f"@{event.digest}" if event.digest else ""))
    return {"specversion": "1.0", "id": event.id, "source": _base_url(event, source) or "/wharf",
            "type": f"io.wharf.registry.{event.action}", "subject": subject, "time": _timestamp(event.at_ms),
            "datacontenttype": "application/json",
            "data": {"target": _target(event, source), "request": _request(event), "actor": _actor(event)}}


def body(events: list[Event], source: Source, form: str) -> tuple[bytes, str]:
    """The request body for a batch, and its content type."""
    if form == "cloudevents":
        return json.dumps([cloud_event(e, source) for e in events]).encode(), CLOUDEVENTS_TYPE
    return json.dumps({"events": [distribution_event(e, source) for e in events]}).encode(), DISTRIBUTION_TYPE


def signature(secret: bytes, payload: bytes) -> str:
    return "sha256=" + hmac.new(secret, payload, hashlib.sha256).hexdigest()


def verify(secret: bytes, payload: bytes, header: str) -> bool:
    """What a consumer does with the signature header (constant-time comparison). The header is
    the sender's text, so it is compared as bytes: compare_digest refuses a str holding anything
    but ASCII (a TypeError, a 500 in a receiver, for a forged header with one accented letter)."""
    return hmac.compare_digest(signature(secret, payload).encode(), header.encode("utf-8", "surrogatepass"))
