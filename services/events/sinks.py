"""Event sinks: where a delivery loop hands its batches. The webhook is the built-in one; others
(a file, a message queue) are extensions of the ``wharf.events`` entry-point group
(services/common/plugins.py), chosen per endpoint with ``sink: <name>``.

A sink implements interface version 1 (``wharf_interface = 1`` in its class):

- ``from_endpoint(endpoint, source)`` builds it from the endpoint's configuration (its ``options:``
  mapping holds the sink's own settings) and where events come from; raise ValueError for a bad
  option (start-up stops with the message). Reach nothing here: a settings check builds it too.
- ``send(events)`` delivers a batch, in order, and returns "" once the batch is safely taken, or a
  short reason it was not (the loop retries with backoff, then dead-letters). It must not raise
  for a delivery failure, must return within the endpoint's ``timeout``, and may be called again
  with the same events (delivery is at least once: event ids let the receiver drop repeats).
- ``close()`` releases what it holds when the service stops.

A sink is called from one thread per endpoint; it owns no cursor and needs no Redis.
"""

from __future__ import annotations

import abc

import urllib3

from services.common import plugins
from services.events import deadline, envelope
from services.events.config import Endpoint
from services.events.envelope import Event, Source

GROUP = "wharf.events"
INTERFACE = 1
# The most of a response body read (an error's text for the status); the rest is not wanted.
_RESPONSE_READ = 65536
_LAST_ERROR_MAX = 300


class EventSink(abc.ABC):
    @classmethod
    @abc.abstractmethod
    def from_endpoint(cls, endpoint: Endpoint, source: Source) -> EventSink:
        """The sink for this endpoint."""

    @abc.abstractmethod
    def send(self, events: list[Event]) -> str:
        """"" when the batch was taken, else why not."""

    def close(self) -> None:  # noqa: B027 - optional: most sinks hold nothing
        """Releases connections, files, ..."""


def sink_class(name: str) -> type[EventSink]:
    """The sink class registered as ``name``; PluginError naming what is wrong."""
    return plugins.load_class(GROUP, name, EventSink)


def create(endpoint: Endpoint, source: Source) -> EventSink:
    """The endpoint's sink; PluginError naming the endpoint, the sink and the option's problem when
    ``from_endpoint`` refuses its options (a ValueError: one line, not a traceback at start-up), or
    the defect when it raises anything else or builds something that is not a sink."""
    found = sink_class(endpoint.sink)
    what = f"{GROUP} {endpoint.sink!r} (endpoint {endpoint.name})"
    try:
        return plugins.build(what, EventSink, found.from_endpoint, endpoint, source)
    except ValueError as exc:
        raise plugins.PluginError(f"{what}: {exc}") from None


def check(endpoint: Endpoint) -> None:
    """Builds the endpoint's sink and closes it (what a settings check does: ``from_endpoint`` must
    reach nothing); PluginError as ``create``."""
    create(endpoint, Source("", "check")).close()


class WebhookSink(EventSink):
    """POSTs batches to the endpoint's URL, signed when it has a secret (envelope.py)."""

    wharf_interface = INTERFACE

    def __init__(self, endpoint: Endpoint, source: Source, pool: urllib3.PoolManager) -> None:
        self._endpoint = endpoint
        self._source = source
        self._pool = pool

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, source: Source) -> WebhookSink:
        if not endpoint.url:
            raise ValueError(f"endpoint {endpoint.name}: the webhook sink needs a url")
        return cls(endpoint, source, deadline.pool_manager(num_pools=4, maxsize=4))

    def close(self) -> None:
        self._pool.clear()

    def send(self, events: list[Event]) -> str:
        """"" when the endpoint took the batch (a 2xx answer), else why not (for the status and the
        logs). A redirect (3xx) is not followed, so it is no delivery: a failure like any other.
        The whole exchange (connect, request, status line, headers, body) runs under the endpoint's
        ``timeout`` (deadline.py): urllib3's own timeout bounds each socket read, and a receiver
        that trickles its answer would otherwise hold the endpoint for ever."""
        payload, headers = self._request(events)
        with deadline.Deadline(self._endpoint.timeout) as limit:
            reason = self._post(payload, headers, limit)
        if limit.expired:
            return f"no complete answer within the endpoint's timeout ({self._endpoint.timeout:g}s)"
        return reason

    def _request(self, events: list[Event]) -> tuple[bytes, urllib3.HTTPHeaderDict]:
        """The batch's body and headers (signed when the endpoint has a secret)."""
        e = self._endpoint
        payload, content_type = envelope.body(events, self._source, e.format)
        headers = urllib3.HTTPHeaderDict()
        for name, value in e.headers:
            headers.add(name, value)
        headers["Content-Type"] = content_type
        headers["User-Agent"] = "wharf-events/1"
        headers[envelope.DELIVERY_HEADER] = f"{events[0].id} {events[-1].id}"
        if e.secret:
            headers[envelope.SIGNATURE_HEADER] = envelope.signature(e.secret, payload)
        return payload, headers

    def _post(self, payload: bytes, headers: urllib3.HTTPHeaderDict, limit: deadline.Deadline) -> str:
        """One POST and as much of its answer as is wanted; "" or why it failed."""
        e = self._endpoint
        try:
            response = self._pool.request("POST", e.url, body=payload, headers=headers, retries=False, redirect=False,
                                          timeout=urllib3.Timeout(total=e.timeout), preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:_LAST_ERROR_MAX]
        whole = False
        try:
            text = response.read(_RESPONSE_READ + 1, decode_content=False)
            # Read to its end (and not cut short by the deadline): the connection may serve the next one.
            whole = len(text) <= _RESPONSE_READ and not limit.expired
            if response.status < 300:
                return ""
            if response.status < 400:
                # Not followed (a receiver must not send the registry's events, signed, to a host of
                # its choosing) and not taken either: the events were not received where they went.
                location = response.headers.get("Location", "")[:200]
                return (f"HTTP {response.status}: redirected{f' to {location}' if location else ''}; "
                        "redirects are not followed (set the endpoint's url to where it leads)")[:_LAST_ERROR_MAX]
            return f"HTTP {response.status}: {text[:200].decode('utf-8', 'replace')}"[:_LAST_ERROR_MAX]
        except urllib3.exceptions.HTTPError as exc:
            return f"{type(exc).__name__} reading the answer"
        finally:
            if whole:
                response.release_conn()
            else:
                response.close()
