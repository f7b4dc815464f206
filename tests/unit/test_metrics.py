"""The metric catalogue, the gateway's aggregation of its workers and the bounded labels (no sockets)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.api.http_metrics import HttpMetrics
from services.api.metrics_hub import Sums, render, snapshot
from services.api.settings import GatewaySettings
from services.common import metrics, tracing
from services.common.settings import problems

UNBOUNDED = {"repository", "name", "tag", "digest", "reference", "account", "user", "path", "upload_id"}


def _worker(requests: float, seconds: float, start: float, rss: float) -> bytes:
    registry = CollectorRegistry()
    Counter("wharf_http_requests", "h", ["route"], registry=registry).labels("manifest").inc(requests)
    Histogram("wharf_http_request_duration_seconds", "h", registry=registry, buckets=(0.1, 1)).observe(seconds)
    Gauge("process_start_time_seconds", "h", registry=registry).set(start)
    Gauge("process_resident_memory_bytes", "h", registry=registry).set(rss)
    return snapshot(registry)


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_workers_add_up_and_start_time_is_the_earliest() -> None:
    sums = Sums()
    sums.add(_worker(3, 0.05, start=200, rss=10))
    sums.add(_worker(4, 0.5, start=100, rss=20))
    found = _values(render(sums).decode())
    assert found[("wharf_http_requests_total", (("route", "manifest"),))] == 7
    assert found[("wharf_http_request_duration_seconds_count", ())] == 2
    assert found[("wharf_http_request_duration_seconds_bucket", (("le", "0.1"),))] == 1
    assert found[("wharf_http_request_duration_seconds_bucket", (("le", "1.0"),))] == 2
    assert found[("process_start_time_seconds", ())] == 100
    assert found[("process_resident_memory_bytes", ())] == 30


def test_an_exited_workers_counters_are_kept_but_not_its_gauges() -> None:
    retired, live = Sums(), Sums()
    retired.add(_worker(5, 0.05, start=50, rss=99), kinds=("counter", "histogram"))
    live.add(_worker(1, 0.05, start=300, rss=10))
    found = _values(render(live.merged_with(retired)).decode())
    assert found[("wharf_http_requests_total", (("route", "manifest"),))] == 6  # never goes backwards
    assert found[("process_resident_memory_bytes", ())] == 10
    assert found[("process_start_time_seconds", ())] == 300


def test_invented_http_methods_share_one_label_and_one_entry() -> None:
    figures = HttpMetrics()
    for number in range(500):
        figures.record("none", f"M{number}", 405, 0.001, 0, 0)
    samples = [s for family in metrics.HTTP_REQUESTS.collect() for s in family.samples
               if s.labels.get("route") == "none" and s.labels.get("status") == "405"]
    assert {s.labels["method"] for s in samples} == {"other"}
    assert len([key for key in metrics.HTTP_REQUESTS.values if key[0] == "none" and key[2] == 405]) == 1


def test_tallies_render_as_prometheus_families() -> None:
    registry = CollectorRegistry()
    tally = metrics.Tally("t_requests", "h", ("route",))
    histogram = metrics.TallyHistogram("t_seconds", "h", ("route",), (0.1, 1))
    registry.register(tally)
    registry.register(histogram)
    tally.inc(("a",))
    tally.inc(("a",), 2)
    for value in (0.05, 0.1, 0.5, 3):
        histogram.observe(("a",), value)
    found = _values(generate_latest(registry).decode())
    assert found[("t_requests_total", (("route", "a"),))] == 3
    assert found[("t_seconds_bucket", (("le", "0.1"), ("route", "a")))] == 2  # le: 0.1 itself counts
    assert found[("t_seconds_bucket", (("le", "1.0"), ("route", "a")))] == 3
    assert found[("t_seconds_bucket", (("le", "+Inf"), ("route", "a")))] == 4
    assert found[("t_seconds_count", (("route", "a"),))] == 4
    assert found[("t_seconds_sum", (("route", "a"),))] == 3.65


def test_no_metric_is_labelled_by_an_unbounded_value() -> None:
    for group in metrics.GROUPS.values():
        for collector in group:
            assert not set(getattr(collector, "_labelnames", ())) & UNBOUNDED, collector


def test_catalogue_names_are_what_a_query_uses() -> None:
    names = metrics.names()
    assert {"wharf_http_requests_total", "wharf_http_request_duration_seconds_bucket",
            "wharf_grpc_server_calls_total", "wharf_upload_sessions_open", "wharf_gc_runs_total",
            "wharf_storage_blob_bytes", "wharf_build_info"} <= names
    assert "wharf_http_requests" not in names
    assert metrics.names("auth") & {"wharf_auth_tokens_issued_total"}
    assert not metrics.names("auth") & {"wharf_http_requests_total"}


def test_registry_error_codes_become_grpc_status_names() -> None:
    assert metrics.grpc_code("OK") == "OK"
    assert metrics.grpc_code("BLOB_UNKNOWN") == "NOT_FOUND"
    assert metrics.grpc_code("no such code") == "UNKNOWN"


def test_a_malformed_metrics_address_is_refused_before_start() -> None:
    found = problems(GatewaySettings, {"WHARF_METRICS_ADDR": "9100", "WHARF_INTERNAL_TOKEN_FILE": "/x"})
    assert any("WHARF_METRICS_ADDR" in line and "host:port" in line for line in found)
    assert not [p for p in problems(GatewaySettings, {"WHARF_METRICS_ADDR": "127.0.0.1:9100"})
                if "METRICS" in p]


def test_tracing_off_costs_nothing_and_propagates_nothing() -> None:
    assert not tracing.enabled()
    with tracing.span("anything") as current:
        assert current is None
    assert tracing.inject() == ()
    assert tracing.current_trace_id() == ""
    assert tracing.carrier_of([("TraceParent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"), ("other", "x"),
                               ("tracestate", "y" * 600)]) == {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert tracing.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
