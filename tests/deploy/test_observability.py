"""deploy/observability: the alert rules and the scrape configuration pass promtool; the rules
and the Grafana dashboard name only metrics services/common/metrics.py declares; the compose
profile, the Helm chart and the production overlay scrape what the services serve, and their
prometheus-operator objects validate against the vendored CRD schemas (data/crds/README.md)
and select the Services, pods and ports of the same render, with the event delivery service too
where it runs (compose.events.yaml, the events component, the chart's events values).
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from services.api.routes import ROUTES
from services.common import metrics
from services.metadata import redis_keys
from tests.deploy.deployfiles import (
    DEPLOY,
    compose_model,
    crd_errors,
    environment,
    mounts,
    render,
)
from tests.deploy.test_helm_chart import EVENTS, PRODUCTION
from tests.deploy.test_helm_chart import render as helm_render
from tests.support.tools import require_tool

OBSERVABILITY = DEPLOY / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"
PROMETHEUS_CONFIG = OBSERVABILITY / "prometheus.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "wharf.json"
GRAFANA_PROVISIONING = OBSERVABILITY / "grafana" / "provisioning"
HELM_ALERTS = DEPLOY / "helm" / "wharf" / "files" / "alerts.yml"
KUSTOMIZE_RULE = DEPLOY / "k8s" / "overlays" / "production" / "prometheusrule.yaml"
PROMTOOL_MODULE = "github.com/prometheus/prometheus/cmd/promtool@v0.316.0"  # as .ci/run installs it

COMPONENTS = ("gateway", "metadata", "blobstore", "auth")
# The job names the rules and the dashboard use: the four services', and the event delivery
# service's where it runs (compose: its own scrape file, observability/scrape.d/events.yml).
JOBS = {f"wharf-{c}": c for c in (*COMPONENTS, "events")}
EVENTS_OVERRIDE = DEPLOY / "compose.events.yaml"
EVENTS_SCRAPE = OBSERVABILITY / "scrape.d" / "events.yml"
# Label values a dashboard and alert rules would otherwise guess: the gateway's route names.
ROUTE_NAMES = {route.endpoint for route in ROUTES}
SEVERITIES = {"critical", "warning", "info"}

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_METRIC = re.compile(r"wharf_[a-z0-9_]+|process_[a-z_]+|up")


def promtool() -> str:
    return require_tool("promtool", f"go install {PROMTOOL_MODULE}")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression uses (good enough for Wharf's: label values are
    quoted and dropped; other identifiers are functions, keywords and label names)."""
    return {word for word in _IDENTIFIER.findall(_QUOTED.sub('""', expr)) if _METRIC.fullmatch(word)}


def route_values(expr: str) -> set[str]:
    """The route names in an expression's `route` matchers (alternatives of a regex split)."""
    return {name for pattern in re.findall(r'\broute\s*!?[=~]~?\s*"([^"]*)"', expr) for name in pattern.split("|")}


def rules(groups: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for group in groups:
        yield from group["rules"]


def alert_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(ALERTS.read_text())["groups"])


def dashboard_targets() -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every dashboard query, template variables' included."""
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["definition"]


def check_rules(groups: list[dict[str, Any]], tmp_path: pathlib.Path, name: str) -> None:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the rules and the dashboard ---------------------------------------------------------------

def test_the_metric_name_parser_finds_names_and_skips_label_values() -> None:
    expr = 'sum by (route) (rate(wharf_http_requests_totl{route=~"up|upload"}[5m])) and up == 0'
    assert metric_names(expr) == {"wharf_http_requests_totl", "up"}
    assert route_values(expr) == {"up", "upload"}
    assert "wharf_http_requests_totl" not in metrics.names()


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_configuration_and_its_rule_files() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [(PROMETHEUS_CONFIG.parent / path).resolve() for path in config["rule_files"]] == [ALERTS]
    result = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_rules_name_only_metrics_and_routes_that_exist_and_say_what_to_do() -> None:
    known = metrics.names()
    names = [rule["alert"] for rule in rules(alert_groups())]
    assert len(names) == len(set(names)), "an alert name is used twice"
    for rule in rules(alert_groups()):
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used <= known, f"{rule['alert']} names metrics no service exports: {sorted(used - known)}"
        assert route_values(rule["expr"]) <= ROUTE_NAMES, f"{rule['alert']}: unknown route in {rule['expr']!r}"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40, rule["alert"]
    assert "up" in {n for rule in rules(alert_groups()) for n in metric_names(rule["expr"])}, "no target-down alert"


