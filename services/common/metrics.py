"""Every Prometheus metric Wharf exports, named once, here (like the error catalogue).

The metric objects are created unregistered; each service's ``main`` builds a registry with
the groups it serves (:func:`registry_for`), so a service's ``/metrics`` shows its own figures
and nothing else's. Dashboards, alert rules and tests read :data:`GROUPS` to know which names
exist (``tests/deploy`` checks that deploy/observability refers to nothing else).

Label values are bounded sets: route names, HTTP methods and statuses, gRPC method names and
codes, storage operations, Redis script names, reasons from a fixed list. Never a repository
name, a tag, a digest or an account: those are unbounded, and a hostile client could grow the
exposition (and Prometheus) without limit.

Durations are seconds; sizes bytes; counters end in ``_total`` (prometheus-client adds it).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Buckets: HTTP requests run from a cached manifest (sub-millisecond) to a multi-gigabyte
# layer (minutes); internal calls and storage operations are mostly milliseconds.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30)


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
    return Counter(name, doc, list(labels), registry=None)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
    return Gauge(name, doc, list(labels), registry=None)


def _histogram(name: str, doc: str, labels: Iterable[str], buckets: tuple[float, ...]) -> Histogram:
    return Histogram(name, doc, list(labels), registry=None, buckets=buckets)


class Tally(Collector):
    """A counter family kept as plain integers in a dictionary, for the gateway's per-request
    figures: ``inc`` is one dictionary update (measured ~0.15 us, against ~0.5 us for a
    prometheus-client child's ``inc`` and ~1.5 us for ``labels().inc``), and the family is built
    only when scraped. Not thread-safe: the gateway's gevent workers run one thread each."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[Any, ...], float] = {}

    def inc(self, key: tuple[Any, ...], amount: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in list(self.values.items()):
            family.add_metric([str(part) for part in key], value)
        yield family


class TallyHistogram(Collector):
    """A histogram family kept the same way: ``observe`` is a bisect and three list updates."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        self.values: dict[tuple[Any, ...], list[float]] = {}  # key -> [sum, count per bucket..., count above]

    def observe(self, key: tuple[Any, ...], value: float) -> None:
        found = self.values.get(key)
        if found is None:
            found = self.values[key] = [0.0] * (len(self.buckets) + 2)
        found[0] += value
        found[1 + bisect.bisect_left(self.buckets, value)] += 1

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, found in list(self.values.items()):
            cumulative, total = [], 0.0
            for bound, count in zip((*self.buckets, float("inf")), found[1:], strict=True):
                total += count
                cumulative.append((floatToGoString(bound), total))
            family.add_metric([str(part) for part in key], cumulative, found[0])
        yield family


# -- the gateway: HTTP ------------------------------------------------------------------------
HTTP_REQUESTS = Tally("wharf_http_requests", "HTTP requests answered, by route name, method and status",
                      ("route", "method", "status"))
HTTP_DURATION = TallyHistogram("wharf_http_request_duration_seconds",
                               "Time from a request's head to the end of its answer, by route name and method",
                               ("route", "method"), HTTP_BUCKETS)
HTTP_RECEIVED = Tally("wharf_http_received_bytes", "Request body bytes received, by route name", ("route",))
HTTP_SENT = Tally("wharf_http_sent_bytes", "Response body bytes sent, by route name", ("route",))
HTTP_IN_FLIGHT = _gauge("wharf_http_requests_in_flight", "HTTP requests being served now")
HTTP_TRANSFERS = _gauge("wharf_http_transfers_in_flight",
                        "Blob transfers under way now: uploads (a body being received) and downloads",
                        ("direction",))
HTTP_CONNECTIONS = _gauge("wharf_http_connections_open", "Client connections open now (idle keep-alive ones too)")
HTTP_IDLE_CLOSED = Tally("wharf_http_idle_connections_closed", "Idle keep-alive connections closed to make room "
                         "for new ones (a worker held WHARF_WORKER_CONNECTIONS)", ())

# -- the gateway: read cache (services/api/read_cache.py) ------------------------------------
CACHE_LOOKUPS = Tally("wharf_read_cache_lookups", "Read-cache lookups, by kind (manifest, blob, tags) and "
                      "result (hit, miss)", ("kind", "result"))
CACHE_INVALIDATIONS = _counter("wharf_read_cache_invalidations",
                               "Read-cache invalidations received: one repository's entries, or all (a new or "
                               "lost watch stream)", ("scope",))
CACHE_LEASE = _gauge("wharf_read_cache_lease", "1 while this gateway process holds a lease from the metadata "
                     "service (it may serve from its cache), else 0")
CACHE_BYTES = _gauge("wharf_read_cache_bytes", "Bytes the read cache holds")

# -- gRPC, both ends --------------------------------------------------------------------------
GRPC_SERVER_CALLS = _counter("wharf_grpc_server_calls", "gRPC calls served, by service, method and status code",
                             ("grpc_service", "grpc_method", "grpc_code"))
GRPC_SERVER_DURATION = _histogram("wharf_grpc_server_call_duration_seconds", "Time to serve a gRPC call",
                                  ("grpc_service", "grpc_method"), CALL_BUCKETS)
GRPC_CLIENT_CALLS = _counter("wharf_grpc_client_calls", "gRPC calls made, by service, method and status code",
                             ("grpc_service", "grpc_method", "grpc_code"))
GRPC_CLIENT_DURATION = _histogram("wharf_grpc_client_call_duration_seconds",
                                  "Time a gRPC call took as its caller saw it", ("grpc_service", "grpc_method"),
                                  CALL_BUCKETS)

# -- the metadata service: Redis and the read-cache leases -------------------------------------
REDIS_SCRIPT_DURATION = _histogram("wharf_redis_script_duration_seconds",
                                   "Time a Redis script (one atomic metadata write) took", ("script",),
                                   CALL_BUCKETS)
REDIS_SCRIPT_ERRORS = _counter("wharf_redis_script_errors", "Redis scripts that failed (Redis unreachable or "
                               "refusing)", ("script",))
WATCHERS = _gauge("wharf_metadata_watchers", "Gateway processes watching this replica for invalidations")
INVALIDATIONS = _counter("wharf_metadata_invalidations_published", "Invalidations published by writes")
INVALIDATION_ROUNDS = _counter("wharf_metadata_invalidation_rounds",
                               "Invalidation rounds run (publish, fan-out, acks, confirmations); concurrent "
                               "writes share them")
INVALIDATION_WAIT = _histogram("wharf_metadata_invalidation_wait_seconds",
                               "Time a write waited until no gateway could serve what it changed", (),
                               WAIT_BUCKETS)
LEASE_WAITS = _counter("wharf_metadata_lease_waits", "Times a write waited out the lease of a gateway that did "
                       "not acknowledge an invalidation in time")
UNCONFIRMED = _counter("wharf_metadata_unconfirmed_invalidations",
                       "Invalidations that metadata replicas did not confirm in time")

# -- the blob store: storage driver ------------------------------------------------------------
STORAGE_DURATION = _histogram("wharf_storage_operation_duration_seconds",
                              "Time a storage driver operation took, by driver and operation", ("driver", "operation"),
                              CALL_BUCKETS)
STORAGE_ERRORS = _counter("wharf_storage_operation_errors", "Storage driver operations that failed (a missing "
                          "key is not a failure)", ("driver", "operation"))
STORAGE_BYTES = _counter("wharf_storage_bytes", "Blob bytes moved to and from storage", ("direction",))

# -- the auth service --------------------------------------------------------------------------
TOKENS_ISSUED = _counter("wharf_auth_tokens_issued", "Bearer tokens issued, by kind of account (user, robot, "
                         "anonymous)", ("kind",))
TOKENS_REFUSED = _counter("wharf_auth_token_refusals", "Token requests refused, by reason (credentials, throttled: "
                          "locked out or too many at once, denied, invalid)", ("reason",))
LOCKOUTS = _counter("wharf_auth_lockouts", "Logins refused because the account or the client address is locked "
                    "out after repeated failures")

# -- garbage collection --------------------------------------------------------------------
class GcRecord(Collector):
    """Garbage collection's figures: wharf-gc is a job, not a server, so each run adds its
    figures to a record in Redis (services/gc) and the metadata service exports that record
    when scraped; the totals then survive the job and the service restarting."""

    FIELDS = (("runs_ok", "wharf_gc_runs", "Garbage collection runs, by result (ok, failed)"),
              ("blobs_removed", "wharf_gc_blobs_removed", "Blobs garbage collection removed"),
              ("bytes_removed", "wharf_gc_bytes_removed", "Bytes garbage collection removed"),
              ("links_removed", "wharf_gc_links_removed", "Blob links garbage collection removed"),
              ("manifests_removed", "wharf_gc_manifests_removed", "Manifests garbage collection removed"),
              ("blobs_kept_busy", "wharf_gc_blobs_kept_busy",
               "Unlinked blobs a collection kept because an upload pinned or linked them meanwhile"),
              ("manifests_evicted", "wharf_gc_mirror_manifests_evicted",
               "Mirrored manifests evicted past their upstream's size limit, least recently pulled first"))

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        record = self._read()
        runs = CounterMetricFamily("wharf_gc_runs", self.FIELDS[0][2], labels=["result"])
        runs.add_metric(["ok"], record.get("runs_ok", 0.0))
        runs.add_metric(["failed"], record.get("runs_failed", 0.0))
        yield runs
        for field, name, doc in self.FIELDS[1:]:
            yield CounterMetricFamily(name, doc, value=record.get(field, 0.0))
        yield GaugeMetricFamily("wharf_gc_last_success_timestamp_seconds", "When the last successful garbage "
                                "collection ended (Unix time; 0: never)", value=record.get("last_success", 0.0))

    def describe(self) -> Iterator[Metric]:
        return GcRecord(dict).collect()


class UploadSessions(Collector):
    """The upload sessions open in the storage, counted when scraped (every blob store replica
    sees the same storage: take max, not sum, across replicas)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("wharf_upload_sessions_open", "Upload sessions open in the storage",
                                value=self._count())

    def describe(self) -> Iterator[Metric]:
        return UploadSessions(lambda: 0).collect()


class StorageUsage(Collector):
    """The blobs in the storage and their bytes, from a census (a walk of the blob tree) taken
    at most every ``interval`` seconds in the background: a scrape never waits for a walk,
    except the very first one."""

    def __init__(self, census: Callable[[], tuple[int, int]], interval: float = 300.0) -> None:
        self._census = census
        self._interval = interval
        self._last: tuple[int, int] | None = None
        self._taken = 0.0
        self._lock = threading.Lock()
        self._running = False

    def _take(self) -> None:
        found: tuple[int, int] | None
        try:
            found = self._census()
        except Exception:  # a storage outage shows in the operation errors; keep the last census
            found = self._last
        with self._lock:
            self._last, self._taken, self._running = found, time.monotonic(), False

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            stale = not self._running and time.monotonic() - self._taken >= self._interval
            self._running = self._running or stale
        if stale and self._last is None:
            self._take()
        elif stale:
            threading.Thread(target=self._take, name="storage-census", daemon=True).start()
        blobs = GaugeMetricFamily("wharf_storage_blobs", "Blobs in the storage (last census)")
        size = GaugeMetricFamily("wharf_storage_blob_bytes", "Bytes of the blobs in the storage (last census)")
        if self._last is not None:
            blobs.add_metric([], self._last[0])
            size.add_metric([], self._last[1])
        yield blobs
        yield size

    def describe(self) -> Iterator[Metric]:
        return StorageUsage(lambda: (0, 0)).collect()


class BuildInfo(Collector):
    """``wharf_build_info{service, version}`` = 1: which Wharf answers (wharf-admin status shows it)."""

    def __init__(self, service: str) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        from importlib.metadata import PackageNotFoundError, version

        from prometheus_client.core import GaugeMetricFamily

        try:
            found = version("wharf")
        except PackageNotFoundError:
            found = "unknown"
        info = GaugeMetricFamily("wharf_build_info", "The Wharf release this service runs (always 1)",
                                 labels=["service", "version"])
        info.add_metric([self._service, found], 1)
        yield info


# -- mirrors (services/blobstore/fills.py, services/api/mirroring.py); `upstream` is a configured
# prefix, a bounded set -----------------------------------------------------------------------
MIRROR_READS = _counter("wharf_mirror_reads", "Reads of mirrored repositories, by upstream, kind (manifest, blob, "
                        "referrers) and answer (stored: no upstream request; fetched; revalidated: a HEAD "
                        "confirmed a tag; stale: served while the upstream could not be asked)",
                        ("upstream", "kind", "answer"))
MIRROR_FILLS = _counter("wharf_mirror_fills", "Blob fills from an upstream, by upstream and result (stored; "
                        "mismatch: the bytes did not match the digest; failed)", ("upstream", "result"))
MIRROR_FILL_WAITS = _counter("wharf_mirror_fill_waits", "Requests for a blob another fetcher was filling (they "
                             "waited for its commit instead of asking the upstream)", ("upstream",))
MIRROR_UPSTREAM_BYTES = _counter("wharf_mirror_upstream_bytes", "Blob bytes received from upstreams", ("upstream",))
MIRROR_UPSTREAM_ERRORS = _counter("wharf_mirror_upstream_errors", "Upstream failures, by upstream and kind "
                                  "(unavailable, not_found, denied, invalid)", ("upstream", "kind"))

EVENTS_DELIVERED = _counter("wharf_events_delivered", "Events delivered, by endpoint", ("endpoint",))
EVENTS_ATTEMPTS = _counter("wharf_events_delivery_attempts", "Delivery requests made, by endpoint and outcome "
                           "(ok, failed: an error, a timeout or a status of 400 and up)", ("endpoint", "outcome"))
EVENTS_DEAD = _counter("wharf_events_dead_letters", "Events moved to an endpoint's dead letters, by endpoint and "
                       "reason (attempts; backlog and age: the overflow of a dead endpoint)", ("endpoint", "reason"))
EVENTS_BACKLOG = _gauge("wharf_events_backlog", "Events waiting for an endpoint in the outbox shards this replica "
                        "owns (sum over replicas)", ("endpoint",))
EVENTS_LATENCY = _histogram("wharf_events_delivery_latency_seconds", "From a change to its event's delivery, "
                            "by endpoint", ("endpoint",), WAIT_BUCKETS)
EVENTS_SHARDS = _gauge("wharf_events_shards_owned", "Outbox shards this delivery replica owns")
HTTP = (HTTP_REQUESTS, HTTP_DURATION, HTTP_RECEIVED, HTTP_SENT, HTTP_IN_FLIGHT, HTTP_TRANSFERS, HTTP_CONNECTIONS,
        HTTP_IDLE_CLOSED)
READ_CACHE = (CACHE_LOOKUPS, CACHE_INVALIDATIONS, CACHE_LEASE, CACHE_BYTES)
GRPC_SERVER = (GRPC_SERVER_CALLS, GRPC_SERVER_DURATION)
GRPC_CLIENT = (GRPC_CLIENT_CALLS, GRPC_CLIENT_DURATION)
METADATA = (REDIS_SCRIPT_DURATION, REDIS_SCRIPT_ERRORS, WATCHERS, INVALIDATIONS, INVALIDATION_ROUNDS,
            INVALIDATION_WAIT, LEASE_WAITS, UNCONFIRMED)
STORAGE = (STORAGE_DURATION, STORAGE_ERRORS, STORAGE_BYTES)
AUTH = (TOKENS_ISSUED, TOKENS_REFUSED, LOCKOUTS)
MIRROR_STORE = (MIRROR_FILLS, MIRROR_FILL_WAITS, MIRROR_UPSTREAM_BYTES, MIRROR_UPSTREAM_ERRORS)
EVENTS = (EVENTS_DELIVERED, EVENTS_ATTEMPTS, EVENTS_DEAD, EVENTS_BACKLOG, EVENTS_LATENCY, EVENTS_SHARDS)

# What each service exports (besides prometheus-client's process_* figures); the collectors
# read when scraped are added by the service's main (these describe their names).
GROUPS: dict[str, tuple[Collector, ...]] = {
    "gateway": HTTP + READ_CACHE + GRPC_CLIENT + (MIRROR_READS,),
    "metadata": GRPC_SERVER + METADATA,
    "blobstore": GRPC_SERVER + STORAGE + MIRROR_STORE,
    "auth": GRPC_SERVER + AUTH,
    "events": GRPC_SERVER + EVENTS,
}
SCRAPED: dict[str, tuple[Collector, ...]] = {
    "metadata": (GcRecord(dict),), "blobstore": (UploadSessions(lambda: 0), StorageUsage(lambda: (0, 0)))}


def registry_for(service: str, *extra: Collector) -> CollectorRegistry:
    """A registry with ``service``'s metrics, this process's CPU, memory and file descriptors,
    and ``extra`` collectors (figures read when scraped, such as the upload sessions open)."""
    disable_created_metrics()  # the _created series double every counter's series for little use
    registry = CollectorRegistry(auto_describe=True)
    for collector in (*GROUPS[service], BuildInfo(service), *extra):
        registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def names(service: str | None = None) -> set[str]:
    """The sample names a service exports (all services when None), as a query would use them:
    ``_total`` for counters, ``_bucket``/``_sum``/``_count`` for histograms, ``process_*`` too."""
    found = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
             "process_open_fds", "process_max_fds", "process_start_time_seconds", "up", "wharf_build_info"}
    for group, collectors in GROUPS.items():
        if service is not None and group != service:
            continue
        for collector in (*collectors, *SCRAPED.get(group, ())):
            for family in getattr(collector, "describe", collector.collect)():
                found.update(sample_names(family.name, family.type))
    return found


def sample_names(name: str, kind: str) -> tuple[str, ...]:
    if kind == "counter":
        return (name + "_total",)
    if kind == "histogram":
        return (name + "_bucket", name + "_sum", name + "_count")
    return (name,)


class CallFigures:
    """Counts and times calls of one side of gRPC: the children of the two families are made
    once per (method, code) and kept, so recording a call is a dictionary lookup and two
    additions. Methods are the full gRPC names (``/wharf.blobstore.v1.BlobStore/Stat``), a set
    the protos bound."""

    def __init__(self, calls: Counter, duration: Histogram) -> None:
        self._calls = calls
        self._duration = duration
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def record(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:
            service, _, name = method.lstrip("/").partition("/")
            children = self._children[(method, code)] = (self._calls.labels(service, name, code),
                                                         self._duration.labels(service, name))
        children[0].inc()
        children[1].observe(seconds)


_GRPC_CODES = frozenset(code.name for code in grpc.StatusCode)


def grpc_code(code: str) -> str:
    """The gRPC status name of a call's outcome: given as one, or a registry error code's."""
    if code in _GRPC_CODES:
        return code
    from services.common.errors import lookup

    found = lookup(code)
    return found.grpc_status.name if found is not None else "UNKNOWN"
