"""The dashboard JSON files: generated from grafana/build_dashboards.py, well formed for
Grafana, wired to the provisioned data source, and querying only exported metrics."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Series Prometheus itself adds, usable next to the pipeline's own metrics.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "ALERTS"}
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "topk", "bottomk", "by", "on", "ignoring",
                "group_left", "group_right", "and", "or", "unless", "rate", "increase", "irate",
                "histogram_quantile", "time", "scalar", "vector", "deriv", "offset", "without", "abs",
                "clamp_min", "clamp_max", "le", "quantile", "label_values"}


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The metric names of the stage architecture (fixed: dashboards and alert rules use them) with
# their label names. The analysers declare the same in their module-level METRICS; the test
# below holds them to it once they exist.
CONTRACT_METRICS: dict[str, tuple[str, ...]] = {
    **{f"prodlens_quality{s}": ("model", "version", "segment", "metric", "class", "view")
       for s in ("", "_n", "_lower", "_upper")},
    **{f"prodlens_quality_estimated{s}": ("model", "version", "segment", "metric", "view")
       for s in ("", "_lower", "_upper")},
    "prodlens_quality_estimate_trusted": ("model", "version"),
    "prodlens_label_coverage_ratio": ("model", "version", "segment", "view"),
    "prodlens_label_delay_seconds": ("model", "version", "segment", "quantile"),
    "prodlens_quality_window_end_timestamp_seconds": ("model", "version", "segment"),
    "prodlens_feedback_joined_total": ("model",),
    "prodlens_feedback_orphaned_total": ("reason",),
    "prodlens_join_pending_predictions": (),
    "prodlens_join_early_feedback": (),
    "prodlens_join_state_bytes": (),
    "prodlens_drift": ("model", "version", "segment", "feature", "statistic"),
    "prodlens_drift_verdict": ("model", "version", "segment", "feature"),
    "prodlens_drift_flagged": ("model", "version", "segment"),
    "prodlens_drift_events_total": ("model", "verdict"),
    "prodlens_change_points_total": ("model", "version", "segment", "series", "detector"),
    "prodlens_drift_window_end_timestamp_seconds": ("model", "version"),
    **{f"prodlens_invariant_{s}": ("model", "version", "segment", "invariant")
       for s in ("violations_total", "checked_total", "violation_ratio")},
    "prodlens_alerts_firing": ("alertname", "severity"),
    "prodlens_alert_transitions_total": ("alertname", "state"),
}
# prodlens/experiments/report.py's gauge samples and their labels (the names are checked against
# that file below, so a renamed sample fails here rather than on a dashboard).
_EXP = ("experiment", "metric", "variant")
_CANARY = ("ladder", "baseline", "canary")
_SHADOW = ("model", "segment")
REPORT_METRICS: dict[str, tuple[str, ...]] = {
    "prodlens_experiment_exposures": ("experiment", "variant"),
    "prodlens_experiment_srm_p_value": ("experiment",),
    "prodlens_experiment_srm_alarm": ("experiment",),
    "prodlens_experiment_decision": ("experiment", "decision"),
    **{f"prodlens_experiment_{s}": _EXP for s in (
        "units", "mean", "mean_ci_low", "mean_ci_high", "lift_absolute", "lift_absolute_ci_low",
        "lift_absolute_ci_high", "lift_relative", "lift_relative_ci_low", "lift_relative_ci_high",
        "p_value", "p_value_adjusted", "chance_to_beat", "significant")},
    "prodlens_canary_traffic": _CANARY, "prodlens_canary_step": _CANARY,
    "prodlens_canary_decision_timestamp_seconds": _CANARY,
    "prodlens_canary_decision": (*_CANARY, "action"), "prodlens_canary_status": (*_CANARY, "status"),
    **{f"prodlens_canary_{s}": (*_CANARY, "metric") for s in ("harm", "harm_ci_low", "harm_ci_high", "tolerance")},
    "prodlens_canary_latency_ratio": _CANARY,
    "prodlens_shadow_pairs": _SHADOW, "prodlens_shadow_labelled": _SHADOW,
    "prodlens_shadow_latency_ms": (*_SHADOW, "side", "quantile"),
    **{f"prodlens_shadow_{s}": _SHADOW for s in (
        "disagreement_rate", "disagreement_rate_ci_low", "disagreement_rate_ci_high",
        "diff_mean", "diff_mean_ci_low", "diff_mean_ci_high")},
    "prodlens_shadow_accuracy": (*_SHADOW, "side"), "prodlens_shadow_mae": (*_SHADOW, "side"),
    "prodlens_shadow_abs_diff": (*_SHADOW, "quantile"),
}
# Labels every scraped series has (Prometheus adds them).
SCRAPE_LABELS = {"instance", "job"}


def analyser_metrics() -> dict[str, tuple[str, ...]]:
    """METRICS of every analyser module that exists (prodlens/analysis/*.py, prodlens/joins.py)."""
    out: dict[str, tuple[str, ...]] = {}
    paths = sorted((REPO / "prodlens" / "analysis").glob("*.py")) + [REPO / "prodlens" / "joins.py"]
    for path in paths:
        if path.exists() and re.search(r"^METRICS\b", path.read_text(), re.M):
            module = importlib.import_module(
                "prodlens." + ".".join(path.relative_to(REPO / "prodlens").with_suffix("").parts))
            out.update(module.METRICS)
    return out


def known_labels() -> dict[str, tuple[str, ...]]:
    return {**CONTRACT_METRICS, **REPORT_METRICS, **analyser_metrics()}


def exported_metrics() -> set[str]:
    """Every series name prodlens/metrics.py can emit (read from its metric family definitions),
    the experiment report's gauge samples, the stage architecture's fixed metric names and the
    analysers' METRICS."""
    source = (REPO / "prodlens" / "metrics.py").read_text()
    names = set()
    for kind, name in re.findall(r"(Counter|Gauge|Histogram)MetricFamily\(\s*\"(\w+)\"", source):
        if kind == "Counter":
            names.add(f"{name}_total")
        elif kind == "Histogram":
            names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
        else:
            names.add(name)
    assert len(names) > 15, "could not read the metric families of prodlens/metrics.py"
    report_source = (REPO / "prodlens" / "experiments" / "report.py").read_text()
    report = set(re.findall(r'(?:Sample|_one_hot)\("(\w+)"', report_source))
    assert report == set(REPORT_METRICS), \
        f"report.py samples changed: new {report - set(REPORT_METRICS)}, gone {set(REPORT_METRICS) - report}"
    return names | set(known_labels())


def targets(dashboard: dict):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers not followed by '(' or inside a selector)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_grouping = re.sub(r"\b(by|on|ignoring|group_left|group_right|without)\s*\([^)]*\)", "", without_matchers)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_grouping)
    names = set(re.findall(r"\b([A-Za-z_:][\w:]*)\b(?!\s*\()", without_ranges))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"[\d.e]+", n)}


def test_json_files_are_what_the_builder_writes():
    rendered = load_builder().render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], \
            f"{path.name} is stale: run `python grafana/build_dashboards.py`"


def test_dashboards_are_well_formed():
    uids = {}
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        uids[d["uid"]] = path.name
        assert d["id"] is None and d["schemaVersion"] == 39 and "prodlens" in d["tags"], path.name
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        cells = set()
        for panel in d["panels"]:
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, (path.name, panel["title"])
            area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & area, f"{path.name}: {panel['title']!r} overlaps another panel"
            cells |= area
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel.get("description"), f"{path.name}: panel without a description"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
            for t in panel["targets"]:
                assert t["datasource"] == panel["datasource"] and t["expr"].strip(), panel["title"]
    assert sorted(uids) == ["prodlens-drift", "prodlens-experiments", "prodlens-model",
                            "prodlens-overview", "prodlens-pipeline"]


def test_datasource_variable_selects_the_provisioned_prometheus():
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    prometheus = [d for d in provisioned["datasources"] if d["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["isDefault"]
    for path in DASHBOARDS:
        variables = json.loads(path.read_text())["templating"]["list"]
        ds = [v for v in variables if v["type"] == "datasource"]
        assert len(ds) == 1 and ds[0]["name"] == "datasource" and ds[0]["query"] == "prometheus"
        assert ds[0]["current"]["value"] == prometheus[0]["uid"], path.name
        for v in variables:
            if v["type"] == "query":
                assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v["name"]


def test_every_query_uses_only_exported_metrics():
    allowed = exported_metrics() | PROMETHEUS_SERIES
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        exprs = [(p["title"], t["expr"]) for p, t in targets(d)]
        for v in d["templating"]["list"]:
            if v["type"] == "query":  # label_values(<selector>, <label>): the selector is PromQL
                m = re.fullmatch(r"label_values\((.+),\s*\w+\)", v["definition"], re.S)
                assert m, f"{path.name} variable {v['name']}: {v['definition']}"
                exprs.append((v["name"], m.group(1)))
        for title, expr in exprs:
            unknown = series_names(expr) - allowed
            assert not unknown, f"{path.name} {title!r} queries {sorted(unknown)}, not exported: {expr}"


def test_series_name_extraction():
    assert series_names('sum by (topic, le) (rate(prodlens_processing_delay_seconds_bucket'
                        '{topic=~"$topic"}[$__rate_interval]))') == {"prodlens_processing_delay_seconds_bucket"}
    assert series_names('time() - max by (version) (prodlens_window_end_timestamp_seconds{a="b"})') == \
        {"prodlens_window_end_timestamp_seconds"}
    assert series_names("prodlens_sink_failures_total > 0") == {"prodlens_sink_failures_total"}


@pytest.mark.parametrize("uid", ["prodlens-model"])
def test_overview_links_open_the_model_dashboard(uid):
    overview = json.loads((GRAFANA / "dashboards" / "overview.json").read_text())
    urls = [link["url"] for p in overview["panels"] for o in p.get("fieldConfig", {}).get("overrides", [])
            for prop in o["properties"] if prop["id"] == "links" for link in prop["value"]]
    assert urls and all(u.startswith(f"/d/{uid}/") and "var-model=" in u for u in urls)
    model = json.loads((GRAFANA / "dashboards" / "model.json").read_text())
    assert model["uid"] == uid and "model" in {v["name"] for v in model["templating"]["list"]}


def test_analysers_declare_the_contract_labels():
    """An analyser that exists exports the fixed names with the fixed labels."""
    for name, labels in analyser_metrics().items():
        if name in CONTRACT_METRICS:
            assert tuple(labels) == CONTRACT_METRICS[name], f"{name}: {labels} != {CONTRACT_METRICS[name]}"


def selectors(expr: str):
    """(metric name, [label names of its matchers]) for each ``name{...}`` in a PromQL expression."""
    for name, body in re.findall(r"\b([A-Za-z_:][\w:]*)\{([^}]*)\}", expr):
        yield name, re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", re.sub(r'"(?:[^"\\]|\\.)*"', '""', body))


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)", expr)
            for label in group.split(",") if label.strip()}


def test_queries_use_only_labels_the_metrics_have():
    """Matchers and by/on clauses name labels the metrics carry (checked for metrics whose labels
    are declared: the contract, the experiment report and the analysers' METRICS)."""
    labels = known_labels()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for panel, t in targets(d):
            names = series_names(t["expr"])
            for name, matchers in selectors(t["expr"]):
                if name in labels:
                    unknown = set(matchers) - set(labels[name]) - SCRAPE_LABELS
                    assert not unknown, f"{path.name} {panel['title']!r}: {name} has no label {unknown}"
            if names and names <= set(labels):
                have = set().union(*(labels[n] for n in names)) | SCRAPE_LABELS
                unknown = grouping_labels(t["expr"]) - have
                assert not unknown, f"{path.name} {panel['title']!r} groups by {unknown}: {t['expr']}"


def test_label_checks_read_matchers_and_groupings():
    assert dict(selectors('max by (version) (prodlens_quality{model="m", metric=~"a|b", x!="}"})')) == \
        {"prodlens_quality": ["model", "metric", "x"]}
    assert grouping_labels("sum by (a, b) (x) / on (c) group_left y") == {"a", "b", "c"}
