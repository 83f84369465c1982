"""Raw-event samples per window for data scientists: what the summaries cannot show.

Per (model, version, window) on each ingest partition, :class:`WindowSampler` keeps

* a stratified reservoir by segment (``prodlens.sketches.sampling.StratifiedReservoir``):
  ``per_window`` events in total with at least ``min_per_segment`` from every
  segment, so rare segments are represented (adaptive targeting); each sampled
  event carries its inclusion probability, and ``1 / p`` re-weights the sample
  to the segment's traffic;
* a priority sample (``PrioritySampler``) of the ``interesting`` most uncertain
  predictions: weight ``1 - |2·score - 1|`` for binary scores (or ``1 - max
  probability`` for class probabilities), so events near the decision boundary
  are favoured while every event keeps a known inclusion probability.

Rows are offered as indices and only the kept ones are turned into event
dicts, so sampling costs O(kept) dict building, not O(events). On window close
:meth:`records` gives the samples-topic records (``schemas/sample.v1.json``).

>>> s = WindowSampler("src:0", "m", "v1", 0.0, per_window=3, min_per_segment=1, interesting=1)
>>> cols = {"event_id": ["a", "b", "c", "d"], "output": {"score": [0.1, 0.5, 0.9, 0.2]}}
>>> s.offer(cols, [0, 1, 2, 3], ["US", "US", "US", "IS"])
>>> [r["segment"] for r in s.records(60.0) if r["sampler"] == "reservoir"].count("IS")
1
>>> [r["event"]["event_id"] for r in s.records(60.0) if r["sampler"] == "priority"]
['b']
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

from .contract import row_of
from .sketches.sampling import PrioritySampler, StratifiedReservoir


def uncertainty(columns: dict[str, Any], rows: Sequence[int]) -> list[float]:
    """Priority weight per row: closeness to the decision boundary (small floor: every
    prediction can be sampled)."""
    output = columns.get("output") or {}
    scores, probs = output.get("score"), output.get("probabilities")
    weights = []
    for i in rows:
        score = scores[i] if scores is not None else None
        if score is not None:
            weights.append(max(1e-3, 1.0 - abs(2.0 * score - 1.0)))
        elif probs is not None and probs[i]:
            weights.append(max(1e-3, 1.0 - max(probs[i].values())))
        else:
            weights.append(1e-3)
    return weights


class WindowSampler:
    """Reservoir-by-segment and priority samples of one (model, version, window)."""

    def __init__(self, source: str, model: str, version: str, start: float, *, per_window: int = 100,
                 min_per_segment: int = 5, interesting: int = 20):
        seed = zlib.crc32(f"{source}/{model}/{version}/{start}".encode())
        self.model, self.version, self.start = model, version, start
        self.reservoir = StratifiedReservoir(per_window, min_per_segment, seed=seed)
        self.priority = PrioritySampler(interesting, seed=seed + 1) if interesting else None

    def offer(self, columns: dict[str, Any], rows: Sequence[int], segments: Sequence[str]) -> None:
        def keep(i: int) -> dict[str, Any]:
            return row_of(columns, i)
        self.reservoir.update_many(rows, segments, keep)
        if self.priority is not None:
            self.priority.update_many(rows, uncertainty(columns, rows), keep)

    def rates(self) -> dict[str, float]:
        """Inclusion probability of the reservoir per segment (1.0 = every event kept)."""
        return {segment: self.reservoir.inclusion_probability(segment) for segment in self.reservoir.strata}

    def records(self, end: float) -> list[dict[str, Any]]:
        base = {"type": "sample", "schema_version": 1, "model": self.model, "version": self.version,
                "window_start": self.start, "window_end": end}
        out = []
        for segment in sorted(self.reservoir.strata):
            p = self.reservoir.inclusion_probability(segment)
            for event in self.reservoir.samples(segment):
                out.append({**base, "segment": segment, "sampler": "reservoir", "inclusion_probability": p,
                            "weight": 1.0 / p, "event": event})
        if self.priority is not None:
            for event, weight, p in self.priority.sample():
                out.append({**base, "segment": None, "sampler": "priority", "inclusion_probability": p,
                            "weight": 1.0 / p if p else None, "event": event})
        return out

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "start": self.start,
                "reservoir": self.reservoir.to_dict(),
                "priority": self.priority.to_dict() if self.priority is not None else None}

    @classmethod
    def from_dict(cls, d: dict) -> "WindowSampler":
        s = cls.__new__(cls)
        s.model, s.version, s.start = d["model"], d["version"], d["start"]
        s.reservoir = StratifiedReservoir.from_dict(d["reservoir"])
        s.priority = PrioritySampler.from_dict(d["priority"]) if d["priority"] is not None else None
        return s
