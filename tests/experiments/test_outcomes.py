"""Outcome join: per-unit aggregation, attribution window, bounded memory, state."""

import json
from collections import defaultdict

import numpy as np
import pytest

from prodlens.experiments.outcomes import ExperimentOutcomes, OutcomeJoiner, OutcomeMetric
from prodlens.experiments.stats import Moments

METRICS = (OutcomeMetric("conversion", "any"), OutcomeMetric("revenue", "sum"), OutcomeMetric("orders", "count"))
CFG = [ExperimentOutcomes("exp", ("a", "b"), METRICS)]


def _simulate(seed=0, units=3000, horizon=1000.0):
    """Random exposures and outcomes, plus the per-unit truth computed independently."""
    rng = np.random.default_rng(seed)
    exposures, outcomes = [], []
    for i in range(units):
        t0 = float(rng.uniform(0, 500))
        exposures.append(("exp", "ab"[rng.integers(2)], f"u{i}", t0))
        for _ in range(rng.poisson(1.2)):
            metric = ["conversion", "revenue", "orders"][rng.integers(3)]
            value = float(rng.choice([0.0, 1.0])) if metric == "conversion" else float(rng.exponential(20))
            outcomes.append((f"u{i}", metric, value, t0 + float(rng.uniform(-50, 1200))))
    for j in range(200):  # outcomes of units never exposed
        outcomes.append((f"stranger{j}", "revenue", 5.0, 100.0))
    order = rng.permutation(len(outcomes))
    return exposures, [outcomes[k] for k in order], horizon


def _truth(exposures, outcomes, horizon):
    variant = {u: (v, t0) for _, v, u, t0 in exposures}
    per_unit = defaultdict(lambda: {"conversion": 0.0, "revenue": 0.0, "orders": 0.0})
    for _, _, u, _ in exposures:
        per_unit[u]  # every exposed unit is an observation, outcome or not
    for u, metric, value, t in outcomes:
        if u not in variant or not variant[u][1] <= t <= variant[u][1] + horizon:
            continue
        agg = per_unit[u]
        if metric == "conversion":
            agg[metric] = max(agg[metric], 1.0 if value > 0 else 0.0)
        elif metric == "revenue":
            agg[metric] += value
        else:
            agg[metric] += 1.0
    truth = defaultdict(Moments)
    for u, agg in per_unit.items():
        for metric, x in agg.items():
            truth[(metric, variant[u][0])].update(x)
    return truth


def test_join_equals_per_unit_truth():
    exposures, outcomes, horizon = _simulate()
    j = OutcomeJoiner(CFG, horizon_s=horizon)
    j.expose_many(*zip(*exposures))
    j.outcome_many(*zip(*outcomes))
    truth = _truth(exposures, outcomes, horizon)
    stats = j.stats["exp"]
    for (metric, v), m in truth.items():
        got = stats.moments(metric, v)
        assert got.n == m.n
        assert got.sum == pytest.approx(m.sum, rel=1e-9)
        assert got.sum_sq == pytest.approx(m.sum_sq, rel=1e-9)
    assert sum(stats.exposures.values()) == 3000
    assert j.counters["unmatched_outcomes"] == j.counters["early_outcomes"] == 200  # strangers wait ...
    j.expire(now=100.0 + j.early_horizon_s + 1)
    assert j.counters["early_dropped"] == 200 and not j._early                     # ... in vain
    assert j.counters["before_exposure"] > 0 and j.counters["after_horizon"] > 0
    assert OutcomeMetric("conversion", "any").kind == "proportion"
    assert 0 <= stats.moments("conversion", "a").mean <= 1


