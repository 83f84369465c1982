"""The result shape every quality accumulator returns, flat enough for Prometheus.

A :class:`MetricSet` holds overall metrics (name → :class:`Estimate`), per-class
metrics (name → class → Estimate) and plain extras (counts, a confusion matrix).
:meth:`MetricSet.rows` yields ``(metric, class_or_None, Estimate)``; the stream
layer turns each row into gauges labelled model, version, segment, metric, class:
one series each for value, n, lower and upper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from .intervals import Estimate


@dataclass
class MetricSet:
    metrics: dict[str, Estimate] = field(default_factory=dict)
    per_class: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> Iterator[tuple[str, str | None, Estimate]]:
        for name, est in self.metrics.items():
            yield name, None, est
        for name, by_class in self.per_class.items():
            for cls, est in by_class.items():
                yield name, cls, est

    def to_dict(self) -> dict:
        return {"metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "per_class": {k: {c: e.to_dict() for c, e in v.items()} for k, v in self.per_class.items()},
                "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "MetricSet":
        return cls({k: Estimate.from_dict(v) for k, v in d["metrics"].items()},
                   {k: {c: Estimate.from_dict(e) for c, e in v.items()} for k, v in d["per_class"].items()},
                   dict(d["extra"]))
