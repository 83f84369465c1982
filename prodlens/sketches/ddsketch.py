"""DDSketch: mergeable quantiles with a relative-error guarantee.

Error bound: for any quantile q, the returned value v satisfies
``|v - x_q| <= alpha * |x_q|`` where x_q is the true q-quantile of the values
added (Masson, Rim & Lee, "DDSketch", VLDB 2019), as long as the values lie in
``[min_value, max_value]`` (values outside are clamped into the end buckets and
counted; the exact min and max are kept). Non-positive values are counted in a
zero bucket (latencies and delays are non-negative).

Memory is fixed: one int64 counter per bucket, ``ceil(log(max/min)/log(gamma))``
buckets (about 1,160 for the defaults, 9 KiB), whatever the number of values.
Merging adds counters, so it is exact, associative and commutative.

>>> s = DDSketch()
>>> s.update_many([1.0, 2.0, 3.0, 4.0, 100.0])
>>> round(s.quantile(0.5), 1)
3.0
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


class DDSketch:
    """Relative-error quantile sketch over non-negative values (``alpha`` = relative accuracy)."""

    __slots__ = ("alpha", "min_value", "max_value", "_gamma", "_log_gamma", "_offset", "counts",
                 "zero_count", "count", "sum", "min", "max")

    def __init__(self, alpha: float = 0.01, min_value: float = 1e-3, max_value: float = 1e8):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha = alpha
        self.min_value = min_value
        self.max_value = max_value
        self._gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self._gamma)
        self._offset = math.ceil(math.log(min_value) / self._log_gamma)
        size = math.ceil(math.log(max_value) / self._log_gamma) - self._offset + 1
        self.counts = np.zeros(size, dtype=np.int64)
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def _bucket_indices(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(values, self.min_value, self.max_value)
        idx = np.ceil(np.log(clipped) / self._log_gamma).astype(np.int64) - self._offset
        return np.clip(idx, 0, len(self.counts) - 1)

    def update(self, value: float) -> None:
        """Add one value (pure Python: cheaper than numpy for a handful of values)."""
        if value != value:  # NaN
            return
        if value > 0:
            clipped = min(max(value, self.min_value), self.max_value)
            idx = math.ceil(math.log(clipped) / self._log_gamma) - self._offset
            self.counts[min(max(idx, 0), len(self.counts) - 1)] += 1
        else:
            self.zero_count += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def update_many(self, values: Iterable[float] | np.ndarray) -> None:
        """Add many values at once (NaN values are ignored: callers count missing values)."""
        if isinstance(values, (list, tuple)) and len(values) <= 8:
            for value in values:
                self.update(float(value))
            return
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return
        positive = arr[arr > 0]
        self.zero_count += int(arr.size - positive.size)
        if positive.size:
            self.counts += np.bincount(self._bucket_indices(positive), minlength=len(self.counts))
        self.count += int(arr.size)
        self.sum += float(arr.sum())
        self.min = min(self.min, float(arr.min()))
        self.max = max(self.max, float(arr.max()))

    def merge(self, other: "DDSketch") -> "DDSketch":
        """Add ``other`` into this sketch (same alpha and range required)."""
        if (other.alpha, other.min_value, other.max_value) != (self.alpha, self.min_value, self.max_value):
            raise ValueError("can only merge DDSketches with the same alpha and range")
        self.counts += other.counts
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1) within relative error alpha; NaN when empty."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        if self.count == 0:
            return math.nan
        rank = q * (self.count - 1)
        if rank < self.zero_count:
            return max(self.min, 0.0) if self.min <= 0 else 0.0
        cumulative = np.cumsum(self.counts)
        bucket = int(np.searchsorted(cumulative, rank - self.zero_count, side="right"))
        bucket = min(bucket, len(self.counts) - 1)
        value = 2 * self._gamma ** (bucket + self._offset) / (self._gamma + 1)
        return float(min(max(value, self.min), self.max))

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def to_dict(self) -> dict:
        """Sparse, JSON-ready state (only non-empty buckets), for snapshots and summaries."""
        nz = np.flatnonzero(self.counts)
        return {"alpha": self.alpha, "min_value": self.min_value, "max_value": self.max_value,
                "buckets": nz.tolist(), "bucket_counts": self.counts[nz].tolist(),
                "zero_count": self.zero_count, "count": self.count, "sum": self.sum,
                "min": self.min if self.count else None, "max": self.max if self.count else None}

    @classmethod
    def from_dict(cls, state: dict) -> "DDSketch":
        sketch = cls(state["alpha"], state["min_value"], state["max_value"])
        sketch.counts[np.asarray(state["buckets"], dtype=np.int64)] = state["bucket_counts"]
        sketch.zero_count = state["zero_count"]
        sketch.count = state["count"]
        sketch.sum = state["sum"]
        sketch.min = state["min"] if state["min"] is not None else math.inf
        sketch.max = state["max"] if state["max"] is not None else -math.inf
        return sketch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DDSketch) and self.to_dict() == other.to_dict()