def test_every_job_has_a_target_down_alert() -> None:
    [rule] = [r for r in rules(alert_groups()) if r["alert"] == "WharfTargetDown"]
    [pattern] = re.findall(r'job=~"([^"]+)"', rule["expr"])
    assert all(re.fullmatch(pattern, job) for job in JOBS), (pattern, sorted(JOBS))


def test_the_event_rules_watch_the_delivery_service_and_every_outbox_shard() -> None:
    [group] = [g for g in alert_groups() if g["name"] == "wharf-events"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert {"WharfEventsBacklogGrowing", "WharfEventsDeadLetters", "WharfEventsDeliveryFailing",
            "WharfEventsShardsUnowned"} <= set(alerts)
    events_metrics = {n for n in metrics.names() if n.startswith("wharf_events_")}
    for name, rule in alerts.items():
        assert metric_names(rule["expr"]) <= events_metrics, name
        assert "by (namespace" in rule["expr"], f"{name}: each installation alerts on its own"
    # Per endpoint, summed over the replicas (each exports its own shards' part).
    assert "sum by (namespace, endpoint) (wharf_events_backlog)" in alerts["WharfEventsBacklogGrowing"]["expr"]
    # Every shard owned: the threshold is the outbox's shard count.
    [threshold] = re.findall(r"<\s*(\d+)", alerts["WharfEventsShardsUnowned"]["expr"])
    assert int(threshold) == redis_keys.OUTBOX_SHARDS


def test_the_dashboard_is_grafana_json_whose_panels_query_existing_metrics() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), "panel ids repeat"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    known = metrics.names()
    for title, expr in dashboard_targets():
        used = metric_names(expr)
        assert used and used <= known, f"{title}: {sorted(used - known) or 'no metric'} in {expr!r}"
        assert route_values(expr) <= ROUTE_NAMES, f"{title}: unknown route in {expr!r}"


def test_dashboard_queries_are_valid_promql(tmp_path: pathlib.Path) -> None:
    """promtool parses each query as a recording rule, with Grafana's variables filled in."""
    filled = {"$__rate_interval": "5m", "$namespace": ".*"}
    records = []
    for number, (_, expr) in enumerate(dashboard_targets()):
        for variable, value in filled.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"^label_values\((.*), *\w+\)$", r"\1", expr)  # Grafana's, around a selector
        assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
        records.append({"record": f"dashboard:query_{number}", "expr": expr})
    check_rules([{"name": "dashboard", "rules": records}], tmp_path, "dashboard")


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    [source] = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "wharf.yml").read_text())["providers"]
    grafana = compose_model()["services"]["grafana"]
    [dashboards] = [m for m in mounts(grafana) if m.target == provider["options"]["path"]]
    assert (DEPLOY / dashboards.source).resolve() == DASHBOARD.parent
    assert [m for m in mounts(grafana) if m.target == "/etc/grafana/provisioning"], "provisioning is not mounted"


# --- the copies of the rules -------------------------------------------------------------------

def test_the_helm_chart_carries_alerts_yml_unchanged() -> None:
    assert HELM_ALERTS.read_bytes() == ALERTS.read_bytes(), "run python deploy/observability/sync.py"


