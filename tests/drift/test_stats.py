import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.multitest import multipletests

from prodlens.drift import stats as ds
from prodlens.drift.fdr import benjamini_hochberg
from prodlens.sketches.categorical import CategoricalSummary
from prodlens.sketches.numeric import NumericSummary

samples = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 400), st.integers(1, 400),
                    st.floats(-1, 1), st.booleans())


def draw(seed, n, m, shift, ties):
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(0, 6, n).astype(float), (rng.integers(0, 6, m) + (shift > 0.5)).astype(float)
    return rng.normal(0, 1, n), rng.normal(shift, 1.3, m)


def summ(x, k=200):
    s = NumericSummary(k)
    s.update_many(x)
    return s


# -- exact statistics equal the references -------------------------------------------------
@given(samples)
@settings(max_examples=150, deadline=None)
def test_ks_equals_scipy(sample):
    a, b = draw(*sample)
    ours = ds.ks_2samp(a, b)
    ref = sps.ks_2samp(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-12)
    asymp = sps.ks_2samp(a, b, method="asymp")
    if a.size == b.size == 1:  # scipy: NaN (kstwo with n=0); ours: 1.0
        assert ours.pvalue == 1.0 and math.isnan(asymp.pvalue)
        return
    assert ours.pvalue == pytest.approx(asymp.pvalue, rel=1e-9, abs=1e-15)


def test_ks_pvalue_equals_scipy_default_for_large_samples():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=12_000), rng.normal(0.03, 1, 11_000)
    assert ds.ks_2samp(a, b).pvalue == pytest.approx(sps.ks_2samp(a, b).pvalue, rel=1e-9)


@given(samples)
@settings(max_examples=150, deadline=None)
def test_wasserstein_equals_scipy(sample):
    a, b = draw(*sample)
    assert ds.wasserstein(a, b) == pytest.approx(sps.wasserstein_distance(a, b), rel=1e-9, abs=1e-12)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=2, max_size=12))
@settings(max_examples=200, deadline=None)
def test_chi2_equals_scipy_chi2_contingency(pairs):
    ref = np.array([p[0] for p in pairs])
    cur = np.array([p[1] for p in pairs])
    ours = ds.chi2_2xk(ref, cur)
    table = np.vstack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        assert (ours.statistic, ours.pvalue, ours.dof) == (0.0, 1.0, 0)
        return
    stat, p, dof, _ = sps.chi2_contingency(table)
    assert ours.dof == dof
    assert ours.statistic == pytest.approx(stat, rel=1e-9, abs=1e-12)
    assert ours.pvalue == pytest.approx(p, rel=1e-9, abs=1e-15)


@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50)), min_size=1, max_size=20)
       .filter(lambda ps: sum(p[0] for p in ps) > 0 and sum(p[1] for p in ps) > 0))
@settings(max_examples=200, deadline=None)
def test_js_equals_scipy_jensenshannon_base2(pairs):
    p = np.array([x[0] for x in pairs])
    q = np.array([x[1] for x in pairs])
    ref = jensenshannon(p, q, base=2)
    if math.isnan(ref):  # scipy takes sqrt of a rounding-negative divergence for identical p, q
        assert np.allclose(p / p.sum(), q / q.sum()) and ds.js_distance(p, q) < 1e-7
        return
    assert ds.js_distance(p, q) == pytest.approx(ref, abs=1e-7)


def test_psi_worked_example_and_eps():
    # hand computation: 0.1 ln 2 + 0.1 ln(7/6) = 0.0693147 + 0.0154151
    assert ds.psi_from_proportions([0.1, 0.2, 0.7], [0.2, 0.2, 0.6]) == pytest.approx(0.0847298, abs=1e-7)
    # an empty bin is floored at eps: (0.5 - 1e-4) ln(0.5 / 1e-4) + (0.5 - 1) ln(0.5 / 1)
    expect = (0.5 - 1e-4) * math.log(0.5 / 1e-4) + (0.5 - 1.0) * math.log(0.5)
    assert ds.psi_from_proportions([0.5, 0.5], [0.0, 1.0]) == pytest.approx(expect, rel=1e-12)
    assert ds.psi_from_proportions([0.3, 0.7], [0.3, 0.7]) == 0.0
    # a normal mean shift of d sd gives PSI close to d^2 with quantile bins
    rng = np.random.default_rng(0)
    ref = rng.normal(size=200_000)
    assert ds.psi(ref, rng.normal(0.5, 1, 200_000)) == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError, match="current: no finite values"):
        ds.psi(ref, [np.nan])
    with pytest.raises(ValueError, match="bins: must be >= 2"):
        ds.reference_edges(ref, 1)


# -- from summaries: exact when the sketches are exact, else within the stated bounds -------------
@given(samples)
@settings(max_examples=100, deadline=None)
def test_summary_statistics_equal_raw_when_sketches_are_exact(sample):
    a, b = draw(*sample)
    sa, sb = summ(a), summ(b)
    if not (sa.exact and sb.exact):
        return
    ks = ds.ks_from_summaries(sa, sb)
    assert ks.bound == 0 and ks.statistic == pytest.approx(ds.ks_2samp(a, b).statistic, abs=1e-12)
    w, bound = ds.wasserstein_from_summaries(sa, sb)
    assert bound == 0 and w == pytest.approx(sps.wasserstein_distance(a, b), rel=1e-9, abs=1e-12)
    edges, p, q = ds.numeric_bins(sa, sb, 10)
    assert np.array_equal(edges, ds.reference_edges(a, 10))
    assert ds.psi_from_proportions(p, q) == pytest.approx(ds.psi(a, b), rel=1e-9, abs=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(2_000, 30_000), st.integers(2_000, 30_000), st.floats(-0.5, 0.5))
