"""Estimates with sample size and confidence interval, and the interval formulas.

Every quality metric is an :class:`Estimate`: the value, the sample size ``n`` it
rests on, a confidence interval and the method that produced it. With too little
data (``n < min_n``) the estimate says so (``sufficient=False``) instead of
passing a bare number off as a measurement; with no usable data at all the value
is NaN and the interval is the whole admissible range.

Intervals:

* :func:`wilson` — Wilson score interval for a proportion k/n (Wilson 1927); good
  coverage even for small n and proportions near 0 or 1. Equals statsmodels'
  ``proportion_confint(k, n, alpha, method="wilson")``.
* :func:`t_interval` / :func:`t_interval_from_sums` — Student t interval for a mean
  from (n, mean, variance) or from streaming sums (n, Σx, Σx²). Equals
  ``scipy.stats.t.interval(confidence, n-1, loc=mean, scale=s/sqrt(n))``. Valid for
  means of i.i.d. values; by the CLT it is approximate for skewed values at small n.
* :func:`normal_interval` — value ± z·se (delta-method intervals), clipped to a range.

>>> e = wilson(116, 164)
>>> round(e.value, 3), round(e.lower, 3), round(e.upper, 3), e.sufficient
(0.707, 0.634, 0.772, True)
"""

from __future__ import annotations

import functools

import math
from dataclasses import dataclass

from scipy import stats

DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_N = 10  # below this many observations an estimate is flagged insufficient


@functools.lru_cache(maxsize=64)
def _z(confidence: float) -> float:
    # scipy's ppf costs ~50 µs a call and every estimate asks for the same few levels
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def _encode(x: float) -> float | str:
    return x if math.isfinite(x) else repr(float(x))  # "nan", "inf", "-inf": JSON-safe and exact


def _decode(x: float | str) -> float:
    return float(x)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A metric value with its sample size and confidence interval.

    ``error_bound`` is the largest difference between ``value`` and the exact
    statistic on the same data when ``value`` comes from an approximation (e.g. AUC
    from a binned score histogram); 0 when the value is exact. The interval already
    includes it.
    """

    value: float
    n: int
    lower: float
    upper: float
    method: str
    sufficient: bool
    confidence: float = DEFAULT_CONFIDENCE
    error_bound: float = 0.0

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2

    def contains(self, x: float) -> bool:
        return self.lower <= x <= self.upper

    def to_dict(self) -> dict:
        return {"value": _encode(self.value), "n": self.n, "lower": _encode(self.lower),
                "upper": _encode(self.upper), "method": self.method, "sufficient": self.sufficient,
                "confidence": self.confidence, "error_bound": _encode(self.error_bound)}

    @classmethod
    def from_dict(cls, d: dict) -> "Estimate":
        return cls(_decode(d["value"]), int(d["n"]), _decode(d["lower"]), _decode(d["upper"]),
                   d["method"], bool(d["sufficient"]), float(d["confidence"]), _decode(d["error_bound"]))

    def __eq__(self, other: object) -> bool:  # NaN-aware, so round trips compare equal
        return isinstance(other, Estimate) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.to_dict().values()))


def wilson(k: float, n: float, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N,
           method: str = "wilson") -> Estimate:
    """Wilson score interval for the proportion k/n.

    n == 0 gives value NaN and the interval [0, 1] (no information).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k!r}, n={n!r}")
    z = _z(confidence)
    if n == 0:
        return Estimate(math.nan, 0, 0.0, 1.0, method, False, confidence)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # min/max: at k = 0 or k = n the bound equals p in exact arithmetic; keep rounding from crossing it
    return Estimate(p, int(n), min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)), method,
                    n >= min_n, confidence)


def t_interval(n: int, mean: float, variance: float, confidence: float = DEFAULT_CONFIDENCE,
               min_n: int = DEFAULT_MIN_N, method: str = "t") -> Estimate:
    """Student t interval for a mean from n, the sample mean and the sample variance (ddof=1).

    n == 0: value NaN; n == 1: no variance, interval (-inf, inf); both insufficient.
    """
    if n < 0:
        raise ValueError(f"t_interval: n must be >= 0, got {n!r}")
    _z(confidence)
    if n == 0:
        return Estimate(math.nan, 0, -math.inf, math.inf, method, False, confidence)
    if n == 1:
        return Estimate(mean, 1, -math.inf, math.inf, method, False, confidence)
    se = math.sqrt(max(variance, 0.0) / n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return Estimate(mean, int(n), mean - half, mean + half, method, n >= max(min_n, 2), confidence)


def t_interval_from_sums(n: int, total: float, total_sq: float, confidence: float = DEFAULT_CONFIDENCE,
                         min_n: int = DEFAULT_MIN_N) -> Estimate:
    """t interval from streaming sums n, Σx, Σx².

    The textbook variance (Σx² - (Σx)²/n)/(n-1) loses precision when the mean is large
    relative to the spread; :class:`~prodlens.quality.moments.Moments` keeps (mean, M2)
    instead and is what the accumulators use.
    """
    if n <= 0:
        return t_interval(0, math.nan, math.nan, confidence, min_n)
    mean = total / n
    variance = (total_sq - total * total / n) / (n - 1) if n > 1 else math.nan
    return t_interval(n, mean, variance, confidence, min_n)


def normal_interval(value: float, se: float, n: int, method: str, confidence: float = DEFAULT_CONFIDENCE,
                    min_n: int = DEFAULT_MIN_N, lo: float = -math.inf, hi: float = math.inf,
                    error_bound: float = 0.0) -> Estimate:
    """value ± (z·se + error_bound), clipped to [lo, hi] (delta-method style intervals)."""
    if not math.isfinite(value):
        return Estimate(math.nan, int(n), lo, hi, method, False, confidence, error_bound)
    half = _z(confidence) * se + error_bound
    return Estimate(value, int(n), max(lo, value - half), min(hi, value + half), method,
                    n >= min_n, confidence, error_bound)
