"""Mergeable running moments: count, mean and sum of squared deviations (and a co-moment).

The mean and M2 = Σ(x - mean)² are combined with Chan, Golub & LeVeque's pairwise
update, which stays accurate where the raw-sum formula (Σx² - (Σx)²/n) cancels
catastrophically (values far from zero with a small spread). Merging is exact in
real arithmetic; in floating point the result differs from a one-pass numpy
mean/variance only by rounding (relative error ~1e-15 per merge).

>>> m = Moments(); m.update_many([1.0, 2.0, 3.0, 4.0])
>>> m.n, m.mean, m.variance
(4, 2.5, 1.6666666666666667)
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .intervals import DEFAULT_CONFIDENCE, DEFAULT_MIN_N, Estimate, t_interval


class Moments:
    """Count, mean and M2 of a stream of numbers; NaN values are skipped."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def _combine(self, n: int, mean: float, m2: float) -> None:
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def update(self, x: float) -> None:
        self.update_many(np.array([x], dtype=np.float64))

    def update_many(self, values: Iterable[float] | np.ndarray) -> None:
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size:
            mean = float(arr.mean())
            self._combine(int(arr.size), mean, float(np.square(arr - mean).sum()))

    def merge(self, other: "Moments") -> "Moments":
        self._combine(other.n, other.mean, other.m2)
        return self

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); NaN below two values."""
        return self.m2 / (self.n - 1) if self.n > 1 else math.nan

    def estimate(self, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N) -> Estimate:
        """The mean with its Student t interval."""
        return t_interval(self.n, self.mean if self.n else math.nan, self.variance, confidence, min_n)

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict) -> "Moments":
        m = cls()
        m.n, m.mean, m.m2 = int(d["n"]), float(d["mean"]), float(d["m2"])
        return m

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Moments) and self.to_dict() == other.to_dict()


class Comoments:
    """Joint moments of pairs (x, y) for the ratio estimator R = Σy / Σx.

    Keeps n, the two means and the centred sums Cxx, Cyy, Cxy (pairwise-merged like
    :class:`Moments`). :meth:`ratio` gives R with the delta-method (linearisation)
    interval: Var(R) ≈ s_d² / (n x̄²), s_d² = (Cyy - 2R Cxy + R² Cxx)/(n-1), a t
    quantile with n-1 degrees of freedom (Cochran, Sampling Techniques, §6.4). Its
    bias is O(1/n); the interval is approximate for small n.
    """

    __slots__ = ("n", "mean_x", "mean_y", "cxx", "cyy", "cxy")

    def __init__(self) -> None:
        self.n = 0
        self.mean_x = self.mean_y = 0.0
        self.cxx = self.cyy = self.cxy = 0.0

    def _combine(self, n: int, mx: float, my: float, cxx: float, cyy: float, cxy: float) -> None:
        if n == 0:
            return
        total = self.n + n
        dx, dy = mx - self.mean_x, my - self.mean_y
        w = self.n * n / total
        self.cxx += cxx + dx * dx * w
        self.cyy += cyy + dy * dy * w
        self.cxy += cxy + dx * dy * w
        self.mean_x += dx * n / total
        self.mean_y += dy * n / total
        self.n = total

    def update_many(self, x: Iterable[float] | np.ndarray, y: Iterable[float] | np.ndarray) -> None:
        """Add pairs; pairs where either value is NaN are skipped."""
        ax = np.asarray(x, dtype=np.float64)
        ay = np.asarray(y, dtype=np.float64)
        if ax.shape != ay.shape:
            raise ValueError(f"Comoments.update_many: x has shape {ax.shape}, y has {ay.shape}")
        ok = ~(np.isnan(ax) | np.isnan(ay))
        ax, ay = ax[ok], ay[ok]
        if ax.size:
            mx, my = float(ax.mean()), float(ay.mean())
            ex, ey = ax - mx, ay - my
            self._combine(int(ax.size), mx, my, float(ex @ ex), float(ey @ ey), float(ex @ ey))

    def merge(self, other: "Comoments") -> "Comoments":
        self._combine(other.n, other.mean_x, other.mean_y, other.cxx, other.cyy, other.cxy)
        return self

    def ratio(self, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N,
              lo: float = -math.inf, hi: float = math.inf) -> Estimate:
        """Σy/Σx with its linearisation t interval, clipped to [lo, hi]."""
        if self.n == 0 or self.mean_x == 0:
            return Estimate(math.nan, self.n, lo, hi, "ratio_t", False, confidence)
        r = self.mean_y / self.mean_x
        if self.n == 1:
            return Estimate(r, 1, lo, hi, "ratio_t", False, confidence)
        sd2 = max(self.cyy - 2 * r * self.cxy + r * r * self.cxx, 0.0) / (self.n - 1)
        est = t_interval(self.n, r, sd2 / (self.mean_x * self.mean_x), confidence, min_n, "ratio_t")
        return Estimate(r, est.n, max(lo, est.lower), min(hi, est.upper), est.method, est.sufficient,
                        confidence)

    def to_dict(self) -> dict:
        return {"n": self.n, "mean_x": self.mean_x, "mean_y": self.mean_y,
                "cxx": self.cxx, "cyy": self.cyy, "cxy": self.cxy}

    @classmethod
    def from_dict(cls, d: dict) -> "Comoments":
        c = cls()
        c.n = int(d["n"])
        c.mean_x, c.mean_y = float(d["mean_x"]), float(d["mean_y"])
        c.cxx, c.cyy, c.cxy = float(d["cxx"]), float(d["cyy"]), float(d["cxy"])
        return c

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Comoments) and self.to_dict() == other.to_dict()
