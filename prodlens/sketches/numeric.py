"""Mergeable summary of one numeric field: count, missing, moments, min/max and a KLL sketch.

* ``count``, ``missing``, ``invalid``, ``min``, ``max``: exact, merge exactly.
* ``mean`` and variance: mergeable moments (Chan, Golub & LeVeque 1979 parallel update);
  merge is exact up to floating-point rounding (relative error ~1e-12 in practice).
* Quantiles / CDF: Apache DataSketches KLL (``kll_doubles_sketch``, Karnin, Lang & Liberty
  2016). Error bound, as documented by the library for its ``k`` (default 200): the
  normalised *rank* error of ``cdf``/``rank``/``quantile`` is at most
  ``get_normalized_rank_error(k, False)`` (single-sided; 0.0133 for k=200, 0.0068 for
  k=400, 0.0035 for k=800) and of a histogram bin mass (PMF) at most
  ``get_normalized_rank_error(k, True)`` (double-sided; 0.0165 for k=200), each with 99%
  confidence. The library derived the constants from the 99th percentile of the *maximum*
  error over all ranks, so the single-sided bound holds for the whole CDF at once
  (``sup_x |F_sketch(x) - F(x)|``), which is what the KS and Wasserstein bounds in
  :mod:`prodlens.drift.stats` use (measured here on merged shards: exceeded by ~0.03% of
  sketches, by at most ~2% of the bound). While the sketch still holds every value
  (``not is_estimation_mode()``: fewer than about ``k`` values) it is exact and the bound is 0.
  Merging keeps the bound of the smallest ``k``. KLL compaction is randomised (not seedable
  from Python): two summaries of the same data agree within the bound, not bit for bit.

Memory is fixed per summary: about ``3 k`` retained doubles (~600 for k=200, ~5 KiB)
whatever the number of values.

>>> s = NumericSummary()
>>> s.update_many([1.0, 2.0, None, 4.0, float("nan")])
>>> s.count, s.missing, s.mean, s.min, s.max
(3, 2, 2.3333333333333335, 1.0, 4.0)
>>> s.quantile(0.5)
2.0
"""

from __future__ import annotations

import base64
import math
from typing import Any, Iterable

import numpy as np
from datasketches import kll_doubles_sketch

DEFAULT_K = 200


def kll_rank_error(k: int, pmf: bool = False) -> float:
    """The library's documented normalised rank error for ``k`` (99% confidence)."""
    return float(kll_doubles_sketch.get_normalized_rank_error(int(k), bool(pmf)))