def test_exposure_rules():
    j = OutcomeJoiner(CFG)
    assert j.expose("exp", "a", "u1", 10.0)
    assert not j.expose("exp", "a", "u1", 11.0)
    assert not j.expose("exp", "b", "u1", 12.0)
    assert not j.expose("other", "a", "u2", 10.0)
    assert not j.expose("exp", "zzz", "u2", 10.0)
    c = j.counters
    assert (c["exposures"], c["duplicate_exposures"], c["conflicting_exposures"], c["unknown_experiment"],
            c["unknown_variant"]) == (1, 1, 1, 1, 1)
    assert j.variant_of("exp", "u1") == "a"
    assert j.stats["exp"].moments("revenue", "a").n == 1
    assert j.outcome("u1", "nps", 3.0, 20.0) == 0 and c["unknown_metric"] == 1


def test_any_counts_a_unit_once_and_skew_tolerance():
    j = OutcomeJoiner(CFG, skew_s=5.0)
    j.expose("exp", "b", "u", 100.0)
    for t in (96.0, 101.0, 150.0):
        j.outcome("u", "conversion", 1.0, t)
    j.outcome("u", "conversion", 1.0, 90.0)  # before exposure, beyond the skew
    m = j.stats["exp"].moments("conversion", "b")
    assert m.to_dict() == {"n": 1, "sum": 1.0, "sum_sq": 1.0}
    assert j.counters["before_exposure"] == 1


def test_experiment_specific_outcomes_and_fan_out():
    cfg = [ExperimentOutcomes("e1", None, (OutcomeMetric("revenue"),)),
           ExperimentOutcomes("e2", None, (OutcomeMetric("revenue"), OutcomeMetric("clicks", "count")))]
    j = OutcomeJoiner(cfg)
    j.expose("e1", "x", "u", 0.0)
    j.expose("e2", "y", "u", 0.0)
    assert j.outcome("u", "revenue", 10.0, 1.0) == 2
    assert j.outcome("u", "revenue", 5.0, 1.0, experiment="e2") == 1
    assert j.outcome("u", "clicks", 1.0, 1.0) == 1
    assert j.stats["e1"].moments("revenue", "x").sum == 10.0
    assert j.stats["e2"].moments("revenue", "y").to_dict() == {"n": 1, "sum": 15.0, "sum_sq": 225.0}


def test_expiry_and_eviction_are_counted():
    j = OutcomeJoiner(CFG, horizon_s=100.0, max_units=50)
    for i in range(80):
        j.expose("exp", "a", f"u{i}", float(i))
    assert len(j) == 50 and j.counters["evicted"] == 30
    assert j.outcome("u0", "revenue", 1.0, 10.0) == 0  # evicted: waits as if not exposed yet
    assert j.counters["unmatched_outcomes"] == j.counters["early_outcomes"] == 1
    assert j.expire(now=140.0) == 10  # exposures at t < 40 expired (u30..u39)
    assert j.expire(now=10.0 + j.early_horizon_s + 1) == 40
    assert j.counters["early_dropped"] == 1
    assert len(j) == 0 and j.counters["expired"] == 50
    assert j.stats["exp"].exposures["a"] == 80  # contributions stay
    assert j.outcome("u79", "revenue", 2.0, 150.0) == 0


def test_round_trip_and_merge_of_partitions():
    exposures, outcomes, horizon = _simulate(seed=4, units=1000)
    whole = OutcomeJoiner(CFG, horizon_s=horizon)
    parts = [OutcomeJoiner(CFG, horizon_s=horizon) for _ in range(3)]
    part_of = lambda u: hash(u) % 3  # noqa: E731  (partitioned by unit, as the stream layer must)
    for e in exposures:
        whole.expose(*e)
        parts[part_of(e[2])].expose(*e)
    half = len(outcomes) // 2
    for o in outcomes[:half]:
        whole.outcome(*o)
        parts[part_of(o[0])].outcome(*o)
    # checkpoint / restore mid-stream, then continue
    parts = [OutcomeJoiner.from_dict(json.loads(json.dumps(p.to_dict()))) for p in parts]
    for o in outcomes[half:]:
        whole.outcome(*o)
        parts[part_of(o[0])].outcome(*o)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.counters["merge_duplicates"] == 0
    for metric in ("conversion", "revenue", "orders"):
        for v in "ab":
            a, b = merged.stats["exp"].moments(metric, v), whole.stats["exp"].moments(metric, v)
            assert a.n == b.n and a.sum == pytest.approx(b.sum) and a.sum_sq == pytest.approx(b.sum_sq)
    restored = OutcomeJoiner.from_dict(whole.to_dict())
    assert restored.to_dict() == whole.to_dict()


