"""Regression quality for one window × (model, version, segment): a mergeable accumulator.

Per labelled prediction with error e = prediction - truth it keeps running moments
(:class:`~prodlens.quality.moments.Moments`) of e, |e|, e² and |e|/|truth|:

* ``mae`` — mean |e|, t interval (lower clipped at 0);
* ``rmse`` — sqrt of mean e²; the interval is the t interval of the MSE mapped
  through sqrt (monotone, so coverage carries over);
* ``mape`` — mean |e|/|truth| as a fraction (scikit-learn's convention, not percent),
  over non-zero targets only; zero targets are skipped and counted
  (``extra["zero_targets"]``);
* ``mean_error`` — mean e (bias: positive means over-prediction), t interval.

On data without zero targets these equal scikit-learn's ``mean_absolute_error``,
``sqrt(mean_squared_error)`` and ``mean_absolute_percentage_error`` up to float
summation order. t intervals assume roughly normal means (CLT); heavy-tailed errors
at small n make them approximate. Pairs with a non-finite value are skipped and counted.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .intervals import DEFAULT_CONFIDENCE, DEFAULT_MIN_N, Estimate
from .moments import Moments
from .results import MetricSet


class RegressionAccumulator:
    """
    >>> acc = RegressionAccumulator(); acc.update_many([1.0, 2.0], [1.5, 1.0])
    >>> acc.result().metrics["mae"].value
    0.75
    """

    def __init__(self) -> None:
        self.error = Moments()
        self.abs_error = Moments()
        self.sq_error = Moments()
        self.ape = Moments()
        self.zero_targets = 0
        self.invalid = 0

    def update(self, y_true: float, y_pred: float) -> None:
        self.update_many([y_true], [y_pred])

    def update_many(self, y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> None:
        t = np.asarray([np.nan if v is None else v for v in y_true] if not isinstance(y_true, np.ndarray)
                       else y_true, dtype=np.float64)
        p = np.asarray([np.nan if v is None else v for v in y_pred] if not isinstance(y_pred, np.ndarray)
                       else y_pred, dtype=np.float64)
        if t.shape != p.shape:
            raise ValueError(f"y_pred: has {p.size} values, y_true has {t.size}")
        ok = np.isfinite(t) & np.isfinite(p)
        self.invalid += int(t.size - ok.sum())
        t, p = t[ok], p[ok]
        e = p - t
        self.error.update_many(e)
        self.abs_error.update_many(np.abs(e))
        self.sq_error.update_many(e * e)
        nz = t != 0
        self.zero_targets += int(t.size - nz.sum())
        self.ape.update_many(np.abs(e[nz]) / np.abs(t[nz]))

    def merge(self, other: "RegressionAccumulator") -> "RegressionAccumulator":
        for name in ("error", "abs_error", "sq_error", "ape"):
            getattr(self, name).merge(getattr(other, name))
        self.zero_targets += other.zero_targets
        self.invalid += other.invalid
        return self

    @property
    def n(self) -> int:
        return self.error.n

    def result(self, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N) -> MetricSet:
        ms = MetricSet()
        mae = self.abs_error.estimate(confidence, min_n)
        ms.metrics["mae"] = Estimate(mae.value, mae.n, max(0.0, mae.lower), mae.upper, mae.method,
                                     mae.sufficient, confidence)
        mse = self.sq_error.estimate(confidence, min_n)
        ms.metrics["rmse"] = Estimate(math.sqrt(mse.value) if mse.n else math.nan, mse.n,
                                      math.sqrt(max(0.0, mse.lower)) if math.isfinite(mse.lower) else 0.0,
                                      math.sqrt(mse.upper) if mse.upper >= 0 else 0.0,
                                      "t_sqrt", mse.sufficient, confidence)
        mape = self.ape.estimate(confidence, min_n)
        ms.metrics["mape"] = Estimate(mape.value, mape.n, max(0.0, mape.lower), mape.upper, mape.method,
                                      mape.sufficient, confidence)
        ms.metrics["mean_error"] = self.error.estimate(confidence, min_n)
        ms.extra = {"zero_targets": self.zero_targets, "invalid": self.invalid}
        return ms

    def to_dict(self) -> dict:
        return {"error": self.error.to_dict(), "abs_error": self.abs_error.to_dict(),
                "sq_error": self.sq_error.to_dict(), "ape": self.ape.to_dict(),
                "zero_targets": self.zero_targets, "invalid": self.invalid}

    @classmethod
    def from_dict(cls, d: dict) -> "RegressionAccumulator":
        acc = cls()
        for name in ("error", "abs_error", "sq_error", "ape"):
            setattr(acc, name, Moments.from_dict(d[name]))
        acc.zero_targets, acc.invalid = int(d["zero_targets"]), int(d["invalid"])
        return acc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegressionAccumulator) and self.to_dict() == other.to_dict()
