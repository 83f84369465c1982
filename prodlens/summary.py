"""Window summaries of predictions: one per (model, version, segment, window).

Everything here is mergeable (sums, counts, DDSketch), so several partitions,
workers or windows combine exactly, and serialises to a JSON-ready dict for
state snapshots and the summaries topic.

Error bounds: counts, rates and means are exact; latency quantiles carry
DDSketch's relative error (``alpha``, 1% by default: a reported p99 of 200 ms
means the true p99 lies within 198–202 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .contract import row_of
from .sketches.ddsketch import DDSketch

SCORE_BINS = 20          # equal-width histogram of binary scores on [0, 1]
MAX_CLASSES = 50         # predicted-class vocabulary per summary; extras fold into __other__
OTHER_CLASS = "__other__"
LATENCY_QUANTILES = (0.5, 0.9, 0.95, 0.99)


def _present(column: list | None, rows: Sequence[int]) -> list:
    if column is None:
        return []
    return [v for v in (column[i] for i in rows) if v is not None]


@dataclass
class WindowSummary:
    """What one window of one (model, version, segment) looked like."""

    count: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    score_hist: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS, dtype=np.int64))
    value_n: int = 0          # regression outputs: moments
    value_sum: float = 0.0
    value_sumsq: float = 0.0
    latency: DDSketch = field(default_factory=DDSketch)
    latency_missing: int = 0
    feature_missing: dict[str, int] = field(default_factory=dict)
    roles: dict[str, int] = field(default_factory=dict)

    # -- updates ---------------------------------------------------------------------------
    def add(self, rows: Sequence[int], columns: dict[str, Any], features: Sequence[str]) -> None:
        """Add the events at positions ``rows`` of canonical prediction columns
        (``prodlens.contract.rows_to_columns``: nested objects are dicts of lists)."""
        n = len(rows)
        if n == 1:
            self.add_event(row_of(columns, rows[0]), features)
            return
        self.count += n
        output = columns["output"]
        label_col, prob_col = output.get("label"), output.get("probabilities")
        labels: dict[str, int] = {}
        for i in rows:
            label = label_col[i] if label_col is not None else None
            if label is None and prob_col is not None and prob_col[i] is not None:
                probs = prob_col[i]
                label = max(probs, key=probs.get)
            if label is not None:
                key = str(label).lower() if isinstance(label, bool) else str(label)
                labels[key] = labels.get(key, 0) + 1
        for label, k in labels.items():
            if label not in self.classes and len(self.classes) >= MAX_CLASSES:
                label = OTHER_CLASS
            self.classes[label] = self.classes.get(label, 0) + k
        scores = _present(output.get("score"), rows)
        if len(scores) > 8:
            bins = np.minimum((np.asarray(scores) * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
            self.score_hist += np.bincount(bins, minlength=SCORE_BINS)
        else:
            for score in scores:
                self.score_hist[min(int(score * SCORE_BINS), SCORE_BINS - 1)] += 1
        values = _present(output.get("value"), rows)
        if values:
            self.value_n += len(values)
            self.value_sum += math.fsum(values)
            self.value_sumsq += math.fsum(v * v for v in values)
        latencies = _present(columns["latency_ms"], rows)
        self.latency_missing += n - len(latencies)
        if latencies:
            self.latency.update_many(latencies)
        feature_cols = columns["features"]
        for name in features:
            col = feature_cols.get(name)
            missing = n if col is None else sum(1 for i in rows if col[i] is None)
            if missing:
                self.feature_missing[name] = self.feature_missing.get(name, 0) + missing
        role_col = columns["role"]
        for i in rows:
            role = role_col[i] or "primary"
            self.roles[role] = self.roles.get(role, 0) + 1

    def add_event(self, event: dict[str, Any], features: Sequence[str]) -> None:
        """Add one event given as a dict (single-event messages): :meth:`add`'s arithmetic
        without building columns."""
        self.count += 1
        output = event["output"]
        label = output.get("label")
        probs = output.get("probabilities")
        if label is None and probs:
            label = max(probs, key=probs.get)
        if label is not None:
            key = str(label).lower() if isinstance(label, bool) else str(label)
            if key not in self.classes and len(self.classes) >= MAX_CLASSES:
                key = OTHER_CLASS
            self.classes[key] = self.classes.get(key, 0) + 1
        score = output.get("score")
        if score is not None:
            self.score_hist[min(int(score * SCORE_BINS), SCORE_BINS - 1)] += 1
        value = output.get("value")
        if value is not None:
            self.value_n += 1
            self.value_sum += value
            self.value_sumsq += value * value
        latency = event.get("latency_ms")
        if latency is None:
            self.latency_missing += 1
        else:
            self.latency.update(float(latency))
        present = event.get("features") or {}
        for name in features:
            if present.get(name) is None:
                self.feature_missing[name] = self.feature_missing.get(name, 0) + 1
        role = event.get("role") or "primary"
        self.roles[role] = self.roles.get(role, 0) + 1

    def merge(self, other: "WindowSummary") -> "WindowSummary":
        self.count += other.count
        for label, k in other.classes.items():
            if label not in self.classes and len(self.classes) >= MAX_CLASSES:
                label = OTHER_CLASS
            self.classes[label] = self.classes.get(label, 0) + k
        self.score_hist += other.score_hist
        self.value_n += other.value_n
        self.value_sum += other.value_sum
        self.value_sumsq += other.value_sumsq
        self.latency.merge(other.latency)
        self.latency_missing += other.latency_missing
        for name, k in other.feature_missing.items():
            self.feature_missing[name] = self.feature_missing.get(name, 0) + k
        for role, k in other.roles.items():
            self.roles[role] = self.roles.get(role, 0) + k
        return self

    # -- results -------------------------------------------------------------------------------
    def class_ratios(self) -> dict[str, float]:
        total = sum(self.classes.values())
        return {label: k / total for label, k in self.classes.items()} if total else {}

    def missing_ratio(self, feature: str) -> float:
        return self.feature_missing.get(feature, 0) / self.count if self.count else math.nan

    def latency_quantiles(self) -> dict[float, float]:
        return {q: self.latency.quantile(q) for q in LATENCY_QUANTILES}

    def value_mean(self) -> float:
        return self.value_sum / self.value_n if self.value_n else math.nan

    def score_mean(self) -> float:
        """Mean score from the histogram (bin centres: within half a bin width, 0.025)."""
        total = int(self.score_hist.sum())
        if not total:
            return math.nan
        centres = (np.arange(SCORE_BINS) + 0.5) / SCORE_BINS
        return float(np.dot(centres, self.score_hist) / total)

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "classes": self.classes, "score_hist": self.score_hist.tolist(),
                "value_n": self.value_n, "value_sum": self.value_sum, "value_sumsq": self.value_sumsq,
                "latency": self.latency.to_dict(), "latency_missing": self.latency_missing,
                "feature_missing": self.feature_missing, "roles": self.roles}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WindowSummary":
        return cls(count=d["count"], classes=dict(d["classes"]),
                   score_hist=np.asarray(d["score_hist"], dtype=np.int64),
                   value_n=d["value_n"], value_sum=d["value_sum"], value_sumsq=d["value_sumsq"],
                   latency=DDSketch.from_dict(d["latency"]), latency_missing=d["latency_missing"],
                   feature_missing=dict(d["feature_missing"]), roles=dict(d["roles"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WindowSummary) and self.to_dict() == other.to_dict()
