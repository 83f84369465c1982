"""Per-segment and per-window summaries of every watched field of a model's events.

A *field* is named by its path in the event contract:

* ``features.<name>`` — a model input;
* ``output.score``, ``output.value`` (numeric), ``output.label`` (categorical),
  ``output.probabilities.<class>`` (numeric);
* ``label`` — the ground truth from feedback (numeric or categorical).

Each field has a :class:`~prodlens.sketches.numeric.NumericSummary` or a
:class:`~prodlens.sketches.categorical.CategoricalSummary` (error bounds there).
:class:`SegmentSummary` holds the fields of one (model, version, segment) in one window;
:class:`WindowSummary` holds the segments of one (model, version, window). Both merge (longer
windows, several workers) and serialise to JSON-ready dicts::

    {"format": "prodlens.summary.v1", "model": "churn", "version": "v7",
     "start": 1795588200.0, "end": 1795588260.0, "spec": {...},
     "segments": {"country=US": {"count": 812,
                                 "features": {"tenure_months": {"type": "numeric", ...}},
                                 "output": {"score": {...}, "label": {...}},
                                 "label": null}}}

Memory grows with segments x fields only (each summary is bounded), never with events.

>>> spec = SummarySpec(fields={"features.age": "numeric", "features.plan": "categorical"})
>>> w = WindowSummary("churn", "v7", spec=spec)
>>> w.update_columns({"features": [{"age": 30, "plan": "pro"}, {"age": 41, "plan": None}],
...                   "output": [{"score": 0.2}, {"score": 0.9}]}, ["country=US", "country=DE"])
>>> sorted(w.segments), w.segments["country=US"].fields["features.age"].mean
(['country=DE', 'country=US'], 30.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from prodlens.sketches.categorical import DEFAULT_CAPACITY, CategoricalSummary, canonical_category
from prodlens.sketches.numeric import DEFAULT_K, NumericSummary, to_float_array

ALL = "__all__"
KINDS = ("numeric", "categorical")
SUMMARY_FORMAT = "prodlens.summary.v1"
_OUTPUT_KINDS = {"output.score": "numeric", "output.value": "numeric", "output.label": "categorical"}

FieldSummary = NumericSummary | CategoricalSummary


def _check_kind(path: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    return kind


def infer_kind(values: Iterable[Any]) -> str | None:
    """'numeric' for numbers (not booleans), 'categorical' for strings/booleans, None if all missing."""
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, (bool, np.bool_, str)):
            return "categorical"
        if isinstance(v, (int, float, np.number)):
            return "numeric"
        return "categorical"
    return None


@dataclass
class SummarySpec:
    """Which fields to summarise and how.

    ``fields`` maps a field path to its kind. With ``infer`` (default) fields not listed are
    added when first seen, their kind inferred from the values, up to ``max_fields`` per segment.
    ``k`` is the KLL parameter of numeric summaries, ``capacity`` the exact-count capacity of
    categorical ones, ``max_classes`` caps ``output.probabilities.*`` fields.
    """

    fields: dict[str, str] = field(default_factory=dict)
    infer: bool = True
    k: int = DEFAULT_K
    capacity: int = DEFAULT_CAPACITY
    max_fields: int = 600
    max_classes: int = 50

    def __post_init__(self) -> None:
        for path, kind in self.fields.items():
            _check_kind(path, kind)

    def new_summary(self, path: str, kind: str) -> FieldSummary:
        _check_kind(path, kind)
        return NumericSummary(self.k) if kind == "numeric" else CategoricalSummary(self.capacity)

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> "SummarySpec":
        """Build from a model's config: ``features`` as a list of names, a mapping name -> kind,
        or a list of ``{"name":..., "type":...}``; optional ``output`` (name -> kind), ``label``
        (a kind, or ``{"type": kind}``), ``infer``, ``k``, ``capacity``."""
        fields: dict[str, str] = {}
        feats = config.get("features") or {}
        if isinstance(feats, Mapping):
            for name, kind in feats.items():
                if isinstance(kind, Mapping):
                    kind = kind.get("type")
                if kind is not None:
                    fields[f"features.{name}"] = _check_kind(f"features.{name}", kind)
        elif isinstance(feats, Sequence) and not isinstance(feats, str):
            for i, item in enumerate(feats):
                if isinstance(item, str):
                    continue  # kind inferred from data
                if not isinstance(item, Mapping) or "name" not in item:
                    raise ValueError(f"features[{i}]: expected a name or {{name, type}}, got {item!r}")
                if item.get("type") is not None:
                    fields[f"features.{item['name']}"] = _check_kind(f"features.{item['name']}", item["type"])
        else:
            raise ValueError(f"features: expected a list or a mapping, got {type(feats).__name__}")
        for name, kind in (config.get("output") or {}).items():
            if isinstance(kind, Mapping):
                kind = kind.get("type")
            if kind is not None:
                fields[f"output.{name}"] = _check_kind(f"output.{name}", kind)
        label = config.get("label")
        if isinstance(label, Mapping):
            label = label.get("type")
        elif isinstance(label, str) and label not in KINDS:
            label = None  # a column name (reference building): kind inferred
        if label is not None:
            fields["label"] = _check_kind("label", label)
        return cls(fields=fields, infer=bool(config.get("infer", True)),
                   k=int(config.get("k", DEFAULT_K)), capacity=int(config.get("capacity", DEFAULT_CAPACITY)))

    def to_dict(self) -> dict:
        return {"fields": dict(self.fields), "infer": self.infer, "k": self.k, "capacity": self.capacity,
                "max_fields": self.max_fields, "max_classes": self.max_classes}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "SummarySpec":
        return cls(fields=dict(state.get("fields", {})), infer=state.get("infer", True),
                   k=state.get("k", DEFAULT_K), capacity=state.get("capacity", DEFAULT_CAPACITY),
                   max_fields=state.get("max_fields", 600), max_classes=state.get("max_classes", 50))


def summary_from_dict(state: Mapping[str, Any]) -> FieldSummary:
    kind = state.get("type")
    if kind == "numeric":
        return NumericSummary.from_dict(dict(state))
    if kind == "categorical":
        return CategoricalSummary.from_dict(dict(state))
    raise ValueError(f"type: expected 'numeric' or 'categorical', got {kind!r}")


def _column(rows_or_cols: Any, name: str, n: int) -> list | np.ndarray:
    """One member of a nested column (``features``/``output``), as rows or as columns."""
    if rows_or_cols is None:
        return [None] * n
    if isinstance(rows_or_cols, Mapping):  # columnar: name -> list of values
        col = rows_or_cols.get(name)
        if col is None:
            return [None] * n
        if len(col) != n:
            raise ValueError(f"columns.{name}: has {len(col)} values, expected {n}")
        return col
    return [r.get(name) if r else None for r in rows_or_cols]


def _member_names(rows_or_cols: Any) -> set[str]:
    if rows_or_cols is None:
        return set()
    if isinstance(rows_or_cols, Mapping):
        return set(rows_or_cols)
    return set().union(*(r.keys() for r in rows_or_cols if r))


def _length(columns: Mapping[str, Any]) -> int:
    for name in ("event_id", "timestamp", "prediction_id", "features", "output"):
        col = columns.get(name)
        if col is None:
            continue
        if isinstance(col, Mapping):
            for member in col.values():
                return len(member)
            continue
        if isinstance(col, (list, tuple, np.ndarray)):
            return len(col)
    raise ValueError("columns: no per-event column (features, output, event_id, timestamp) to size the batch")


class SegmentSummary:
    """All field summaries of one (model, version, segment) over one window."""

    __slots__ = ("spec", "count", "fields")

    def __init__(self, spec: SummarySpec | None = None):
        self.spec = spec or SummarySpec()
        self.count = 0
        self.fields: dict[str, FieldSummary] = {}

    def field(self, path: str, kind: str) -> FieldSummary | None:
        """The summary of ``path``, created on first use (None once ``max_fields`` is reached)."""
        summary = self.fields.get(path)
        if summary is None:
            if len(self.fields) >= self.spec.max_fields:
                return None
            summary = self.fields[path] = self.spec.new_summary(path, kind)
        return summary

    def update_field(self, path: str, kind: str, values: Sequence[Any] | np.ndarray) -> None:
        summary = self.field(path, kind)
        if summary is not None:
            summary.update_many(values)

    def update_columns(self, columns: Mapping[str, Any]) -> None:
        """Add a batch of decoded prediction events (``prodlens.contract.Decoded.columns``)."""
        n = _length(columns)
        self.count += n
        for path, kind, values in extract_fields(columns, self.spec, n, known=self.fields):
            summary = self.field(path, kind)
            if summary is not None:
                _apply(summary, values)

    def update_labels(self, values: Sequence[Any] | np.ndarray, kind: str | None = None) -> None:
        """Add ground-truth labels (from feedback joined to predictions of this segment)."""
        kind = kind or self.spec.fields.get("label") or (
            self.fields["label"].kind if "label" in self.fields else infer_kind(values))
        if kind is not None:
            self.update_field("label", kind, values)

    def merge(self, other: "SegmentSummary") -> "SegmentSummary":
        """Add ``other`` into this summary, field by field (see each summary's merge bound)."""
        self.count += other.count
        for path, summary in other.fields.items():
            mine = self.fields.get(path)
            if mine is None:
                if len(self.fields) < self.spec.max_fields:
                    self.fields[path] = summary.copy()
            elif mine.kind != summary.kind:
                raise ValueError(f"{path}: cannot merge a {summary.kind} summary into a {mine.kind} one")
            else:
                mine.merge(summary)
        return self

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"count": self.count, "features": {}, "output": {}, "label": None}
        for path in sorted(self.fields):
            state = self.fields[path].to_dict()
            if path == "label":
                out["label"] = state
            else:
                group, _, name = path.partition(".")
                out[group][name] = state
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], spec: SummarySpec | None = None) -> "SegmentSummary":
        seg = cls(spec)
        seg.count = int(state.get("count", 0))
        for group in ("features", "output"):
            for name, sub in (state.get(group) or {}).items():
                seg.fields[f"{group}.{name}"] = summary_from_dict(sub)
        if state.get("label") is not None:
            seg.fields["label"] = summary_from_dict(state["label"])
        return seg

    def copy(self) -> "SegmentSummary":
        return SegmentSummary.from_dict(self.to_dict(), self.spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SegmentSummary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SegmentSummary(count={self.count}, fields={sorted(self.fields)})"


def extract_fields(columns: Mapping[str, Any], spec: SummarySpec, n: int,
                   known: Mapping[str, FieldSummary] | None = None) -> list[tuple[str, str, Any]]:
    """(path, kind, values) for every field of a batch: configured, already known, or inferred.

    Numeric values come back as a float64 array (missing = NaN), categorical ones as a list.
    """
    known = known or {}
    out: list[tuple[str, str, Any]] = []
    feats = columns.get("features")
    outputs = columns.get("output")
    names = {f"features.{m}" for m in _member_names(feats)} if spec.infer else set()
    out_names = _member_names(outputs)
    names |= {f"output.{m}" for m in out_names if m != "probabilities"}
    paths = set(spec.fields) - {"label"} | set(known) - {"label"} | names
    probs = None
    for path in sorted(paths):
        group, _, name = path.partition(".")
        if group == "features":
            values = _column(feats, name, n)
        elif group == "output" and name.startswith("probabilities."):
            if probs is None:
                probs = _column(outputs, "probabilities", n)
            cls_name = name.partition(".")[2]
            values = [p.get(cls_name) if p else None for p in probs]
        elif group == "output":
            values = _column(outputs, name, n)
        else:
            continue
        kind = spec.fields.get(path) or (known[path].kind if path in known else None) \
            or _OUTPUT_KINDS.get(path) or infer_kind(values)
        if kind is None:
            continue  # all missing and kind unknown: wait for a value
        out.append((path, kind, _prepare(values, kind)))
    if "probabilities" in out_names:
        if probs is None:
            probs = _column(outputs, "probabilities", n)
        classes = sorted(set().union(*(p.keys() for p in probs if p)))
        taken = {p for p, _, _ in out}
        for cls_name in classes[: spec.max_classes]:
            path = f"output.probabilities.{cls_name}"
            if path not in taken:
                out.append((path, "numeric", _prepare([p.get(cls_name) if p else None for p in probs], "numeric")))
    return out


def _prepare(values: Any, kind: str) -> Any:
    if kind == "numeric":
        arr, invalid = to_float_array(values)
        mask = None
        if invalid:
            mask = np.array([not (v is None or isinstance(v, (int, float, np.number))) for v in values])
        return _Numeric(arr, mask)
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return np.array([canonical_category(v) for v in values], dtype=object)


class _Numeric:
    """A float column (non-numeric values as NaN) and which values were non-numeric."""

    __slots__ = ("arr", "invalid_mask")

    def __init__(self, arr: np.ndarray, invalid_mask: np.ndarray | None = None):
        self.arr = arr
        self.invalid_mask = invalid_mask

    def __getitem__(self, idx):
        return _Numeric(self.arr[idx], None if self.invalid_mask is None else self.invalid_mask[idx])


def _apply(summary: FieldSummary, values: Any) -> None:
    if isinstance(values, _Numeric):
        if summary.kind != "numeric":
            summary.update_many(values.arr.tolist())
            return
        summary.update_many(values.arr)
        if values.invalid_mask is not None:
            summary.invalid += int(values.invalid_mask.sum())
    elif summary.kind == "categorical":
        summary.update_many(values, canonical=True)  # _prepare canonicalised them
    else:
        summary.update_many(values)


class WindowSummary:
    """The segments of one (model, version) over one window ``[start, end)``.

    ``update_columns(columns, segment_keys)`` takes the decoded batch and one segment key per
    event (the stream layer computes keys, folding rare values into ``__other__``).
    """

    __slots__ = ("model", "version", "start", "end", "spec", "segments")

    def __init__(self, model: str, version: str, start: float | None = None, end: float | None = None,
                 spec: SummarySpec | None = None):
        self.model = model
        self.version = version
        self.start = start
        self.end = end
        self.spec = spec or SummarySpec()
        self.segments: dict[str, SegmentSummary] = {}

    def segment(self, key: str) -> SegmentSummary:
        seg = self.segments.get(key)
        if seg is None:
            seg = self.segments[key] = SegmentSummary(self.spec)
        return seg

    @property
    def count(self) -> int:
        return sum(s.count for s in self.segments.values())

    def update_columns(self, columns: Mapping[str, Any], segment_keys: Sequence[str] | np.ndarray | None = None) -> None:
        """Add a batch of decoded prediction events; ``segment_keys`` (one per event) default to ``__all__``."""
        n = _length(columns)
        if segment_keys is None:
            groups = [(ALL, None)]
        else:
            keys = np.asarray(segment_keys, dtype=object)
            if keys.shape != (n,):
                raise ValueError(f"segment_keys: has {keys.size} values, the batch has {n} events")
            groups = _group(keys)
        known: dict[str, FieldSummary] = {}
        for key, _ in groups:
            if key in self.segments:
                known.update(self.segments[key].fields)
        fields = extract_fields(columns, self.spec, n, known=known)
        for key, idx in groups:
            seg = self.segment(key)
            seg.count += n if idx is None else idx.size
            for path, kind, values in fields:
                summary = seg.field(path, kind)
                if summary is None:
                    continue
                _apply(summary, values if idx is None else values[idx])

    def update_labels(self, values: Sequence[Any], segment_keys: Sequence[str] | None = None,
                      kind: str | None = None) -> None:
        """Add ground-truth labels, one segment key per label (default ``__all__``)."""
        if segment_keys is None:
            self.segment(ALL).update_labels(values, kind)
            return
        vals = np.asarray(values, dtype=object)
        keys = np.asarray(segment_keys, dtype=object)
        if keys.shape != vals.shape:
            raise ValueError(f"segment_keys: has {keys.size} values, labels has {vals.size}")
        kind = kind or self.spec.fields.get("label") or infer_kind(values)
        for key, idx in _group(keys):
            self.segment(key).update_labels(vals[idx].tolist(), kind)

    def merge(self, other: "WindowSummary") -> "WindowSummary":
        """Add ``other`` (same model and version; any window) into this one."""
        if (other.model, other.version) != (self.model, self.version):
            raise ValueError(f"model/version: cannot merge {other.model}/{other.version} "
                             f"into {self.model}/{self.version}")
        for key, seg in other.segments.items():
            mine = self.segments.get(key)
            if mine is None:
                self.segments[key] = seg.copy()
                self.segments[key].spec = self.spec
            else:
                mine.merge(seg)
        self.start = _opt(min, self.start, other.start)
        self.end = _opt(max, self.end, other.end)
        return self

    def combined(self) -> SegmentSummary:
        """All segments merged into one (the whole model version)."""
        out = SegmentSummary(self.spec)
        for seg in self.segments.values():
            out.merge(seg)
        return out

    def to_dict(self) -> dict:
        return {"format": SUMMARY_FORMAT, "model": self.model, "version": self.version,
                "start": self.start, "end": self.end, "spec": self.spec.to_dict(),
                "segments": {k: self.segments[k].to_dict() for k in sorted(self.segments)}}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "WindowSummary":
        if state.get("format", SUMMARY_FORMAT) != SUMMARY_FORMAT:
            raise ValueError(f"format: expected {SUMMARY_FORMAT!r}, got {state.get('format')!r}")
        spec = SummarySpec.from_dict(state.get("spec") or {})
        w = cls(state["model"], state["version"], state.get("start"), state.get("end"), spec)
        for key, seg in (state.get("segments") or {}).items():
            w.segments[key] = SegmentSummary.from_dict(seg, spec)
        return w

    def copy(self) -> "WindowSummary":
        return WindowSummary.from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WindowSummary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"WindowSummary({self.model}/{self.version}, [{self.start}, {self.end}), "
                f"segments={sorted(self.segments)})")


def _group(keys: np.ndarray) -> list[tuple[str, np.ndarray]]:
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    if uniq.size == 1:
        return [(str(uniq[0]), np.arange(keys.size))]
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(1, uniq.size))
    return [(str(k), idx) for k, idx in zip(uniq, np.split(order, bounds))]


def _opt(fn, a, b):
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)
