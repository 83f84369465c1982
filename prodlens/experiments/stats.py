"""A/B statistics over streaming sufficient statistics.

Every metric of every variant is summarised by :class:`Moments` — ``n``, ``Σx``,
``Σx²`` — which is all a two-sample test of means or proportions needs, merges by
addition (across windows, partitions, workers) and serialises as three numbers.
The tests here are checked against scipy (``ttest_ind(equal_var=False)``,
``chisquare``), statsmodels (``proportions_ztest``, ``proportion_confint``,
``NormalIndPower``, ``multipletests``) and GrowthBook's gbstats test vectors.

Peeking. A streaming pipeline recomputes results every window and people look at
them all the time; a fixed-horizon p-value checked repeatedly rejects a true null
far more often than alpha (around 20-30 % after a few dozen looks at 5 %). So the
default here is **sequential**: the asymptotic confidence sequence of Waudby-Smith
et al. (2023, "Time-uniform central limit theory and asymptotic confidence
sequences", eq. 9 and 155), as GrowthBook ships it. Its intervals and p-values are
valid at every sample size simultaneously, so any number of looks keeps the error
rate at alpha; the price is an interval roughly 1.5-2x wider than the fixed one,
narrowest near the planned total sample size ``tuning_n`` (GrowthBook's default
5000; set it to the experiment's planned size). Pass ``sequential=None`` for the
classic fixed-horizon analysis (one look at a pre-registered sample size).

Conventions: ``a`` is the baseline (control), ``b`` the variant; lifts are
``b - a`` (absolute) and ``(b - a) / a`` (relative). Proportions use the
normal approximation (``p(1-p)`` variances, as GrowthBook and statsmodels do).

>>> a = Moments.from_sums(3407, 1396.87, 52377.9767)
>>> b = Moments.from_sums(3461, 2422.7, 134698.29)
>>> c = compare(a, b, sequential=None)
>>> round(c.relative.value, 5), round(c.relative.se, 5), round(c.relative.p_value, 5)
(0.70732, 0.37879, 0.06191)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

MEAN = "mean"
PROPORTION = "proportion"
KINDS = (MEAN, PROPORTION)
ALTERNATIVES = ("two-sided", "larger", "smaller")
DEFAULT_ALPHA = 0.05
DEFAULT_SRM_ALPHA = 0.001
DEFAULT_TUNING_N = 5000.0
NAN = math.nan


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _none_to_nan(x):
    if x is None:
        return NAN
    if x == "inf":
        return math.inf
    if x == "-inf":
        return -math.inf
    return x


# --------------------------------------------------------------------------- moments


@dataclass(slots=True)
class Moments:
    """Streaming sufficient statistics of one metric: ``n``, ``Σx``, ``Σx²``.

    Error bound: sums are IEEE doubles (numpy pairwise summation per batch), so
    ``Σx`` carries a relative error of about ``n_batches * 1e-16``; the variance
    ``(Σx² - (Σx)²/n) / (n-1)`` loses a further relative ``~1e-16 * (1 + mean²/var)``
    to cancellation — negligible unless ``|mean| / sd`` exceeds ~1e5 (centre such data
    before feeding it). Memory is three numbers whatever ``n``.

    >>> m = Moments(); m.update_many([1.0, 2.0, 3.0]); m.mean, m.variance
    (2.0, 1.0)
    """

    n: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> "Moments":
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        return cls(int(n), float(total), float(total_sq))

    @classmethod
    def from_counts(cls, successes: int, n: int) -> "Moments":
        """Moments of ``n`` binary outcomes of which ``successes`` are 1."""
        if not 0 <= successes <= n:
            raise ValueError(f"need 0 <= successes <= n, got {successes!r} of {n!r}")
        return cls(int(n), float(successes), float(successes))

    def update(self, x: float) -> None:
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"value must be finite, got {x!r}")
        self.n += 1
        self.sum += x
        self.sum_sq += x * x

    def update_many(self, xs: Iterable[float] | np.ndarray) -> None:
        arr = np.asarray(xs, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not np.isfinite(arr).all():
            raise ValueError("values must be finite (NaN/inf found)")
        self.n += int(arr.size)
        self.sum += float(arr.sum())
        self.sum_sq += float(np.dot(arr, arr))

    def add_zeros(self, k: int = 1) -> None:
        """Add ``k`` observations equal to 0 (a newly exposed unit before any outcome)."""
        if k < 0:
            raise ValueError("k must be >= 0")
        self.n += k

    def adjust(self, old: float, new: float) -> None:
        """Replace one observation ``old`` (already counted) by ``new`` — a unit's aggregate moving."""
        self.sum += new - old
        self.sum_sq += new * new - old * old

    def merge(self, other: "Moments") -> "Moments":
        self.n += other.n
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        return self

    def copy(self) -> "Moments":
        return Moments(self.n, self.sum, self.sum_sq)

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else NAN

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); NaN when n < 2."""
        if self.n < 2:
            return NAN
        return max(0.0, (self.sum_sq - self.sum * self.sum / self.n) / (self.n - 1))

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def to_dict(self) -> dict:
        return {"n": self.n, "sum": self.sum, "sum_sq": self.sum_sq}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Moments":
        return cls(int(d["n"]), float(d["sum"]), float(d["sum_sq"]))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _variance(m: Moments, kind: str) -> float:
    """Per-observation variance: sample variance for means, p(1-p) for proportions."""
    if kind == PROPORTION:
        if m.n == 0:
            return NAN
        p = m.mean
        if not -1e-12 <= p <= 1 + 1e-12:
            raise ValueError(f"proportion metric has mean {p!r} outside [0, 1]; use kind='mean'")
        return p * (1.0 - p)
    return m.variance


# --------------------------------------------------------------------------- sequential


@dataclass(frozen=True)
class Sequential:
    """Anytime-valid analysis (asymptotic confidence sequence), tightest near ``tuning_n``
    total observations (both arms together)."""

    tuning_n: float = DEFAULT_TUNING_N

    def __post_init__(self) -> None:
        if not self.tuning_n > 0:
            raise ValueError(f"tuning_n must be > 0, got {self.tuning_n!r}")

    def rho(self, alpha: float) -> float:
        return sequential_rho(alpha, self.tuning_n)


def sequential_rho(alpha: float, tuning_n: float) -> float:
    """Mixing parameter ρ that makes the two-sided CS tightest at ``tuning_n`` (Waudby-Smith et al. eq. 161)."""
    _check_alpha(alpha)
    if not tuning_n > 0:
        raise ValueError(f"tuning_n must be > 0, got {tuning_n!r}")
    la = math.log(alpha)
    return math.sqrt((-2.0 * la + math.log(-2.0 * la + 1.0)) / tuning_n)


def cs_radius(sd: float, n: float, alpha: float, rho: float) -> float:
    """Half-width of the asymptotic confidence sequence for a mean of ``n`` observations
    with per-observation standard deviation ``sd``:
    ``sd * sqrt(2(nρ²+1) / (n²ρ²) * log(sqrt(nρ²+1) / α))``.

    Error bound: asymptotic — coverage 1-α holds uniformly over time as n grows (it
    relies on the CLT and a consistent sd); below a few hundred observations treat it
    as approximate.
    """
    if n <= 0 or not sd >= 0:
        return NAN
    t = n * rho * rho + 1.0
    return sd * math.sqrt(2.0 * t / (n * n * rho * rho) * math.log(math.sqrt(t) / alpha))


def sequential_p_value(estimate: float, se: float, n: float, rho: float, null: float = 0.0) -> float:
    """Always-valid p-value ``min(1, 1/E)`` from the mixture e-value of the same CS
    (p < α exactly when ``null`` lies outside the CS at level α)."""
    if not se > 0 or n <= 0:
        return NAN
    t = n * rho * rho + 1.0
    log_e = rho * rho * ((estimate - null) / se) ** 2 * n / (2.0 * t) - 0.5 * math.log(t)
    return 1.0 if log_e <= 0 else math.exp(-log_e)


# --------------------------------------------------------------------------- one-sample


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its standard error, interval and (for differences) p-value."""

    value: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float = NAN

    def to_dict(self) -> dict:
        return {k: _nan_to_none(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Estimate":
        return cls(**{k: _none_to_nan(v) for k, v in d.items()})


_EMPTY = Estimate(NAN, NAN, NAN, NAN)


def proportion_confint(count: int, nobs: int, alpha: float = DEFAULT_ALPHA,
                       method: str = "wilson") -> tuple[float, float]:
    """Binomial interval, equal to statsmodels' ``proportion_confint`` for the methods
    ``normal``, ``wilson``, ``agresti_coull``, ``beta`` (Clopper-Pearson) and ``jeffreys``."""
    _check_alpha(alpha)
    if nobs <= 0 or not 0 <= count <= nobs:
        raise ValueError(f"need nobs > 0 and 0 <= count <= nobs, got {count!r} of {nobs!r}")
    q = count / nobs
    a2 = alpha / 2.0
    if method == "normal":
        d = stats.norm.isf(a2) * math.sqrt(q * (1 - q) / nobs)
        lo, hi = q - d, q + d
    elif method == "wilson":
        z = stats.norm.isf(a2)
        z2 = z * z
        denom = 1 + z2 / nobs
        center = (q + z2 / (2 * nobs)) / denom
        d = z * math.sqrt(q * (1 - q) / nobs + z2 / (4 * nobs * nobs)) / denom
        lo, hi = center - d, center + d
    elif method == "agresti_coull":
        z = stats.norm.isf(a2)
        nc = nobs + z * z
        qc = (count + z * z / 2) / nc
        d = z * math.sqrt(qc * (1 - qc) / nc)
        lo, hi = qc - d, qc + d
    elif method == "beta":
        lo = 0.0 if count == 0 else float(stats.beta.ppf(a2, count, nobs - count + 1))
        hi = 1.0 if count == nobs else float(stats.beta.isf(a2, count + 1, nobs - count))
        return lo, hi
    elif method == "jeffreys":
        return (float(stats.beta.ppf(a2, count + 0.5, nobs - count + 0.5)),
                float(stats.beta.isf(a2, count + 0.5, nobs - count + 0.5)))
    else:
        raise ValueError(f"method must be normal, wilson, agresti_coull, beta or jeffreys, got {method!r}")
    return float(min(max(lo, 0.0), 1.0)), float(min(max(hi, 0.0), 1.0))


def summarize(m: Moments, kind: str = MEAN, alpha: float = DEFAULT_ALPHA,
              sequential: Sequential | None = Sequential()) -> Estimate:
    """Mean (or rate) of one variant with its interval.

    Fixed horizon: Student t interval for means, Wilson for rates. Sequential: the
    one-sample confidence sequence (clipped to [0, 1] for rates).
    """
    _check_kind(kind)
    _check_alpha(alpha)
    if m.n == 0:
        return _EMPTY
    mean = m.mean
    var = _variance(m, kind)
    se = math.sqrt(var / m.n) if math.isfinite(var) else NAN
    if sequential is not None:
        r = cs_radius(math.sqrt(var), m.n, alpha, sequential.rho(alpha)) if math.isfinite(var) else NAN
        lo, hi = mean - r, mean + r
        if kind == PROPORTION:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        return Estimate(mean, se, lo, hi)
    if kind == PROPORTION:
        successes = int(round(m.sum))
        lo, hi = proportion_confint(min(max(successes, 0), m.n), m.n, alpha, "wilson")
        return Estimate(mean, se, lo, hi)
    if m.n < 2:
        return Estimate(mean, NAN, NAN, NAN)
    w = stats.t.ppf(1 - alpha / 2, m.n - 1) * se
    return Estimate(mean, se, mean - w, mean + w)


# --------------------------------------------------------------------------- two-sample tests


@dataclass(frozen=True, slots=True)
class TestResult:
    statistic: float
    p_value: float
    df: float = math.inf


def _p_from_stat(stat: float, df: float, alternative: str) -> float:
    dist = stats.norm if math.isinf(df) else stats.t(df)
    if alternative == "two-sided":
        return float(2 * dist.sf(abs(stat)))
    if alternative == "larger":
        return float(dist.sf(stat))
    if alternative == "smaller":
        return float(dist.cdf(stat))
    raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom."""
    qa, qb = var_a / n_a, var_b / n_b
    denom = qa * qa / (n_a - 1) + qb * qb / (n_b - 1)
    return (qa + qb) ** 2 / denom if denom > 0 else NAN


def welch_ttest(a: Moments, b: Moments, alternative: str = "two-sided", value: float = 0.0) -> TestResult:
    """Welch's t-test of mean(b) - mean(a) = value; equals
    ``scipy.stats.ttest_ind(b_raw, a_raw, equal_var=False)`` on the raw data."""
    if a.n < 2 or b.n < 2:
        return TestResult(NAN, NAN, NAN)
    va, vb = a.variance, b.variance
    se = math.sqrt(va / a.n + vb / b.n)
    if se == 0:
        return TestResult(NAN, NAN, NAN)
    df = welch_df(va, a.n, vb, b.n)
    stat = (b.mean - a.mean - value) / se
    return TestResult(stat, _p_from_stat(stat, df, alternative), df)


def proportions_ztest(count_a: int, nobs_a: int, count_b: int, nobs_b: int, value: float = 0.0,
                      alternative: str = "two-sided", pooled: bool = True) -> TestResult:
    """Two-proportion z-test of p_b - p_a = value; equals statsmodels'
    ``proportions_ztest([count_b, count_a], [nobs_b, nobs_a], value)`` (pooled variance;
    ``pooled=False`` matches ``prop_var`` set to the unpooled estimate)."""
    if nobs_a <= 0 or nobs_b <= 0:
        return TestResult(NAN, NAN)
    pa, pb = count_a / nobs_a, count_b / nobs_b
    if pooled:
        p = (count_a + count_b) / (nobs_a + nobs_b)
        var = p * (1 - p) * (1 / nobs_a + 1 / nobs_b)
    else:
        var = pa * (1 - pa) / nobs_a + pb * (1 - pb) / nobs_b
    if var <= 0:
        return TestResult(NAN, NAN)
    stat = (pb - pa - value) / math.sqrt(var)
    return TestResult(stat, _p_from_stat(stat, math.inf, alternative))


def chance_to_beat(diff: float, se: float, higher_is_better: bool = True) -> float:
    """Bayesian probability that the variant beats the baseline: ``Φ(diff / se)``.

    Error bound: exact under a flat prior and a Gaussian likelihood for the
    difference (the CLT regime); for small samples or heavy tails it is approximate.
    """
    if not se > 0 or not math.isfinite(diff):
        return NAN
    p = float(stats.norm.cdf(diff / se))
    return p if higher_is_better else 1.0 - p


@dataclass(frozen=True)
class Comparison:
    """Variant vs baseline on one metric.

    ``p_value`` is the test of equal means (Welch for means, pooled z for rates, or
    the always-valid p-value when sequential); ``relative`` uses the delta method:
    ``Var[(b-a)/a] ≈ Var(b)/a² + b²·Var(a)/a⁴`` (error bound: first order, accurate
    while the baseline mean's coefficient of variation se(a)/a stays below ~0.1).
    """

    kind: str
    alpha: float
    sequential: bool
    baseline_mean: float
    variant_mean: float
    absolute: Estimate
    relative: Estimate
    statistic: float
    df: float
    p_value: float
    chance_to_beat: float
    note: str | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alpha": self.alpha, "sequential": self.sequential,
                "baseline_mean": _nan_to_none(self.baseline_mean), "variant_mean": _nan_to_none(self.variant_mean),
                "absolute": self.absolute.to_dict(), "relative": self.relative.to_dict(),
                "statistic": _nan_to_none(self.statistic), "df": _nan_to_none(self.df),
                "p_value": _nan_to_none(self.p_value), "chance_to_beat": _nan_to_none(self.chance_to_beat),
                "note": self.note}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Comparison":
        return cls(d["kind"], d["alpha"], d["sequential"], _none_to_nan(d["baseline_mean"]),
                   _none_to_nan(d["variant_mean"]), Estimate.from_dict(d["absolute"]),
                   Estimate.from_dict(d["relative"]), _none_to_nan(d["statistic"]), _none_to_nan(d["df"]),
                   _none_to_nan(d["p_value"]), _none_to_nan(d["chance_to_beat"]), d.get("note"))


def compare(a: Moments, b: Moments, kind: str = MEAN, alpha: float = DEFAULT_ALPHA,
            sequential: Sequential | None = Sequential(), higher_is_better: bool = True) -> Comparison:
    """Compare variant ``b`` with baseline ``a``: absolute and relative lift with intervals,
    p-value and chance to beat baseline.

    Fixed horizon (``sequential=None``): means use Welch's t (Welch-Satterthwaite df,
    also for the relative lift, as GrowthBook does); rates use the pooled z-test for the
    p-value and unpooled Wald intervals (statsmodels ``confint_proportions_2indep``,
    method "wald"). Sequential: intervals are confidence sequences with
    ``n = n_a + n_b`` and per-observation variance ``se² · n``; p-values always-valid.
    Degenerate input (fewer than 2 observations per arm, zero variance, zero baseline
    for the relative lift) yields NaN with a ``note`` instead of raising.
    """
    _check_kind(kind)
    _check_alpha(alpha)
    ma, mb = a.mean, b.mean
    seq = sequential is not None

    def empty(note: str) -> Comparison:
        return Comparison(kind, alpha, seq, ma, mb, _EMPTY, _EMPTY, NAN, NAN, NAN, NAN, note)

    if a.n < 2 or b.n < 2:
        return empty("need at least 2 observations in each arm")
    va, vb = _variance(a, kind), _variance(b, kind)
    var_abs = va / a.n + vb / b.n
    if not var_abs > 0:
        return empty("zero variance in both arms")
    se_abs = math.sqrt(var_abs)
    diff = mb - ma
    rel_ok = ma != 0
    var_rel = vb / (ma * ma * b.n) + va * mb * mb / (ma ** 4 * a.n) if rel_ok else NAN
    se_rel = math.sqrt(var_rel) if rel_ok and var_rel > 0 else NAN
    rel = diff / ma if rel_ok else NAN
    note = None if rel_ok else "baseline mean is 0: relative lift undefined"

    if kind == MEAN:
        df = welch_df(va, a.n, vb, b.n)
        crit = float(stats.t.ppf(1 - alpha / 2, df))
    else:
        df = math.inf
        crit = float(stats.norm.isf(alpha / 2))

    if seq:
        n = a.n + b.n
        rho = sequential.rho(alpha)
        r_abs = cs_radius(se_abs * math.sqrt(n), n, alpha, rho)
        p_abs = sequential_p_value(diff, se_abs, n, rho)
        absolute = Estimate(diff, se_abs, diff - r_abs, diff + r_abs, p_abs)
        if math.isfinite(se_rel):
            r_rel = cs_radius(se_rel * math.sqrt(n), n, alpha, rho)
            relative = Estimate(rel, se_rel, rel - r_rel, rel + r_rel, sequential_p_value(rel, se_rel, n, rho))
        else:
            relative = Estimate(rel, se_rel, NAN, NAN)
        statistic, p_value = diff / se_abs, p_abs
    else:
        if kind == MEAN:
            test = welch_ttest(a, b)
        else:
            test = proportions_ztest(int(round(a.sum)), a.n, int(round(b.sum)), b.n)
        absolute = Estimate(diff, se_abs, diff - crit * se_abs, diff + crit * se_abs, test.p_value)
        if math.isfinite(se_rel):
            relative = Estimate(rel, se_rel, rel - crit * se_rel, rel + crit * se_rel,
                                _p_from_stat(rel / se_rel, df, "two-sided"))
        else:
            relative = Estimate(rel, se_rel, NAN, NAN)
        statistic, p_value = test.statistic, test.p_value
    return Comparison(kind, alpha, seq, ma, mb, absolute, relative, statistic, df, p_value,
                      chance_to_beat(diff, se_abs, higher_is_better), note)


# --------------------------------------------------------------------------- SRM


@dataclass(frozen=True)
class SRMResult:
    """Sample-ratio-mismatch check: ``status`` is ok, mismatch or insufficient_data."""

    status: str
    chi2: float
    df: int
    p_value: float
    alpha: float
    observed: dict[str, int]
    expected: dict[str, float]

    @property
    def alarm(self) -> bool:
        return self.status == "mismatch"

    def to_dict(self) -> dict:
        return {"status": self.status, "alarm": self.alarm, "chi2": _nan_to_none(self.chi2), "df": self.df,
                "p_value": _nan_to_none(self.p_value), "alpha": self.alpha,
                "observed": dict(self.observed), "expected": dict(self.expected)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SRMResult":
        return cls(d["status"], _none_to_nan(d["chi2"]), d["df"], _none_to_nan(d["p_value"]), d["alpha"],
                   dict(d["observed"]), dict(d["expected"]))


def srm_test(observed: Mapping[str, int], weights: Mapping[str, float], alpha: float = DEFAULT_SRM_ALPHA,
             min_expected: float = 5.0) -> SRMResult:
    """Chi-square goodness of fit of exposure counts to the configured weights
    (equals ``scipy.stats.chisquare``); alarm when p < ``alpha`` (default 0.001).

    Weights are normalised over the variants; units seen in a variant with zero or no
    weight are a mismatch outright. Error bound: asymptotic chi-square; reported as
    insufficient_data while any expected count is below ``min_expected``.
    """
    _check_alpha(alpha)
    for name, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{name!r}] must be finite and >= 0, got {w!r}")
    total_w = sum(weights.values())
    if total_w <= 0:
        raise ValueError("weights must have a positive sum")
    obs = {v: int(observed.get(v, 0)) for v in weights}
    stray = {v: int(c) for v, c in observed.items() if c and (v not in weights or weights[v] == 0)}
    total = sum(obs.values()) + sum(c for v, c in stray.items() if v not in weights)
    expected = {v: total * w / total_w for v, w in weights.items()}
    obs_all = {**obs, **stray}
    if stray:
        return SRMResult("mismatch", math.inf, len(obs_all) - 1, 0.0, alpha, obs_all, expected)
    live = [v for v, w in weights.items() if w > 0]
    if len(live) < 2 or min(expected[v] for v in live) < min_expected:
        return SRMResult("insufficient_data", NAN, max(len(live) - 1, 0), NAN, alpha, obs, expected)
    chi2 = sum((obs[v] - expected[v]) ** 2 / expected[v] for v in live)
    df = len(live) - 1
    p = float(stats.chi2.sf(chi2, df))
    return SRMResult("mismatch" if p < alpha else "ok", chi2, df, p, alpha, obs, expected)


# --------------------------------------------------------------------------- power


def power(effect_size: float, nobs1: float, alpha: float = DEFAULT_ALPHA, ratio: float = 1.0,
          alternative: str = "two-sided") -> float:
    """Power of the two-sample z-test for a standardised effect ``(μ_b - μ_a) / σ`` with
    ``nobs1`` baseline units and ``ratio * nobs1`` variant units; equals statsmodels'
    ``NormalIndPower().power``. Error bound: normal approximation (a t-test with
    n > 30 per arm has power within ~0.01 of this)."""
    _check_alpha(alpha)
    if nobs1 <= 0 or ratio <= 0:
        raise ValueError("nobs1 and ratio must be > 0")
    n = 1.0 / (1.0 / nobs1 + 1.0 / (nobs1 * ratio))
    shift = effect_size * math.sqrt(n)
    if alternative == "two-sided":
        crit = stats.norm.isf(alpha / 2)
        return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))
    crit = stats.norm.isf(alpha)
    if alternative == "larger":
        return float(stats.norm.sf(crit - shift))
    if alternative == "smaller":
        return float(stats.norm.cdf(-crit - shift))
    raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def sample_size(effect_size: float, alpha: float = DEFAULT_ALPHA, target_power: float = 0.8, ratio: float = 1.0,
                alternative: str = "two-sided") -> float:
    """Baseline-arm sample size ``nobs1`` reaching ``target_power`` (variant arm: ``ratio * nobs1``);
    equals ``NormalIndPower().solve_power(effect_size, nobs1=None, ...)`` (not rounded)."""
    if effect_size == 0:
        raise ValueError("effect_size must be non-zero")
    if not alpha < target_power < 1:
        raise ValueError(f"power must be in (alpha, 1), got {target_power!r}")
    es = abs(effect_size) if alternative == "two-sided" else effect_size
    if (alternative == "larger" and es < 0) or (alternative == "smaller" and es > 0):
        raise ValueError("effect_size has the wrong sign for this one-sided alternative")
    a = alpha / 2 if alternative == "two-sided" else alpha
    z = stats.norm.isf(a) + stats.norm.isf(1 - target_power)
    guess = (z / abs(es)) ** 2 * (1 + 1 / ratio)  # ignores the far tail: a lower bound
    f = lambda n1: power(effect_size, n1, alpha, ratio, alternative) - target_power  # noqa: E731
    return float(optimize.brentq(f, guess * 0.5, guess * 2 + 10, xtol=1e-10, rtol=1e-12))


def proportion_effectsize(p_variant: float, p_baseline: float) -> float:
    """Cohen's h, ``2 asin √p_b - 2 asin √p_a`` (statsmodels ``proportion_effectsize``)."""
    for p in (p_variant, p_baseline):
        if not 0 <= p <= 1:
            raise ValueError(f"proportions must be in [0, 1], got {p!r}")
    return 2 * math.asin(math.sqrt(p_variant)) - 2 * math.asin(math.sqrt(p_baseline))


def sample_size_proportions(baseline_rate: float, mde: float, relative: bool = True,
                            alpha: float = DEFAULT_ALPHA, target_power: float = 0.8, ratio: float = 1.0,
                            alternative: str = "two-sided") -> int:
    """Units per baseline arm to detect a rate change of ``mde`` (relative to the rate by
    default), via Cohen's h — the usual statsmodels recipe."""
    target = baseline_rate * (1 + mde) if relative else baseline_rate + mde
    return math.ceil(sample_size(proportion_effectsize(target, baseline_rate), alpha, target_power, ratio, alternative))


def sample_size_means(sd: float, mde: float, alpha: float = DEFAULT_ALPHA, target_power: float = 0.8,
                      ratio: float = 1.0, alternative: str = "two-sided") -> int:
    """Units per baseline arm to detect an absolute mean change ``mde`` when the metric has
    standard deviation ``sd``."""
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd!r}")
    return math.ceil(sample_size(mde / sd, alpha, target_power, ratio, alternative))


def minimum_detectable_effect(nobs1: float, sd: float = 1.0, alpha: float = DEFAULT_ALPHA,
                              target_power: float = 0.8, ratio: float = 1.0) -> float:
    """Smallest absolute mean difference detectable (two-sided) with ``nobs1`` baseline units."""
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd!r}")
    f = lambda es: power(es, nobs1, alpha, ratio) - target_power  # noqa: E731
    return float(optimize.brentq(f, 1e-12, 100.0, xtol=1e-14)) * sd


