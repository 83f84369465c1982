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
               stack: bool = False, minimum: float | None = None, maximum: float | None = None) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
              "showPoints": "never", "spanNulls": True,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = _defaults(unit, custom=custom)
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, description: str, expr: str, unit: str = "short", *, no_value: str | None = None,
         steps: list[tuple[str, float | None]] | None = None) -> dict:
    defaults = _defaults(unit, color={"mode": "thresholds"})
    if steps:
        defaults["thresholds"]["steps"] = [{"color": c, "value": v} for c, v in steps]
    if no_value is not None:
        defaults["noValue"] = no_value
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr)], "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto",
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
                  "time() - max by (model, version) (prodlens_window_end_timestamp_seconds)")],
                overrides=[model_link], sort="predictions"), w=14, h=9)
    L.add(table("Alerts pending or firing", "Prometheus alerts from deploy/rules/ (and exported "
                "prodlens alert rules), as Prometheus evaluates them; Alertmanager routes the firing "
                "ones.",
                [("active", "short", "ALERTS")], hide=("active",),
                overrides=[colored("alertstate", [("orange", None)])]), w=10, h=9)
    return dashboard("prodlens-overview", "prodlens / Overview",
                     "Every model: traffic, latency, dead letters, pipeline load and alerts.", L, [])


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
    variables = [
        query_variable("model", "Model", "label_values(prodlens_predictions_total, model)", multi=False),
        query_variable("version", "Version",
                       'label_values(prodlens_predictions_total{model="$model"}, version)', multi=True),
        query_variable("segment", "Segment",
                       'label_values(prodlens_predictions_total{model="$model", version=~"$version"}, segment)',
                       multi=True),
    ]
    return dashboard("prodlens-model", "prodlens / Model",
                     "One model by version and segment: traffic, predictions, latency, features.",
                     L, variables)


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

    L.row("Lag and delay")
    L.add(timeseries("Consumer lag by topic", "Messages between the processed offset and the high "
                     "watermark of the last fetch, summed over partitions.",
                     [target(f"sum by (topic) (prodlens_consumer_lag_messages{{{T}}})", "{{topic}}")],
                     minimum=0))
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


DASHBOARDS = {"overview.json": overview, "model.json": model, "pipeline.json": pipeline}


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
