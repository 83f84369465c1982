"""Segment labels with bounded cardinality.

A segment is named by its attribute values, ``"country=US,device=ios"``. Each
attribute admits a fixed list of values, or the first ``top_k`` distinct values
seen; anything else folds into ``__other__``, and an absent attribute is
``__missing__``. Admission is first-come (not frequency-based) so a label never
changes meaning mid-stream; the admitted values are part of the checkpointed
state, so they survive restarts.

>>> folder = SegmentFolder({"country": 2})
>>> [folder.label({"country": c}) for c in ("US", "DE", "FR", None)]
['country=US', 'country=DE', 'country=__other__', 'country=__missing__']
"""

from __future__ import annotations

from typing import Mapping, Sequence

OTHER = "__other__"
MISSING = "__missing__"
ALL = "__all__"


class SegmentFolder:
    """Turns segment attribute dicts into bounded labels for one model."""

    def __init__(self, top_k: Mapping[str, int], fixed: Mapping[str, list[str]] | None = None):
        self.keys = sorted(top_k)
        self.top_k = dict(top_k)
        self.admitted: dict[str, dict[str, None]] = {k: {} for k in self.keys}
        self.fixed = {k: frozenset(v) for k, v in (fixed or {}).items() if v is not None}
        self._cache: dict[tuple, str] = {}

    def _value(self, key: str, raw) -> str:
        if raw is None:
            return MISSING
        value = str(raw).lower() if isinstance(raw, bool) else str(raw)
        if key in self.fixed:
            return value if value in self.fixed[key] else OTHER
        admitted = self.admitted[key]
        if value in admitted:
            return value
        if len(admitted) < self.top_k[key]:
            admitted[value] = None
            return value
        return OTHER

    def label(self, segment: Mapping | None) -> str:
        if not self.keys:
            return ALL
        segment = segment or {}
        raw = tuple(segment.get(k) for k in self.keys)
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        label = ",".join(f"{k}={self._value(k, v)}" for k, v in zip(self.keys, raw))
        # Only cache once every value is settled (admitted, fixed, or folded for good).
        if len(self._cache) < 4096:
            self._cache[raw] = label
        return label

    def labels(self, columns: Mapping[str, list], rows: Sequence[int]) -> list[str]:
        """Labels of rows of canonical segment columns (a dict of lists)."""
        if not self.keys:
            return [ALL] * len(rows)
        cols = [columns.get(k) for k in self.keys]
        cache, out = self._cache, []
        for i in rows:
            raw = tuple(c[i] if c is not None else None for c in cols)
            label = cache.get(raw)
            if label is None:
                label = ",".join(f"{k}={self._value(k, v)}" for k, v in zip(self.keys, raw))
                if len(cache) < 4096:
                    cache[raw] = label
            out.append(label)
        return out

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in self.admitted.items()}

    def restore(self, state: Mapping[str, list[str]]) -> None:
        for key, values in state.items():
            if key in self.admitted:
                self.admitted[key] = dict.fromkeys(values)
        self._cache.clear()
