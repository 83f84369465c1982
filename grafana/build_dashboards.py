"""The prodlens Grafana dashboards, as code: ``python grafana/build_dashboards.py`` writes
``grafana/dashboards/*.json`` (the files Grafana provisions; commit them too).

Every query here uses only metrics the pipeline exports (prodlens/metrics.py) or that
Prometheus itself adds (``up``, ``scrape_duration_seconds``, ``ALERTS``);
tests/stack/test_dashboards_live.py runs each one against a real Prometheus scraping a
real worker and fails on a query that returns nothing. Add a panel: add it below, run
this script, run that test.

Conventions: window gauges describe the last closed window of each (model, version,
segment) on the worker that owns it, so they are combined across segments weighted by
``prodlens_window_predictions`` of the same worker (``on (instance, model, version,
segment)``); counters are ``rate``d per series and then summed, which stays right when a
partition (and its counters) moves to another worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE_UID = "prodlens-prometheus"   # grafana/provisioning/datasources/prometheus.yml
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
WINDOW_KEY = "instance, model, version, segment"


# -- building blocks -----------------------------------------------------------------------------
def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self):
        self.panels: list[dict] = []
        self.x = self.y = self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel: dict, w: int = 12, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        for i, t in enumerate(panel.get("targets", [])):
            t["refId"] = chr(ord("A") + i)
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x = self.row_height = 0


def _defaults(unit: str, **extra) -> dict:
    d = {"unit": unit, "color": {"mode": "palette-classic"},
         "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
    d.update(extra)
    return d


def timeseries(title: str, description: str, targets: list[dict], unit: str = "short", *,
               stack: bool = False, minimum: float | None = None, maximum: float | None = None,
               overrides: list[dict] = (), bars: bool = False) -> dict:
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1,
              "fillOpacity": 60 if bars else 10 if stack else 0,
              "showPoints": "never", "spanNulls": True,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = _defaults(unit, custom=custom)
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
            "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, description: str, expr: str, unit: str = "short", *, no_value: str | None = None,
         steps: list[tuple[str, float | None]] | None = None, legend: str = "",
         text_mode: str = "auto") -> dict:
    defaults = _defaults(unit, color={"mode": "thresholds"})
    if steps:
        defaults["thresholds"]["steps"] = [{"color": c, "value": v} for c, v in steps]
    if no_value is not None:
        defaults["noValue"] = no_value
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, legend)], "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": text_mode,
                        "justifyMode": "auto", "orientation": "auto"}}


def table(title: str, description: str, columns: list[tuple[str, str, str]], *,
          hide: tuple[str, ...] = (), overrides: list[dict] = (), sort: str | None = None) -> dict:
    """An instant-query table: one column per (header, unit, expr), joined on their labels."""
    targets = [target(expr, instant=True, table=True) for _, _, expr in columns]
    rename = {f"Value #{chr(ord('A') + i)}": header for i, (header, _, _) in enumerate(columns)}
    if len(columns) == 1:
        rename = {"Value": columns[0][0]}
    units = [{"matcher": {"id": "byName", "options": header},
              "properties": [{"id": "unit", "value": unit}]} for header, unit, _ in columns]
    panel = {"type": "table", "title": title, "description": description, "datasource": DS,
             "targets": targets,
             "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                                          "thresholds": {"mode": "absolute",
                                                         "steps": [{"color": "green", "value": None}]}},
                             "overrides": units + list(overrides)},
             "options": {"showHeader": True, "cellHeight": "sm",
                         "sortBy": [{"displayName": sort, "desc": True}] if sort else []},
             "transformations": [{"id": "merge", "options": {}},
                                 {"id": "organize", "options": {
                                     "excludeByName": {"Time": True, "__name__": True,
                                                       **{h: True for h in hide}},
                                     "renameByName": rename}}]}
    return panel


def colored(header: str, steps: list[tuple[str, float | None]]) -> dict:
    """A table override: colour the cells of ``header`` by thresholds."""
    return {"matcher": {"id": "byName", "options": header},
            "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}},
                           {"id": "thresholds", "value": {"mode": "absolute", "steps": [
                               {"color": c, "value": v} for c, v in steps]}}]}


def interval_lines(pattern: str = r".* (lower|upper|CI low|CI high)$") -> dict:
    """A timeseries override: the series named like an interval bound are drawn as thin dashed
    lines next to their estimate, so each estimate shows with its confidence band."""
    return {"matcher": {"id": "byRegexp", "options": pattern},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [4, 4]}},
                           {"id": "custom.lineWidth", "value": 1},
                           {"id": "custom.fillOpacity", "value": 0}]}


def mapped(header: str, texts: dict[int, tuple[str, str]]) -> dict:
    """A table override: show the numbers of ``header`` as words on coloured cells."""
    return {"matcher": {"id": "byName", "options": header},
            "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}},
                           {"id": "mappings", "value": [{"type": "value", "options": {
                               str(k): {"text": text, "color": color, "index": i}
                               for i, (k, (text, color)) in enumerate(texts.items())}}]}]}


def matrix(title: str, description: str, expr: str, rows: str, columns: str, unit: str,
           steps: list[tuple[str, float | None]] | None, decimals: int = 3,
           texts: dict[int, tuple[str, str]] | None = None) -> dict:
    """An instant-query table pivoted to ``rows`` × ``columns`` (one cell per label pair), every
    cell coloured by ``steps`` (or shown as the words of ``texts``): a grid where the odd
    (row, column) stands out at a glance."""
    defaults = {"unit": unit, "decimals": decimals,
                "custom": {"align": "center",
                           "cellOptions": {"type": "color-background" if steps or texts else "auto"}},
                "thresholds": {"mode": "absolute", "steps": [
                    {"color": c, "value": v} for c, v in (steps or [("text", None)])]}}
    if texts:
        defaults["mappings"] = mapped("", texts)["properties"][1]["value"]
    return {"type": "table", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, instant=True, table=True)],
            "fieldConfig": {"defaults": defaults,
                "overrides": [{"matcher": {"id": "byName", "options": f"{rows}\\{columns}"},
                               "properties": [{"id": "custom.cellOptions", "value": {"type": "auto"}},
                                              {"id": "custom.align", "value": "left"}]}]},
            "options": {"showHeader": True, "cellHeight": "sm"},
            "transformations": [{"id": "groupingToMatrix", "options": {
                "rowField": rows, "columnField": columns, "valueField": "Value",
                "emptyValue": "null"}}]}


def datasource_variable() -> dict:
    # A variable rather than a fixed uid: provisioned Grafana selects prodlens-prometheus; after an
    # import elsewhere the dashboards fall back to that Grafana's default Prometheus.
    return {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
            "current": {"selected": True, "text": "Prometheus", "value": DATASOURCE_UID},
            "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": "", "skipUrlSync": False}


def query_variable(name: str, label: str, query: str, *, multi: bool) -> dict:
    v = {"type": "query", "name": name, "label": label, "datasource": DS,
         "definition": query, "query": query,
         "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": [], "skipUrlSync": False,
         "multi": multi, "includeAll": multi}
    if multi:
        v["allValue"] = ".*"
        v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        v["current"] = {}
    return v


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[dict],
              refresh: str = "30s") -> dict:
    return {
        "id": None, "uid": uid, "title": title, "description": description,
        "tags": ["prodlens"], "timezone": "browser", "editable": True, "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": refresh,
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {},
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"type": "dashboards", "tags": ["prodlens"], "asDropdown": False, "title": "prodlens",
                   "includeVars": False, "keepTime": True, "targetBlank": False, "icon": "external link",
                   "tooltip": "", "url": ""}],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout.panels,
    }


def overview_degraded() -> str:
    """Count of (model, version, segment) significantly worse than their version overall."""
    value = 'prodlens_quality{{metric="{m}", class="", view="window"{x}}}'
    key = "model, version"
    parts = []
    for metric, bound, op in (("accuracy", "upper", "<"), ("mae", "lower", ">")):
        seg = (f'max by ({key}, segment) (prodlens_quality_{bound}{{metric="{metric}", class="", '
               f'view="window", segment!="__all__"}})')
        overall = f"max by ({key}) ({value.format(m=metric, x=', segment=' + chr(34) + '__all__' + chr(34))})"
        parts.append(f"({seg} {op} on ({key}) group_left {overall})")
    return f"count({' or '.join(parts)})"


# -- Overview --------------------------------------------------------------------------------------
def overview() -> dict:
    L = Layout()
    rejected_share = ('sum(rate(prodlens_events_rejected_total{reason!~"duplicate_event|late_event"}'
                      '[$__rate_interval])) / sum(rate(prodlens_events_consumed_total[$__rate_interval]))')
    L.add(stat("Predictions/s", "Predictions accepted into windows per second, all models.",
               "sum(rate(prodlens_predictions_total[$__rate_interval]))", "ops"), w=4, h=4)
    L.add(stat("Model versions", "Model versions that have sent predictions.",
               "count(count by (model, version) (prodlens_predictions_total))"), w=4, h=4)
    L.add(stat("Dead-lettered", "Share of consumed events rejected to the dead-letter topic, "
               "not counting duplicates and late events (those have their own panels in Pipeline "
               "health). ProdlensDeadLettersHigh fires above 2%.", rejected_share, "percentunit",
               steps=[("green", None), ("orange", 0.005), ("red", 0.02)]), w=4, h=4)
    L.add(stat("Workers up", "prodlens workers Prometheus scrapes successfully (job=\"prodlens\").",
               'sum(up{job="prodlens"})', steps=[("red", None), ("green", 1)]), w=4, h=4)
    L.add(stat("Consumer lag", "Messages the workers are behind on all input topics.",
               "sum(prodlens_consumer_lag_messages)", steps=[("green", None), ("orange", 1000),
                                                             ("red", 10000)]), w=4, h=4)
    L.add(stat("Alerts", "Prometheus alerts pending or firing (rules in deploy/rules/).",
               "count(ALERTS)", no_value="0", steps=[("green", None), ("red", 1)]), w=4, h=4)

    L.add(stat("prodlens alerts firing", "Alerts the pipeline's own alert engine (the alerts: section "
               "of prodlens.yaml) has firing now, every rule and severity.",
               "sum(prodlens_alerts_firing)", no_value="0", steps=[("green", None), ("red", 1)]), w=6, h=4)
    L.add(stat("Degraded segments", "(model, version, segment) whose accuracy (classification) or MAE "
               "(regression) confidence interval lies entirely on the bad side of the version's "
               "all-segments value in the latest quality window. The Model dashboard lists them.",
               overview_degraded(), no_value="0", steps=[("green", None), ("orange", 1)]), w=6, h=4)
    L.add(stat("Features drifting", "Features flagged as drifting in the latest drift windows, every "
               "model, version and segment.",
               "sum(prodlens_drift_flagged)", no_value="0", steps=[("green", None), ("orange", 1)]), w=6, h=4)
    L.add(stat("Feedback joined/s", "Labels and other feedback joined to their prediction per second.",
               "sum(rate(prodlens_feedback_joined_total[$__rate_interval]))", "ops"), w=6, h=4)

    L.row("Alerts")
    L.add(table("prodlens alerts firing by rule", "Per alert rule of the pipeline's alert engine and "
                "severity: how many alert instances fire now (0 = none). The Alerts pending or firing "
                "table below shows Prometheus' own rules.",
                [("firing", "short", "sum by (alertname, severity) (prodlens_alerts_firing)")],
                overrides=[colored("firing", [("green", None), ("red", 1)])], sort="firing"), w=10, h=8)
    L.add(timeseries("prodlens alerts firing by severity", "Alert instances firing over time.",
                     [target("sum by (severity) (prodlens_alerts_firing)", "{{severity}}")],
                     stack=True, minimum=0), w=7, h=8)
    L.add(timeseries("Alert transitions", "Alert state changes (firing, resolved) per interval.",
                     [target("sum by (alertname, state) (increase(prodlens_alert_transitions_total[$__rate_interval]))",
                             "{{alertname}} {{state}}")], bars=True, minimum=0), w=7, h=8)

    L.row("Traffic and latency")
    L.add(timeseries("Predictions/s by model", "Predictions accepted into windows per second.",
                     [target("sum by (model) (rate(prodlens_predictions_total[$__rate_interval]))",
                             "{{model}}")], "ops"))
    L.add(timeseries("Predictions/s by model and version", "A canary's share of traffic shows here.",
                     [target("sum by (model, version) (rate(prodlens_predictions_total[$__rate_interval]))",
                             "{{model}} {{version}}")], "ops"))
    L.add(timeseries("p99 model latency (worst segment)", "Largest p99 latency over the segments "
                     "of each model version, in the last closed window (DDSketch, ±1%). Per-segment "
                     "quantiles cannot be merged in PromQL; the Model dashboard has them per segment.",
                     [target('max by (model, version) (prodlens_window_latency_ms{quantile="0.99"})',
                             "{{model}} {{version}}")], "ms", minimum=0))
    L.add(timeseries("Dead letters/s by reason", "Events and messages rejected to the dead-letter "
                     "topic per second, by reason (duplicates and late events included).",
                     [target("sum by (reason) (rate(prodlens_events_rejected_total[$__rate_interval]))",
                             "{{reason}}")], "ops", stack=True))

    L.row("Models")
    model_link = {"matcher": {"id": "byName", "options": "model"},
                  "properties": [{"id": "links", "value": [{
                      "title": "Open the Model dashboard",
                      "url": "/d/prodlens-model/prodlens-model?var-model=${__value.raw}&${__url_time_range}"}]}]}
    L.add(table("Per model version", "Per model version: predictions in the time range, worst-segment "
                "p99 latency and how old (event time) its newest closed window is. Click a model to "
                "open its dashboard.",
                [("predictions", "short",
                  "sum by (model, version) (increase(prodlens_predictions_total[$__range]))"),
                 ("p99 latency", "ms",
                  'max by (model, version) (prodlens_window_latency_ms{quantile="0.99"})'),
                 ("last window age", "s",
                  "time() - max by (model, version) (prodlens_window_end_timestamp_seconds)"),
                 ("accuracy", "percentunit",
                  'max by (model, version) (prodlens_quality{metric="accuracy", segment="__all__", '
                  'class="", view="window"})'),
                 ("MAE", "none",
                  'max by (model, version) (prodlens_quality{metric="mae", segment="__all__", '
                  'class="", view="window"})'),
                 ("label coverage", "percentunit",
                  'max by (model, version) (prodlens_label_coverage_ratio{segment="__all__", view="window"})'),
                 ("features drifting", "short", "max by (model, version) (prodlens_drift_flagged)"),
                 ("worst invariant", "percentunit",
                  "max by (model, version) (prodlens_invariant_violation_ratio)")],
                overrides=[model_link,
                           colored("features drifting", [("green", None), ("orange", 1), ("red", 3)]),
                           colored("worst invariant", [("green", None), ("orange", 0.01), ("red", 0.05)])],
                sort="predictions"), w=14, h=9)
    L.add(table("Alerts pending or firing", "Prometheus alerts from deploy/rules/ (and exported "
                "prodlens alert rules), as Prometheus evaluates them; Alertmanager routes the firing "
                "ones.",
                [("active", "short", "ALERTS")], hide=("active",),
                overrides=[colored("alertstate", [("orange", None)])]), w=10, h=9)
    return dashboard("prodlens-overview", "prodlens / Overview",
                     "Every model: traffic, latency, dead letters, pipeline load and alerts.", L, [])


# -- Quality (labels joined to predictions) -----------------------------------------------------
# prodlens_quality and friends: one series per (model, version, segment, metric, class, view);
# segment="__all__" is the version over all its segments, class="" an overall (not per-class)
# metric, view="window" the latest complete quality window.
Q = 'model="$model", version=~"$version"'
QW = f'{Q}, metric="$metric", class="", view="window"'
SEGMENTS_ONLY = 'segment=~"$segment", segment!="__all__"'
# Which way is worse, per metric name (prodlens/quality: classification, regression, feedback).
HIGHER_IS_BETTER = ("accuracy|macro_precision|macro_recall|macro_f1|precision|recall|f1|roc_auc"
                    "|label_coverage|label_rate|mean_rating")
LOWER_IS_BETTER = ("log_loss|brier|ece|mae|rmse|mape|complaint_rate|correction_rate"
                   "|corrected_share|implicit_rate")


def by_segment(metric: str, extra: str = "") -> str:
    """The latest-window ``metric`` of each selected (version, segment), __all__ excluded."""
    return f"max by (version, segment) ({metric}{{{QW}, {SEGMENTS_ONLY}{extra}}})"


ALL_SEGMENTS = f'max by (version) (prodlens_quality{{{QW}, segment="__all__"}})'


def degraded_segments() -> str:
    """(version, segment) pairs whose whole confidence interval is worse than their version's
    all-segments value: upper bound below it (higher is better) or lower bound above it."""
    return (f'(({by_segment("prodlens_quality_upper", f", metric=~{chr(34)}{HIGHER_IS_BETTER}{chr(34)}")}\n'
            f"    < on (version) group_left {ALL_SEGMENTS})\n"
            f'  or ({by_segment("prodlens_quality_lower", f", metric=~{chr(34)}{LOWER_IS_BETTER}{chr(34)}")}\n'
            f"    > on (version) group_left {ALL_SEGMENTS}))")


def shortfall() -> str:
    """How much worse each (version, segment) is than its version's all-segments value, relative
    to it (positive = worse, whichever direction the metric improves in)."""
    hib = by_segment("prodlens_quality", f', metric=~"{HIGHER_IS_BETTER}"')
    lib = by_segment("prodlens_quality", f', metric=~"{LOWER_IS_BETTER}"')
    return (f"(-({hib} - on (version) group_left {ALL_SEGMENTS})\n"
            f"    / on (version) group_left {ALL_SEGMENTS})\n"
            f"  or (({lib} - on (version) group_left {ALL_SEGMENTS})\n"
            f"    / on (version) group_left {ALL_SEGMENTS})")


def with_interval(metric: str, selector: str, by: str, legend: str) -> list[dict]:
    """An estimate and its lower/upper confidence bounds as three targets (drawn as a band)."""
    return [target(f"max by ({by}) ({metric}{suffix}{{{selector}}})", f"{legend}{name}")
            for suffix, name in (("", ""), ("_lower", " lower"), ("_upper", " upper"))]


def quality_rows(L: Layout) -> None:
    L.row("Quality: $metric from labelled feedback")
    L.add(timeseries("$metric by version (all segments)", "The selected quality metric of each version "
                     "over all its segments, per latest complete quality window (windows of prediction "
                     "time, filled as labels arrive), with its confidence interval as dashed lines.",
                     with_interval("prodlens_quality", f'{QW}, segment="__all__"', "version", "{{version}}"),
                     overrides=[interval_lines()]))
    L.add(timeseries("$metric by segment", "The selected quality metric per (version, segment) with its "
                     "confidence interval (dashed). Small segments have wide intervals: compare "
                     "intervals, not points.",
                     with_interval("prodlens_quality", f"{QW}, {SEGMENTS_ONLY}", "version, segment",
                                   "{{version}} {{segment}}"),
                     overrides=[interval_lines()]))
    degraded = degraded_segments()
    L.add(table("Degraded (version, segment): $metric CI entirely worse than the version overall",
                "Subpopulations where the model is measurably worse: the whole confidence interval of "
                "the selected metric in the latest complete window lies on the bad side of the same "
                "version's all-segments (__all__) value (upper bound below it for accuracy-like "
                "metrics, lower bound above it for error-like metrics). Empty = no segment is "
                "significantly worse. Shortfall: relative gap to the version overall.",
                [("$metric", "none", f"{by_segment('prodlens_quality')}\n  and on (version, segment) {degraded}"),
                 ("lower", "none", f"{by_segment('prodlens_quality_lower')}\n  and on (version, segment) {degraded}"),
                 ("upper", "none", f"{by_segment('prodlens_quality_upper')}\n  and on (version, segment) {degraded}"),
                 ("version overall", "none",
                  f"(0 * {by_segment('prodlens_quality')} + on (version) group_left {ALL_SEGMENTS})\n"
                  f"  and on (version, segment) {degraded}"),
                 ("shortfall", "percentunit", f"({shortfall()})\n  and on (version, segment) {degraded}"),
                 ("labelled", "short", f"{by_segment('prodlens_quality_n')}\n  and on (version, segment) {degraded}")],
                overrides=[colored("shortfall", [("orange", None), ("red", 0.1)])],
                sort="shortfall"), w=14, h=9)
    L.add(matrix("$metric shortfall vs version overall: version × segment",
                 "Every (version, segment) of the latest complete quality window: how much worse the "
                 "selected metric is than the same version over all segments, relative to it "
                 "(positive = worse; green within 5%, orange from 5%, red from 10%). Whether a gap "
                 "is more than noise: the Degraded table beside it.",
                 shortfall(), "version", "segment", "percentunit",
                 [("green", None), ("orange", 0.05), ("red", 0.1)], decimals=1), w=10, h=9)
    L.add(timeseries("Estimated vs realized $metric (all segments)", "Realized: from joined labels. "
                     "Estimated: from the model's own confidence before labels arrive (CBPE; "
                     "trustworthy only while the model stays calibrated, see 'Estimate trusted'), "
                     "with its interval (dashed).",
                     [target(f'{ALL_SEGMENTS}', "{{version}} realized"),
                      *with_interval("prodlens_quality_estimated",
                                     f'{Q}, segment="__all__", metric=~"$metric|estimated_$metric", '
                                     f'view="window"', "version", "{{version}} estimated")],
                     overrides=[interval_lines()]), w=16)
    L.add(timeseries("Estimate trusted", "1 while the quality estimate (CBPE) of the version is "
                     "trustworthy: the model was calibrated on recent labelled windows; 0 when not.",
                     [target(f"max by (version) (prodlens_quality_estimate_trusted{{{Q}}})", "{{version}}")],
                     minimum=0, maximum=1), w=8)
    L.add(timeseries("Label coverage by segment", "Share of the window's predictions that have received "
                     "a label so far (per version and segment). Quality from low coverage is biased "
                     "towards whatever gets labelled first.",
                     [target(f'max by (version, segment) (prodlens_label_coverage_ratio{{{Q}, '
                             f'segment=~"$segment", view="window"}})', "{{version}} {{segment}}")],
                     "percentunit", minimum=0, maximum=1), w=8)
    L.add(timeseries("Label delay quantiles (worst segment)", "Time from prediction to its label: the "
                     "largest value over the selected segments. Quality windows are complete only "
                     "after the label horizon.",
                     [target(f'max by (version, quantile) (prodlens_label_delay_seconds{{{Q}, segment=~"$segment"}})',
                             "{{version}} q{{quantile}}")], "s", minimum=0), w=8)
    L.add(timeseries("Labelled predictions behind $metric", "Sample size of the selected metric per "
                     "(version, segment) in the latest complete window: the n of its interval.",
                     [target(f'max by (version, segment) (prodlens_quality_n{{{QW}, segment=~"$segment"}})',
                             "{{version}} {{segment}}")], minimum=0), w=8)
    L.add(timeseries("$metric over trailing views (all segments)", "The selected metric over merged "
                     "trailing views (quality.views, default 1h and 24h) of each version, with confidence intervals (dashed): "
                     "slower but tighter than one window.",
                     with_interval("prodlens_quality", f'{Q}, metric="$metric", class="", '
                                   f'segment="__all__", view!="window"', "version, view",
                                   "{{version}} {{view}}"),
                     overrides=[interval_lines()]))
    L.add(timeseries("Per-class precision / recall / F1 (all segments)", "Classification models: "
                     "per-class metrics of each version in the latest complete window. One class "
                     "collapsing shows here before it moves accuracy.",
                     [target(f'max by (version, metric, class) (prodlens_quality{{{Q}, segment="__all__", '
                             f'metric=~"precision|recall|f1", class!="", view="window"}})',
                             "{{version}} {{class}} {{metric}}")], "percentunit", minimum=0, maximum=1))
    L.add(timeseries("Age of the last quality window", "Now minus the end (prediction time) of the "
                     "newest complete quality window: grows when labels stop arriving.",
                     [target(f"time() - max by (version) (prodlens_quality_window_end_timestamp_seconds{{{Q}}})",
                             "{{version}}")], "s", minimum=0), w=24, h=6)


def invariant_rows(L: Layout) -> None:
    sel = f'{Q}, segment=~"$segment"'
    L.row("Invariants (checks without ground truth)")
    L.add(timeseries("Invariant violation ratio", "Share of checked events violating each invariant "
                     "in the latest closed invariant window, per (version, segment).",
                     [target(f"max by (version, segment, invariant) (prodlens_invariant_violation_ratio{{{sel}}})",
                             "{{version}} {{segment}} {{invariant}}")], "percentunit", minimum=0), w=8)
    L.add(timeseries("Invariant violations/s", "Violations per second by invariant, all selected "
                     "versions and segments.",
                     [target(f"sum by (invariant) (rate(prodlens_invariant_violations_total{{{sel}}}[$__rate_interval]))",
                             "{{invariant}}")], "ops", stack=True), w=8)
    L.add(table("Invariant violations in the time range", "Violations, checks and their ratio per "
                "(version, segment, invariant) over the dashboard's time range.",
                [("violations", "short",
                  f"sum by (version, segment, invariant) (increase(prodlens_invariant_violations_total{{{sel}}}[$__range]))"),
                 ("checked", "short",
                  f"sum by (version, segment, invariant) (increase(prodlens_invariant_checked_total{{{sel}}}[$__range]))"),
                 ("ratio", "percentunit",
                  f"sum by (version, segment, invariant) (increase(prodlens_invariant_violations_total{{{sel}}}[$__range]))\n"
                  f"  / sum by (version, segment, invariant) (increase(prodlens_invariant_checked_total{{{sel}}}[$__range]))")],
                overrides=[colored("ratio", [("green", None), ("orange", 0.01), ("red", 0.05)])],
                sort="violations"), w=8)


# -- Model -----------------------------------------------------------------------------------------
S = 'model="$model", version=~"$version", segment=~"$segment"'


def weighted(metric: str, by: str, extra: str | None = None, selector: str = S) -> str:
    """Prediction-weighted mean of a window gauge over the series grouped into ``by``; ``extra``
    is a label the gauge has beyond the window key (class, feature)."""
    n = f"prodlens_window_predictions{{{selector}}}"
    m = f"{metric}{{{selector}}}"
    if extra is None:
        return (f"sum by ({by}) ({m} * on ({WINDOW_KEY}) {n})\n"
                f"  / sum by ({by}) ({n} and on ({WINDOW_KEY}) {m})")
    return (f"sum by ({by}, {extra}) ({m} * on ({WINDOW_KEY}) group_left {n})\n"
            f"  / on ({by}) group_left sum by ({by}) ({n} and on ({WINDOW_KEY}) {m})")


def model() -> dict:
    L = Layout()
    L.row("Traffic")
    L.add(timeseries("Predictions/s by version", "Predictions accepted into windows per second.",
                     [target(f"sum by (version) (rate(prodlens_predictions_total{{{S}}}[$__rate_interval]))",
                             "{{version}}")], "ops"), w=8)
    L.add(timeseries("Traffic share by version", "Each version's share of the model's traffic in "
                     "the selected segments (all versions, whatever the version filter).",
                     [target('sum by (version) (rate(prodlens_predictions_total{model="$model", '
                             'segment=~"$segment"}[$__rate_interval]))\n  / ignoring (version) group_left '
                             'sum(rate(prodlens_predictions_total{model="$model", segment=~"$segment"}'
                             '[$__rate_interval]))', "{{version}}")], "percentunit", minimum=0, maximum=1),
          w=8)
    L.add(timeseries("Predictions/s by segment", "Segment values beyond a configured top-K are folded "
                     "into __other__.",
                     [target(f"sum by (segment) (rate(prodlens_predictions_total{{{S}}}[$__rate_interval]))",
                             "{{segment}}")], "ops", stack=True), w=8)

    L.row("Version × segment at a glance")
    n = f"prodlens_window_predictions{{{S}}}"
    model_mean = weighted("prodlens_window_score_mean", "model", selector='model="$model"')
    score_shift = (f"({weighted('prodlens_window_score_mean', 'version, segment')})\n"
                   f"  - scalar({model_mean})")
    L.add(table("Last closed window per version and segment",
                "One row per (version, segment), last closed window. A degraded subpopulation stands "
                "out by colour: p99 latency, the largest feature missing ratio, and how far its mean "
                "score sits from the model's prediction-weighted mean score (binary models). Sort by "
                "any column.",
                [("predictions", "short", f"sum by (version, segment) ({n})"),
                 ("p99 latency", "ms",
                  f'max by (version, segment) (prodlens_window_latency_ms{{{S}, quantile="0.99"}})'),
                 ("mean latency", "ms", weighted("prodlens_window_latency_mean_ms", "version, segment")),
                 ("max missing ratio", "percentunit",
                  f"max by (version, segment) (prodlens_window_feature_missing_ratio{{{S}}})"),
                 ("mean score", "none", weighted("prodlens_window_score_mean", "version, segment")),
                 ("score shift", "none", score_shift),
                 ("mean output", "none", weighted("prodlens_window_output_mean", "version, segment")),
                 ("top class share", "percentunit",
                  f"max by (version, segment) (prodlens_window_class_ratio{{{S}}})")],
                overrides=[colored("p99 latency", [("green", None), ("orange", 250), ("red", 500)]),
                           colored("max missing ratio", [("green", None), ("orange", 0.05), ("red", 0.2)]),
                           colored("score shift", [("red", None), ("orange", -0.1), ("green", -0.05),
                                                   ("orange", 0.05), ("red", 0.1)])],
                sort="predictions"), w=24, h=10)

    quality_rows(L)

    L.row("Predictions")
    L.add(timeseries("Predicted class distribution by version", "Share of each predicted class "
                     "(classification models), prediction-weighted over the selected segments, per "
                     "last closed window.",
                     [target(weighted("prodlens_window_class_ratio", "version", extra="class"),
                             "{{version}} {{class}}")], "percentunit", minimum=0, maximum=1))
    L.add(timeseries("Mean score or output by version", "Mean positive-class score (binary; from a 20-bin "
                     "histogram, within 0.025) or mean predicted value (regression), "
                     "prediction-weighted over the selected segments.",
                     [target(weighted("prodlens_window_score_mean", "version"), "{{version}} score"),
                      target(weighted("prodlens_window_output_mean", "version"), "{{version}} output")]))
    L.add(timeseries("Mean score or output by segment", "Mean positive-class score (binary) or mean "
                     "predicted value (regression) per (version, segment): one segment drifting away "
                     "from the others shows here.",
                     [target(weighted("prodlens_window_score_mean", "version, segment"),
                             "{{version}} {{segment}} score"),
                      target(weighted("prodlens_window_output_mean", "version, segment"),
                             "{{version}} {{segment}} output")]))
    L.add(timeseries("Top class share by segment", "Share of the most frequent predicted class per "
                     "(version, segment) (classification models): a segment where the model starts "
                     "predicting one class for everyone shows here.",
                     [target(f"max by (version, segment) (prodlens_window_class_ratio{{{S}}})",
                             "{{version}} {{segment}}")], "percentunit", minimum=0, maximum=1))

    L.row("Latency")
    L.add(timeseries("Latency quantiles by version (worst segment)", "p50/p90/p95/p99 model latency: "
                     "the largest value over the selected segments (DDSketch, ±1% relative).",
                     [target(f"max by (version, quantile) (prodlens_window_latency_ms{{{S}}})",
                             "{{version}} q{{quantile}}")], "ms", minimum=0), w=8)
    L.add(timeseries("Mean latency by version", "Prediction-weighted mean model latency over the "
                     "selected segments.",
                     [target(weighted("prodlens_window_latency_mean_ms", "version"), "{{version}}")],
                     "ms", minimum=0), w=8)
    L.add(timeseries("p99 latency by segment", "p99 model latency per (version, segment).",
                     [target(f'max by (version, segment) (prodlens_window_latency_ms{{{S}, quantile="0.99"}})',
                             "{{version}} {{segment}}")], "ms", minimum=0), w=8)

    L.row("Features and windows")
    L.add(timeseries("Feature missing ratio by version", "Share of predictions with the feature null "
                     "or absent, prediction-weighted over the selected segments. A broken input feed "
                     "shows as a jump.",
                     [target(weighted("prodlens_window_feature_missing_ratio", "version", extra="feature"),
                             "{{version}} {{feature}}")], "percentunit", minimum=0))
    L.add(table("Highest missing ratios", "The 15 largest (version, segment, feature) missing ratios "
                "in the last closed windows.",
                [("missing ratio", "percentunit",
                  f"topk(15, max by (version, segment, feature) "
                  f"(prodlens_window_feature_missing_ratio{{{S}}}))")],
                overrides=[colored("missing ratio", [("green", None), ("orange", 0.05), ("red", 0.2)])],
                sort="missing ratio"))
    L.add(timeseries("Predictions in the last closed window", "Window size per version, summed over "
                     "the selected segments: small windows make every statistic above noisier.",
                     [target(f"sum by (version) ({n})", "{{version}}")], minimum=0))
    L.add(timeseries("Age of the last closed window", "Now minus the end (event time) of the newest "
                     "closed window: grows when traffic stops or windows stop closing.",
                     [target(f"time() - max by (version) (prodlens_window_end_timestamp_seconds{{{S}}})",
                             "{{version}}")], "s", minimum=0))
    invariant_rows(L)
    variables = [
        query_variable("model", "Model", "label_values(prodlens_predictions_total, model)", multi=False),
        query_variable("version", "Version",
                       'label_values(prodlens_predictions_total{model="$model"}, version)', multi=True),
        query_variable("segment", "Segment",
                       'label_values(prodlens_predictions_total{model="$model", version=~"$version"}, segment)',
                       multi=True),
        query_variable("metric", "Quality metric",
                       'label_values(prodlens_quality{model="$model", class=""}, metric)', multi=False),
    ]
    return dashboard("prodlens-model", "prodlens / Model",
                     "One model by version and segment: traffic, quality with confidence intervals and "
                     "degraded segments, label coverage and delay, predictions, latency, features, "
                     "invariants.",
                     L, variables)


# -- Drift -----------------------------------------------------------------------------------------
D = 'model="$model", version=~"$version", segment=~"$segment"'
VERDICTS = {0: ("ok", "green"), 1: ("warn", "orange"), 2: ("alert", "red")}


def model_variables() -> list[dict]:
    return [
        query_variable("model", "Model", "label_values(prodlens_predictions_total, model)", multi=False),
        query_variable("version", "Version",
                       'label_values(prodlens_predictions_total{model="$model"}, version)', multi=True),
        query_variable("segment", "Segment",
                       'label_values(prodlens_predictions_total{model="$model", version=~"$version"}, segment)',
                       multi=True),
    ]


def drift() -> dict:
    L = Layout()
    stat_ = f'prodlens_drift{{{D}, statistic="$statistic"}}'
    L.add(stat("Features flagged", "Features (feature paths, over the selected versions and segments) "
               "flagged as drifting in the latest drift window of each (version, segment).",
               f"sum(prodlens_drift_flagged{{{D}}})", no_value="0",
               steps=[("green", None), ("orange", 1), ("red", 3)]), w=6, h=4)
    L.add(stat("Drift alerts in the time range", "Drift results with verdict alert (an effect size "
               "beyond the alert threshold, after the multiple-testing correction) for this model.",
               f'sum(increase(prodlens_drift_events_total{{model="$model", verdict="alert"}}[$__range]))',
               no_value="0", steps=[("green", None), ("red", 1)]), w=6, h=4)
    L.add(stat("Change points in the time range", "Online change detectors that fired on the "
               "selected versions and segments (jumps and slow decay in monitored series).",
               f"sum(increase(prodlens_change_points_total{{{D}}}[$__range]))", no_value="0",
               steps=[("green", None), ("orange", 1)]), w=6, h=4)
    L.add(stat("Age of the last drift window", "Now minus the end (event time) of the newest window "
               "compared with the reference.",
               'time() - max(prodlens_drift_window_end_timestamp_seconds{model="$model", version=~"$version"})',
               "s", steps=[("green", None), ("orange", 3600), ("red", 6 * 3600)]), w=6, h=4)

    L.row("Which features, which segments (latest window)")
    L.add(matrix("Drift verdict: feature × segment", "The verdict of each feature in each segment in "
                 "the latest drift window (worst over the selected versions): ok, warn, alert. A "
                 "feature red in one segment only is a subpopulation shift; red everywhere, a global one.",
                 f"max by (feature, segment) (prodlens_drift_verdict{{{D}}})", "feature", "segment",
                 "none", None, decimals=0, texts=VERDICTS), w=12, h=10)
    L.add(matrix("$statistic: feature × segment", "The selected drift statistic of each feature in "
                 "each segment in the latest drift window (largest over the selected versions).",
                 f"max by (feature, segment) ({stat_})", "feature", "segment", "none", None), w=12, h=10)
    L.add(table("Top 10 drifting features ($statistic)", "The 10 largest values of the selected "
                "statistic over (version, segment, feature) in the latest drift windows, with the verdict.",
                [("$statistic", "none", f"topk(10, max by (version, segment, feature) ({stat_}))"),
                 ("verdict", "none", f"max by (version, segment, feature) (prodlens_drift_verdict{{{D}}})\n"
                  f"  and on (version, segment, feature) topk(10, max by (version, segment, feature) ({stat_}))")],
                overrides=[mapped("verdict", VERDICTS)], sort="$statistic"), w=12, h=9)
    L.add(table("Every statistic of the flagged features", "All drift statistics (PSI, KS, chi², JS, "
                "normalised Wasserstein, ...) of the features whose verdict is warn or alert in the "
                "latest window, one row per (version, segment, feature, statistic).",
                [("value", "none",
                  f"max by (version, segment, feature, statistic) (prodlens_drift{{{D}}})\n"
                  f"  and on (version, segment, feature) (max by (version, segment, feature) "
                  f"(prodlens_drift_verdict{{{D}}}) > 0)")], sort="value"), w=12, h=9)

    L.row("Over time")
    L.add(timeseries("$statistic per feature (worst segment)", "The selected statistic of each feature, "
                     "largest over the selected segments, per version and drift window.",
                     [target(f"max by (version, feature) ({stat_})", "{{version}} {{feature}}")], minimum=0))
    L.add(timeseries("$statistic per segment (worst feature)", "The selected statistic of the most "
                     "drifted feature in each (version, segment).",
                     [target(f"max by (version, segment) ({stat_})", "{{version}} {{segment}}")], minimum=0))
    L.add(timeseries("Features flagged by segment", "Features flagged as drifting per (version, segment) "
                     "in each drift window.",
                     [target(f"max by (version, segment) (prodlens_drift_flagged{{{D}}})",
                             "{{version}} {{segment}}")], minimum=0), w=8)
    L.add(timeseries("Drift results by verdict", "Drift results with a warn or alert verdict per "
                     "interval, this model (all versions and segments).",
                     [target(f'sum by (verdict) (increase(prodlens_drift_events_total{{model="$model"}}[$__rate_interval]))',
                             "{{verdict}}")], bars=True, stack=True, minimum=0), w=8)
    L.add(timeseries("Change points by series and detector", "Change points per interval, by the "
                     "monitored series and the detector that fired.",
                     [target(f"sum by (version, segment, series, detector) "
                             f"(increase(prodlens_change_points_total{{{D}}}[$__rate_interval]))",
                             "{{version}} {{segment}} {{series}} {{detector}}")], bars=True, minimum=0), w=8)
    L.add(timeseries("Age of the last drift window", "Now minus the end (event time) of the newest "
                     "drift window per version: grows when windows stop being compared.",
                     [target('time() - max by (version) (prodlens_drift_window_end_timestamp_seconds'
                             '{model="$model", version=~"$version"})', "{{version}}")], "s", minimum=0),
          w=24, h=6)
    variables = model_variables() + [
        query_variable("statistic", "Statistic", 'label_values(prodlens_drift{model="$model"}, statistic)',
                       multi=False)]
    return dashboard("prodlens-drift", "prodlens / Drift",
                     "One model: drift of features and outputs against the reference, per version and "
                     "segment; verdicts, top drifting features, change points.", L, variables)


# -- Experiments -----------------------------------------------------------------------------------
E = 'experiment="$experiment"'
EM = 'experiment="$experiment", metric="$metric"'


def experiments() -> dict:
    L = Layout()
    L.row("A/B test: $experiment")
    L.add(stat("Decision", "The experiment's current decision (significant win or loss, no significant "
               "difference, insufficient data, or SRM alarm: the split is broken and no result holds).",
               f"max by (decision) (prodlens_experiment_decision{{{E}}}) == 1", legend="{{decision}}",
               text_mode="name", steps=[("blue", None)]), w=6, h=4)
    L.add(stat("SRM p-value", "Sample-ratio mismatch: chi-square test of the exposure counts against "
               "the configured split. Red: the assignment or logging is broken; do not read the results.",
               f"max(prodlens_experiment_srm_p_value{{{E}}})", "none",
               steps=[("red", None), ("green", 0.001)]), w=6, h=4)
    L.add(timeseries("Exposures by variant", "Units exposed to each variant (cumulative).",
                     [target(f"max by (variant) (prodlens_experiment_exposures{{{E}}})", "{{variant}}")],
                     minimum=0), w=12, h=4)
    L.add(timeseries("$metric by variant with 95% CI", "Mean of the selected outcome metric per unit in "
                     "each variant, with its confidence interval (dashed).",
                     [target(f"max by (variant) (prodlens_experiment_mean{{{EM}}})", "{{variant}}"),
                      target(f"max by (variant) (prodlens_experiment_mean_ci_low{{{EM}}})", "{{variant}} CI low"),
                      target(f"max by (variant) (prodlens_experiment_mean_ci_high{{{EM}}})", "{{variant}} CI high")],
                     overrides=[interval_lines()]), w=8)
    L.add(timeseries("Relative lift vs control with CI", "Relative difference of each treatment's mean "
                     "from the control's, with its confidence interval (dashed). An interval crossing "
                     "0 is no evidence either way.",
                     [target(f"max by (variant) (prodlens_experiment_lift_relative{{{EM}}})", "{{variant}}"),
                      target(f"max by (variant) (prodlens_experiment_lift_relative_ci_low{{{EM}}})",
                             "{{variant}} CI low"),
                      target(f"max by (variant) (prodlens_experiment_lift_relative_ci_high{{{EM}}})",
                             "{{variant}} CI high")],
                     "percentunit", overrides=[interval_lines()]), w=8)
    L.add(timeseries("p-value and chance to beat control", "Per treatment: p-value, p-value adjusted "
                     "for multiple comparisons, and the Bayesian probability of beating the control.",
                     [target(f"max by (variant) (prodlens_experiment_p_value{{{EM}}})", "{{variant}} p"),
                      target(f"max by (variant) (prodlens_experiment_p_value_adjusted{{{EM}}})",
                             "{{variant}} adjusted p"),
                      target(f"max by (variant) (prodlens_experiment_chance_to_beat{{{EM}}})",
                             "{{variant}} chance to beat")],
                     "percentunit", minimum=0, maximum=1), w=8)
    L.add(table("Variants now: $metric", "The latest result per variant: units, mean with CI, absolute "
                "and relative lift against the control with CIs, p-values and chance to beat control "
                "(empty for the control).",
                [(header, unit, f"max by (variant) (prodlens_experiment_{name}{{{EM}}})")
                 for header, unit, name in (
                     ("units", "short", "units"), ("mean", "none", "mean"),
                     ("CI low", "none", "mean_ci_low"), ("CI high", "none", "mean_ci_high"),
                     ("lift", "none", "lift_absolute"), ("relative lift", "percentunit", "lift_relative"),
                     ("lift CI low", "percentunit", "lift_relative_ci_low"),
                     ("lift CI high", "percentunit", "lift_relative_ci_high"),
                     ("p-value", "none", "p_value"), ("adjusted p", "none", "p_value_adjusted"),
                     ("chance to beat", "percentunit", "chance_to_beat"),
                     ("significant", "none", "significant"))],
                overrides=[colored("adjusted p", [("green", None), ("text", 0.05)]),
                           mapped("significant", {0: ("no", "text"), 1: ("yes", "green")})]), w=24, h=7)
    L.add(table("All experiments", "Every experiment's decision and sample-ratio check.",
                [("decision", "none", "max by (experiment, decision) (prodlens_experiment_decision) == 1"),
                 ("SRM p-value", "none", "max by (experiment) (prodlens_experiment_srm_p_value)"),
                 ("SRM alarm", "none", "max by (experiment) (prodlens_experiment_srm_alarm)")],
                hide=("decision",),
                overrides=[mapped("SRM alarm", {0: ("ok", "green"), 1: ("alarm", "red")})]), w=24, h=6)

    L.row("Canary rollouts")
    lad = "ladder, baseline, canary"
    L.add(timeseries("Canary traffic share", "The canary's share of traffic after each decision "
                     "(the SDK follows it): climbs step by step, drops to 0 on rollback.",
                     [target(f"max by ({lad}) (prodlens_canary_traffic)", "{{ladder}}: {{canary}} vs {{baseline}}")],
                     "percentunit", minimum=0, maximum=1), w=8)
    L.add(timeseries("Canary step", "Index of the ladder step the canary is on.",
                     [target(f"max by ({lad}) (prodlens_canary_step)", "{{ladder}}: {{canary}}")],
                     minimum=0), w=8)
    L.add(table("Canary decision and status", "The latest decision of each ladder (promote, hold, "
                "rollback, insufficient data), its status, and how long ago it was taken.",
                [("action", "none", f"max by ({lad}, action) (prodlens_canary_decision) == 1"),
                 ("status", "none", f"max by ({lad}, status) (prodlens_canary_status) == 1"),
                 ("decided", "s", f"time() - max by ({lad}) (prodlens_canary_decision_timestamp_seconds)")],
                hide=("action", "status"),
                overrides=[colored("decided", [("green", None), ("orange", 3600)])]), w=8)
    L.add(timeseries("Canary harm vs tolerance", "Per guarded metric: the canary's harm against the "
                     "baseline with its confidence interval (dashed), and the tolerated harm. Rollback "
                     "when the interval lies above the tolerance.",
                     [target(f"max by (ladder, metric) (prodlens_canary_harm)", "{{ladder}} {{metric}}"),
                      target(f"max by (ladder, metric) (prodlens_canary_harm_ci_low)", "{{ladder}} {{metric}} CI low"),
                      target(f"max by (ladder, metric) (prodlens_canary_harm_ci_high)",
                             "{{ladder}} {{metric}} CI high"),
                      target(f"max by (ladder, metric) (prodlens_canary_tolerance)", "{{ladder}} {{metric}} tolerance")],
                     overrides=[interval_lines()]))
    L.add(timeseries("Canary / baseline latency", "Ratio of the canary's latency quantile to the "
                     "baseline's (1 = as fast).",
                     [target(f"max by ({lad}) (prodlens_canary_latency_ratio)", "{{ladder}}: {{canary}}")],
                     minimum=0))

    L.row("Shadow deployments")
    L.add(timeseries("Shadow disagreement rate with CI", "Classification: share of predictions where "
                     "the shadow's label differs from the primary's, per model and segment, with its "
                     "confidence interval (dashed).",
                     [target("max by (model, segment) (prodlens_shadow_disagreement_rate)", "{{model}} {{segment}}"),
                      target("max by (model, segment) (prodlens_shadow_disagreement_rate_ci_low)",
                             "{{model}} {{segment}} CI low"),
                      target("max by (model, segment) (prodlens_shadow_disagreement_rate_ci_high)",
                             "{{model}} {{segment}} CI high")],
                     "percentunit", minimum=0, overrides=[interval_lines()]), w=8)
    L.add(timeseries("Shadow vs primary accuracy", "Classification: accuracy of each side on the pairs "
                     "that received a label.",
                     [target("max by (model, segment, side) (prodlens_shadow_accuracy)",
                             "{{model}} {{segment}} {{side}}")], "percentunit", minimum=0, maximum=1), w=8)
    L.add(timeseries("Shadow pairs compared", "Primary/shadow prediction pairs joined by prediction_id, "
                     "and those of them with a label.",
                     [target("max by (model, segment) (prodlens_shadow_pairs)", "{{model}} {{segment}} pairs"),
                      target("max by (model, segment) (prodlens_shadow_labelled)", "{{model}} {{segment}} labelled")],
                     minimum=0), w=8)
    L.add(timeseries("Shadow vs primary latency", "Latency quantiles of each side (worst segment).",
                     [target("max by (model, side, quantile) (prodlens_shadow_latency_ms)",
                             "{{model}} {{side}} {{quantile}}")], "ms", minimum=0), w=8)
    L.add(timeseries("Regression shadows: mean difference with CI", "Regression: mean of shadow − "
                     "primary predictions with its confidence interval (dashed), and quantiles of the "
                     "absolute difference.",
                     [target("max by (model, segment) (prodlens_shadow_diff_mean)", "{{model}} {{segment}} mean diff"),
                      target("max by (model, segment) (prodlens_shadow_diff_mean_ci_low)",
                             "{{model}} {{segment}} mean diff CI low"),
                      target("max by (model, segment) (prodlens_shadow_diff_mean_ci_high)",
                             "{{model}} {{segment}} mean diff CI high"),
                      target("max by (model, segment, quantile) (prodlens_shadow_abs_diff)",
                             "{{model}} {{segment}} |diff| {{quantile}}")],
                     overrides=[interval_lines()]), w=8)
    L.add(timeseries("Regression shadows: MAE by side", "Regression: mean absolute error of each side "
                     "on the labelled pairs.",
                     [target("max by (model, segment, side) (prodlens_shadow_mae)", "{{model}} {{segment}} {{side}}")],
                     minimum=0), w=8)
    variables = [
        query_variable("experiment", "Experiment", "label_values(prodlens_experiment_exposures, experiment)",
                       multi=False),
        query_variable("metric", "Metric", 'label_values(prodlens_experiment_mean{experiment="$experiment"}, metric)',
                       multi=False),
    ]
    return dashboard("prodlens-experiments", "prodlens / Experiments",
                     "A/B tests with confidence intervals and SRM checks, canary rollouts, shadow "
                     "comparisons.", L, variables)


# -- Pipeline health -------------------------------------------------------------------------------
T = 'topic=~"$topic"'


def pipeline() -> dict:
    L = Layout()
    L.row("Throughput")
    L.add(timeseries("Events/s by topic", "Events read (an envelope counts each event inside) and "
                     "events that passed validation and deduplication.",
                     [target(f"sum by (topic) (rate(prodlens_events_consumed_total{{{T}}}[$__rate_interval]))",
                             "{{topic}} consumed"),
                      target(f"sum by (topic) (rate(prodlens_events_valid_total{{{T}}}[$__rate_interval]))",
                             "{{topic}} valid")], "ops"), w=8)
    L.add(timeseries("Messages/s by topic", "Kafka messages read.",
                     [target(f"sum by (topic) (rate(prodlens_messages_consumed_total{{{T}}}[$__rate_interval]))",
                             "{{topic}}")], "ops"), w=8)
    L.add(timeseries("Events per message", "Average envelope size. Throughput depends on it: "
                     "single-event messages cost far more per event than batch envelopes.",
                     [target(f"sum by (topic) (rate(prodlens_events_consumed_total{{{T}}}[$__rate_interval]))\n"
                             f"  / sum by (topic) (rate(prodlens_messages_consumed_total{{{T}}}[$__rate_interval]))",
                             "{{topic}}")], minimum=0), w=8)

    L.row("Bad input")
    L.add(timeseries("Dead letters/s by reason", "Rejected to the dead-letter topic, by topic and "
                     "reason; the dead-letter topic holds each one with its error and original bytes.",
                     [target(f"sum by (topic, reason) (rate(prodlens_events_rejected_total{{{T}}}[$__rate_interval]))",
                             "{{topic}} {{reason}}")], "ops", stack=True), w=8)
    L.add(timeseries("Dead-lettered share by topic", "Rejected / consumed, not counting duplicates "
                     "and late events. ProdlensDeadLettersHigh fires above 2% for 10 minutes.",
                     [target(f'sum by (topic) (rate(prodlens_events_rejected_total{{{T}, '
                             f'reason!~"duplicate_event|late_event"}}[$__rate_interval]))\n'
                             f"  / sum by (topic) (rate(prodlens_events_consumed_total{{{T}}}[$__rate_interval]))",
                             "{{topic}}")], "percentunit", minimum=0), w=8)
    L.add(timeseries("Duplicate and late events/s", "Duplicates (same event_id within the dedupe "
                     "horizon) and events whose window had closed beyond the allowed lateness.",
                     [target(f"sum by (topic) (rate(prodlens_events_duplicate_total{{{T}}}[$__rate_interval]))",
                             "{{topic}} duplicate"),
                      target(f"sum by (topic) (rate(prodlens_events_late_total{{{T}}}[$__rate_interval]))",
                             "{{topic}} late")], "ops"), w=8)
    L.add(table("Dead letters in the time range", "Rejections by topic and reason over the "
                "dashboard's time range.",
                [("rejected", "short",
                  f"sum by (topic, reason) (increase(prodlens_events_rejected_total{{{T}}}[$__range]))")],
                sort="rejected"), w=24, h=7)

    L.row("Joins (predictions ⨝ feedback)")
    L.add(timeseries("Feedback joined/s by model", "Feedback events joined to their prediction "
                     "(by prediction_id) per second.",
                     [target("sum by (model) (rate(prodlens_feedback_joined_total[$__rate_interval]))", "{{model}}")],
                     "ops"), w=8)
    L.add(timeseries("Orphaned feedback/s by reason", "Feedback that found no prediction (unknown or "
                     "expired prediction_id, beyond the label horizon, ...), per second, by reason.",
                     [target("sum by (reason) (rate(prodlens_feedback_orphaned_total[$__rate_interval]))",
                             "{{reason}}")], "ops", stack=True), w=8)
    L.add(timeseries("Joined share of feedback", "Joined / (joined + orphaned) feedback: falls when "
                     "feedback references predictions prodlens never saw or has already expired.",
                     [target("sum(rate(prodlens_feedback_joined_total[$__rate_interval]))\n"
                             "  / (sum(rate(prodlens_feedback_joined_total[$__rate_interval]))\n"
                             "     + (sum(rate(prodlens_feedback_orphaned_total[$__rate_interval])) or vector(0)))",
                             "joined")], "percentunit", minimum=0, maximum=1), w=8)
    L.add(timeseries("Join state", "Predictions waiting for feedback (kept for the label horizon) and "
                     "feedback that arrived before its prediction (kept until it comes).",
                     [target("sum(prodlens_join_pending_predictions)", "pending predictions"),
                      target("sum(prodlens_join_early_feedback)", "early feedback")], minimum=0), w=12)
    L.add(timeseries("Join state size by worker", "Memory held by the join stage's state, per worker: "
                     "grows with pending predictions, not with total events.",
                     [target("sum by (instance) (prodlens_join_state_bytes)", "{{instance}}")], "bytes",
                     minimum=0), w=12)

    L.row("Lag and delay")
    L.add(timeseries("Consumer lag by topic", "Messages between the processed offset and the high "
                     "watermark of the last fetch, summed over partitions.",
                     [target(f"sum by (topic) (prodlens_consumer_lag_messages{{{T}}})", "{{topic}}")],
                     minimum=0))
    L.add(timeseries("Consumer lag, every stage", "Messages behind on every topic the workers "
                     "consume, whatever the topic filter: the input topics, and the internal joins and "
                     "summaries topics of the join and analysis stages.",
                     [target("sum by (topic) (prodlens_consumer_lag_messages)", "{{topic}}")], minimum=0))
    L.add(timeseries("Consumer lag by partition", "One stuck partition shows here while the others "
                     "are at zero.",
                     [target(f"max by (topic, partition) (prodlens_consumer_lag_messages{{{T}}})",
                             "{{topic}}/{{partition}}")], minimum=0))
    delay = f"sum by (topic, le) (rate(prodlens_processing_delay_seconds_bucket{{{T}}}[$__rate_interval]))"
    L.add(timeseries("Processing delay quantiles", "Event time to processed time, from the "
                     "histogram (includes the app's own delay in sending; linear inside a bucket).",
                     [target(f"histogram_quantile({q}, {delay})", f"{{{{topic}}}} p{int(q * 100)}")
                      for q in (0.5, 0.9, 0.99)], "s", minimum=0))
    L.add(timeseries("Mean processing delay", "Event time to processed time, mean.",
                     [target(f"sum by (topic) (rate(prodlens_processing_delay_seconds_sum{{{T}}}[$__rate_interval]))\n"
                             f"  / sum by (topic) (rate(prodlens_processing_delay_seconds_count{{{T}}}[$__rate_interval]))",
                             "{{topic}}")], "s", minimum=0))

    L.row("Windows and workers")
    L.add(timeseries("Windows closed/s", "Windows closed and published to the summaries topic.",
                     [target(f"sum by (topic) (rate(prodlens_windows_closed_total{{{T}}}[$__rate_interval]))",
                             "{{topic}}")], "ops"), w=8)
    L.add(timeseries("Partitions assigned by worker", "Input partitions each worker owns; after a "
                     "rebalance they move and the counters move with them.",
                     [target(f"sum by (instance, topic) (prodlens_partitions_assigned{{{T}}})",
                             "{{instance}} {{topic}}")], stack=True, minimum=0), w=8)
    L.add(timeseries("Workers up", "Scrape health of each prodlens target (1 up, 0 down). In "
                     "docker compose the 127.0.0.1:9108 target is down by design "
                     "(deploy/prometheus.yml).",
                     [target('up{job="prodlens"}', "{{instance}}")], minimum=0, maximum=1), w=8)
    L.add(timeseries("Scrape duration by worker", "Time Prometheus takes to collect a worker's "
                     "metrics (computed from its partition state at scrape time).",
                     [target('scrape_duration_seconds{job="prodlens"}', "{{instance}}")], "s",
                     minimum=0), w=24, h=6)
    variables = [query_variable("topic", "Topic",
                                "label_values(prodlens_events_consumed_total, topic)", multi=True)]
    return dashboard("prodlens-pipeline", "prodlens / Pipeline health",
                     "Is the pipeline keeping up: throughput, bad input, lag, delay, windows, workers.",
                     L, variables)


DASHBOARDS = {"overview.json": overview, "model.json": model, "drift.json": drift,
              "experiments.json": experiments, "pipeline.json": pipeline}


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