def to_float_array(values: Iterable[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    """Values as float64 (missing -> NaN) and the number of non-numeric (invalid) values.

    ``None`` and NaN are missing; booleans count as 0/1; strings and other types are invalid
    (counted, then treated as missing). Non-finite numbers are treated as missing.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False), 0
    out = []
    invalid = 0
    append = out.append
    for v in values:
        t = type(v)
        if t is float or t is int:
            append(v)
        elif v is None:
            append(math.nan)
        elif t is bool or isinstance(v, (int, float, np.number)):
            append(float(v))
        else:
            invalid += 1
            append(math.nan)
    return np.asarray(out, dtype=np.float64), invalid


class NumericSummary:
    """Mergeable summary of a numeric field (see the module docstring for the error bounds)."""

    __slots__ = ("k", "count", "missing", "invalid", "mean", "m2", "min", "max", "_kll", "_dist")

    kind = "numeric"

    def __init__(self, k: int = DEFAULT_K):
        if not 8 <= int(k) <= 65535:
            raise ValueError(f"k: must be in [8, 65535], got {k}")
        self.k = int(k)
        self.count = 0          # non-missing values
        self.missing = 0        # None / NaN / non-finite values
        self.invalid = 0        # non-numeric values (also counted in missing)
        self.mean = 0.0
        self.m2 = 0.0           # sum of squared deviations from the mean
        self.min = math.inf
        self.max = -math.inf
        self._kll = kll_doubles_sketch(self.k)
        self._dist: tuple[np.ndarray, np.ndarray] | None = None

    # -- updates -------------------------------------------------------------------------
    def update(self, value: Any) -> None:
        self.update_many([value])

    def update_many(self, values: Iterable[Any] | np.ndarray) -> None:
        """Add a batch of values (None/NaN/inf are missing, strings invalid)."""
        arr, invalid = to_float_array(values)
        finite = np.isfinite(arr)
        good = arr if finite.all() else arr[finite]
        self.invalid += invalid
        self.missing += int(arr.size - good.size)
        n = int(good.size)
        if n == 0:
            return
        mean = float(good.mean())
        m2 = float(np.square(good - mean).sum())
        self._combine_moments(n, mean, m2)
        self.min = min(self.min, float(good.min()))
        self.max = max(self.max, float(good.max()))
        if not good.flags.writeable:  # arrow-backed arrays: datasketches' binding rejects them
            good = good.copy()
        self._kll.update(np.ascontiguousarray(good, dtype=np.float64))
        self._dist = None

    def _combine_moments(self, n: int, mean: float, m2: float) -> None:
        # Chan et al. parallel update: exact combination of (n, mean, M2) pairs.
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def merge(self, other: "NumericSummary") -> "NumericSummary":
        """Add ``other`` into this summary; counts/min/max exact, moments exact up to rounding,
        quantiles within the KLL bound of ``min(self.k, other.k)``."""
        if not isinstance(other, NumericSummary):
            raise TypeError(f"can only merge NumericSummary, got {type(other).__name__}")
        self.missing += other.missing
        self.invalid += other.invalid
        if other.count:
            self._combine_moments(other.count, other.mean, other.m2)
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)
            self._kll.merge(other._kll)
            self._dist = None
        return self

    # -- results -------------------------------------------------------------------------
    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); NaN below two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count > 1 else math.nan

    @property
    def exact(self) -> bool:
        """True while the KLL sketch still holds every value (rank error 0)."""
        return not self._kll.is_estimation_mode()

    @property
    def rank_error(self) -> float:
        """Single-sided normalised rank error bound of ``cdf``/``quantile`` (99%); 0 if exact."""
        return 0.0 if self.exact else float(self._kll.normalized_rank_error(False))

    @property
    def pmf_error(self) -> float:
        """Double-sided bound for the mass of one histogram bin (99%); 0 if exact."""
        return 0.0 if self.exact else float(self._kll.normalized_rank_error(True))

    def quantile(self, q: float) -> float:
        """The q-quantile (rank error <= ``rank_error``); NaN when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"q: must be in [0, 1], got {q}")
        return math.nan if self.count == 0 else float(self._kll.get_quantile(q))

    def quantiles(self, qs: Iterable[float]) -> np.ndarray:
        return np.array([self.quantile(q) for q in qs], dtype=np.float64)

    def cdf(self, x: Iterable[float] | float, inclusive: bool = True) -> np.ndarray:
        """Fraction of values <= x (``inclusive``) or < x, vectorised, within ``rank_error``."""
        support, probs = self.distribution()
        xs = np.atleast_1d(np.asarray(x, dtype=np.float64))
        if support.size == 0:
            return np.full(xs.shape, np.nan)
        cum = np.concatenate(([0.0], np.cumsum(probs)))
        side = "right" if inclusive else "left"
        return np.minimum(cum[np.searchsorted(support, xs, side=side)], 1.0)

    def distribution(self) -> tuple[np.ndarray, np.ndarray]:
        """The sketch's discrete approximation of the distribution: sorted support and masses.

        Built from the retained items and ``get_cdf`` (the item weights the Python iterator
        reports are not reliable after a merge in datasketches 5.2), so the step CDF it defines
        is exactly the sketch's CDF.
        """
        if self._dist is None:
            if self.count == 0:
                self._dist = (np.empty(0), np.empty(0))
            else:
                support = np.unique(np.fromiter((item for item, _ in self._kll), dtype=np.float64))
                cum = np.asarray(self._kll.get_cdf(support, inclusive=True), dtype=np.float64)[:-1]
                cum[-1] = 1.0
                probs = np.diff(np.concatenate(([0.0], cum)))
                self._dist = (support, np.clip(probs, 0.0, None))
        return self._dist

    # -- state ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready state; the KLL sketch as base64 of ``serialize()``."""
        return {"type": "numeric", "k": self.k, "count": self.count, "missing": self.missing,
                "invalid": self.invalid, "mean": self.mean, "m2": self.m2,
                "min": self.min if self.count else None, "max": self.max if self.count else None,
                "kll": base64.b64encode(self._kll.serialize()).decode("ascii") if self.count else None}

    @classmethod
    def from_dict(cls, state: dict) -> "NumericSummary":
        if state.get("type") != "numeric":
            raise ValueError(f"type: expected 'numeric', got {state.get('type')!r}")
        s = cls(state["k"])
        s.count = int(state["count"])
        s.missing = int(state["missing"])
        s.invalid = int(state.get("invalid", 0))
        s.mean = float(state["mean"])
        s.m2 = float(state["m2"])
        if s.count:
            s.min = float(state["min"])
            s.max = float(state["max"])
            s._kll = kll_doubles_sketch.deserialize(base64.b64decode(state["kll"]))
            if s._kll.n != s.count:
                raise ValueError(f"kll: sketch holds {s._kll.n} values, count says {s.count}")
        return s

    def copy(self) -> "NumericSummary":
        return NumericSummary.from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumericSummary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"NumericSummary(count={self.count}, missing={self.missing}, mean={self.mean:.6g}, "
                f"std={self.std:.6g}, min={self.min}, max={self.max}, k={self.k})")
