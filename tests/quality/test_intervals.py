import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from prodlens.quality.intervals import Estimate, normal_interval, t_interval, t_interval_from_sums, wilson
from prodlens.quality.moments import Comoments, Moments


@given(st.integers(1, 5000), st.data(), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
@settings(max_examples=200, deadline=None)
def test_wilson_equals_statsmodels(n, data, conf):
    k = data.draw(st.integers(0, n))
    e = wilson(k, n, conf)
    lo, hi = proportion_confint(k, n, alpha=1 - conf, method="wilson")
    assert e.value == k / n
    assert e.lower == pytest.approx(lo, abs=1e-12) and e.upper == pytest.approx(hi, abs=1e-12)
    assert e.lower <= e.value <= e.upper


def test_wilson_small_and_empty():
    assert wilson(2, 3).sufficient is False
    assert wilson(2, 3, min_n=3).sufficient is True
    empty = wilson(0, 0)
    assert math.isnan(empty.value) and (empty.lower, empty.upper) == (0.0, 1.0) and not empty.sufficient
    with pytest.raises(ValueError, match="k <= n"):
        wilson(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        wilson(1, 3, confidence=1.5)


@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=200), st.sampled_from([0.9, 0.95, 0.99]))
@settings(max_examples=150, deadline=None)
def test_t_interval_equals_scipy(xs, conf):
    x = np.asarray(xs)
    m = Moments()
    m.update_many(x)
    e = m.estimate(conf)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    assert e.value == pytest.approx(x.mean(), rel=1e-12, abs=1e-9)
    if sem > 0:
        lo, hi = stats.t.interval(conf, x.size - 1, loc=x.mean(), scale=sem)
        assert e.lower == pytest.approx(lo, rel=1e-9, abs=1e-9) and e.upper == pytest.approx(hi, rel=1e-9, abs=1e-9)
    f = t_interval_from_sums(x.size, float(x.sum()), float((x * x).sum()), conf)
    assert f.value == pytest.approx(e.value, rel=1e-9, abs=1e-9)
    # raw sums cancel when the spread is tiny next to the values (the reason Moments exists)
    assert f.half_width == pytest.approx(e.half_width, rel=1e-6, abs=1e-6 * (1 + np.abs(x).max()))


def test_t_interval_tiny_n_says_so():
    e0 = t_interval(0, math.nan, math.nan)
    e1 = t_interval(1, 3.0, math.nan)
    assert math.isnan(e0.value) and not e0.sufficient
    assert e1.value == 3.0 and e1.lower == -math.inf and e1.upper == math.inf and not e1.sufficient
    assert not t_interval(5, 1.0, 1.0).sufficient and t_interval(10, 1.0, 1.0).sufficient


def test_estimate_round_trip_through_json():
    for e in (wilson(3, 7), t_interval(1, 2.0, math.nan), t_interval(0, math.nan, math.nan),
              normal_interval(0.5, 0.1, 30, "delta", error_bound=0.01, lo=0, hi=1)):
        back = Estimate.from_dict(json.loads(json.dumps(e.to_dict())))
        assert back == e


def test_normal_interval_includes_error_bound():
    e = normal_interval(0.5, 0.0, 100, "x", error_bound=0.02, lo=0.0, hi=1.0)
    assert (e.lower, e.upper) == (0.48, 0.52)


chunks = st.lists(st.lists(st.floats(-1e6, 1e6), max_size=50), min_size=1, max_size=6)


@given(chunks)
@settings(max_examples=150, deadline=None)
def test_moments_merge_equals_one_pass(parts):
    merged = Moments()
    for p in parts:
        m = Moments()
        m.update_many(p)
        merged.merge(m)
    allx = np.concatenate([np.asarray(p, dtype=float) for p in parts])
    assert merged.n == allx.size
    if allx.size:
        assert merged.mean == pytest.approx(allx.mean(), rel=1e-9, abs=1e-6)
    if allx.size > 1:
        assert merged.variance == pytest.approx(allx.var(ddof=1), rel=1e-7, abs=1e-3)
    assert Moments.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged


def test_moments_stable_far_from_zero():
    x = 1e9 + np.array([0.1, 0.2, 0.3, 0.4])
    m = Moments()
    for v in x:
        m.update(v)
    assert m.variance == pytest.approx(x.var(ddof=1), rel=1e-6)


def test_comoments_ratio():
    rng = np.random.default_rng(1)
    size = rng.integers(5, 100, 400).astype(float)
    corr = rng.binomial(size.astype(int), 0.1).astype(float)
    c = Comoments()
    c.update_many(size[:150], corr[:150])
    c2 = Comoments()
    c2.update_many(size[150:], corr[150:])
    c.merge(c2)
    e = c.ratio(lo=0.0)
    assert e.value == pytest.approx(corr.sum() / size.sum(), rel=1e-12)
    # linearisation variance, computed directly
    r = corr.sum() / size.sum()
    d = corr - r * size
    se = d.std(ddof=1) / (math.sqrt(size.size) * size.mean())
    assert e.half_width == pytest.approx(stats.t.ppf(0.975, size.size - 1) * se, rel=1e-9)
    assert e.contains(0.1)
    assert Comoments.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="shape"):
        c.update_many([1.0], [1.0, 2.0])
