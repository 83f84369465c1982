"""Per-window quality state per (model, version, segment), and merged longer views.

Windows are tumbling windows of **prediction time** (not feedback time): a label
arriving three days late updates the window its prediction belongs to. A
:class:`WindowQuality` bundles the accumulators for one window × (model, version,
segment); :class:`QualityWindows` keeps them in a dict and routes decoded
predictions and join :class:`~prodlens.quality.join.Matches` into them.

Longer views (1 h, 24 h, or all segments of a version) are merges of window states
(:func:`merge_all`, :meth:`QualityWindows.view`), never a re-read of events; every
accumulator merges exactly (sums of counts, pairwise-combined moments), so a 24 h
view equals the accumulator fed the 24 h of events directly (up to float rounding).

With the join co-partitioned by prediction_id, each partition holds a partial
:class:`WindowQuality` for a given key; partial states merge the same way.

Memory per window state: a delay sketch (sparse when serialised; ~4 KiB as numpy),
for classification a confusion matrix (8·K² bytes), 2·``auc_bins`` + 3·``ece_bins``
counters, plus at most ``flush_rows`` (64) buffered joined rows. Keep windows for the
label horizon, then :meth:`QualityWindows.pop_before` them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .cbpe import CBPEReference, CBPEWindow
from .classification import ClassificationAccumulator, label_key
from .feedback import FeedbackAccumulator, as_float
from .intervals import DEFAULT_CONFIDENCE, DEFAULT_MIN_N
from .join import Matches, segment_key, segment_labels, window_start
from .regression import RegressionAccumulator
from .results import MetricSet

TASKS = ("classification", "regression")
ROW_FIELDS = ("kind", "value", "size", "corrected", "label", "score", "probabilities", "pred_value",
              "first_any", "first_of_kind", "first_truth", "delay")


@dataclass(frozen=True)
class ModelSpec:
    """How to score one model's outputs.

    Binary classifiers set ``positive_label`` (scores are P(positive)); a missing output
    label is then derived from the score: ``positive_label`` if score >= ``threshold``,
    else ``negative_label`` (when set). Multiclass models leave ``positive_label`` unset;
    a missing label is the argmax of the probabilities.
    """

    task: str = "classification"
    positive_label: Any = None
    negative_label: Any = None
    threshold: float = 0.5
    max_classes: int = 50
    auc_bins: int = 100
    ece_bins: int = 10

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {self.task!r}")


def _predicted_label(spec: ModelSpec, label: Any, score: float | None, probabilities: Mapping | None) -> str | None:
    if label is not None:
        return label_key(label)
    if spec.positive_label is not None and score is not None:
        if score >= spec.threshold:
            return label_key(spec.positive_label)
        return label_key(spec.negative_label)
    if probabilities:
        return label_key(max(probabilities, key=probabilities.get))
    return None


class WindowQuality:
    """All quality state for one window × (model, version, segment)."""

    def __init__(self, spec: ModelSpec, reference: CBPEReference | None = None, flush_rows: int = 64):
        self.spec = spec
        self.reference = reference
        self.flush_rows = flush_rows
        self._rows: list[tuple] = []
        self.feedback = FeedbackAccumulator()
        self.classification = (ClassificationAccumulator(spec.positive_label, spec.max_classes, spec.auc_bins,
                                                         spec.ece_bins) if spec.task == "classification" else None)
        self.regression = RegressionAccumulator() if spec.task == "regression" else None
        self.cbpe = CBPEWindow(reference) if reference is not None and spec.task == "classification" else None

    def record_predictions(self, outputs: Sequence[Mapping | None]) -> None:
        """Count predictions (the coverage denominator) and feed CBPE their scores."""
        self.feedback.add_predictions(len(outputs))
        if self.cbpe is not None:
            scores = [as_float((o or {}).get("score")) for o in outputs]
            self.cbpe.update_many(scores, self._decisions(outputs, scores))

    def _decisions(self, outputs: Sequence[Mapping | None], scores: Sequence[float]) -> list[bool] | None:
        pos = label_key(self.spec.positive_label)
        if pos is None:
            return None
        return [label_key(o["label"]) == pos if o and o.get("label") is not None else s >= self.reference.threshold
                for o, s in zip(outputs, scores)]

    def record_matches(self, m: Matches) -> None:
        """Feed joined rows: every row to the feedback proxies, first ground truth per prediction
        to the classification or regression accumulator (buffered, see :meth:`flush`)."""
        self.add_rows(zip(*(getattr(m, f) for f in ROW_FIELDS)))

    def add_rows(self, rows: Iterable[tuple]) -> None:
        """Add joined rows given as tuples in :data:`ROW_FIELDS` order."""
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Apply buffered rows. Rows are buffered up to ``flush_rows`` because labels arriving
        days late scatter a batch over many windows, and per-call numpy overhead (~0.2 ms per
        window state) would otherwise dominate; results, merges and serialisation see them."""
        if not self._rows:
            return
        (kind, value, size, corrected, label, score, probs, pred_value, first_any, first_of_kind, first_truth,
         delay) = zip(*self._rows)
        self._rows = []
        self.feedback.update_many(kind, value, first_of_kind, first_any, delay, size, corrected)
        idx = [i for i, first in enumerate(first_truth) if first]
        if not idx:
            return
        if self.classification is not None:
            self.classification.update_many(
                [value[i] for i in idx],
                [_predicted_label(self.spec, label[i], score[i], probs[i]) for i in idx],
                np.array([np.nan if score[i] is None else score[i] for i in idx], dtype=np.float64),
                [probs[i] for i in idx])
        else:
            self.regression.update_many(np.array([as_float(value[i]) for i in idx]),
                                        np.array([as_float(pred_value[i]) for i in idx]))

    def merge(self, other: "WindowQuality") -> "WindowQuality":
        if other.spec != self.spec:
            raise ValueError("can only merge window states of the same model spec")
        self.flush()
        other.flush()
        self.feedback.merge(other.feedback)
        if self.classification is not None:
            self.classification.merge(other.classification)
        if self.regression is not None:
            self.regression.merge(other.regression)
        if self.cbpe is not None and other.cbpe is not None:
            self.cbpe.merge(other.cbpe)
        return self

    def copy(self) -> "WindowQuality":
        return WindowQuality.from_dict(self.to_dict(), self.spec, self.reference)

    def result(self, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N) -> dict[str, MetricSet]:
        """Metric sets by family: feedback, classification or regression, and cbpe when configured."""
        self.flush()
        out = {"feedback": self.feedback.result(confidence, min_n)}
        if self.classification is not None:
            out["classification"] = self.classification.result(confidence, min_n)
        if self.regression is not None:
            out["regression"] = self.regression.result(confidence, min_n)
        if self.cbpe is not None:
            out["cbpe"] = self.cbpe.result(confidence, min_n)
        return out

    def to_dict(self) -> dict:
        return {"feedback": self.feedback.to_dict(),
                "classification": None if self.classification is None else self.classification.to_dict(),
                "regression": None if self.regression is None else self.regression.to_dict(),
                "cbpe": None if self.cbpe is None else self.cbpe.to_dict(),
                "rows": [list(r) for r in self._rows]}

    @classmethod
    def from_dict(cls, d: dict, spec: ModelSpec, reference: CBPEReference | None = None) -> "WindowQuality":
        w = cls(spec, reference)
        w.feedback = FeedbackAccumulator.from_dict(d["feedback"])
        if d["classification"] is not None:
            w.classification = ClassificationAccumulator.from_dict(d["classification"])
        if d["regression"] is not None:
            w.regression = RegressionAccumulator.from_dict(d["regression"])
        if d["cbpe"] is not None and reference is not None:
            w.cbpe = CBPEWindow.from_dict(d["cbpe"], reference)
        w._rows = [tuple(r) for r in d.get("rows", [])]
        return w


