"""Canary ladder: simulated Bernoulli traffic, gating, rollback triggers, state."""

import json

import fastjsonschema
import numpy as np
import pytest

from prodlens.contract import schema_text
from prodlens.experiments.canary import (
    CanaryConfig, CanaryLadder, CanaryMetric, CanaryStep, Decision)
from prodlens.experiments.stats import Moments
from prodlens.sketches.ddsketch import DDSketch

LADDER = tuple(CanaryStep(s, min_duration_s=600, min_samples=1000) for s in (0.01, 0.05, 0.2, 0.5, 1.0))
CONVERSION = CanaryMetric("conversion", "proportion", higher_is_better=True, tolerance=0.10)
ERRORS = CanaryMetric("error_rate", "proportion", higher_is_better=False, tolerance=0.005, relative=False)
VALIDATE = fastjsonschema.compile(json.loads(
    schema_text("decision.v1.json")))


def _config(**kw):
    base = dict(name="ranker", baseline="v1", canary="v2", steps=LADDER, metrics=(CONVERSION, ERRORS),
                tuning_n=20_000, latency_tolerance=None)
    return CanaryConfig(**{**base, **kw})


def _run(p_conv, p_err, seed, rate_per_s=300, minutes=3000, ladder=None):
    """Traffic at ``rate_per_s`` requests/s split by the ladder's share; one evaluation a minute."""
    rng = np.random.default_rng(seed)
    ladder = ladder or CanaryLadder(_config())
    stats = {arm: {"conversion": Moments(), "error_rate": Moments()} for arm in ("base", "can")}
    decisions = []
    for minute in range(1, minutes + 1):
        share = ladder.traffic if ladder.status == "running" else ladder.config.steps[0].traffic
        n = int(rng.poisson(rate_per_s * 60))
        n_can = int(rng.binomial(n, share))
        for arm, k, pc, pe in (("base", n - n_can, 0.10, 0.02), ("can", n_can, p_conv, p_err)):
            stats[arm]["conversion"].merge(Moments.from_counts(int(rng.binomial(k, pc)), k))
            stats[arm]["error_rate"].merge(Moments.from_counts(int(rng.binomial(k, pe)), k))
        d = ladder.evaluate(minute * 60.0, stats["base"], stats["can"])
        VALIDATE(d.to_dict())
        decisions.append(d)
        if ladder.status in ("rolled_back", "promoted"):
            break
    return ladder, decisions


@pytest.mark.parametrize("seed", range(4))
def test_canary_worse_by_the_margin_is_rolled_back_before_20_percent(seed):
    ladder, decisions = _run(p_conv=0.09, p_err=0.02, seed=seed)  # 10 % relative worse = the margin
    assert ladder.status == "rolled_back" and ladder.traffic == 0.0
    assert max(d.traffic for d in decisions[:-1]) < 0.2
    last = decisions[-1]
    assert last.action == "rollback" and any("conversion" in r and "worse" in r for r in last.reasons)


@pytest.mark.parametrize("seed", range(4))
def test_equal_canary_is_promoted_to_100_percent(seed):
    ladder, decisions = _run(p_conv=0.10, p_err=0.02, seed=seed)
    assert ladder.status == "promoted" and ladder.traffic == 1.0
    promotions = [d for d in decisions if d.action == "promote"]
    assert [d.traffic for d in promotions] == [0.05, 0.2, 0.5, 1.0, 1.0]
    assert not any(d.action == "rollback" for d in decisions)
    # every step held for its minimum duration
    times = [0.0] + [d.timestamp for d in promotions]
    assert all(b - a >= 600 for a, b in zip(times, times[1:]))


def test_error_rate_regression_rolls_back():
    ladder, decisions = _run(p_conv=0.10, p_err=0.04, seed=9)  # +2 pt errors, tolerance 0.5 pt
    assert ladder.status == "rolled_back" and max(d.traffic for d in decisions[:-1]) < 0.2
    assert any("error_rate" in r for r in decisions[-1].reasons)


def test_silence_is_insufficient_data_not_failure():
    ladder = CanaryLadder(_config())
    for t in range(0, 48 * 3600, 3600):
        d = ladder.evaluate(float(t), {}, {})
        assert d.action == "insufficient_data" and d.status == "running" and d.traffic == 0.01
    assert any("not enough data" in r for r in d.reasons) and any("canary samples" in r for r in d.reasons)


def test_minimum_duration_gates_promotion():
    ladder = CanaryLadder(_config())
    big = {"conversion": Moments.from_counts(10_000, 100_000), "error_rate": Moments.from_counts(2_000, 100_000)}
    ladder.start(0.0)
    d = ladder.evaluate(300.0, big, big)
    assert d.action == "insufficient_data" and any("300/600 s" in r for r in d.reasons)
    assert all(m["verdict"] == "non_inferior" for m in d.metrics)
    assert ladder.evaluate(600.0, big, big).action == "promote" and ladder.traffic == 0.05


def test_invariant_violations_roll_back_immediately():
    ladder = CanaryLadder(_config(max_invariant_violations=2))
    assert ladder.evaluate(1.0, {}, {}, invariant_violations=2).action == "insufficient_data"
    d = ladder.evaluate(2.0, {}, {}, invariant_violations=3)
    assert d.action == "rollback" and ladder.traffic == 0.0 and "invariant" in d.reasons[1]
    again = ladder.evaluate(3.0, {}, {})
    assert again.action == "hold" and again.status == "rolled_back" and again.traffic == 0.0


