"""AlertingAnalyser: rules over an analysis partition's metrics, one event per transition, restart-safe."""

from __future__ import annotations

import json

import fastjsonschema
import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from prodlens.alerts.rules import AlertConfigError
from prodlens.alerts.sinks import LogSink, SinkConfigError, WebhookSink
from prodlens.analysis.alerting import AlertingAnalyser, sinks_from_config
from prodlens.analysis.invariants import InvariantAnalyser
from prodlens.config import load_config
from prodlens.contract import load_schema

LABELS = {"model": "churn", "version": "v7", "segment": "country=US", "metric": "accuracy", "class": "",
          "view": "window"}
ACC = {"name": "AccuracyLow", "metric": "prodlens_quality", "match": {"metric": "accuracy", "view": "window"},
       "condition": "below", "threshold": 0.80, "resolve_threshold": 0.85, "min_samples": 100,
       "severity": "critical", "summary": "accuracy of {model} {version} is {$value:.2f}"}
VALIDATE = fastjsonschema.compile(load_schema("alert.v1.json"))


def config(rules=(ACC,), interval="30s", **alerts):
    return load_config(data={"models": {"churn": {"output": "binary"}},
                             "alerts": {"evaluation_interval": interval, "rules": list(rules), **alerts}})


def quality(value, n=1000, **labels):
    lab = {**LABELS, **labels}
    g = GaugeMetricFamily("prodlens_quality", "quality", labels=list(lab))
    g.add_metric(list(lab.values()), value)
    gn = GaugeMetricFamily("prodlens_quality_n", "n", labels=list(lab))
    gn.add_metric(list(lab.values()), n)
    return [g, gn]


def run(analyser, values, start=0.0, step=30.0, make=quality):
    """Evaluate a series (None: the series is absent); [(time, status)] and all emits."""
    out, emits = [], []
    for i, v in enumerate(values):
        t = start + i * step
        e, events = analyser.evaluate(t, make(v) if v is not None else [])
        assert [rec for _, _, rec in e] == [ev.to_dict() for ev in events]
        out += [(t, ev.status) for ev in events]
        emits += e
    return out, emits


def metric(families, name, **labels):
    for f in families:
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_degrade_then_recover_gives_exactly_one_firing_and_one_resolved():
    a = AlertingAnalyser(config())
    events, emits = run(a, [0.9, 0.9, 0.7, 0.72, 0.75, 0.7, 0.9, 0.92, 0.9])
    assert events == [(60.0, "firing"), (180.0, "resolved")]
    assert [topic for topic, _, _ in emits] == ["prodlens.alerts"] * 2
    for topic, key, rec in emits:
        VALIDATE(json.loads(json.dumps(rec)))                              # schemas/alert.v1.json
        assert key == rec["fingerprint"].encode()
    fire, res = emits[0][2], emits[1][2]
    assert fire["labels"] == {**LABELS, "alertname": "AccuracyLow", "severity": "critical"}
    assert fire["annotations"]["summary"] == "accuracy of churn v7 is 0.70"
    assert res["starts_at"] == fire["starts_at"] == 60.0 and res["ends_at"] == 180.0
    fams = list(a.collect())
    assert metric(fams, "prodlens_alerts_firing", alertname="AccuracyLow", severity="critical") == 0
    assert metric(fams, "prodlens_alert_transitions_total", alertname="AccuracyLow", state="firing") == 1
    assert metric(fams, "prodlens_alert_transitions_total", alertname="AccuracyLow", state="resolved") == 1


def test_oscillating_around_the_threshold_does_not_flap():
    a = AlertingAnalyser(config())
    wobble = [0.79, 0.81, 0.79, 0.82, 0.78, 0.84, 0.79, 0.81] * 3        # never back to 0.85
    events, _ = run(a, [0.9] + wobble + [0.86, 0.9])
    assert events == [(30.0, "firing"), (750.0, "resolved")]
    # without hysteresis the same series would flap
    flappy = AlertingAnalyser(config([{**ACC, "resolve_threshold": None}]))
    events, _ = run(flappy, [0.9] + wobble)
    assert len(events) > 10