def test_config_errors():
    with pytest.raises(ValueError, match="aggregation"):
        OutcomeMetric("x", "median")
    with pytest.raises(ValueError, match="unique"):
        ExperimentOutcomes("e", None, (OutcomeMetric("x"), OutcomeMetric("x", "count")))
    with pytest.raises(ValueError, match="twice"):
        OutcomeJoiner(CFG + CFG)
    with pytest.raises(ValueError, match="horizon_s"):
        OutcomeJoiner(CFG, horizon_s=0)
    with pytest.raises(ValueError, match="same length"):
        OutcomeJoiner(CFG).expose_many(["exp"], ["a", "b"], ["u"], [1.0])
    with pytest.raises(ValueError, match="finite"):
        j = OutcomeJoiner(CFG)
        j.expose("exp", "a", "u", 0.0)
        j.outcome("u", "revenue", float("nan"), 1.0)


def test_outcomes_before_their_exposure_wait_and_match_exactly():
    """Exposures and outcomes come from different topics: any arrival order gives the statistics
    of the in-order join (outcomes arriving first wait for their unit's exposure)."""
    exposures, outcomes, horizon = _simulate(seed=7, units=800)
    in_order = OutcomeJoiner(CFG, horizon_s=horizon)
    in_order.expose_many(*zip(*exposures))
    in_order.outcome_many(*zip(*outcomes))
    rng = np.random.default_rng(1)
    events = [("x", e) for e in exposures] + [("o", o) for o in outcomes]
    shuffled = OutcomeJoiner(CFG, horizon_s=horizon)
    for k in rng.permutation(len(events)):
        kind, e = events[k]
        if kind == "x":
            shuffled.expose(*e)
        else:
            shuffled.outcome(*e)
        if k % 97 == 0:  # snapshots mid-stream restore exactly, waiting outcomes included
            shuffled = OutcomeJoiner.from_dict(json.loads(json.dumps(shuffled.to_dict())))
    for metric in ("conversion", "revenue", "orders"):
        for v in "ab":
            a, b = in_order.stats["exp"].moments(metric, v), shuffled.stats["exp"].moments(metric, v)
            assert (a.n, a.sum) == pytest.approx((b.n, b.sum), rel=1e-9)
    assert shuffled.counters["early_matched"] > 0
    waiting = len(shuffled._early)
    assert waiting == 200          # only the strangers' outcomes still wait
    shuffled.expire(now=100.0 + shuffled.early_horizon_s + 1)
    assert len(shuffled._early) == 0 and shuffled.counters["early_dropped"] == 200
    c = shuffled.counters   # unmatched on arrival = matched later + given up
    assert c["unmatched_outcomes"] == c["early_matched"] + c["early_dropped"]


def test_waiting_outcomes_are_bounded():
    j = OutcomeJoiner(CFG, max_early=10)
    for i in range(25):
        j.outcome(f"u{i}", "revenue", 1.0, float(i))
    assert len(j._early) == 10 and j.counters["early_dropped"] == 15   # the oldest go first
    assert j.expose("exp", "a", "u24", 20.0) and j.stats["exp"].moments("revenue", "a").sum == 1.0
    assert j.expose("exp", "a", "u0", 0.0) and j.stats["exp"].moments("revenue", "a").sum == 1.0
    off = OutcomeJoiner(CFG, max_early=0)
    off.outcome("u", "revenue", 1.0, 0.0)
    assert off.counters["unmatched_outcomes"] == 1 and not off._early and not off.counters["early_outcomes"]
