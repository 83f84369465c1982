"""Statistics checked against GrowthBook's vectors, scipy and statsmodels."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power
from statsmodels.stats import proportion as smp

from prodlens.experiments.stats import (
    AnalysisConfig, Comparison, ExperimentResult, ExperimentStats, MetricConfig, Moments, Sequential,
    adjust_pvalues, analyze_experiment, chance_to_beat, compare, cs_radius, minimum_detectable_effect, power,
    proportion_confint, proportion_effectsize, proportions_ztest, sample_size, sample_size_means,
    sample_size_proportions, sequential_p_value, sequential_rho, srm_test, summarize, welch_ttest)

r5 = lambda x: round(x, 5)  # noqa: E731
A = Moments.from_sums(3407, 1396.87, 52377.9767)
B = Moments.from_sums(3461, 2422.7, 134698.29)


# ----------------------------------------------------------------------------- GrowthBook vectors

def test_growthbook_reference_vector_relative():
    c = compare(A, B, sequential=None)
    rel = c.relative
    assert (r5(rel.value), r5(rel.se), r5(rel.ci_low), r5(rel.ci_high), r5(rel.p_value)) == \
        (0.70732, 0.37879, -0.03526, 1.44989, 0.06191)


def test_growthbook_reference_vector_absolute():
    c = compare(A, B, sequential=None)
    ab = c.absolute
    assert (r5(ab.value), r5(ab.se), r5(ab.ci_low), r5(ab.ci_high), r5(ab.p_value)) == \
        (0.29, 0.12478, 0.04538, 0.53462, 0.02016)
    assert c.p_value == ab.p_value


def test_growthbook_sequential_vectors():
    # gbstats TestSequentialTTest: means with tuning 1000 ...
    a = Moments.from_sums(3000, 1396.87, 52377.9767)
    c = compare(a, B, sequential=Sequential(1000))
    assert (r5(c.relative.value), r5(c.relative.se), r5(c.relative.ci_low), r5(c.relative.ci_high)) == \
        (0.50336, 0.33341, -0.55844, 1.56516)
    assert c.relative.p_value == 1.0
    # ... and proportions with the default tuning (5000)
    c = compare(Moments.from_counts(1396, 3000), Moments.from_counts(2422, 3461), "proportion")
    assert (r5(c.relative.value), r5(c.relative.se), r5(c.relative.ci_low), r5(c.relative.ci_high)) == \
        (0.50386, 0.03386, 0.40098, 0.60675)
    assert r5(c.relative.p_value) == 0.0


# ----------------------------------------------------------------------------- moments

@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=0, max_size=60), st.integers(0, 60))
@settings(max_examples=150, deadline=None)
def test_moments_merge_equals_whole(xs, cut):
    cut = min(cut, len(xs))
    whole, left, right = Moments(), Moments(), Moments()
    whole.update_many(xs)
    left.update_many(xs[:cut])
    for x in xs[cut:]:
        right.update(x)
    merged = left.copy().merge(right)
    assert merged.n == whole.n == len(xs)
    assert merged.sum == pytest.approx(whole.sum, rel=1e-12, abs=1e-6)
    assert merged.sum_sq == pytest.approx(whole.sum_sq, rel=1e-12, abs=1e-6)
    if len(xs) >= 2:
        assert whole.variance == pytest.approx(np.var(xs, ddof=1), rel=1e-6, abs=1e-3)
    assert Moments.from_dict(json.loads(json.dumps(whole.to_dict()))) == whole


def test_moments_adjust_and_errors():
    m = Moments()
    m.add_zeros(3)
    m.adjust(0.0, 5.0)
    m.adjust(5.0, 7.0)
    ref = Moments()
    ref.update_many([0, 0, 7])
    assert m == ref
    with pytest.raises(ValueError, match="finite"):
        m.update(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        m.update_many([1.0, float("inf")])
    with pytest.raises(ValueError, match="successes"):
        Moments.from_counts(5, 3)


# ----------------------------------------------------------------------------- scipy / statsmodels equality

@given(st.integers(0, 10_000), st.integers(2, 80), st.integers(2, 80), st.floats(-3, 3), st.floats(0.1, 5))
@settings(max_examples=40, deadline=None)
def test_welch_equals_scipy_on_raw_data(seed, na, nb, shift, scale):
    rng = np.random.default_rng(seed)
    a_raw = rng.normal(10, 2, na)
    b_raw = rng.normal(10 + shift, 2 * scale, nb)
    a, b = Moments(), Moments()
    a.update_many(a_raw)
    b.update_many(b_raw)
    for alt, scipy_alt in (("two-sided", "two-sided"), ("larger", "greater"), ("smaller", "less")):
        ours = welch_ttest(a, b, alternative=alt)
        ref = stats.ttest_ind(b_raw, a_raw, equal_var=False, alternative=scipy_alt)
        assert ours.statistic == pytest.approx(ref.statistic, rel=1e-8)
        assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-300)
        assert ours.df == pytest.approx(ref.df, rel=1e-8)
    c = compare(a, b, sequential=None)
    assert c.p_value == pytest.approx(stats.ttest_ind(b_raw, a_raw, equal_var=False).pvalue, rel=1e-7)
    lo, hi = stats.ttest_ind(b_raw, a_raw, equal_var=False).confidence_interval(0.95)
    assert (c.absolute.ci_low, c.absolute.ci_high) == (pytest.approx(lo, rel=1e-7), pytest.approx(hi, rel=1e-7))


@pytest.mark.parametrize("ca,na,cb,nb", [(120, 1000, 150, 1000), (5, 40, 12, 38), (0, 50, 3, 50),
                                         (3400, 30000, 3600, 31000)])
@pytest.mark.parametrize("value", [0.0, 0.01])
@pytest.mark.parametrize("alt", ["two-sided", "larger", "smaller"])
def test_proportions_ztest_equals_statsmodels(ca, na, cb, nb, value, alt):
    z, p = smp.proportions_ztest([cb, ca], [nb, na], value=value, alternative=alt)
    ours = proportions_ztest(ca, na, cb, nb, value=value, alternative=alt)
    assert ours.statistic == pytest.approx(z, rel=1e-10)
    assert ours.p_value == pytest.approx(p, rel=1e-9)
    pa, pb = ca / na, cb / nb
    unpooled = proportions_ztest(ca, na, cb, nb, value=value, alternative=alt, pooled=False)
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    if se > 0:
        assert unpooled.statistic == pytest.approx((pb - pa - value) / se)


@pytest.mark.parametrize("method", ["normal", "wilson", "agresti_coull", "beta", "jeffreys"])
@pytest.mark.parametrize("count,nobs", [(0, 10), (1, 10), (5, 10), (10, 10), (37, 1000), (999, 1000), (3, 7)])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_proportion_confint_equals_statsmodels(method, count, nobs, alpha):
    ref = smp.proportion_confint(count, nobs, alpha=alpha, method=method)
    ours = proportion_confint(count, nobs, alpha, method)
    assert ours == (pytest.approx(ref[0], abs=1e-12), pytest.approx(ref[1], abs=1e-12))


def test_compare_proportions_fixed_equals_statsmodels():
    a, b = Moments.from_counts(480, 5000), Moments.from_counts(560, 5100)
    c = compare(a, b, "proportion", sequential=None)
    lo, hi = smp.confint_proportions_2indep(560, 5100, 480, 5000, method="wald", compare="diff")
    assert (c.absolute.ci_low, c.absolute.ci_high) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    assert c.p_value == pytest.approx(smp.proportions_ztest([560, 480], [5100, 5000])[1], rel=1e-10)
    assert c.df == math.inf


def test_summarize_fixed_equals_references():
    rng = np.random.default_rng(3)
    raw = rng.exponential(3.0, 500)
    m = Moments()
    m.update_many(raw)
    e = summarize(m, sequential=None)
    lo, hi = stats.t.interval(0.95, len(raw) - 1, loc=raw.mean(), scale=stats.sem(raw))
    assert (e.ci_low, e.ci_high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    e = summarize(Moments.from_counts(37, 400), "proportion", sequential=None)
    assert (e.ci_low, e.ci_high) == pytest.approx(smp.proportion_confint(37, 400, method="wilson"))
    # sequential intervals are wider and contain the fixed ones
    s = summarize(Moments.from_counts(37, 400), "proportion")
    assert s.ci_low < e.ci_low and s.ci_high > e.ci_high and 0 <= s.ci_low


def test_chance_to_beat():
    assert chance_to_beat(0.0, 1.0) == 0.5
    assert chance_to_beat(1.96, 1.0) == pytest.approx(0.975, abs=1e-4)
    assert chance_to_beat(1.96, 1.0, higher_is_better=False) == pytest.approx(0.025, abs=1e-4)
    c = compare(A, B, sequential=None)
    assert c.chance_to_beat == pytest.approx(stats.norm.cdf(0.29 / c.absolute.se))
    assert math.isnan(chance_to_beat(1.0, 0.0))


# ----------------------------------------------------------------------------- sequential

def test_cs_radius_formula_and_tuning():
    alpha, n_tune = 0.05, 5000
    rho = sequential_rho(alpha, n_tune)
    n, sd = 4000, 2.0
    expected = sd * math.sqrt(2 * (n * rho**2 + 1) / (n**2 * rho**2) * math.log(math.sqrt(n * rho**2 + 1) / alpha))
    assert cs_radius(sd, n, alpha, rho) == pytest.approx(expected, rel=1e-14)
    fixed = stats.norm.isf(alpha / 2) * sd / math.sqrt(n)
    assert 1.3 * fixed < cs_radius(sd, n, alpha, rho) < 3 * fixed
    # tightest (relative to the fixed interval) near the tuning size
    ratios = {m: cs_radius(1, m, alpha, rho) * math.sqrt(m) for m in (500, 5000, 50000)}
    assert ratios[5000] < ratios[500] and ratios[5000] < ratios[50000]


@given(st.floats(-1, 1), st.floats(0.01, 1), st.integers(10, 100_000))
@settings(max_examples=200, deadline=None)
def test_sequential_p_value_is_dual_to_the_cs(est, se, n):
    alpha = 0.05
    rho = sequential_rho(alpha, 5000)
    p = sequential_p_value(est, se, n, rho)
    r = cs_radius(se * math.sqrt(n), n, alpha, rho)
    if abs(abs(est) - r) > 1e-9 * max(1, r):
        assert (p < alpha) == (abs(est) > r)


def _peeking_false_positive_rate(sequential, runs=200, peeks=20, per_peek=200, seed=11):
    rng = np.random.default_rng(seed)
    false_pos = 0
    for _ in range(runs):
        a, b = Moments(), Moments()
        for _ in range(peeks):
            a.update_many(rng.normal(0, 1, per_peek))
            b.update_many(rng.normal(0, 1, per_peek))
            if compare(a, b, sequential=sequential).p_value < 0.05:
                false_pos += 1
                break
    return false_pos / runs


def test_sequential_survives_peeking_fixed_does_not():
    """A/A with 20 looks: fixed-horizon p-values reject far too often, the CS keeps alpha."""
    fixed = _peeking_false_positive_rate(None)
    seq = _peeking_false_positive_rate(Sequential(8000))
    assert fixed > 0.12
    assert seq <= 0.05


def test_aa_false_positives_near_alpha_and_true_lift_found():
    rng = np.random.default_rng(5)
    runs, fp, tp = 400, 0, 0
    for _ in range(runs):
        a = Moments.from_counts(rng.binomial(4000, 0.1), 4000)
        b = Moments.from_counts(rng.binomial(4000, 0.1), 4000)
        fp += compare(a, b, "proportion", sequential=None).p_value < 0.05
        c = Moments.from_counts(rng.binomial(4000, 0.125), 4000)
        tp += compare(a, c, "proportion", sequential=None).p_value < 0.05
    # binomial(400, 0.05): mean 20, 99.9 % range about 8..36
    assert 8 <= fp <= 36
    assert tp / runs > 0.8  # power for +25 % relative at n=4000/arm is ~0.88


# ----------------------------------------------------------------------------- SRM, power, corrections

def test_srm_equals_scipy_chisquare():
    obs = {"a": 5100, "b": 4900, "c": 10150}
    w = {"a": 0.25, "b": 0.25, "c": 0.5}
    r = srm_test(obs, w)
    total = sum(obs.values())
    ref = stats.chisquare(list(obs.values()), [total * x for x in w.values()])
    assert r.chi2 == pytest.approx(ref.statistic) and r.p_value == pytest.approx(ref.pvalue)
    assert r.status == "ok" and not r.alarm
    bad = srm_test({"a": 5300, "b": 4700}, {"a": 0.5, "b": 0.5})
    assert bad.alarm and bad.p_value < 0.001
    assert srm_test({"a": 3, "b": 1}, {"a": 0.5, "b": 0.5}).status == "insufficient_data"
    stray = srm_test({"a": 100, "b": 100, "zzz": 4}, {"a": 0.5, "b": 0.5})
    assert stray.alarm and stray.observed["zzz"] == 4
    with pytest.raises(ValueError, match="weights"):
        srm_test({"a": 1}, {"a": -1.0})


@pytest.mark.parametrize("es,ratio,alt", [(0.2, 1.0, "two-sided"), (0.05, 2.0, "two-sided"),
                                          (0.1, 0.5, "larger"), (-0.1, 1.0, "smaller"), (-0.3, 1.0, "two-sided")])
def test_power_and_sample_size_equal_statsmodels(es, ratio, alt):
    ref = NormalIndPower()
    assert power(es, 300, 0.05, ratio, alt) == pytest.approx(ref.power(es, 300, 0.05, ratio, alt), rel=1e-10)
    n = sample_size(es, 0.05, 0.8, ratio, alt)
    assert n == pytest.approx(ref.solve_power(es, None, 0.05, 0.8, ratio, alt), rel=1e-6)
    assert n == pytest.approx(zt_ind_solve_power(es, None, 0.05, 0.8, ratio, alt), rel=1e-6)
    assert power(es, n, 0.05, ratio, alt) == pytest.approx(0.8, abs=1e-8)


def test_sample_size_helpers():
    ref = NormalIndPower().solve_power(smp.proportion_effectsize(0.11, 0.10), None, 0.05, 0.8, 1.0)
    assert proportion_effectsize(0.11, 0.10) == pytest.approx(smp.proportion_effectsize(0.11, 0.10))
    assert sample_size_proportions(0.10, 0.10) == math.ceil(ref)
    assert sample_size_proportions(0.10, 0.01, relative=False) == math.ceil(ref)
    assert sample_size_means(sd=4.0, mde=0.5) == math.ceil(NormalIndPower().solve_power(0.125, None, 0.05, 0.8))
    mde = minimum_detectable_effect(2000, sd=3.0)
    assert power(mde / 3.0, 2000) == pytest.approx(0.8, abs=1e-9)
    with pytest.raises(ValueError, match="non-zero"):
        sample_size(0.0)


@given(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.01, 0.04, 0.04])), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_corrections_equal_multipletests(pvals):
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
        reject, adj = adjust_pvalues(pvals, ours, 0.05)
        ref_reject, ref_adj, _, _ = multipletests(pvals, 0.05, theirs)
        assert adj == pytest.approx(list(ref_adj), rel=1e-12, abs=1e-15)
        assert reject == list(ref_reject)


def test_corrections_skip_nan():
    reject, adj = adjust_pvalues([0.01, float("nan"), 0.04], "holm")
    assert math.isnan(adj[1]) and not reject[1]
    assert adj[0] == pytest.approx(0.02) and adj[2] == pytest.approx(0.04)


# ----------------------------------------------------------------------------- degenerate input

def test_degenerate_comparisons_are_nan_with_a_note():
    c = compare(Moments.from_sums(1, 1.0, 1.0), B)
    assert math.isnan(c.p_value) and "at least 2" in c.note
    c = compare(Moments.from_counts(0, 100), Moments.from_counts(0, 100), "proportion")
    assert math.isnan(c.p_value) and "zero variance" in c.note
    c = compare(Moments.from_sums(10, 0.0, 4.0), B, sequential=None)
    assert math.isnan(c.relative.value) and "relative lift undefined" in c.note and math.isfinite(c.p_value)
    with pytest.raises(ValueError, match="kind"):
        compare(A, B, "median")
    with pytest.raises(ValueError, match="alpha"):
        compare(A, B, alpha=1.5)
    with pytest.raises(ValueError, match="outside"):
        compare(Moments.from_sums(10, 30.0, 100.0), B, "proportion")


def test_comparison_round_trip():
    c = compare(Moments.from_sums(1, 1.0, 1.0), B)
    assert Comparison.from_dict(json.loads(json.dumps(c.to_dict()))).to_dict() == c.to_dict()


# ----------------------------------------------------------------------------- experiment analysis

def _stats(rng, rates, n=20000, weights=None):
    s = ExperimentStats()
    weights = weights or [1 / len(rates)] * len(rates)
    for (v, p), w in zip(rates.items(), weights):
        k = int(n * w)
        s.add_exposure(v, k)
        s.moments("conversion", v).merge(Moments.from_counts(int(rng.binomial(k, p)), k))
        rev = rng.exponential(10, k) * (rng.random(k) < p)
        s.moments("revenue", v).update_many(rev)
    return s


METRICS = (MetricConfig("conversion", "proportion"), MetricConfig("revenue"))


def test_analyze_experiment_win_and_round_trip():
    rng = np.random.default_rng(1)
    s = _stats(rng, {"control": 0.10, "treatment": 0.13})
    cfg = AnalysisConfig("checkout", ("control", "treatment"), METRICS)
    r = analyze_experiment(s, cfg)
    assert r.decision == "significant_win" and r.srm.status == "ok"
    row = r.metrics[0].variants[1]
    assert row.significant and row.comparison.relative.value > 0.15
    assert r.metrics[0].variants[0].comparison is None
    # holm over the two comparisons
    p = [m.variants[1].comparison.p_value for m in r.metrics]
    assert [m.variants[1].adjusted_p_value for m in r.metrics] == pytest.approx(multipletests(p, method="holm")[1])
    d = json.loads(json.dumps(r.to_dict()))
    assert ExperimentResult.from_dict(d).to_dict() == r.to_dict()
    # merging per-partition stats gives the same analysis as the whole
    parts = [ExperimentStats.from_dict(s.to_dict()) for _ in range(2)]
    doubled = parts[0].merge(parts[1])
    assert doubled.exposures == {k: 2 * v for k, v in s.exposures.items()}


def test_analyze_experiment_loss_srm_and_insufficient():
    rng = np.random.default_rng(2)
    cfg = AnalysisConfig("e", ("a", "b", "c"), METRICS, alpha=0.05, sequential=None, correction="bh")
    loss = analyze_experiment(_stats(rng, {"a": 0.10, "b": 0.10, "c": 0.07}), cfg)
    assert loss.decision == "significant_loss" and any("c worse" in x for x in loss.reasons)
    skewed = _stats(rng, {"a": 0.1, "b": 0.1, "c": 0.1}, weights=[0.36, 0.32, 0.32])
    assert analyze_experiment(skewed, cfg).decision == "srm_alarm"
    assert analyze_experiment(ExperimentStats(), cfg).decision == "insufficient_data"
    aa = analyze_experiment(_stats(rng, {"a": 0.1, "b": 0.1, "c": 0.1}),
                            AnalysisConfig("e", ("a", "b", "c"), METRICS))
    assert aa.decision == "no_significant_difference"
    with pytest.raises(ValueError, match="baseline"):
        AnalysisConfig("e", ("a", "b"), METRICS, baseline="z")
    with pytest.raises(ValueError, match="kind"):
        MetricConfig("m", "ratio")