def test_for_duration_and_min_samples():
    a = AlertingAnalyser(config([{**ACC, "for": "90s"}]))
    events, _ = run(a, [0.7, 0.7, 0.7, 0.9, 0.7, 0.7, 0.7, 0.7])
    assert events == [(210.0, "firing")]                      # pending again from 120 s, held 90 s
    few = AlertingAnalyser(config())
    events, _ = run(few, [0.5] * 5, make=lambda v: quality(v, n=20))
    assert events == []                                        # 20 < min_samples 100: no verdict


def test_evaluates_once_per_evaluation_interval():
    a = AlertingAnalyser(config([{**ACC, "for_evaluations": 2}], interval="30s"))
    got = []
    for t in range(0, 61):                                    # the processor ticks every second
        got += [(t, e.status) for e in a.evaluate(float(t), quality(0.5))[1]]
    assert got == [(30, "firing")]                            # evaluations at 0 and 30 s


def test_restart_mid_firing_neither_loses_nor_refires():
    cfg = config()
    a = AlertingAnalyser(cfg)
    events, _ = run(a, [0.9, 0.7, 0.7])
    assert events == [(30.0, "firing")]
    state = json.loads(json.dumps(a.to_dict()))
    assert state["engine"]["outbox"] == []                    # published with the tick: not kept in the snapshot
    b = AlertingAnalyser(cfg)
    b.restore(state)
    assert b.to_dict() == state
    assert metric(list(b.collect()), "prodlens_alerts_firing", alertname="AccuracyLow") == 1
    assert [e.status for e in b.firing()] == ["firing"]
    events, emits = run(b, [0.7, 0.7, 0.82, 0.9, 0.9], start=90.0)
    assert events == [(180.0, "resolved")]
    assert emits[0][2]["starts_at"] == 30.0                   # the alert that fired before the restart
    assert metric(list(b.collect()), "prodlens_alert_transitions_total", state="firing") == 1
    assert metric(list(b.collect()), "prodlens_alert_transitions_total", state="resolved") == 1


def test_rule_removed_across_a_restart_resolves_its_firing_alert():
    a = AlertingAnalyser(config())
    run(a, [0.7])
    other = {**ACC, "name": "AccuracyVeryLow", "threshold": 0.5, "resolve_threshold": 0.55}
    b = AlertingAnalyser(config([other]))
    b.restore(json.loads(json.dumps(a.to_dict())))
    events, emits = run(b, [0.7], start=30.0)
    assert events == [(30.0, "resolved")]
    assert "removed from the config" in emits[0][2]["annotations"]["resolved_reason"]


def test_no_data_only_judges_series_seen_on_this_partition():
    rule = {"name": "NoLabels", "metric": "prodlens_quality_n", "match": {"metric": "accuracy"},
            "condition": "no_data", "for": "60s", "severity": "warning"}
    a = AlertingAnalyser(config([rule]))
    events, _ = run(a, [None] * 6)                           # this partition never had churn: silent
    assert events == []
    events, _ = run(a, [0.9, 0.9, None, None, None, None, 0.9], start=200.0)
    assert events == [(320.0, "firing"), (380.0, "resolved")]  # vanished at 260, fired after 60 s


