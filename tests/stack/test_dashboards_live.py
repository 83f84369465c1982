"""Every dashboard query, run against a real Prometheus scraping a real worker.

One worker consumes a simulated burst from the real test broker; a real Prometheus
(Debian package) scrapes it every second and loads the shipped rule files. Then each
panel target of each dashboard is run through Prometheus' HTTP API the way Grafana
would run it: template variables resolved from their own ``label_values`` queries,
``$__rate_interval`` / ``$__interval`` / ``$__range`` computed as Grafana does, range
queries for graphs and instant queries for tables. A query that errors, or a target
that never returns a finite value, fails the test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness import PrometheusServer, Worker, load, make_config, metric, wait_for
from prodlens.simulate import Scenario, Tally
from prodlens.streams.kafka import ensure_topics
from prodlens.streams.producer import simulate_burst

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((REPO / "deploy" / "rules").glob("*.rules.yml"))
SCRAPE_INTERVAL = 1.0      # PrometheusServer scrapes every second
MAX_DATA_POINTS = 1000     # what a Grafana panel asks for, roughly its width in pixels

# -- Two tiers ---------------------------------------------------------------------------------------
# Tier 1: every target must run without error AND return data. Tier 2: targets that query a metric
# listed here — one the test pipeline does not produce yet (the join and analysis stages are being
# wired) — must still parse and evaluate in Prometheus, but may come back empty. The list is checked
# against what Prometheus scraped: a listed metric that the pipeline now produces fails
# test_not_yet_produced_is_true (take it off the list), so the list only shrinks and no data check
# is dropped unnoticed. A query variable whose source metric is listed and has no values is set to
# NOT_YET_PRODUCED_VALUE so the panels depending on it still run.
NOT_YET_PRODUCED: frozenset[str] = frozenset({
    # quality (prodlens/analysis/quality.py)
    "prodlens_quality", "prodlens_quality_n", "prodlens_quality_lower", "prodlens_quality_upper",
    "prodlens_quality_estimated", "prodlens_quality_estimated_lower", "prodlens_quality_estimated_upper",
    "prodlens_quality_estimate_trusted", "prodlens_label_coverage_ratio", "prodlens_label_delay_seconds",
    "prodlens_quality_window_end_timestamp_seconds",
    # drift (prodlens/analysis/drift.py)
    "prodlens_drift", "prodlens_drift_verdict", "prodlens_drift_flagged", "prodlens_drift_events_total",
    "prodlens_change_points_total", "prodlens_drift_window_end_timestamp_seconds",
    # invariants (prodlens/analysis/invariants.py)
    "prodlens_invariant_violations_total", "prodlens_invariant_checked_total",
    "prodlens_invariant_violation_ratio",
    # alerts (prodlens/analysis/alerting.py)
    "prodlens_alerts_firing", "prodlens_alert_transitions_total",
    # experiments (prodlens/experiments/report.py samples, via prodlens/analysis/experiments.py)
    "prodlens_experiment_exposures", "prodlens_experiment_srm_p_value", "prodlens_experiment_srm_alarm",
    "prodlens_experiment_decision", "prodlens_experiment_units", "prodlens_experiment_mean",
    "prodlens_experiment_mean_ci_low", "prodlens_experiment_mean_ci_high", "prodlens_experiment_lift_absolute",
    "prodlens_experiment_lift_relative", "prodlens_experiment_lift_relative_ci_low",
    "prodlens_experiment_lift_relative_ci_high", "prodlens_experiment_p_value",
    "prodlens_experiment_p_value_adjusted", "prodlens_experiment_chance_to_beat", "prodlens_experiment_significant",
    "prodlens_canary_traffic", "prodlens_canary_step", "prodlens_canary_decision_timestamp_seconds",
    "prodlens_canary_decision", "prodlens_canary_status", "prodlens_canary_harm", "prodlens_canary_harm_ci_low",
    "prodlens_canary_harm_ci_high", "prodlens_canary_tolerance", "prodlens_canary_latency_ratio",
    "prodlens_shadow_pairs", "prodlens_shadow_labelled", "prodlens_shadow_latency_ms",
    "prodlens_shadow_disagreement_rate", "prodlens_shadow_disagreement_rate_ci_low",
    "prodlens_shadow_disagreement_rate_ci_high", "prodlens_shadow_accuracy", "prodlens_shadow_diff_mean",
    "prodlens_shadow_diff_mean_ci_low", "prodlens_shadow_diff_mean_ci_high", "prodlens_shadow_abs_diff",
    "prodlens_shadow_mae",
})
NOT_YET_PRODUCED_VALUE = "not-yet-produced"


def awaited(expr: str) -> set[str]:
    """The NOT_YET_PRODUCED metrics a PromQL expression queries."""
    return set(re.findall(r"\b(prodlens_\w+)", expr)) & NOT_YET_PRODUCED


pytestmark = [pytest.mark.broker, pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="needs the prometheus binary (Debian package 'prometheus'; .ci/run installs it)")]


@dataclass
class Live:
    prometheus: PrometheusServer
    start: float
    end: float
    tally: Tally
    config: object

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.prometheus.port}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # a bad query: Prometheus says why in the body
            body = json.loads(exc.read())
        return body

    def run(self, expr: str, instant: bool, step: float) -> dict:
        if instant:
            return self.get("/api/v1/query", query=expr, time=self.end)
        return self.get("/api/v1/query_range", query=expr, start=self.start, end=self.end, step=step)


def merge(tallies: list) -> Tally:
    out = Tally()
    for t in tallies:
        for key, n in t.predictions.items():
            out.predictions[key] = out.predictions.get(key, 0) + n
        for field in ("malformed", "duplicates", "messages"):
            for key, n in getattr(t, field).items():
                getattr(out, field)[key] = getattr(out, field).get(key, 0) + n
    return out


@pytest.fixture(scope="module")
def live(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    path = make_config(tmp, prefix)
    config = load(path)
    asyncio.run(ensure_topics(kafka_bootstrap, config))
    worker = Worker(path, kafka_bootstrap, tmp / "worker.log").start()
    prometheus = PrometheusServer([f"127.0.0.1:{worker.port}"], tmp, rule_files=RULE_FILES).start()
    start = time.time()
    try:
        # Two bursts, like steady traffic: counters created by the first (a rejection reason's
        # series appears with its first rejection) increase in the second, so rates see them.
        # 5% malformed messages: enough dead letters for ProdlensDeadLettersHigh (> 2%) to go pending.
        scenario = Scenario(batch=20, malformed_share=0.05, duplicate_share=0.02)
        t0, tallies = time.time() - 60, []

        def value(q):
            result = prometheus.query(q)
            return float(result[0]["value"][1]) if result else None
        for i in range(2):
            tallies.append(asyncio.run(simulate_burst(kafka_bootstrap, config, 1500, start=t0 + 30 * i,
                                                      rate=50, scenario=scenario, seed=7 + i)))
            sent = sum(sum(t.messages.values()) for t in tallies)
            wait_for(lambda: metric(worker.metrics(), "prodlens_messages_consumed_total") >= sent,
                     what="the worker to consume every message")
            expected = sum(sum(t.predictions.values()) for t in tallies)
            wait_for(lambda: value("sum(prodlens_predictions_total)") == expected, timeout=30,
                     what="prometheus to scrape the final prediction count")
        tally = merge(tallies)
        models = {m for (m, _, _) in tally.predictions}
        wait_for(lambda: value("count(count by (model) (prodlens_window_predictions))") == len(models),
                 timeout=30, what="closed windows of every model in prometheus")
        wait_for(lambda: prometheus.query('ALERTS{alertname="ProdlensDeadLettersHigh"}'), timeout=30,
                 what="the dead-letter alert to go pending")
        time.sleep(3 * SCRAPE_INTERVAL)  # a few scrapes of the settled state
        yield Live(prometheus, start, time.time(), tally, config)
    finally:
        prometheus.stop()
        worker.stop()


# -- Grafana's variable interpolation --------------------------------------------------------------
def regex_escape(value: str) -> str:
    """Grafana's escaping of a multi-value variable for a Prometheus regex matcher."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\\\" + m.group(0), value)


