"""The shipped Grafana dashboard: importable JSON, PromQL the real promtool accepts, real metrics.

The dashboard is hand-maintained JSON that nothing else loads; a renamed metric, a missing
``_total``, a typo in a label or a PromQL syntax error would only show up as an empty panel in
the middle of an incident. So every query is checked here against the metrics the watchdog's
``telemetry.Recorder`` really registers (read from its registry, not from a list kept here),
the Lavalink metric contract of docs/architecture.md, and the real ``promtool``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from watchdog import model, telemetry

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "rollback-watchdog.json"
PROVIDERS = GRAFANA / "provisioning" / "dashboards.yml"
DATASOURCES = GRAFANA / "provisioning" / "datasources.yml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH (Debian package prometheus; CI installs it)",
)

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "bargauge"}

# Grafana's variables, replaced by values that keep the PromQL valid. The label variables get a
# marker value, so a selector can be seen to use its variable after substitution.
TARGET_VALUE = "grafana-variable-target"
UNIT_VALUE = "grafana-variable-unit"
SUBSTITUTIONS = {
    "target": TARGET_VALUE,
    "unit": UNIT_VALUE,
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "6h",
}
# A metric carrying one of these labels must be filtered by the dashboard's variable for it.
LABEL_VARIABLES = {"target": TARGET_VALUE, "unit": UNIT_VALUE}

# Labels Prometheus attaches at scrape time to every series.
SCRAPE_LABELS = frozenset({"job", "instance"})
# docs/architecture.md, "Metric contract": what a Lavalink node (>= 4.1) exports, as far as the
# dashboard reads it, plus Prometheus's own `up`.
LAVALINK_METRICS: dict[str, frozenset[str]] = {
    "up": frozenset(),
    "lavalink_players_total": frozenset(),
    "lavalink_playing_players_total": frozenset(),
    "lavalink_uptime_milliseconds": frozenset(),
    "lavalink_memory_free_bytes": frozenset(),
    "lavalink_memory_used_bytes": frozenset(),
    "lavalink_memory_allocated_bytes": frozenset(),
    "lavalink_memory_reservable_bytes": frozenset(),
    "lavalink_cpu_cores": frozenset(),
    "lavalink_cpu_system_load_percentage": frozenset(),
    "lavalink_cpu_lavalink_load_percentage": frozenset(),
    "process_resident_memory_bytes": frozenset(),
    "process_cpu_seconds_total": frozenset(),
    "process_start_time_seconds": frozenset(),
    "logback_appender_total": frozenset({"level"}),
}
STEP_DURATION = "rollback_watchdog_step_duration_seconds"


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL expression of the dashboard and where it is, for failure messages."""

    where: str
    expr: str


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level panels and the ones a collapsed row carries inside it."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    found = [
        Query(f"panel {panel['id']} {panel['title']!r} query {target['refId']}", target["expr"])
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    found += [
        Query(f"annotation {annotation['name']!r}", annotation["expr"])
        for annotation in dashboard["annotations"]["list"]
        if "expr" in annotation
    ]
    return found


def substitute(expr: str) -> str:
    """``$name``, ``${name}`` and ``${name:format}`` replaced; an unknown variable fails."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in SUBSTITUTIONS, f"unknown Grafana variable ${name} in {expr!r}"
        return SUBSTITUTIONS[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every vector selector of an expression (inside ranges, functions, aggregations)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return found


def aggregations(expr: str) -> list[promql_parser.AggregateExpr]:
    found: list[promql_parser.AggregateExpr] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return found


def metric_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return str(selector.name)
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
            return str(matcher.value)
    raise AssertionError(f"selector {selector} names no metric")


def matchers(selector: promql_parser.VectorSelector) -> dict[str, str]:
    return {m.name: m.value for m in selector.matchers.matchers if m.name != "__name__"}


def exported_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, as a fresh ``Recorder``'s registry exposes them once every
    metric has one child: read from ``registry.collect()``, so a rename in telemetry.py shows."""
    recorder = telemetry.Recorder()
    for metric in vars(recorder).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labelnames = metric._labelnames
        child = metric.labels(*("x" for _ in labelnames)) if labelnames else metric
        if isinstance(metric, Counter):
            child.inc()
        elif isinstance(metric, Gauge):
            child.set(1)
        elif isinstance(metric, Histogram):
            child.observe(1)
    series: dict[str, set[str]] = {}
    for family in recorder.registry.collect():
        assert family.samples, (
            f"{family.name}: no sample (not a Recorder attribute, or a type this test cannot fill)"
        )
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


