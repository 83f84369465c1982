"""Feedback proxies, label coverage and label delay for one window × (model, version, segment).

What each feedback kind can support (the ``kind`` field of ``feedback.v1``):

=============  ==========================================================================
kind           supports
=============  ==========================================================================
label          every ground-truth metric (accuracy, precision/recall/F1, log loss, Brier,
               AUC, ECE; MAE, RMSE, MAPE, bias). If labels are a random sample of the
               predictions (1 in 1000 sent to raters), the metrics are unbiased for the
               whole window; their n is the number labelled, so intervals are wider. If
               the sampling depends on the prediction or the outcome, they are biased:
               sample independently of both.
correction     the correction rate (share of predictions corrected, and corrected/size
               where items carry sizes); a correction carrying the true value is also
               ground truth for the metrics above (first truth per prediction wins).
complaint      complaint rate = complaints / predictions, which is a LOWER bound on the
               error rate (unhappy users who do not complain are invisible): it gives an
               upper bound 1 - rate on accuracy, never an accuracy.
rating         mean rating (t interval) over rated predictions; no accuracy.
implicit       implicit-signal rate (clicks, accepts) over predictions: a proxy whose link
               to quality must be validated separately.
=============  ==========================================================================

Rates over predictions count each prediction once per kind (``first_of_kind`` from
the join) and use Wilson intervals; their denominator is the number of predictions
the window saw (:meth:`FeedbackAccumulator.add_predictions`). Label coverage is the
share of predictions with any feedback; label delay is the event-time gap from the
prediction to its first feedback, in a :class:`~prodlens.sketches.ddsketch.DDSketch`
(quantiles within relative error ``delay_alpha``, default 2%).

Where feedback outruns the prediction count (the count arrives later, or the
prediction fell outside the window's lateness) a rate's denominator is raised to
the numerator and ``extra["denominator_short"]`` counts by how much.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

from prodlens.sketches.ddsketch import DDSketch

from .intervals import DEFAULT_CONFIDENCE, DEFAULT_MIN_N, Estimate, wilson
from .moments import Comoments, Moments
from .results import MetricSet

KINDS = ("label", "correction", "complaint", "rating", "implicit")
DELAY_QUANTILES = (0.5, 0.9, 0.99)


def as_float(v: Any) -> float:
    """A number as float; None, booleans and non-numbers are NaN (missing)."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class FeedbackAccumulator:
    """Mergeable feedback-proxy state (see the module docstring)."""

    def __init__(self, delay_alpha: float = 0.02, delay_min: float = 0.1, delay_max: float = 1e8):
        self.predictions = 0
        self.events = {k: 0 for k in KINDS}        # feedback events by kind
        self.units = {k: 0 for k in KINDS}         # predictions with >= 1 feedback of the kind
        self.with_feedback = 0                     # predictions with any feedback
        self.ratings = Moments()
        self.bad_ratings = 0
        self.sizes = Comoments()                   # x = size, y = corrected
        self.delay = DDSketch(delay_alpha, delay_min, delay_max)

    def add_predictions(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"count: must be >= 0, got {count}")
        self.predictions += int(count)

    def update_many(self, kinds: Sequence[str], values: Sequence[Any] | None = None,
                    first_of_kind: Sequence[bool] | np.ndarray | None = None,
                    first_any: Sequence[bool] | np.ndarray | None = None,
                    delays: Sequence[float] | np.ndarray | None = None,
                    sizes: Sequence[float | None] | None = None,
                    corrected: Sequence[float | None] | None = None) -> None:
        """Add joined feedback events.

        ``first_of_kind`` / ``first_any``: whether the event is its prediction's first of
        this kind / first of any kind (from the join; default True); ``delays``: seconds
        from prediction to this feedback (used where ``first_any``).
        """
        n = len(kinds)
        for name, col in (("values", values), ("first_of_kind", first_of_kind), ("first_any", first_any),
                          ("delays", delays), ("sizes", sizes), ("corrected", corrected)):
            if col is not None and len(col) != n:
                raise ValueError(f"{name}: has {len(col)} values, kinds has {n}")
        k = np.asarray(kinds, dtype=object)
        bad = [x for x in set(kinds) if x not in self.events]
        if bad:
            raise ValueError(f"kinds: unknown feedback kind {bad[0]!r}; expected one of {KINDS}")
        fok = np.ones(n, dtype=bool) if first_of_kind is None else np.asarray(first_of_kind, dtype=bool)
        fany = np.ones(n, dtype=bool) if first_any is None else np.asarray(first_any, dtype=bool)
        for kind in set(kinds):
            mask = k == kind
            self.events[kind] += int(mask.sum())
            self.units[kind] += int((mask & fok).sum())
        self.with_feedback += int(fany.sum())
        if delays is not None:
            d = np.asarray(delays, dtype=np.float64)[fany]
            self.delay.update_many(np.maximum(d, 0.0))
        if values is not None:
            rated = np.flatnonzero(k == "rating")
            r = np.array([as_float(values[i]) for i in rated], dtype=np.float64)
            self.bad_ratings += int(np.isnan(r).sum())
            self.ratings.update_many(r)
        if sizes is not None and corrected is not None:
            self.sizes.update_many(np.array([as_float(v) for v in sizes]), np.array([as_float(v) for v in corrected]))

    def merge(self, other: "FeedbackAccumulator") -> "FeedbackAccumulator":
        self.predictions += other.predictions
        for kind in KINDS:
            self.events[kind] += other.events[kind]
            self.units[kind] += other.units[kind]
        self.with_feedback += other.with_feedback
        self.ratings.merge(other.ratings)
        self.bad_ratings += other.bad_ratings
        self.sizes.merge(other.sizes)
        self.delay.merge(other.delay)
        return self

    def result(self, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N) -> MetricSet:
        ms = MetricSet()
        short = 0

        def rate(k: int, method: str = "wilson") -> Estimate:
            nonlocal short
            short = max(short, k - self.predictions)
            return wilson(k, max(self.predictions, k), confidence, min_n, method)

        ms.metrics["label_coverage"] = rate(self.with_feedback)
        ms.metrics["label_rate"] = rate(self.units["label"])
        ms.metrics["complaint_rate"] = rate(self.units["complaint"], "wilson_error_rate_lower_bound")
        ms.metrics["correction_rate"] = rate(self.units["correction"])
        ms.metrics["implicit_rate"] = rate(self.units["implicit"])
        ms.metrics["corrected_share"] = self.sizes.ratio(confidence, min_n, 0.0, math.inf)
        ms.metrics["mean_rating"] = self.ratings.estimate(confidence, min_n)
        for q in DELAY_QUANTILES:
            ms.metrics[f"label_delay_p{round(q * 100)}"] = self._delay_quantile(q, confidence, min_n)
        ms.extra = {"predictions": self.predictions, "events": dict(self.events), "units": dict(self.units),
                    "bad_ratings": self.bad_ratings, "denominator_short": short}
        return ms

    def _delay_quantile(self, q: float, confidence: float, min_n: int) -> Estimate:
        """Sketch quantile with the distribution-free order-statistic interval: ranks from the
        binomial(n, q) interval, each end read from the sketch and widened by its relative
        error ``alpha`` (delays are non-negative)."""
        n = self.delay.count
        if n == 0:
            return Estimate(math.nan, 0, 0.0, math.inf, "ddsketch_order_stat", False, confidence)
        lo_rank, hi_rank = stats.binom.interval(confidence, n, q)
        to_q = (lambda r: min(max(r / max(n - 1, 1), 0.0), 1.0))
        value = self.delay.quantile(q)
        alpha = self.delay.alpha
        lower = self.delay.quantile(to_q(lo_rank - 1)) * (1 - alpha)
        upper = self.delay.quantile(to_q(hi_rank)) * (1 + alpha)
        return Estimate(value, n, min(lower, value), max(upper, value), "ddsketch_order_stat", n >= min_n,
                        confidence, error_bound=alpha * abs(value))

    def to_dict(self) -> dict:
        return {"predictions": self.predictions, "events": dict(self.events), "units": dict(self.units),
                "with_feedback": self.with_feedback, "ratings": self.ratings.to_dict(),
                "bad_ratings": self.bad_ratings, "sizes": self.sizes.to_dict(), "delay": self.delay.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "FeedbackAccumulator":
        delay = DDSketch.from_dict(d["delay"])
        acc = cls(delay.alpha, delay.min_value, delay.max_value)
        acc.delay = delay
        acc.predictions = int(d["predictions"])
        acc.events = {k: int(d["events"][k]) for k in KINDS}
        acc.units = {k: int(d["units"][k]) for k in KINDS}
        acc.with_feedback = int(d["with_feedback"])
        acc.ratings = Moments.from_dict(d["ratings"])
        acc.bad_ratings = int(d["bad_ratings"])
        acc.sizes = Comoments.from_dict(d["sizes"])
        return acc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeedbackAccumulator) and self.to_dict() == other.to_dict()
