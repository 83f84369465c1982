import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from prodlens.quality.regression import RegressionAccumulator


def _data(seed, n=800):
    rng = np.random.default_rng(seed)
    y = rng.lognormal(3, 1, n)
    p = y * rng.normal(1.05, 0.2, n)
    return y, p


def test_equals_sklearn_batched_and_merged():
    y, p = _data(0)
    a, b = RegressionAccumulator(), RegressionAccumulator()
    for lo in range(0, 500, 100):
        a.update_many(y[lo:lo + 100], p[lo:lo + 100])
    b.update_many(list(y[500:]), list(p[500:]))
    a.merge(RegressionAccumulator.from_dict(json.loads(json.dumps(b.to_dict()))))
    r = a.result()
    assert r.metrics["mae"].value == pytest.approx(skm.mean_absolute_error(y, p), rel=1e-12)
    assert r.metrics["rmse"].value == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)), rel=1e-12)
    assert r.metrics["mape"].value == pytest.approx(skm.mean_absolute_percentage_error(y, p), rel=1e-12)
    assert r.metrics["mean_error"].value == pytest.approx(np.mean(p - y), rel=1e-10)
    assert all(e.n == 800 and e.sufficient for e in r.metrics.values())
    rmse = r.metrics["rmse"]
    assert 0 <= rmse.lower < rmse.value < rmse.upper


def test_zero_targets_skipped_for_mape_only_and_invalid_counted():
    acc = RegressionAccumulator()
    acc.update_many([0.0, 2.0, 4.0, None, 1.0], [1.0, 3.0, 2.0, 5.0, float("inf")])
    r = acc.result()
    assert r.extra == {"zero_targets": 1, "invalid": 2}
    assert r.metrics["mae"].n == 3 and r.metrics["mae"].value == pytest.approx(4 / 3)
    assert r.metrics["mape"].n == 2 and r.metrics["mape"].value == pytest.approx((0.5 + 0.5) / 2)
    assert not r.metrics["mape"].sufficient


def test_interval_coverage_of_bias():
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(200):
        y = rng.normal(10, 2, 60)
        acc = RegressionAccumulator()
        acc.update_many(y, y + rng.normal(0.5, 1, 60))
        hits += acc.result().metrics["mean_error"].contains(0.5)
    assert hits / 200 >= 0.9


def test_empty_and_shape_errors():
    r = RegressionAccumulator().result()
    assert math.isnan(r.metrics["rmse"].value) and not r.metrics["rmse"].sufficient
    with pytest.raises(ValueError, match="y_pred"):
        RegressionAccumulator().update_many([1.0, 2.0], [1.0])