@settings(max_examples=25, deadline=None)
def test_summary_statistics_within_bounds(seed, n, m, shift):
    rng = np.random.default_rng(seed)
    a, b = rng.lognormal(0, 0.7, n), rng.lognormal(shift, 0.7, m)
    sa, sb = summ(a), summ(b)
    assert not sa.exact and not sb.exact
    ks = ds.ks_from_summaries(sa, sb)
    exact_ks = ds.ks_2samp(a, b)
    assert ks.bound == pytest.approx(sa.rank_error + sb.rank_error)
    assert abs(ks.statistic - exact_ks.statistic) <= ks.bound
    assert ks.conservative_pvalue >= exact_ks.pvalue - 1e-12
    w, wb = ds.wasserstein_from_summaries(sa, sb)
    assert abs(w - ds.wasserstein(a, b)) <= wb
    # PSI/JS intervals from the per-bin PMF error contain the exact values on the same bins
    edges, p, q = ds.numeric_bins(sa, sb, 10)
    p_exact, q_exact = ds.binned_proportions(b, edges), ds.binned_proportions(a, edges)
    lo, hi = ds.psi_bounds(p, q, sb.pmf_error, sa.pmf_error)
    assert lo - 1e-12 <= ds.psi_from_proportions(p_exact, q_exact) <= hi + 1e-12
    lo, hi = ds.js_bounds(p, q, sb.pmf_error, sa.pmf_error)
    assert lo - 1e-12 <= ds.js_distance(p_exact, q_exact) <= hi + 1e-12


def test_categorical_counts_align_on_reference_top_k():
    ref, cur = CategoricalSummary(), CategoricalSummary()
    ref.update_many(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    cur.update_many(["a"] * 40 + ["b"] * 20 + ["new"] * 40)
    cats, c, r = ds.categorical_counts(ref, cur, top_k=2)
    assert cats == ["a", "b", "__other__"]
    assert c.tolist() == [40, 20, 40] and r.tolist() == [50, 30, 20]


def test_noise_floors_are_calibrated():
    # under no drift, PSI / JS / KS exceed their floors about alpha of the time
    rng = np.random.default_rng(11)
    n, m, alpha, bins = 400, 20_000, 0.05, 10
    ref = rng.normal(size=m)
    n_eff = ds.effective_n(n, m)
    exceed = {"psi": 0, "js": 0, "ks": 0, "wn": 0}
    sref = summ(ref, k=800)
    floors = {"psi": ds.psi_noise_floor(n_eff, bins, alpha), "js": ds.js_noise_floor(n_eff, bins, alpha),
              "ks": ds.ks_noise_floor(n, m, alpha), "wn": ds.wasserstein_norm_noise_floor(sref, n_eff, alpha)}
    trials = 400
    for _ in range(trials):
        cur = rng.normal(size=n)
        edges = ds.reference_edges(ref, bins)
        p, q = ds.binned_proportions(cur, edges), ds.binned_proportions(ref, edges)
        exceed["psi"] += ds.psi_from_proportions(p, q) > floors["psi"]
        exceed["js"] += ds.js_distance(p, q) > floors["js"]
        exceed["ks"] += ds.ks_2samp(ref, cur).statistic > floors["ks"]
        exceed["wn"] += ds.wasserstein(ref, cur) / ref.std(ddof=1) > floors["wn"]
    for name in ("psi", "js", "ks"):
        assert exceed[name] / trials < 2.5 * alpha, name
        assert exceed[name] / trials > alpha / 5, name  # not vacuous: the floor is near the tail
    assert exceed["wn"] / trials <= 2 * alpha  # approximate (conservative) floor


# -- Benjamini-Hochberg equals statsmodels ---------------------------------------------------
@given(st.lists(st.floats(0, 1), min_size=1, max_size=60), st.sampled_from([0.01, 0.05, 0.2]))
@settings(max_examples=200, deadline=None)
def test_bh_equals_statsmodels(pvalues, alpha):
    reject, q = benjamini_hochberg(pvalues, alpha)
    ref_reject, ref_q, _, _ = multipletests(pvalues, alpha=alpha, method="fdr_bh")
    assert reject.tolist() == ref_reject.tolist()
    assert np.allclose(q, ref_q, rtol=1e-12, atol=1e-15)


def test_bh_skips_nan_and_validates():
    reject, q = benjamini_hochberg([0.001, np.nan, 0.5], 0.05)
    ref_reject, ref_q, _, _ = multipletests([0.001, 0.5], alpha=0.05, method="fdr_bh")
    assert reject.tolist() == [ref_reject[0], False, ref_reject[1]]
    assert math.isnan(q[1]) and q[0] == pytest.approx(ref_q[0]) and q[2] == pytest.approx(ref_q[1])
    with pytest.raises(ValueError, match="alpha"):
        benjamini_hochberg([0.1], 1.5)
    with pytest.raises(ValueError, match="pvalues"):
        benjamini_hochberg([1.2])


def test_sketch_ks_pvalue_is_within_its_stated_bound_of_kstwo():
    for n, m in ((1500, 900_000), (3000, 3000), (20_000, 50_000), (400_000, 400_000)):
        en = round(n * m / (n + m))
        for d in np.linspace(0.01, 4, 60) / math.sqrt(en):
            assert abs(ds.ks_pvalue_large(d, n, m) - sps.kstwo.sf(d, en)) <= 0.0042
    assert ds.ks_pvalue_large(0.05, 300, 900) == ds.ks_pvalue(0.05, 300, 900)  # small: exact
