"""The chain the stream layer wires: invariant results -> Prometheus metrics -> alert rules -> events.

Injected like the simulator does: a boolean feature sent as a string, two versions
disagreeing on the same prediction_id, a flickering prediction. Each is caught, exported
as prodlens_invariant_violations_total, and alerted exactly once, then resolved.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from prodlens.alerts.rules import parse_alerts, samples_from_registry
from prodlens.alerts.state import AlertEngine
from prodlens.invariants import InvariantEvaluator, parse_invariants_section

INVARIANTS = {"churn": [
    {"name": "is_new_is_boolean", "kind": "type", "field": "features.is_new", "type": "boolean"},
    {"name": "shadow_agrees", "kind": "agreement", "reference": {"role": "primary"},
     "candidate": {"role": "shadow"}, "min_agreement": 0.9, "min_pairs": 20, "pair_timeout": "10s"},
    {"name": "no_flicker", "kind": "stability", "max_flips": 2, "within": "30s"},
]}
ALERTS = {"evaluation_interval": "60s", "rules": [{
    "name": "InvariantViolated", "metric": "prodlens_invariant_violations_total",
    "function": {"increase": "2m"}, "condition": "above", "threshold": 0,
    "description": "{invariant} violated by {model} {version} in {segment}: {$value:.0f} in 2m"}]}


def window_events(w: int, *, bad_flag: bool, disagree: bool, flicker: bool) -> list[dict]:
    t0 = w * 60.0
    events = []
    for i in range(40):
        pid, t = f"w{w}p{i}", t0 + i
        label = "stay" if i % 2 else "churn"
        flag = "true" if bad_flag and i == 7 else bool(i % 3)
        events.append({"event_id": f"{pid}a", "prediction_id": pid, "timestamp": t, "model": "churn",
                       "version": "v7", "role": "primary", "unit_id": f"user{i}", "segment": {"country": "US"},
                       "features": {"is_new": flag}, "output": {"label": label}})
        shadow = ("stay" if label == "churn" else "churn") if disagree and i % 3 == 0 else label
        events.append({"event_id": f"{pid}b", "prediction_id": pid, "timestamp": t + 0.2, "model": "churn",
                       "version": "v8", "role": "shadow", "unit_id": f"user{i}", "segment": {"country": "US"},
                       "features": {"is_new": bool(i % 3)}, "output": {"label": shadow}})
    if flicker:
        for k in range(6):
            events.append({"event_id": f"w{w}f{k}", "prediction_id": f"w{w}f{k}", "timestamp": t0 + 45 + k,
                           "model": "churn", "version": "v7", "role": "primary", "unit_id": "car-17",
                           "segment": {"country": "US"}, "features": {"is_new": True},
                           "output": {"label": "car" if k % 2 else "truck"}})
    return events


def test_injected_violations_are_caught_and_alerted_once_then_resolved():
    specs = parse_invariants_section(INVARIANTS, ["churn"])
    by_version = InvariantEvaluator(specs, window_seconds=60, partitioning="version")
    by_pid = InvariantEvaluator(specs, window_seconds=60, partitioning="prediction_id")
    registry = CollectorRegistry()
    violations = Counter("prodlens_invariant_violations", "violations", ["model", "version", "segment", "invariant"],
                         registry=registry)
    engine = AlertEngine(parse_alerts(ALERTS))
    events_out = []
    for w in range(10):
        broken = 3 <= w <= 4  # two bad windows
        batch = window_events(w, bad_flag=broken, disagree=broken, flicker=broken)
        by_version.update_many(batch)
        by_pid.update_many(batch)
        watermark = (w + 1) * 60.0
        for result in by_version.close_windows(watermark) + by_pid.close_windows(watermark + 10):
            violations.labels(**result.labels()).inc(result.violations)
        events_out += engine.evaluate(watermark, samples_from_registry(registry))
    got = sorted((e.status, e.labels["invariant"], e.labels["version"], e.generated_at) for e in events_out)
    assert got == [
        ("firing", "is_new_is_boolean", "v7", 240.0),
        ("firing", "no_flicker", "v7", 240.0),
        ("firing", "shadow_agrees", "v8", 240.0),   # the candidate version is named
        ("resolved", "is_new_is_boolean", "v7", 420.0),
        ("resolved", "no_flicker", "v7", 420.0),
        ("resolved", "shadow_agrees", "v8", 420.0),
    ]
    fire = next(e for e in events_out if e.labels["invariant"] == "is_new_is_boolean")
    assert fire.labels["segment"] == "country=US" and fire.labels["model"] == "churn"
    assert fire.annotations["description"] == "is_new_is_boolean violated by churn v7 in country=US: 1 in 2m"