def known_series() -> dict[str, frozenset[str]]:
    """Every series the dashboard may read, with the labels it may filter or group by."""
    known = {**exported_series(), **LAVALINK_METRICS}
    return {name: labels | SCRAPE_LABELS for name, labels in known.items()}


def promtool_check(rules: list[Query], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """All expressions as recording rules, one group each, named after the panel: promtool's
    error names the group, so the failure names the panel."""
    groups = [
        {
            "name": query.where,
            "rules": [{"record": f"dashboard:query_{n}", "expr": substitute(query.expr)}],
        }
        for n, query in enumerate(rules)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def layout_cells(panel: dict[str, Any]) -> Iterator[tuple[int, int]]:
    pos = panel["gridPos"]
    for x in range(pos["x"], pos["x"] + pos["w"]):
        for y in range(pos["y"], pos["y"] + pos["h"]):
            yield x, y


# --- Structure ---------------------------------------------------------------------------------


def test_dashboard_has_what_grafana_needs() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] == "Rollback watchdog"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]), dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41, "a Grafana 10/11 JSON model"
    assert dashboard["id"] is None, "an exported dashboard carries no database id"
    assert dashboard["time"]["from"] and dashboard["time"]["to"]

    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert {panel["type"] for panel in panels} <= PANEL_TYPES
    required = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    assert {panel["type"] for panel in panels} - {"row"} <= required

    for panel in panels:
        name = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel["title"], name
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("x", "y", "w", "h")), name
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0, name
        assert pos["x"] + pos["w"] <= 24, f"{name} is wider than the 24-column grid"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE_REF, name
        assert panel["targets"], f"{name} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{name}: duplicate refIds {ref_ids}"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, name
            assert re.fullmatch(r"[A-Z]", target["refId"]), name
            assert target["expr"].strip(), name


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in all_panels(load_dashboard()):
        name = f"panel {panel['id']} {panel['title']!r}"
        for cell in layout_cells(panel):
            assert cell not in taken, f"{name} overlaps {taken[cell]} at {cell}"
            taken[cell] = name


def test_import_asks_for_the_prometheus_data_source() -> None:
    dashboard = load_dashboard()
    (wanted,) = dashboard["__inputs"]
    assert wanted["name"] == "DS_PROMETHEUS"
    assert (wanted["type"], wanted["pluginId"]) == ("datasource", "prometheus")
    # Grafana's import replaces ${DS_PROMETHEUS} wherever it occurs: the datasource variable
    # starts on the data source chosen at import.
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"


def test_template_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")

    target = variables["target"]
    assert target["type"] == "query"
    assert target["datasource"] == DATASOURCE_REF
    assert target["query"]["query"] == "label_values(rollback_watchdog_verdict, target)"
    assert target["definition"] == target["query"]["query"]
    assert target["refresh"] in (1, 2), "options must be loaded from Prometheus"

    known = known_series()
    for variable in variables.values():
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: {variable['query']['query']!r}"
        metric, label = match.groups()
        assert metric in known, f"variable {variable['name']}: {metric} is not exported"
        assert label in known[metric], f"variable {variable['name']}: {metric} has no {label}"


# --- Queries -----------------------------------------------------------------------------------