def builtins(live: Live) -> dict[str, str]:
    """$__interval, $__rate_interval and $__range as Grafana computes them for the test's range."""
    span = live.end - live.start
    interval = max(SCRAPE_INTERVAL, math.ceil(span / MAX_DATA_POINTS))
    rate_interval = max(interval + SCRAPE_INTERVAL, 4 * SCRAPE_INTERVAL)
    return {"__interval": f"{interval:g}s", "__interval_ms": f"{interval * 1000:g}",
            "__rate_interval": f"{rate_interval:g}s", "__range": f"{math.ceil(span)}s",
            "__range_s": f"{math.ceil(span)}", "__range_ms": f"{math.ceil(span) * 1000}"}


def interpolate(expr: str, values: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"unknown template variable ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$", re.S)


def variable_options(live: Live, variable: dict, values: dict[str, str]) -> list[str]:
    """The options a query variable offers: its label_values query run as Grafana runs it."""
    definition = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    m = LABEL_VALUES.match(definition.strip())
    assert m, f"variable {variable['name']}: only label_values(...) queries are supported: {definition!r}"
    selector, label = m.group(1), m.group(2)
    params = {"start": live.start, "end": live.end}
    if selector:
        params["match[]"] = interpolate(selector, values)
    body = live.get(f"/api/v1/label/{label}/values", **params)
    assert body["status"] == "success", f"variable {variable['name']}: {body}"
    return sorted(body["data"])


