"""Alert lifecycle: pending -> firing -> resolved, one event per transition, no flapping, restarts."""

from __future__ import annotations

import json

import fastjsonschema
import orjson
import pytest

from prodlens.alerts.rules import Sample, parse_alerts
from prodlens.alerts.state import AlertEngine, AlertEvent, fingerprint
from prodlens.contract import load_schema

LABELS = {"model": "churn", "version": "v7", "segment": "country=US", "metric": "accuracy"}


def engine(*rules, catalogue=None):
    return AlertEngine(parse_alerts(list(rules), catalogue=catalogue))


def q(value, n=1000, **labels):
    lab = {**LABELS, **labels}
    return [Sample("prodlens_quality", lab, value), Sample("prodlens_quality_n", lab, n)]


def run(eng, values, step=30.0, start=0.0, make=q):
    """Evaluate a series of values; returns [(time, status)] of every event."""
    out = []
    for i, v in enumerate(values):
        t = start + i * step
        out += [(t, e.status) for e in eng.evaluate(t, make(v) if v is not None else [])]
    return out


ACC = {"name": "AccuracyLow", "metric": "prodlens_quality", "match": {"metric": "accuracy"},
       "condition": "below", "threshold": 0.8, "resolve_threshold": 0.85, "for": "1m",
       "min_samples": 200, "severity": "critical", "labels": {"team": "ml"},
       "summary": "accuracy of {model} {version} in {segment} is low",
       "description": "accuracy {$value:.3f} is below {$threshold} (n={$n:.0f})",
       "runbook_url": "https://runbooks.example.com/acc"}


def test_pending_firing_resolved_with_exactly_one_event_each():
    eng = engine(ACC)
    events = []
    timeline = [0.9, 0.75, 0.75, 0.75, 0.75, 0.83, 0.9, 0.9]
    for i, v in enumerate(timeline):
        events += [(i, e) for e in eng.evaluate(i * 30.0, q(v))]
        if i == 1:
            assert eng.states()[0]["state"] == "pending"
    assert [(i, e.status) for i, e in events] == [(3, "firing"), (6, "resolved")]
    fire, res = events[0][1], events[1][1]
    assert fire.labels == {**LABELS, "team": "ml", "alertname": "AccuracyLow", "severity": "critical"}
    assert fire.fingerprint == res.fingerprint == fingerprint(fire.labels)
    assert fire.value == 0.75 and fire.threshold == 0.8 and fire.starts_at == 90.0 and fire.ends_at is None
    assert fire.annotations["summary"] == "accuracy of churn v7 in country=US is low"
    assert fire.annotations["description"] == "accuracy 0.750 is below 0.8 (n=1000)"
    assert fire.annotations["runbook_url"] == "https://runbooks.example.com/acc"
    assert res.value == 0.9 and res.threshold == 0.85 and res.starts_at == 90.0 and res.ends_at == 180.0
    assert fire.event_id != res.event_id
    validate = fastjsonschema.compile(load_schema("alert.v1.json"))
    for _, e in events:
        validate(json.loads(orjson.dumps(e.to_dict())))
        assert AlertEvent.from_dict(e.to_dict()) == e


def test_oscillating_around_the_threshold_does_not_flap():
    eng = engine(ACC)
    # Around the fire threshold, never staying below it for `for`: never fires.
    assert run(eng, [0.79, 0.81] * 20) == []
    # Once firing, oscillating between fire and resolve thresholds: fires once, never resolves.
    eng = engine(ACC)
    events = run(eng, [0.7, 0.7, 0.7] + [0.79, 0.82, 0.84, 0.79] * 10)
    assert events == [(60.0, "firing")]
    # Without hysteresis it would flap on every crossing: the test above can fail.
    plain = engine({**ACC, "resolve_threshold": None, "for": 0})
    assert len(run(plain, [0.79, 0.81] * 5)) == 10


def test_for_evaluations_and_keep_firing_for():
    eng = engine({"name": "Slow", "metric": "lat", "condition": "above", "threshold": 100, "for_evaluations": 3,
                  "keep_firing_for": "60s"})
    make = lambda v: [Sample("lat", {"model": "m"}, v)]  # noqa: E731
    events = run(eng, [150, 150, 50, 150, 150, 150, 50, 150, 50, 50, 50, 50], step=10, make=make)
    # 3 consecutive breaches at t=30,40,50; recovers at 60, breach at 70 resets the clock;
    # recovered from 80: resolves 60s later (t=140) -- but the series ends at 110.
    assert events == [(50.0, "firing")]
    events = run(eng, [50] * 5, step=10, start=120, make=make)
    assert events == [(140.0, "resolved")]