def test_the_production_overlay_rule_has_the_groups_of_alerts_yml() -> None:
    rule = yaml.safe_load(KUSTOMIZE_RULE.read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == alert_groups(), "run python deploy/observability/sync.py"


# --- compose ---------------------------------------------------------------------------------

def metrics_port(env: dict[str, str]) -> int:
    """The port of the one *METRICS_ADDR variable a Wharf service's environment sets."""
    [address] = [value for key, value in env.items() if key.endswith("METRICS_ADDR")]
    host, port = address.rsplit(":", 1)
    assert host == "0.0.0.0", f"{address}: a container must listen on all interfaces"
    return int(port)


def test_prometheus_in_compose_scrapes_every_service_where_it_serves_metrics() -> None:
    model = compose_model()
    services = model["services"]
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    for component in COMPONENTS:
        job = f"wharf-{component}"
        [sd] = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [component] and sd["type"] == "A", job
        assert sd["port"] == metrics_port(environment(services[component])), f"{job} scrapes another port"
    prometheus = services["prometheus"]
    targets = {m.target: (DEPLOY / m.source).resolve() for m in mounts(prometheus) if m.source.startswith("./")}
    config_path = pathlib.PurePosixPath(next(a for a in prometheus["command"] if a.startswith("--config.file="))
                                        .split("=", 1)[1])
    assert targets[str(config_path)] == PROMETHEUS_CONFIG
    for rule_file in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]:
        assert targets[str(config_path.parent / rule_file)] == (PROMETHEUS_CONFIG.parent / rule_file).resolve()