@needs_promtool
@pytest.mark.integration
def test_every_query_passes_promtool(tmp_path: Path) -> None:
    found = queries(load_dashboard())
    assert len(found) >= 20
    done = promtool_check(found, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: " in done.stdout


@needs_promtool
@pytest.mark.integration
def test_promtool_check_names_the_broken_panel(tmp_path: Path) -> None:
    """The check above can fail, and its message says which panel to fix."""
    broken = [
        Query("panel 1 'fine' query A", "up"),
        Query("panel 99 'broken' query B", "sum by (job (up)"),
    ]
    done = promtool_check(broken, tmp_path)
    assert done.returncode != 0
    assert "panel 99 'broken' query B" in done.stdout + done.stderr


def test_every_metric_and_label_exists() -> None:
    known = known_series()
    problems: list[str] = []
    for query in queries(load_dashboard()):
        expr = substitute(query.expr)
        used = selectors(expr)
        if not used:
            problems.append(f"{query.where}: reads no metric")
        labels_in_query: set[str] = set()
        for selector in used:
            name = metric_name(selector)
            if name not in known:
                problems.append(f"{query.where}: {name} is not a metric the watchdog exports")
                continue
            labels = known[name] | ({"le"} if name.endswith("_bucket") else set())
            if unknown := set(matchers(selector)) - labels:
                problems.append(f"{query.where}: {name} has no label {sorted(unknown)}")
            labels_in_query |= labels
        for aggregation in aggregations(expr):
            modifier = aggregation.modifier
            if modifier is not None and (unknown := set(modifier.labels) - labels_in_query):
                problems.append(f"{query.where}: grouping by absent labels {sorted(unknown)}")
    assert not problems, "\n".join(problems)


def test_label_variables_filter_every_query_that_has_the_label() -> None:
    known = known_series()
    problems = [
        f"{query.where}: {metric_name(selector)} is not filtered by ${label}"
        for query in queries(load_dashboard())
        for selector in selectors(substitute(query.expr))
        for label, value in LABEL_VARIABLES.items()
        if label in known.get(metric_name(selector), frozenset())
        and matchers(selector).get(label) != value
    ]
    assert not problems, "\n".join(problems)


def test_enumerated_label_values_are_the_models() -> None:
    """verdict="..." and state="..." in the queries are values the watchdog really sets, and the
    state timelines map every one of them."""
    allowed = {
        "verdict": {v.value for v in model.Verdict},
        "state": {s.value for s in model.SignalState},
    }
    dashboard = load_dashboard()
    for query in queries(dashboard):
        for selector in selectors(substitute(query.expr)):
            for label, value in matchers(selector).items():
                if label in allowed:
                    assert value in allowed[label], f"{query.where}: {label}={value!r}"
    titles = {p["title"]: p for p in all_panels(dashboard)}
    for title, values in (
        ("Verdict and armed over time", allowed["verdict"]),
        ("Signal states", allowed["state"]),
    ):
        (mapping,) = titles[title]["fieldConfig"]["defaults"]["mappings"]
        texts = {option["text"] for option in mapping["options"].values()}
        assert texts == values, f"{title}: mapped {sorted(texts)}, expected {sorted(values)}"


def test_runbook_step_durations_are_exported() -> None:
    """The dashboard's step-duration panel reads this histogram (labels target, step)."""
    exported = exported_series()
    bucket = f"{STEP_DURATION}_bucket"
    assert bucket in exported, f"telemetry.Recorder registers no {STEP_DURATION} histogram"
    assert {"target", "step", "le"} <= exported[bucket]
    assert {f"{STEP_DURATION}_sum", f"{STEP_DURATION}_count"} <= exported.keys()


def test_the_helpers_see_what_promql_says() -> None:
    """The checks above are only as good as the selector walk and the registry reading."""
    expr = substitute(
        'histogram_quantile(0.5, sum by (probe, le) (rate(a_bucket{target="$target"}'
        "[$__rate_interval]))) > 0.3 and on() (b == 1 or max_over_time(c[5m:1m]))"
        ' or {__name__="d"}'
    )
    assert [metric_name(s) for s in selectors(expr)] == ["a_bucket", "b", "c", "d"]
    assert matchers(selectors(expr)[0]) == {"target": TARGET_VALUE}
    assert [a.modifier.labels for a in aggregations(expr)] == [["probe", "le"]]
    exported = exported_series()
    assert "rollback_watchdog_runs_total" in exported  # counters are served with _total
    assert "rollback_watchdog_runs" not in exported
    assert {"target", "status"} <= exported["rollback_watchdog_runs_total"]
    assert "rollback_watchdog_build_info" in exported
    with pytest.raises(AssertionError, match="unknown Grafana variable"):
        substitute('up{job=~"$job"}')


# --- Provisioning ------------------------------------------------------------------------------


def test_provisioning_points_grafana_at_the_dashboard_folder() -> None:
    providers = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/")
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    assert path in readme, "grafana/README.md installs the JSON where the provider looks"

    datasources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