def test_min_samples_gives_no_verdict_instead_of_resolving_or_firing():
    eng = engine(ACC)
    assert run(eng, [0.5] * 10, make=lambda v: q(v, n=50)) == []            # too few samples: silent
    eng = engine(ACC)
    events = run(eng, [0.5, 0.5, 0.5], make=lambda v: q(v))
    events += run(eng, [0.99, 0.99], start=90, make=lambda v: q(v, n=10))   # recovers, but n too small
    events += run(eng, [0.99], start=150, make=lambda v: q(v))
    assert events == [(60.0, "firing"), (150.0, "resolved")]
    eng = engine(ACC)
    assert run(eng, [0.5] * 5, make=lambda v: q(v)[:1]) == []                # companion series missing


def test_change_vs_another_version_a_jump_after_release():
    rule = {"name": "ErrorJump", "metric": "prodlens_quality", "match": {"metric": "error_rate"},
            "change": {"vs": {"version": "v6"}}, "condition": "above", "threshold": 0.5,
            "description": "{version} error rate {$raw} vs {$reference}: +{$value:.0%}"}
    eng = engine(rule)

    def make(v7):
        return [Sample("prodlens_quality", {"metric": "error_rate", "version": "v6", "segment": s}, 0.1)
                for s in ("US", "DE")] + [
                Sample("prodlens_quality", {"metric": "error_rate", "version": "v7", "segment": "US"}, v7),
                Sample("prodlens_quality", {"metric": "error_rate", "version": "v7", "segment": "DE"}, 0.11)]
    events = eng.evaluate(0, make(0.25))
    assert [(e.status, e.labels["version"], e.labels["segment"]) for e in events] == [("firing", "v7", "US")]
    assert events[0].value == pytest.approx(1.5)
    assert events[0].annotations["description"] == "v7 error rate 0.25 vs 0.1: +150%"
    assert [e.status for e in eng.evaluate(30, make(0.12))] == ["resolved"]
    # Without the reference series there is no verdict: nothing changes.
    eng.evaluate(60, make(0.3))
    assert eng.evaluate(90, [s for s in make(0.3) if s.labels["version"] != "v6"]) == []
    assert len(eng.firing()) == 1


def test_change_vs_previous_window_uses_sample_timestamps():
    rule = {"name": "TrafficDrop", "metric": "w", "change": {"vs": "previous", "mode": "ratio"},
            "condition": "below", "threshold": 0.5, "resolve_threshold": 0.8}
    eng = AlertEngine(parse_alerts({"window": "60s", "rules": [rule]}, catalogue=None))
    out = []
    # Evaluated every 15 s; the window value changes once a minute (stamped with the window end).
    values = {60: 100, 120: 100, 180: 40, 240: 40, 300: 38, 360: 100}
    for t in range(60, 421, 15):
        end = max(w for w in values if w <= t)
        out += [(t, e.status, e.value) for e in eng.evaluate(t, [Sample("w", {"m": "a"}, values[end], end)])]
    # Between window ends the value is compared with the window before, not with itself
    # (without the stamps the evaluation at 195 s would compare 40 with 40 and resolve).
    assert out == [(180, "firing", 0.4), (240, "resolved", 1.0)]


def test_no_data_absent_series_and_zero_traffic():
    rule = {"name": "NoTraffic", "metric": "prodlens_predictions_total", "match": {"model": "churn"},
            "function": {"increase": "2m"}, "condition": "no_data", "for": "2m"}
    eng = engine(rule)
    series = {"model": "churn", "version": "v7", "segment": "US"}
    out = []
    counter = 0
    for t in range(0, 900, 30):
        if t < 300:
            counter += 10                     # traffic
        samples = [Sample("prodlens_predictions_total", series, counter)] if t < 600 else []
        out += [(t, e.status, e.labels.get("version")) for e in eng.evaluate(t, samples)]
    # No increase from 300 on: increase over 2m is 0 from t=390; fires 2m later; absent from 600: still firing.
    assert out == [(510, "firing", "v7")]
    assert eng.firing()[0].annotations["value"] == "0.0"  # zero increase when it fired
    # Nothing ever seen: the selector's own labels fire.
    eng2 = engine(rule)
    events = [e for t in (0, 60, 120, 180) for e in eng2.evaluate(t, [])]
    assert [(e.status, e.labels) for e in events] == [
        ("firing", {"model": "churn", "alertname": "NoTraffic", "severity": "warning"})]
    events = eng2.evaluate(210, [Sample("prodlens_predictions_total", series, 5)])
    assert [e.status for e in events] == ["resolved"]