def substitutions(live: Live, dashboard: dict) -> list[tuple[str, dict[str, str]]]:
    """Variable settings to try: Grafana's default first (single-value variables at their first
    option, multi-value ones at All), then each single-value option, and each multi-value
    variable narrowed to its first option."""
    base = builtins(live)
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for v in dashboard["templating"]["list"]:
        assert v["type"] in ("query", "datasource"), f"{dashboard['uid']}: unsupported variable {v['name']}"

    def resolve(choice: dict[str, str]) -> dict[str, str] | None:
        values = dict(base, datasource="prodlens-prometheus")
        for v in variables:
            options = variable_options(live, v, values)
            if not options:
                if awaited(v["definition"]):   # tier 2: its metric is not produced yet
                    values[v["name"]] = NOT_YET_PRODUCED_VALUE
                    continue
                return None
            wanted = choice.get(v["name"])
            if wanted == "first" or (wanted is None and not v.get("multi")):
                values[v["name"]] = regex_escape(options[0]) if v.get("multi") else options[0]
            elif wanted is None:
                values[v["name"]] = v["allValue"]
            elif wanted in options:
                values[v["name"]] = wanted
            else:                                # an option of another setting of an earlier variable
                return None
        return values

    # every combination of the single-value variables (a later one's options depend on the earlier
    # ones: the quality metrics of a regression model are not those of a classifier) ...
    singles = [v for v in variables if not v.get("multi")]
    multis = [v for v in variables if v.get("multi")]
    combos: list[dict[str, str]] = [{}]
    for v in singles:
        grown = []
        for combo in combos:
            values = resolve(combo)
            options = variable_options(live, v, values) if values is not None else []
            grown += [{**combo, v["name"]: o} for o in options] or [combo]
        combos = grown
    # ... and the multi-value ones narrowed to their first option, at each first single's value
    anchors = [{}] + list({c.get(singles[0]["name"]) if singles else None: c for c in combos}.values())
    choices: list[dict[str, str]] = [{}] + combos
    for anchor in anchors:
        for i in range(len(multis)):
            choices.append({**anchor, **{m["name"]: "first" for m in multis[:i + 1]}})
    out, seen = [], set()
    for choice in choices:
        values = resolve(choice)
        if values is None:
            continue
        key = tuple(sorted(values.items()))
        if key not in seen:
            seen.add(key)
            out.append((", ".join(f"{k}={v}" for k, v in choice.items()) or "default", values))
    return out


def has_data(body: dict) -> bool:
    """At least one finite sample (NaN-only answers look like data but draw nothing)."""
    for series in body["data"]["result"]:
        points = series.get("values") or [series.get("value")]
        if any(p and math.isfinite(float(p[1])) for p in points):
            return True
    return False


def panel_targets(dashboard: dict):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


# -- the tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_panel_query_returns_data(live, path):
    dashboard = json.loads(path.read_text())
    settings = substitutions(live, dashboard)
    assert settings and settings[0][0] == "default"
    step = float(builtins(live)["__interval"].rstrip("s"))
    errors, data = [], {}
    default_empty = []
    for name, values in settings:
        for panel, target in panel_targets(dashboard):
            key = (panel["id"], target["refId"])
            expr = interpolate(target["expr"], values)
            body = live.run(expr, target.get("instant", False), step)
            if body.get("status") != "success":  # both tiers: a query Prometheus rejects fails
                errors.append(f"[{name}] {panel['title']} {target['refId']}: {body.get('error')}\n  {expr}")
                continue
            found = has_data(body)
            data[key] = data.get(key, False) or found
            if name == "default":
                data.setdefault(("panel", panel["id"]), False)
                data[("panel", panel["id"])] |= found
    assert not errors, "queries failed:\n" + "\n".join(errors)
    tier2 = {(p["id"], t["refId"]) for p, t in panel_targets(dashboard) if awaited(t["expr"])}
    for panel in dashboard["panels"]:
        refs = {(panel["id"], t["refId"]) for t in panel.get("targets", [])}
        if refs and not refs <= tier2 and not data[("panel", panel["id"])]:
            default_empty.append(panel["title"])
    assert not default_empty, f"panels with no data at the default variable values: {default_empty}"
    never = [f"{p['title']} {t['refId']}: {t['expr']}" for p, t in panel_targets(dashboard)
             if not data[(p["id"], t["refId"])] and (p["id"], t["refId"]) not in tier2]
    assert not never, "targets that returned no data under any variable value:\n" + "\n".join(never)
    if tier2:
        warnings.warn(f"{path.name}: {len(tier2)} targets query metrics the test pipeline does not "
                      f"produce yet (NOT_YET_PRODUCED); they were only checked to evaluate")