def merge_all(states: Iterable[WindowQuality]) -> WindowQuality | None:
    """Merge window states into a new one (inputs untouched); None for no states."""
    merged = None
    for s in states:
        merged = s.copy() if merged is None else merged.merge(s)
    return merged


Key = tuple  # (window_start, model, version, segment)


class QualityWindows:
    """Window states by (window_start, model, version, segment) for one partition.

    >>> q = QualityWindows(300, {"churn": ModelSpec(positive_label="churn", negative_label="stay")})
    >>> q.record_predictions({"timestamp": [10.0], "model": ["churn"], "version": ["v1"],
    ...                       "segment": [None], "output": [{"score": 0.9}]})
    >>> sorted(q.windows)
    [(0.0, 'churn', 'v1', '__all__')]
    """

    def __init__(self, window_seconds: float, specs: Mapping[str, ModelSpec] | None = None,
                 default_spec: ModelSpec = ModelSpec(),
                 references: Mapping[tuple[str, str], CBPEReference] | None = None,
                 segment_key: Callable[[Mapping | None], str] = segment_key):
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        self.window_seconds = float(window_seconds)
        self.specs = dict(specs or {})
        self.default_spec = default_spec
        self.references = dict(references or {})
        self.segment_key = segment_key
        self.windows: dict[Key, WindowQuality] = {}

    def spec(self, model: str) -> ModelSpec:
        return self.specs.get(model, self.default_spec)

    def state(self, key: Key) -> WindowQuality:
        w = self.windows.get(key)
        if w is None:
            _, model, version, _ = key
            w = self.windows[key] = WindowQuality(self.spec(model), self.references.get((model, version)))
        return w

    def record_predictions(self, columns: Mapping[str, Sequence]) -> None:
        """Decoded prediction columns (timestamp, model, version, output, and ``segment_label`` or
        ``segment``, as for :meth:`FeedbackJoin.add_predictions`)."""
        n = len(columns["timestamp"])
        labels = segment_labels(columns, self.segment_key)
        groups: dict[Key, list[int]] = {}
        for i in range(n):
            key = (window_start(columns["timestamp"][i], self.window_seconds), columns["model"][i],
                   columns["version"][i], labels[i])
            groups.setdefault(key, []).append(i)
        outputs = columns["output"]
        for key, idx in groups.items():
            self.state(key).record_predictions([outputs[i] for i in idx])

    def record_matches(self, matches: Matches) -> None:
        """Joined rows from :class:`~prodlens.quality.join.FeedbackJoin`, routed by prediction time."""
        touched: dict[int, WindowQuality] = {}
        rows = zip(*(getattr(matches, f) for f in ROW_FIELDS))
        for t, model, version, segment, row in zip(matches.prediction_time, matches.model, matches.version,
                                                   matches.segment, rows):
            key = (window_start(t, self.window_seconds), model, version, segment)
            w = self.windows.get(key) or self.state(key)
            w._rows.append(row)
            touched[id(w)] = w
        for w in touched.values():
            w.add_rows(())

    def view(self, model: str, version: str, segment: str | None, start: float, end: float) -> WindowQuality | None:
        """Merged state of the windows starting in [start, end); ``segment=None`` merges all segments."""
        return merge_all(w for (ws, m, v, s), w in self.windows.items()
                         if m == model and v == version and (segment is None or s == segment) and start <= ws < end)

    def pop_before(self, start: float) -> list[tuple[Key, WindowQuality]]:
        """Remove and return the windows starting before ``start`` (older than the label horizon)."""
        old = [k for k in self.windows if k[0] < start]
        return [(k, self.windows.pop(k)) for k in sorted(old)]

    def to_dict(self) -> dict:
        return {"window_seconds": self.window_seconds,
                "windows": [[list(k), w.to_dict()] for k, w in self.windows.items()]}

    @classmethod
    def from_dict(cls, d: dict, specs: Mapping[str, ModelSpec] | None = None, default_spec: ModelSpec = ModelSpec(),
                  references: Mapping[tuple[str, str], CBPEReference] | None = None,
                  segment_key: Callable[[Mapping | None], str] = segment_key) -> "QualityWindows":
        q = cls(d["window_seconds"], specs, default_spec, references, segment_key)
        for k, state in d["windows"]:
            key = tuple(k)
            q.windows[key] = WindowQuality.from_dict(state, q.spec(key[1]), q.references.get((key[1], key[2])))
        return q
