"""Mergeable summary of one categorical field: exact counts that turn into a Misra-Gries sketch.

Counts are kept exactly while the field has at most ``capacity`` distinct values (default
1000). Beyond that the summary *is* a Misra-Gries frequent-items sketch with ``capacity``
counters (Misra & Gries 1982; mergeable form of Agarwal et al., "Mergeable summaries", 2012):
whenever more than ``capacity`` counters exist, the (capacity+1)-th largest counter value is
subtracted from every counter and counters at or below zero are dropped.

Error bound: for every category, ``counter <= true count <= counter + decrement`` where
``decrement`` (tracked exactly, 0 while exact) satisfies
``decrement <= (total - sum(counters)) / (capacity + 1) <= total / (capacity + 1)``,
i.e. epsilon = 1/(capacity+1) of the total weight (~0.1% for the default). Every category
more frequent than ``decrement`` keeps a counter. The bound survives any sequence of merges.
``top(k)`` and ``counts(k)`` report the lower bounds (the counters); ``__other__`` is the
remainder of the exact total, so it is over-estimated by at most ``k * decrement``.

State is a plain dict of counters, so ``to_dict``/``from_dict`` round-trip exactly and the
result is deterministic (independent of batch boundaries while exact).

Values are canonicalised to strings: ``True``/``False`` -> ``"true"``/``"false"`` (JSON
spelling), integral floats -> integer spelling (``1.0`` -> ``"1"``, so CSV and JSON agree).
``None`` and NaN are missing.

>>> c = CategoricalSummary()
>>> c.update_many(["a", "b", "a", None, True])
>>> c.count, c.missing, c.counts(1)
(4, 1, {'a': 2, '__other__': 2})
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping

import numpy as np

OTHER = "__other__"
DEFAULT_CAPACITY = 1000


def canonical_category(value: Any) -> str | None:
    """The string a categorical value is counted under; None for missing."""
    t = type(value)
    if t is str:
        return value
    if value is None:
        return None
    if t is bool or isinstance(value, np.bool_):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if math.isfinite(value) and float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


class CategoricalSummary:
    """Counts per category, exact up to ``capacity`` distinct values, Misra-Gries beyond."""

    __slots__ = ("capacity", "count", "missing", "decrement", "counters")

    kind = "categorical"

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if int(capacity) < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.count = 0            # non-missing values (exact total weight)
        self.missing = 0
        self.decrement = 0        # total subtracted from every counter so far (0 = exact)
        self.counters: dict[str, int] = {}

    # -- updates -------------------------------------------------------------------------
    def update(self, value: Any) -> None:
        self.update_many([value])

    def update_many(self, values: Iterable[Any] | np.ndarray, canonical: bool = False) -> None:
        """Add a batch of values (``canonical``: already passed through ``canonical_category``)."""
        if isinstance(values, np.ndarray) and values.dtype.kind in "U":
            keys, counts = np.unique(values, return_counts=True)
            self.update_counts(dict(zip(keys.tolist(), counts.tolist())))
            return
        batch = Counter(values if canonical else map(canonical_category, values))
        missing = batch.pop(None, 0)
        self.missing += missing
        self._add(batch)

    def update_counts(self, counts: Mapping[Any, int], missing: int = 0) -> None:
        """Add pre-aggregated counts (e.g. from ``pyarrow.compute.value_counts``)."""
        batch: Counter = Counter()
        for key, n in counts.items():
            if int(n) < 0:
                raise ValueError(f"counts[{key!r}]: must be >= 0, got {n}")
            cat = canonical_category(key)
            if cat is None:
                missing += int(n)
            else:
                batch[cat] += int(n)
        self.missing += int(missing)
        self._add(batch)

    def _add(self, batch: Mapping[str, int]) -> None:
        counters = self.counters
        for key, n in batch.items():
            if n:
                counters[key] = counters.get(key, 0) + n
                self.count += n
        if len(counters) > self.capacity:
            self._reduce()

    def _reduce(self) -> None:
        # Agarwal et al.'s merge step: subtract the (capacity+1)-th largest counter from all.
        values = np.fromiter(self.counters.values(), dtype=np.int64, count=len(self.counters))
        cut = int(np.partition(values, values.size - self.capacity - 1)[values.size - self.capacity - 1])
        self.decrement += cut
        self.counters = {k: v - cut for k, v in self.counters.items() if v > cut}

    def merge(self, other: "CategoricalSummary") -> "CategoricalSummary":
        """Add ``other`` into this summary; exact while the union has <= capacity categories,
        else within the Misra-Gries bound (decrements add up)."""
        if not isinstance(other, CategoricalSummary):
            raise TypeError(f"can only merge CategoricalSummary, got {type(other).__name__}")
        self.capacity = min(self.capacity, other.capacity)
        self.missing += other.missing
        self.decrement += other.decrement
        self._add(other.counters)
        # other's mass already subtracted by its own decrements is not in its counters
        self.count += other.count - sum(other.counters.values())
        if len(self.counters) > self.capacity:
            self._reduce()
        return self

    # -- results -------------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        return self.decrement == 0

    @property
    def error(self) -> int:
        """Absolute error bound on any single category count (0 while exact)."""
        return self.decrement

    @property
    def epsilon(self) -> float:
        """Documented relative bound 1/(capacity+1) of the total (0 while exact)."""
        return 0.0 if self.exact else 1.0 / (self.capacity + 1)

    def estimate(self, category: Any) -> int:
        """Lower-bound count of ``category`` (exact while ``exact``)."""
        return self.counters.get(canonical_category(category), 0)

    def bounds(self, category: Any) -> tuple[int, int]:
        c = self.estimate(category)
        return c, min(c + self.decrement, self.count)

    def top(self, k: int | None = None) -> list[tuple[str, int]]:
        """Categories by decreasing count (ties by name), at most ``k``."""
        items = sorted(self.counters.items(), key=lambda kv: (-kv[1], kv[0]))
        return items if k is None else items[:k]

    def counts(self, k: int | None = None) -> dict[str, int]:
        """Top-``k`` counts plus ``__other__`` for the rest (present only when non-zero)."""
        top = dict(self.top(k))
        rest = self.count - sum(top.values())
        if rest > 0:
            top[OTHER] = top.get(OTHER, 0) + rest
        return top

    def counts_for(self, categories: Iterable[str]) -> np.ndarray:
        """Counts of the given categories, then one more entry: everything else."""
        cats = list(categories)
        out = np.array([self.counters.get(c, 0) for c in cats] + [0], dtype=np.float64)
        out[-1] = self.count - out[:-1].sum()
        return out

    # -- state ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": "categorical", "capacity": self.capacity, "count": self.count,
                "missing": self.missing, "decrement": self.decrement,
                "counts": dict(sorted(self.counters.items()))}

    @classmethod
    def from_dict(cls, state: dict) -> "CategoricalSummary":
        if state.get("type") != "categorical":
            raise ValueError(f"type: expected 'categorical', got {state.get('type')!r}")
        s = cls(state["capacity"])
        s.count = int(state["count"])
        s.missing = int(state["missing"])
        s.decrement = int(state["decrement"])
        s.counters = {str(k): int(v) for k, v in state["counts"].items()}
        if sum(s.counters.values()) > s.count:
            raise ValueError("counts: add up to more than count")
        return s

    def copy(self) -> "CategoricalSummary":
        return CategoricalSummary.from_dict(self.to_dict())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoricalSummary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"CategoricalSummary(count={self.count}, missing={self.missing}, "
                f"categories={len(self.counters)}, decrement={self.decrement})")