def test_not_yet_produced_is_true(live):
    """Every NOT_YET_PRODUCED metric is really absent; once the pipeline exports one, its panels
    must return data like every other (take it off the list)."""
    produced = sorted(name for name in NOT_YET_PRODUCED
                      if live.get("/api/v1/query", query=f'count({{__name__="{name}"}})',
                                  time=live.end)["data"]["result"])
    assert not produced, f"the test pipeline now produces {produced}: remove them from NOT_YET_PRODUCED"


def test_tier_two_covers_only_contract_metrics():
    spec = importlib.util.spec_from_file_location("dashboard_files", Path(__file__).with_name("test_dashboard_files.py"))
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    assert NOT_YET_PRODUCED <= set(files.CONTRACT_METRICS) | set(files.REPORT_METRICS)
    assert awaited('max by (v) (prodlens_quality_upper{a="b"}) < on (v) prodlens_window_predictions') == \
        {"prodlens_quality_upper"}


def test_variables_offer_what_the_pipeline_saw(live):
    dashboard = json.loads((REPO / "grafana" / "dashboards" / "model.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    base = builtins(live)
    assert variable_options(live, variables["model"], base) == sorted({m for m, _, _ in live.tally.predictions})
    for model in ("churn", "intent", "eta"):
        values = dict(base, model=model, version=".*")
        versions = {v for m, v, _ in live.tally.predictions if m == model}
        assert set(variable_options(live, variables["version"], values)) == versions
        segments = {",".join(f"{k}={v}" for k, v in sorted(seg))
                    for m, _, seg in live.tally.predictions if m == model}
        assert set(variable_options(live, variables["segment"], values)) == segments
    pipeline = json.loads((REPO / "grafana" / "dashboards" / "pipeline.json").read_text())
    topic = next(v for v in pipeline["templating"]["list"] if v["name"] == "topic")
    t = live.config.topics
    assert set(variable_options(live, topic, base)) == {t.predictions, t.feedback, t.outcomes}


def test_panels_agree_with_the_simulator(live):
    """A few panels whose exact value is known from what the simulator sent."""
    overview = json.loads((REPO / "grafana" / "dashboards" / "overview.json").read_text())
    panels = {p["title"]: p for p in overview["panels"]}
    values = builtins(live)

    def instant(panel: dict, ref: str = "A") -> list[dict]:
        target = next(t for t in panels[panel]["targets"] if t["refId"] == ref)
        body = live.run(interpolate(target["expr"], values), True, 1)
        assert body["status"] == "success", body
        return body["data"]["result"]

    versions = {(m, v) for m, v, _ in live.tally.predictions}
    assert float(instant("Model versions")[0]["value"][1]) == len(versions)
    assert float(instant("Workers up")[0]["value"][1]) == 1
    rows = instant("Per model version")
    assert {(r["metric"]["model"], r["metric"]["version"]) for r in rows} == versions
    alerts = instant("Alerts pending or firing")
    assert {(a["metric"]["alertname"], a["metric"]["topic"]) for a in alerts} == \
        {("ProdlensDeadLettersHigh", live.config.topics.predictions)}


def test_shipped_rule_files_load_and_evaluate(live):
    assert RULE_FILES, "deploy/rules/ ships no *.rules.yml"
    body = live.get("/api/v1/rules")
    assert body["status"] == "success"
    loaded = {(g["file"], g["name"]): {r["name"]: r for r in g["rules"]} for g in body["data"]["groups"]}
    for path in RULE_FILES:
        spec = yaml.safe_load(path.read_text())
        for group in spec["groups"]:
            rules = loaded.get((str(path), group["name"]))
            assert rules is not None, f"{path.name}: group {group['name']} not loaded"
            assert set(rules) == {r.get("alert") or r.get("record") for r in group["rules"]}
            for name, rule in rules.items():
                assert rule["health"] == "ok", f"{path.name} {name}: {rule.get('lastError')}"

