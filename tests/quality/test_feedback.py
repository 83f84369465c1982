import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from prodlens.quality.feedback import FeedbackAccumulator


def _feed(acc, rng, n_pred, complaint_p=0.03):
    acc.add_predictions(n_pred)
    kinds, values, fok, fany, delays, sizes, corrected = [], [], [], [], [], [], []
    for i in range(n_pred):
        seen = set()
        for kind, p in (("complaint", complaint_p), ("rating", 0.2), ("implicit", 0.4), ("correction", 0.1),
                        ("complaint", 0.01)):
            if rng.random() < p:
                kinds.append(kind)
                values.append(int(rng.integers(1, 6)) if kind == "rating" else None)
                fok.append(kind not in seen)
                fany.append(not seen)
                seen.add(kind)
                delays.append(float(rng.exponential(3600)))
                if kind == "correction":
                    s = float(rng.integers(10, 50))
                    sizes.append(s)
                    corrected.append(float(rng.binomial(int(s), 0.2)))
                else:
                    sizes.append(None)
                    corrected.append(None)
    acc.update_many(kinds, values, fok, fany, delays, sizes, corrected)
    return kinds, values, fok, fany, delays, sizes, corrected


def test_rates_ratings_ratio_and_delays():
    rng = np.random.default_rng(0)
    acc = FeedbackAccumulator()
    kinds, values, fok, fany, delays, sizes, corrected = _feed(acc, rng, 2000)
    r = acc.result()
    k = np.array(kinds)
    complaint_units = int(((k == "complaint") & np.array(fok)).sum())
    e = r.metrics["complaint_rate"]
    lo, hi = proportion_confint(complaint_units, 2000, method="wilson")
    assert e.value == complaint_units / 2000 and (e.lower, e.upper) == pytest.approx((lo, hi))
    assert e.method == "wilson_error_rate_lower_bound"
    assert r.metrics["label_coverage"].value == sum(fany) / 2000
    ratings = np.array([v for kk, v in zip(kinds, values) if kk == "rating"], dtype=float)
    mr = r.metrics["mean_rating"]
    assert mr.value == pytest.approx(ratings.mean())
    lo, hi = stats.t.interval(0.95, ratings.size - 1, ratings.mean(), stats.sem(ratings))
    assert (mr.lower, mr.upper) == pytest.approx((lo, hi))
    s = np.array([x for x in sizes if x is not None])
    c = np.array([x for x in corrected if x is not None])
    cs = r.metrics["corrected_share"]
    assert cs.value == pytest.approx(c.sum() / s.sum()) and cs.contains(0.2)
    first_delays = np.array(delays)[np.array(fany)]
    for q in (0.5, 0.9, 0.99):
        est = r.metrics[f"label_delay_p{round(q * 100)}"]
        exact = np.quantile(first_delays, q, method="lower")
        assert abs(est.value - exact) <= 0.02 * exact + 1e-9
        assert est.lower <= est.value <= est.upper and est.n == first_delays.size


def test_merge_and_round_trip():
    rng = np.random.default_rng(1)
    a, b, whole = FeedbackAccumulator(), FeedbackAccumulator(), FeedbackAccumulator()
    cols_a = _feed(a, rng, 300)
    cols_b = _feed(b, rng, 500)
    whole.add_predictions(800)
    whole.update_many(*[x + y for x, y in zip(cols_a, cols_b)])
    a.merge(FeedbackAccumulator.from_dict(json.loads(json.dumps(b.to_dict()))))
    ra, rw = a.result(), whole.result()
    for name in ("complaint_rate", "label_coverage", "implicit_rate", "correction_rate"):
        assert ra.metrics[name] == rw.metrics[name]
    assert ra.metrics["mean_rating"].value == pytest.approx(rw.metrics["mean_rating"].value)
    assert a.delay == whole.delay
    assert FeedbackAccumulator.from_dict(a.to_dict()) == a


def test_denominator_short_and_bad_input():
    acc = FeedbackAccumulator()
    acc.add_predictions(1)
    acc.update_many(["complaint", "complaint", "rating"], [None, None, "great"], [True, True, True],
                    [True, True, False], [1.0, 2.0, 3.0])
    r = acc.result()
    assert r.extra["denominator_short"] == 1 and r.metrics["complaint_rate"].value == 1.0
    assert r.extra["bad_ratings"] == 1 and math.isnan(r.metrics["mean_rating"].value)
    assert not r.metrics["complaint_rate"].sufficient
    with pytest.raises(ValueError, match="kinds: unknown"):
        acc.update_many(["praise"])
    with pytest.raises(ValueError, match="values"):
        acc.update_many(["label"], [1, 2])