def test_invariant_metrics_drive_an_alert_once_then_resolve():
    cfg = load_config(data={
        "models": {"churn": {"output": "binary"}},
        "invariants": {"churn": [{"name": "age_range", "kind": "range", "field": "features.age",
                                  "min": 0, "max": 120}]},
        "alerts": {"evaluation_interval": "60s", "rules": [{
            "name": "InvariantViolated", "metric": "prodlens_invariant_violations_total",
            "function": {"increase": "2m"}, "condition": "above", "threshold": 0,
            "description": "{invariant} violated by {model} {version}: {$value:.0f} in 2m"}]}})
    inv, alerting = InvariantAnalyser(cfg, settle=1.0), AlertingAnalyser(cfg)
    got = []
    for w in range(10):
        failed = 3 if w in (3, 4) else 0
        for src in range(2):
            inv.update(b"churn", {
                "type": "invariant_window", "source": f"prodlens.predictions:{src}", "seq": w, "model": "churn",
                "version": "v7", "segment": "__all__", "invariant": "age_range", "kind": "range",
                "window_start": w * 60.0, "window_end": (w + 1) * 60.0, "checked": 50, "failed": failed,
                "errors": 0, "unpaired": 0, "violations": failed, "status": "violated" if failed else "ok",
                "value": failed / 50, "bound": {}, "samples": []}, now=w * 60.0 + 5)
        now = w * 60.0 + 10
        inv.tick(now)
        emits, events = alerting.evaluate(now, inv.collect())
        got += [(e.status, e.labels["invariant"], e.annotations["description"]) for e in events]
    assert got == [("firing", "age_range", "age_range violated by churn v7: 6 in 2m"),
                   ("resolved", "age_range", "age_range violated by churn v7: 0 in 2m")]


def test_counter_families_are_matched_by_their_exported_name():
    rule = {"name": "Orphans", "metric": "prodlens_feedback_orphaned_total", "condition": "above",
            "threshold": 10}
    a = AlertingAnalyser(config([rule]))
    fam = CounterMetricFamily("prodlens_feedback_orphaned", "", labels=["reason"])
    fam.add_metric(["expired"], 11, created=5.0)
    _, events = a.evaluate(0.0, [fam])
    assert [(e.status, e.labels["reason"]) for e in events] == [("firing", "expired")]


def test_bad_rules_fail_at_construction_naming_the_rule():
    with pytest.raises(AlertConfigError, match=r"alerts.rules\[0\] \('AccuracyLow'\).threshold"):
        AlertingAnalyser(config([{**ACC, "threshold": "low"}]))


def test_rules_on_metrics_the_stage_does_not_export_are_reported():
    rules = [ACC, {"name": "NoTraffic", "metric": "prodlens_predictions_total", "function": {"increase": "10m"},
                   "condition": "no_data", "for": "10m"}]
    a = AlertingAnalyser(config(rules), catalogue={"prodlens_quality": (), "prodlens_quality_n": ()})
    assert a.unevaluated == ["NoTraffic"]


def test_sinks_from_config():
    cfg = config(sinks=[{"kind": "log"}, {"kind": "topic"},
                        {"kind": "webhook", "url_env": "HOOK", "secret": "s3cret", "timeout": "2s"}])
    sinks = sinks_from_config(cfg, env={"HOOK": "https://hooks.example.com/x"})
    assert [type(s) for s in sinks] == [LogSink, WebhookSink]          # the topic is written by the stage
    assert sinks[1].url == "https://hooks.example.com/x" and sinks[1].timeout == 2.0
    assert sinks_from_config(config()) == []
    with pytest.raises(SinkConfigError, match=r"alerts.sinks\[1\] \(webhook\).url_env: environment variable HOOK"):
        sinks_from_config(config(sinks=[{"kind": "log"}, {"kind": "webhook", "url_env": "HOOK"}]), env={})
    with pytest.raises(AlertConfigError, match="alerts.sinks: must be a list of mappings"):
        sinks_from_config(config(sinks="log"))


def test_documented_yaml_example_is_valid():
    import textwrap

    import yaml

    import prodlens.analysis.alerting as mod
    text = mod.__doc__.split("prodlens.yaml; rules in")[1].split("::", 1)[1].split("The alerts topic")[0]
    section = yaml.safe_load(textwrap.dedent(text))["alerts"]
    cfg = load_config(data={"models": {"churn": {"output": "binary"}}, "alerts": section})
    from prodlens.alerts.rules import parse_alerts
    assert len(parse_alerts(section).rules) == 3
    env = {"PRODLENS_WEBHOOK_URL": "https://h.example.com", "PRODLENS_WEBHOOK_SECRET": "x"}
    assert [s.name for s in sinks_from_config(cfg, env=env)] == ["log", "webhook", "alertmanager"]
