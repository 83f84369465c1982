import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression

from prodlens.quality.cbpe import CBPEReference, CBPEWindow, psi
from prodlens.quality.isotonic import IsotonicMap, fit_isotonic


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(-5, 5)), min_size=1, max_size=120))
@settings(max_examples=150, deadline=None)
def test_isotonic_equals_sklearn(pairs):
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    x = np.round(x, 2)  # ties
    ours = fit_isotonic(x, y)
    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    grid = np.linspace(-0.1, 1.1, 97)
    np.testing.assert_allclose(ours(grid), ref.predict(grid), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours(x), ref.predict(x), rtol=1e-9, atol=1e-9)
    back = IsotonicMap.from_dict(json.loads(json.dumps(ours.to_dict())))
    assert np.array_equal(back(grid), ours(grid))


def test_isotonic_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        fit_isotonic([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="equal-length"):
        fit_isotonic([0.1], [0, 1])


def _population(rng, n, distort=lambda s: s, a=2.0, b=2.0):
    """Scores s ~ Beta(a, b); true P(y=1 | s) = distort(s)."""
    s = rng.beta(a, b, n)
    return s, rng.random(n) < distort(s)


def test_estimated_accuracy_covers_realized_in_most_windows():
    rng = np.random.default_rng(42)
    distort = lambda s: s ** 1.7  # monotone miscalibration: isotonic fixes it
    ref = CBPEReference.fit(*_population(rng, 20_000, distort))
    assert ref.reference_ece < ref.max_ece
    covered = {"accuracy": 0, "precision": 0, "recall": 0, "f1": 0}
    windows = 100
    for _ in range(windows):
        s, y = _population(rng, 500, distort)
        w = CBPEWindow(ref)
        w.update_many(s[:200])
        rest = CBPEWindow(ref)
        rest.update_many(list(s[200:]))
        w.merge(CBPEWindow.from_dict(json.loads(json.dumps(rest.to_dict())), ref))
        r = w.result()
        assert r.extra["trustworthy"], r.extra
        yhat = s >= 0.5
        tp = (yhat & y).sum()
        realized = {"accuracy": (yhat == y).mean(), "precision": tp / yhat.sum(), "recall": tp / y.sum(),
                    "f1": 2 * tp / (yhat.sum() + y.sum())}
        for k in covered:
            covered[k] += r.metrics[f"estimated_{k}"].contains(realized[k])
    for k, c in covered.items():
        assert c / windows >= 0.88, (k, c)


def test_uncalibrated_reference_is_not_trustworthy():
    rng = np.random.default_rng(1)
    s, y = _population(rng, 10_000, lambda s: s ** 3)  # raw scores far from probabilities
    ref = CBPEReference.fit(s, y, calibration="none")
    assert ref.reference_ece > 0.05
    w = CBPEWindow(ref)
    w.update_many(_population(rng, 500, lambda s: s ** 3)[0])
    r = w.result()
    assert r.extra["trustworthy"] is False and "reference_calibration_error" in r.extra["untrusted_because"]


def test_non_monotone_reference_is_not_trustworthy_even_after_isotonic():
    rng = np.random.default_rng(2)
    bump = lambda s: np.where((s > 0.35) & (s < 0.5), 0.95, s)  # P(y|s) not monotone around the threshold
    ref = CBPEReference.fit(*_population(rng, 20_000, bump))
    assert ref.reference_ece > ref.max_ece


def test_score_drift_makes_estimate_untrustworthy():
    rng = np.random.default_rng(3)
    ref = CBPEReference.fit(*_population(rng, 10_000))
    same = CBPEWindow(ref)
    same.update_many(_population(rng, 1000)[0])
    drifted = CBPEWindow(ref)
    drifted.update_many(_population(rng, 1000, a=6, b=1.5)[0])
    assert same.result().extra["trustworthy"] and same.psi() < 0.1
    r = drifted.result()
    assert drifted.psi() > 0.25 and not r.extra["trustworthy"] and r.extra["untrusted_because"] == ["score_drift"]
    empty = CBPEWindow(ref).result()
    assert empty.extra["untrusted_because"] == ["no_scores"] and not empty.metrics["estimated_accuracy"].sufficient


def test_psi_matches_formula_and_reference_round_trip():
    e, a = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    assert psi(e, a) == pytest.approx((0.4 - 0.5) * np.log(0.8) + 0.1 * np.log(4 / 3))
    rng = np.random.default_rng(4)
    ref = CBPEReference.fit(*_population(rng, 2000))
    back = CBPEReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert back.to_dict() == ref.to_dict()
    grid = np.linspace(0, 1, 11)
    assert np.array_equal(back.calibrate(grid), ref.calibrate(grid))


def test_model_decisions_and_validation():
    rng = np.random.default_rng(5)
    ref = CBPEReference.fit(*_population(rng, 2000))
    w = CBPEWindow(ref)
    w.update_many([0.9, 0.1, None], predicted_positive=[False, False, True])
    assert w.n == 2 and w.m == 0
    with pytest.raises(ValueError, match="predicted_positive"):
        w.update_many([0.2], [True, False])
    with pytest.raises(ValueError, match="scores"):
        w.update_many([1.2])
    with pytest.raises(ValueError, match="labels"):
        CBPEReference.fit(np.full(20, 0.5), np.full(20, 2))
