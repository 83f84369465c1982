"""The dashboard JSON files: generated from grafana/build_dashboards.py, well formed for
Grafana, wired to the provisioned data source, and querying only exported metrics."""

from __future__ import annotations

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
                "histogram_quantile", "time", "scalar", "vector", "offset", "without", "abs",
                "clamp_min", "clamp_max", "le", "quantile", "label_values"}


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_metrics() -> set[str]:
    """Every series name prodlens/metrics.py can emit, read from its metric family definitions."""
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
    return names


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
    assert sorted(uids) == ["prodlens-model", "prodlens-overview", "prodlens-pipeline"]


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