def test_counter_rate_handles_resets():
    eng = engine({"name": "Rejects", "metric": "rej_total", "function": {"rate": "60s"},
                  "condition": "above", "threshold": 1.2})
    vals = [0, 60, 120, 30, 90]  # a restart between 120 and 30: 30 counts as increase from zero
    events, rates = [], []
    for i, v in enumerate(vals):
        events += eng.evaluate(i * 30.0, [Sample("rej_total", {"topic": "p"}, v)])
        rates.append(eng.states()[0]["value"] if eng.states() else None)
    # t=30: 60/30; t=60: 120/60; t=90: (60 + 30)/60; t=120: (30 + 60)/60
    assert rates == [None, 2.0, 2.0, 1.5, 1.5]
    assert [e.status for e in events] == ["firing"]


def test_restart_neither_loses_nor_duplicates_a_firing_alert():
    eng = engine(ACC)
    assert [s for _, s in run(eng, [0.7, 0.7, 0.7])] == ["firing"]
    state = json.loads(json.dumps(eng.to_dict()))
    restored = AlertEngine.from_dict(state, parse_alerts([ACC], catalogue=None))
    assert restored.to_dict() == eng.to_dict()
    assert [e.to_dict() for e in restored.firing()] == [e.to_dict() for e in eng.firing()]
    # Still breaching after the restart: no second firing event.
    assert run(restored, [0.7, 0.82, 0.7], start=90) == []
    # Recovery: exactly one resolved event, for the alert that fired before the restart.
    events = restored.evaluate(200, q(0.9))
    assert [(e.status, e.starts_at) for e in events] == [("resolved", 60.0)]
    # A pending alert also survives (its `for` clock keeps running).
    eng = engine(ACC)
    run(eng, [0.7])
    restored = AlertEngine.from_dict(eng.to_dict(), parse_alerts([ACC], catalogue=None))
    assert [s for _, s in run(restored, [0.7, 0.7], start=30)] == ["firing"]


def test_removed_rule_resolves_its_firing_alert_and_stale_series_expire():
    eng = engine(ACC)
    run(eng, [0.7, 0.7, 0.7])
    other = {"name": "Other", "metric": "x", "condition": "above", "threshold": 1}
    restored = AlertEngine.from_dict(eng.to_dict(), parse_alerts([other], catalogue=None))
    events = restored.evaluate(100, [])
    assert [(e.status, e.rule) for e in events] == [("resolved", "AccuracyLow")]
    assert events[0].annotations["resolved_reason"] == "the rule was removed from the config"
    assert restored.evaluate(130, []) == []
    # A firing alert whose series vanishes is kept (no verdict) until forget_after, then resolved.
    eng = engine({**ACC, "forget_after": "10m"})
    run(eng, [0.7, 0.7, 0.7])
    assert eng.evaluate(500, []) == []
    events = eng.evaluate(700, [])
    assert [e.status for e in events] == ["resolved"] and "absent" in events[0].annotations["resolved_reason"]
    assert eng.to_dict()["series"] == [] and eng.to_dict()["alerts"] == []


def test_many_series_each_have_their_own_lifecycle():
    eng = engine({**ACC, "for": 0})
    samples = []
    for seg in range(50):
        samples += q(0.5 if seg % 5 == 0 else 0.95, segment=f"s{seg}")
    events = eng.evaluate(0, samples)
    assert {e.labels["segment"] for e in events} == {f"s{i}" for i in range(0, 50, 5)}
    assert eng.evaluate(30, samples) == []
    assert len({e.fingerprint for e in events}) == 10


def test_outbox_redelivers_unacknowledged_events_with_the_same_id_after_a_crash():
    eng = engine(ACC)
    run(eng, [0.7, 0.7])
    (fire,) = eng.evaluate(60, q(0.7))
    checkpoint = json.loads(json.dumps(eng.to_dict()))    # saved, then the worker dies before publishing
    restored = AlertEngine.from_dict(checkpoint, parse_alerts([ACC], catalogue=None))
    (again,) = restored.unacknowledged()
    assert again == fire                                   # same event_id: consumers drop a duplicate
    restored.acknowledge([again.event_id])
    assert restored.unacknowledged() == []
    assert run(restored, [0.7], start=90) == []            # and it does not fire a second time
    (res,) = restored.evaluate(120, q(0.9))
    restored.acknowledge([res])
    assert restored.to_dict()["outbox"] == []


def test_nan_values_give_no_verdict():
    eng = engine({**ACC, "for": 0})
    assert [s for _, s in run(eng, [0.5])] == ["firing"]
    assert run(eng, [float("nan")] * 3, start=30) == []      # neither resolves nor flaps
    assert len(eng.firing()) == 1
    eng = engine({**ACC, "for": 0})
    assert run(eng, [float("nan")] * 3) == []