def test_prometheus_in_compose_scrapes_the_event_delivery_service_with_its_override() -> None:
    """compose.events.yaml mounts observability/scrape.d/events.yml where prometheus.yml's
    scrape_config_files finds it (promtool, above, checked the file with the configuration); its
    job scrapes every replica of the events service on its metrics port. Without the override
    the glob finds nothing, which Prometheus accepts."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [pattern] = config["scrape_config_files"]
    assert sorted(PROMETHEUS_CONFIG.parent.glob(pattern)) == [EVENTS_SCRAPE]
    override = yaml.safe_load(EVENTS_OVERRIDE.read_text())["services"]
    config_dir = pathlib.PurePosixPath("/etc/prometheus")  # where compose.yaml mounts prometheus.yml
    prometheus = compose_model()["services"]["prometheus"]
    assert [m.target for m in mounts(prometheus) if (DEPLOY / m.source).resolve() == PROMETHEUS_CONFIG] == \
        [str(config_dir / "prometheus.yml")]
    [mount] = mounts(override["prometheus"])
    assert (DEPLOY / mount.source).resolve() == EVENTS_SCRAPE and mount.read_only
    assert pathlib.PurePosixPath(mount.target).match(str(config_dir / pattern))
    [job] = yaml.safe_load(EVENTS_SCRAPE.read_text())["scrape_configs"]
    assert job["job_name"] == "wharf-events"
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["events"] and sd["type"] == "A"
    assert sd["port"] == metrics_port(environment(override["events"]))


def test_the_observability_profile_is_optional_and_local() -> None:
    services = compose_model()["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
    # Only these two; the gc profile is test_compose.py's.
    assert {n for n, s in services.items() if s.get("profiles")} == {"prometheus", "grafana", "gc"}
    assert {n for n, s in services.items() if "observability" in s.get("profiles", [])} == {"prometheus", "grafana"}


# --- Kubernetes: the Helm chart and the production overlay ------------------------------------

@pytest.fixture(scope="module", params=["helm", "kustomize", "helm+events", "kustomize+events"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    tool, _, events = request.param.partition("+")
    if tool == "helm":  # the production values turn the monitors and the rule on
        return helm_render("-f", str(PRODUCTION), *(["-f", str(EVENTS)] if events else []))
    overlay = "production+events" if events else "production"
    return render(require_tool("kustomize", "go install sigs.k8s.io/kustomize/kustomize/v5"), overlay)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    operators = {"In": lambda v, vs: v in vs, "NotIn": lambda v, vs: v not in vs,
                 "Exists": lambda v, vs: v is not None, "DoesNotExist": lambda v, vs: v is None}
    expressions = selector.get("matchExpressions", [])
    return selector.get("matchLabels", {}).items() <= labels.items() and all(
        operators[e["operator"]](labels.get(e["key"]), e.get("values", [])) for e in expressions)


def component_of(workload: dict[str, Any]) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def container_metrics_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    maps = {o["metadata"]["name"]: o["data"] for o in of_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    return {k: v for k, v in env.items() if k.endswith("METRICS_ADDR")}


def relabelled_job(default: str, relabelings: list[dict[str, Any]], meta: dict[str, str]) -> str:
    """The job label after `replace` relabelings (the only kind the monitors use)."""
    job = default
    for step in relabelings:
        assert step.get("action", "replace").lower() == "replace", step
        if step["targetLabel"] == "job":
            value = ";".join(meta.get(label, "") for label in step.get("sourceLabels", []))
            job = re.sub(r"\$\{?1\}?", value, step["replacement"])
    return job


def test_monitoring_objects_validate_against_their_crd_schemas(objects: list[dict[str, Any]]) -> None:
    monitoring = [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert sorted({o["kind"] for o in monitoring}) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    errors = [line for o in monitoring for line in crd_errors(o)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(("kind", "path", "value"), [
    ("ServiceMonitor", ("spec", "endpoints", 0, "prot"), "metrics"),           # a misspelt field
    ("ServiceMonitor", ("spec", "endpoints", 0, "targetPort"), [9100]),         # int-or-string
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "interval"), "30 seconds"),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), 600),
])
def test_the_crd_check_catches_mistakes(objects: list[dict[str, Any]], kind: str, path: tuple[Any, ...],
                                        value: Any) -> None:
    broken = copy.deepcopy(of_kind(objects, kind)[0])
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert crd_errors(broken), f"the {kind} schema accepted {'/'.join(map(str, path))}={value!r}"


def test_the_rule_is_alerts_yml_and_promtool_accepts_it(objects: list[dict[str, Any]],
                                                        tmp_path: pathlib.Path) -> None:
    [rule] = of_kind(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == alert_groups()
    check_rules(rule["spec"]["groups"], tmp_path, "rendered")


def test_workloads_serve_metrics_on_a_named_port_at_their_metrics_address(objects: list[dict[str, Any]]) -> None:
    for deployment in of_kind(objects, "Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        [address] = container_metrics_env(objects, container).values()
        host, port = address.rsplit(":", 1)
        assert host == "0.0.0.0" and ports["metrics"] == int(port), deployment["metadata"]["name"]


def test_the_service_monitor_scrapes_the_gateway_service_on_its_metrics_port(objects: list[dict[str, Any]]) -> None:
    [monitor] = of_kind(objects, "ServiceMonitor")
    assert "namespaceSelector" not in monitor["spec"], "it must look in its own namespace, the Services'"
    services = [s for s in of_kind(objects, "Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == [monitor["metadata"]["name"]], "it must select the gateway"
    [service] = services
    [pod] = [d["spec"]["template"] for d in of_kind(objects, "Deployment")
             if selects({"matchLabels": service["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])]
    container_ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert service_ports[endpoint["port"]] in container_ports, endpoint
        job = relabelled_job(service["metadata"]["name"], endpoint.get("relabelings", []), {})
        assert job == "wharf-gateway", job


def test_the_pod_monitor_scrapes_every_grpc_service_pod_as_its_job(objects: list[dict[str, Any]]) -> None:
    [monitor] = of_kind(objects, "PodMonitor")
    workloads = [d for d in of_kind(objects, "Deployment")
                 if selects(monitor["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
    # The gRPC services, and the event delivery service where it runs (it has no Service either).
    delivering = ["events"] if "events" in {component_of(d) for d in of_kind(objects, "Deployment")} else []
    assert sorted(component_of(d) for d in workloads) == sorted(["auth", "blobstore", "metadata", *delivering])
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in labels.items()}
        [container] = workload["spec"]["template"]["spec"]["containers"]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in {p["name"] for p in container["ports"]}, workload["metadata"]["name"]
            job = relabelled_job("default", endpoint.get("relabelings", []), meta)
            assert JOBS.get(job) == component_of(workload), f"{workload['metadata']['name']} scraped as job {job}"