def _latency(rng, scale, n):
    s = DDSketch()
    s.update_many(rng.lognormal(np.log(scale), 0.4, n))
    return s


def test_latency_regression():
    rng = np.random.default_rng(0)
    big = {"conversion": Moments.from_counts(10_000, 100_000), "error_rate": Moments.from_counts(2_000, 100_000)}
    cfg = _config(latency_tolerance=1.2, min_latency_samples=500)
    # twice as slow: confident regression, rollback
    ladder = CanaryLadder(cfg)
    d = ladder.evaluate(1.0, big, big, baseline_latency=_latency(rng, 20, 5000), canary_latency=_latency(rng, 40, 2000))
    assert d.action == "rollback" and d.latency["verdict"] == "worse" and d.latency["ratio"] > 1.8
    # 25 % slower on few samples: over the tolerance but not confirmed, holds the step
    ladder = CanaryLadder(cfg)
    ladder.start(0.0)
    d = ladder.evaluate(700.0, big, big, baseline_latency=_latency(rng, 20, 600),
                        canary_latency=_latency(rng, 25, 600))
    assert d.latency["ratio"] > 1.2 and d.latency["ratio_lower_bound"] < 1.2
    assert d.action == "hold" and any("latency" in r for r in d.reasons)
    # same speed: promotes
    ladder = CanaryLadder(cfg)
    ladder.start(0.0)
    d = ladder.evaluate(700.0, big, big, baseline_latency=_latency(rng, 20, 5000),
                        canary_latency=_latency(rng, 20, 2000))
    assert d.action == "promote" and d.latency["verdict"] == "non_inferior"
    # too few latency samples: not judged
    d = CanaryLadder(cfg).evaluate(1.0, big, big, baseline_latency=_latency(rng, 20, 100),
                                   canary_latency=_latency(rng, 90, 100))
    assert d.latency["verdict"] == "insufficient_data" and d.action != "rollback"


def test_max_duration_rolls_back_an_undecided_step():
    steps = (CanaryStep(0.05, 60, 0, max_duration_s=3600), CanaryStep(1.0))
    ladder = CanaryLadder(_config(steps=steps, metrics=(CONVERSION,)))
    ladder.start(0.0)
    noisy = {"conversion": Moments.from_counts(100, 1000)}
    canary = {"conversion": Moments.from_counts(95, 1000)}  # CI far wider than the margin
    assert ladder.evaluate(1800.0, noisy, canary).action == "hold"
    d = ladder.evaluate(3700.0, noisy, canary)
    assert d.action == "rollback" and "still undecided" in d.reasons[0]


def test_blue_green_and_manual_rollback():
    cfg = CanaryConfig.blue_green("switch", "blue", "green", (CONVERSION,), min_duration_s=300,
                                  latency_tolerance=None)
    assert len(cfg.steps) == 1 and cfg.steps[0].traffic == 1.0
    ladder = CanaryLadder(cfg)
    ladder.start(0.0)
    assert ladder.traffic == 1.0
    blue = {"conversion": Moments.from_counts(20_000, 200_000)}  # frozen pre-switch window
    green = {"conversion": Moments.from_counts(20_100, 200_000)}
    assert ladder.evaluate(100.0, blue, green).action == "insufficient_data"
    d = ladder.evaluate(400.0, blue, green)
    assert d.action == "promote" and d.status == "promoted" and ladder.traffic == 1.0
    other = CanaryLadder(cfg)
    other.start(0.0)
    d = other.rollback(5.0, "pager: checkout errors")
    assert d.action == "rollback" and other.traffic == 0.0 and d.reasons == ["pager: checkout errors"]
    assert other.experiment().weights == (1.0, 0.0)


def test_state_round_trip_continues_identically():
    ladder, _ = _run(0.10, 0.02, seed=1, minutes=75)
    assert ladder.status == "running" and ladder.step >= 1
    restored = CanaryLadder.from_dict(json.loads(json.dumps(ladder.to_dict())))
    assert restored.to_dict() == ladder.to_dict()
    a, da = _run(0.10, 0.02, seed=2, minutes=60, ladder=ladder)
    b, db = _run(0.10, 0.02, seed=2, minutes=60, ladder=restored)
    assert [d.to_dict() for d in da] == [d.to_dict() for d in db]
    assert Decision.from_dict(da[-1].to_dict()) == da[-1]
    exp = ladder.experiment()
    assert exp.variants == ("v1", "v2") and exp.weights[1] == ladder.traffic and not exp.sticky


@pytest.mark.parametrize("kw,match", [
    (dict(steps=(CanaryStep(0.2), CanaryStep(0.1))), "increase"),
    (dict(steps=()), "at least one step"),
    (dict(canary="v1"), "differ"),
    (dict(latency_quantile=1.5), "latency_quantile"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _config(**kw)
    with pytest.raises(ValueError, match="tolerance"):
        CanaryMetric("m", tolerance=0)
    with pytest.raises(ValueError, match="traffic"):
        CanaryStep(0.0)
    assert CanaryConfig.from_dict(json.loads(json.dumps(_config().to_dict()))) == _config()