# --------------------------------------------------------------------------- multiple testing


CORRECTIONS = ("holm", "bh", "none")


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm", alpha: float = DEFAULT_ALPHA
                   ) -> tuple[list[bool], list[float]]:
    """Holm (family-wise) or Benjamini-Hochberg (false discovery rate) adjustment; equals
    statsmodels ``multipletests(method="holm" | "fdr_bh")``. NaN p-values are left out
    of the family and stay NaN (never rejected)."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    pv = p[ok]
    m = pv.size
    if m:
        order = np.argsort(pv, kind="mergesort")
        ps = pv[order]
        if method == "holm":
            adj = np.maximum.accumulate(ps * np.arange(m, 0, -1))
        elif method == "bh":
            adj = np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1]
        else:
            adj = ps.copy()
        out = np.empty(m)
        out[order] = np.minimum(adj, 1.0)
        adjusted[ok] = out
    reject = [bool(x <= alpha) if not math.isnan(x) else False for x in adjusted]
    return reject, [float(x) for x in adjusted]


# --------------------------------------------------------------------------- experiment level


class ExperimentStats:
    """Mergeable state of one experiment: exposures per variant and ``Moments`` per
    metric × variant. Memory grows with variants × metrics only."""

    __slots__ = ("exposures", "metrics")

    def __init__(self) -> None:
        self.exposures: dict[str, int] = {}
        self.metrics: dict[str, dict[str, Moments]] = {}

    def moments(self, metric: str, variant: str) -> Moments:
        return self.metrics.setdefault(metric, {}).setdefault(variant, Moments())

    def add_exposure(self, variant: str, k: int = 1) -> None:
        self.exposures[variant] = self.exposures.get(variant, 0) + k

    def merge(self, other: "ExperimentStats") -> "ExperimentStats":
        for v, k in other.exposures.items():
            self.add_exposure(v, k)
        for metric, by_variant in other.metrics.items():
            for v, m in by_variant.items():
                self.moments(metric, v).merge(m)
        return self

    def to_dict(self) -> dict:
        return {"exposures": dict(self.exposures),
                "metrics": {k: {v: m.to_dict() for v, m in d.items()} for k, d in self.metrics.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ExperimentStats":
        s = cls()
        s.exposures = {k: int(v) for k, v in d["exposures"].items()}
        s.metrics = {k: {v: Moments.from_dict(m) for v, m in dv.items()} for k, dv in d["metrics"].items()}
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExperimentStats) and self.to_dict() == other.to_dict()


@dataclass(frozen=True)
class MetricConfig:
    """How to analyse one metric: ``kind`` mean or proportion, and its good direction."""

    name: str
    kind: str = MEAN
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        _check_kind(self.kind)


@dataclass(frozen=True)
class AnalysisConfig:
    """Analysis settings of one experiment. The first variant is the baseline unless
    ``baseline`` names another; ``weights`` (for SRM) default to equal."""

    experiment: str
    variants: tuple[str, ...]
    metrics: tuple[MetricConfig, ...]
    weights: tuple[float, ...] | None = None
    baseline: str | None = None
    alpha: float = DEFAULT_ALPHA
    sequential: Sequential | None = field(default_factory=Sequential)
    correction: str = "holm"
    srm_alpha: float = DEFAULT_SRM_ALPHA

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if len(self.variants) < 2:
            raise ValueError(f"{self.experiment}: an analysis needs at least 2 variants")
        if self.weights is not None and len(self.weights) != len(self.variants):
            raise ValueError(f"{self.experiment}: weights need one value per variant")
        if self.baseline is not None and self.baseline not in self.variants:
            raise ValueError(f"{self.experiment}: baseline {self.baseline!r} is not a variant")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"{self.experiment}: correction must be one of {CORRECTIONS}")
        _check_alpha(self.alpha)
        _check_alpha(self.srm_alpha)

    @property
    def baseline_variant(self) -> str:
        return self.baseline if self.baseline is not None else self.variants[0]


@dataclass(frozen=True)
class VariantResult:
    """One variant on one metric: its estimate and (for non-baselines) the comparison."""

    variant: str
    n: int
    estimate: Estimate
    comparison: Comparison | None = None
    adjusted_p_value: float = NAN
    significant: bool = False

    def to_dict(self) -> dict:
        return {"variant": self.variant, "n": self.n, "estimate": self.estimate.to_dict(),
                "comparison": self.comparison.to_dict() if self.comparison else None,
                "adjusted_p_value": _nan_to_none(self.adjusted_p_value), "significant": self.significant}

    @classmethod
    def from_dict(cls, d: Mapping) -> "VariantResult":
        return cls(d["variant"], d["n"], Estimate.from_dict(d["estimate"]),
                   Comparison.from_dict(d["comparison"]) if d["comparison"] else None,
                   _none_to_nan(d["adjusted_p_value"]), d["significant"])


@dataclass(frozen=True)
class MetricResult:
    metric: str
    kind: str
    higher_is_better: bool
    variants: list[VariantResult]

    def to_dict(self) -> dict:
        return {"metric": self.metric, "kind": self.kind, "higher_is_better": self.higher_is_better,
                "variants": [v.to_dict() for v in self.variants]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "MetricResult":
        return cls(d["metric"], d["kind"], d["higher_is_better"], [VariantResult.from_dict(v) for v in d["variants"]])


# Experiment decisions (ExperimentResult.decision).
SRM_ALARM = "srm_alarm"
INSUFFICIENT_DATA = "insufficient_data"
SIGNIFICANT_WIN = "significant_win"
SIGNIFICANT_LOSS = "significant_loss"
NO_SIGNIFICANT_DIFFERENCE = "no_significant_difference"


@dataclass(frozen=True)
class ExperimentResult:
    """Everything a report shows about one experiment (JSON-ready via ``to_dict``)."""

    experiment: str
    baseline: str
    variants: list[str]
    exposures: dict[str, int]
    srm: SRMResult
    metrics: list[MetricResult]
    alpha: float
    sequential_tuning_n: float | None
    correction: str
    decision: str
    reasons: list[str]

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "baseline": self.baseline, "variants": list(self.variants),
                "exposures": dict(self.exposures), "srm": self.srm.to_dict(),
                "metrics": [m.to_dict() for m in self.metrics], "alpha": self.alpha,
                "sequential_tuning_n": self.sequential_tuning_n, "correction": self.correction,
                "decision": self.decision, "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ExperimentResult":
        return cls(d["experiment"], d["baseline"], list(d["variants"]), dict(d["exposures"]),
                   SRMResult.from_dict(d["srm"]), [MetricResult.from_dict(m) for m in d["metrics"]], d["alpha"],
                   d["sequential_tuning_n"], d["correction"], d["decision"], list(d["reasons"]))


def analyze_experiment(stats_: ExperimentStats, config: AnalysisConfig) -> ExperimentResult:
    """Full analysis of one experiment: per variant × metric estimates, comparisons with
    the baseline, multiple-testing adjustment across variants × metrics, SRM, decision.

    Decision: ``srm_alarm`` (results untrustworthy) beats everything; then
    ``insufficient_data`` while some variant has < 2 observations on the primary (first)
    metric; ``significant_loss`` if any variant is significantly worse on any metric;
    ``significant_win`` if a variant is significantly better on the primary metric;
    else ``no_significant_difference``. Significant = adjusted p-value <= alpha.
    """
    cfg = config
    base = cfg.baseline_variant
    weights = cfg.weights or tuple(1.0 / len(cfg.variants) for _ in cfg.variants)
    exposures = {v: stats_.exposures.get(v, 0) for v in cfg.variants}
    stray = {v: k for v, k in stats_.exposures.items() if v not in cfg.variants}
    srm = srm_test({**exposures, **stray}, dict(zip(cfg.variants, weights)), cfg.srm_alpha)

    raw: list[tuple[int, str, Estimate, Comparison | None, int]] = []
    for mi, mc in enumerate(cfg.metrics):
        by_variant = stats_.metrics.get(mc.name, {})
        a = by_variant.get(base, Moments())
        for v in cfg.variants:
            m = by_variant.get(v, Moments())
            est = summarize(m, mc.kind, cfg.alpha, cfg.sequential)
            comp = None if v == base else compare(a, m, mc.kind, cfg.alpha, cfg.sequential, mc.higher_is_better)
            raw.append((mi, v, est, comp, m.n))
    pvals = [c.p_value if c is not None else NAN for (_, _, _, c, _) in raw]
    reject, adjusted = adjust_pvalues(pvals, cfg.correction, cfg.alpha)

    metrics: list[MetricResult] = []
    for mi, mc in enumerate(cfg.metrics):
        rows = [VariantResult(v, n, est, comp, adjusted[i], reject[i])
                for i, (mj, v, est, comp, n) in enumerate(raw) if mj == mi]
        metrics.append(MetricResult(mc.name, mc.kind, mc.higher_is_better, rows))

    reasons: list[str] = []
    wins, losses = [], []
    for mr in metrics:
        for row in mr.variants:
            if row.comparison is None or not row.significant:
                continue
            better = (row.comparison.absolute.value > 0) == mr.higher_is_better
            text = (f"{row.variant} {'better' if better else 'worse'} than {base} on {mr.metric} "
                    f"(adjusted p = {row.adjusted_p_value:.3g})")
            (wins if better else losses).append((mr.metric, row.variant, text))
    primary = metrics[0] if metrics else None
    if srm.alarm:
        decision = SRM_ALARM
        reasons.append(f"sample ratio mismatch: chi2 p = {srm.p_value:.3g} < {cfg.srm_alpha} "
                       f"(observed {srm.observed}, expected {({k: round(v, 1) for k, v in srm.expected.items()})})")
    elif primary is None or any(r.n < 2 for r in primary.variants):
        decision = INSUFFICIENT_DATA
        reasons.append("fewer than 2 observations in some variant")
    elif losses:
        decision = SIGNIFICANT_LOSS
        reasons.extend(t for _, _, t in losses)
    elif any(metric == primary.metric for metric, _, _ in wins):
        decision = SIGNIFICANT_WIN
        reasons.extend(t for _, _, t in wins)
    else:
        decision = NO_SIGNIFICANT_DIFFERENCE
        reasons.append(f"no variant differs significantly from {base} at alpha {cfg.alpha} "
                       f"({cfg.correction} correction{', sequential' if cfg.sequential else ''})")
        reasons.extend(t for _, _, t in wins)
    if stray:
        reasons.append(f"exposures in unconfigured variants: {stray}")
    return ExperimentResult(cfg.experiment, base, list(cfg.variants), exposures, srm, metrics, cfg.alpha,
                            cfg.sequential.tuning_n if cfg.sequential else None, cfg.correction, decision, reasons)
