"""The ops files speak about metrics the gateway really exports, and are well-formed.

A dashboard panel or an alert on a misspelt or renamed metric fails silently: the query
returns nothing, the panel is empty, the alert never fires. So every metric name in the
alert rules and in the dashboard's PromQL is checked against the names registered by
`gateway.observability.metrics.Metrics`. (promtool checks syntax and alert behaviour; it cannot know
which names exist: see tests/integration/test_promtool.py.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
RULES = OPS / "alerts" / "swgw.rules.yml"
RULE_TESTS = OPS / "alerts" / "swgw.rules.test.yml"
DASHBOARD = OPS / "grafana" / "swgw-dashboard.json"
PROMETHEUS = OPS / "prometheus.yml"

# Series Prometheus makes itself for every target; fine to use in rules and panels.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier that is not part of a number or duration (5m, 1e3), not a Grafana
# variable ($x) and not a function call (followed by "(").
_IDENT = re.compile(r"(?<![\w.:$])[a-zA-Z_:][a-zA-Z0-9_:]*(?![a-zA-Z0-9_:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: strings, matchers, ranges, grouping clauses,
    function calls, keywords and numbers are removed first."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def exported_names() -> set[str]:
    """Every series name the gateway can emit, from the metric families it registers."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "summary":
            names.update((family.name, f"{family.name}_sum", f"{family.name}_count"))
        else:
            names.add(family.name)
    return names


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def _dashboard_exprs(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every PromQL query: panel targets, annotations, variable queries."""
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for annotation in dash["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["definition"])
            assert m, f"variable {var['name']}: expected label_values(metric, label), got {var['definition']!r}"
            yield f"variable {var['name']!r}", m.group(1)


# -- the name extractor itself ---------------------------------------------------------------


def test_metric_names_ignores_functions_labels_ranges_grouping_and_numbers() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, destination) (rate(swgw_backend_response_seconds_bucket"
        '{destination=~"$destination", x="a{b}"}[$__rate_interval]))) > 1e3 '
        "and on (destination) (time() - max without (instance) (swgw_last_delivery_timestamp_seconds offset 5m)) "
        "or absent(up{job='swgw'}) unless bool count(node:recorded:rate5m)"
    )
    assert metric_names(expr) == {
        "swgw_backend_response_seconds_bucket",
        "swgw_last_delivery_timestamp_seconds",
        "up",
        "node:recorded:rate5m",
    }


def test_exported_names_cover_suffixes_and_reject_the_bare_counter_name() -> None:
    names = exported_names()
    assert {"swgw_deliveries_total", "swgw_end_to_end_seconds_bucket", "swgw_circuit_state"} <= names
    assert "swgw_deliveries" not in names  # the family name is not a series a query can select


# -- alert rules ---------------------------------------------------------------------------------


def test_every_metric_in_the_alert_rules_is_exported() -> None:
    known = exported_names() | SCRAPE_SERIES
    unknown = {(r["alert"], n) for r in _rules() for n in metric_names(r["expr"]) if n not in known}
    assert not unknown, f"alert rules use metrics the gateway does not export: {sorted(unknown)}"


def test_the_check_catches_a_misspelt_metric() -> None:
    known = exported_names() | SCRAPE_SERIES
    assert metric_names("max by (destination) (swgw_destination_backlog) > 0") - known == {"swgw_destination_backlog"}


def test_every_alert_is_actionable_and_tested_firing_and_quiet() -> None:
    rules = _rules()
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["swgw.rules.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert name.startswith("Swgw"), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: say what to check and do"
        assert name in fires, f"{name}: no promtool test where it fires"
        assert name in quiet, f"{name}: no promtool test where it stays quiet"


def test_the_issue_s_alerts_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    wanted = {
        "SwgwBackendDown": "swgw_circuit_state",
        "SwgwBacklogGrowing": "swgw_destination_backlog_messages",
        "SwgwOldestMessageTooOld": "swgw_destination_oldest_message_age_seconds",
        "SwgwDeliveryStalled": "swgw_last_delivery_timestamp_seconds",
        "SwgwMessagesParked": "swgw_deliveries_total",
        "SwgwRejectionRateHigh": "swgw_ingest_messages_total",
        "SwgwBrokerDisconnected": "swgw_broker_connected",
        "SwgwBrokerBlocked": "swgw_broker_blocked",
        "SwgwGatewayDown": "up",
    }
    for alert, metric in wanted.items():
        assert metric in metric_names(exprs[alert]), alert


def _sums_a_broker_gauge(expr: str) -> bool:
    """sum(...) directly around (possibly through functions) the backlog or parked gauge."""
    text = _GROUPING.sub(" ", _MATCHERS.sub("", expr))
    return bool(re.search(r"\bsum\s*\(\s*(?:\w+\s*\(\s*)*swgw_destination_(?:backlog|parked)_messages\b", text))


def test_broker_read_gauges_are_never_summed_over_replicas() -> None:
    """Backlog and parked gauges are the same on every replica: a sum multiplies them."""
    assert _sums_a_broker_gauge('sum by (destination) (delta(swgw_destination_parked_messages{x="1"}[5m]))')
    assert not _sums_a_broker_gauge("max by (destination) (swgw_destination_backlog_messages)")
    assert not _sums_a_broker_gauge("sum_over_time(swgw_destination_backlog_messages[5m])")
    for rule in _rules():
        assert not _sums_a_broker_gauge(rule["expr"]), rule["alert"]
    for where, expr in _dashboard_exprs(_dashboard()):
        assert not _sums_a_broker_gauge(expr), where


# -- Prometheus config -----------------------------------------------------------------------------


def test_prometheus_config_scrapes_the_gateway_and_rabbitmq_and_loads_the_rules() -> None:
    doc = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert jobs["swgw"]["metrics_path"] == "/metrics"
    assert len(jobs["swgw"]["static_configs"][0]["targets"]) > 1  # replicas
    assert all(t.endswith(":15692") for t in jobs["rabbitmq"]["static_configs"][0]["targets"])
    assert (PROMETHEUS.parent / doc["rule_files"][0]).resolve() == RULES
    # ...and RabbitMQ is set up to answer on the port scraped, with the plugin enabled.
    assert "prometheus.tcp.port = 15692" in (OPS / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    assert "rabbitmq_prometheus" in (OPS / "rabbitmq" / "enabled_plugins").read_text(encoding="utf-8")


# -- Grafana dashboard -----------------------------------------------------------------------------


def test_dashboard_has_one_row_per_concern_in_order() -> None:
    dash = _dashboard()
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Intake", "Per-destination backlog and state", "Delivery latency", "Errors and parking"]
    assert dash["schemaVersion"] >= 36
    assert dash["uid"] == "swgw-gateway"
    assert dash["title"]


def test_every_metric_in_the_dashboard_is_exported() -> None:
    known = exported_names() | SCRAPE_SERIES
    unknown = {(w, n) for w, e in _dashboard_exprs(_dashboard()) for n in metric_names(e) if n not in known}
    assert not unknown, f"dashboard queries use metrics the gateway does not export: {sorted(unknown)}"


def test_dashboard_uses_the_datasource_variable_everywhere() -> None:
    """Hard-coded datasource uids break the import into any other Grafana."""
    dash = _dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(
    ("metric", "concern"),
    [
        ("swgw_ingest_messages_total", "Intake"),
        ("swgw_http_request_duration_seconds_bucket", "Intake"),
        ("swgw_ingest_bytes_total", "Intake"),
        ("swgw_destination_backlog_messages", "Per-destination backlog and state"),
        ("swgw_circuit_state", "Per-destination backlog and state"),
        ("swgw_last_delivery_timestamp_seconds", "Per-destination backlog and state"),
        ("swgw_destination_oldest_message_age_seconds", "Per-destination backlog and state"),
        ("swgw_backend_response_seconds_bucket", "Delivery latency"),
        ("swgw_end_to_end_seconds_bucket", "Delivery latency"),
        ("swgw_delivery_retries_total", "Delivery latency"),
        ("swgw_deliveries_total", "Errors and parking"),
        ("swgw_destination_parked_messages", "Errors and parking"),
        ("swgw_broker_publish_failures_total", "Errors and parking"),
        ("swgw_broker_connected", "Errors and parking"),
        ("swgw_broker_blocked", "Errors and parking"),
        ("swgw_replayed_messages_total", "Errors and parking"),
    ],
)
def test_each_concern_row_shows_its_metrics(metric: str, concern: str) -> None:
    row = None
    seen: set[str] = set()
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        elif row == concern:
            for target in panel["targets"]:
                seen |= metric_names(target["expr"])
    assert metric in seen


def test_circuit_state_panel_maps_every_state_to_a_word() -> None:
    panel = next(p for p in _dashboard()["panels"] if p["title"] == "Circuit state")
    mapping = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in mapping.items()} == {"0": "closed", "1": "OPEN", "2": "half-open"}


def test_dashboard_panels_do_not_overlap_and_have_unique_ids() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
