"""Group event rows into columnar batch envelopes (``schemas/batch.v1.json``).

One envelope holds events of one kind and one group: a (model, version) for
predictions (Kafka key ``b"<model>/<version>"``, so a version's windows live on one
partition), a model for feedback (key ``b"<model>"``, or no key), and all outcomes
together (no key: spread over partitions). Columns are one JSON array per field;
fields that are the same for every row (model, version, role, ...) are written
once as a scalar; nested objects (features, segment, output) are objects of
arrays with ``null`` where a row has no value (``output.probabilities`` is an
array of per-row ``{class: p}`` objects).

An envelope is sealed when its group reaches ``max_events`` or its oldest event has
waited ``linger`` seconds. An envelope whose encoding exceeds ``max_bytes`` (or whose
rows together name more segment attributes / features than one event may carry)
is split in halves until it fits; a single event that alone exceeds ``max_bytes``
is returned in ``Batcher.oversized`` instead, since no broker would accept it.

>>> b = Batcher(max_events=2, linger=1.0)
>>> b.add("outcome", None, ("e1", "u1", 10.0, "revenue", 5.0, None, None, None), now=0.0)
[]
>>> [env.count for env in b.add("outcome", None, ("e2", "u2", 11.0, "revenue", 7.5, None, None, None), now=0.1)]
[2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import orjson

from prodlens.sdk.events import FIELDS, MAX_FEATURES, MAX_SEGMENT_KEYS

# Columns worth collapsing to one scalar when every row agrees (few distinct values).
_LOW_CARDINALITY = frozenset({"role", "experiment", "variant", "kind", "metric", "model"})
_NESTED = frozenset({"segment", "features"})
_NESTED_LIMITS = {"segment": MAX_SEGMENT_KEYS, "features": MAX_FEATURES}


@dataclass(slots=True)
class Envelope:
    """One Kafka message: ``count`` events of ``kind`` encoded in ``payload``."""

    kind: str
    key: bytes | None
    count: int
    payload: bytes


def message_key(kind: str, group: Any) -> bytes | None:
    """The Kafka key of a group: ``b"model/version"``, ``b"model"`` or ``None``."""
    if kind == "prediction":
        return f"{group[0]}/{group[1]}".encode()
    if kind == "feedback" and group is not None:
        return group.encode()
    return None


def _nested(values: tuple) -> dict[str, list] | None:
    """Per-row dicts (or None) as one list per key, ``None`` where a row lacks the key."""
    keys: dict[str, None] = {}
    first = None
    uniform = True
    for d in values:
        if d:
            if first is None:
                first = d.keys()
                keys.update(dict.fromkeys(d))
            elif d.keys() != first:
                uniform = False
                keys.update(dict.fromkeys(d))
        elif d is None or not d:
            uniform = False
    if not keys:
        return None
    if uniform:  # the common case: every row has the same keys
        return {k: [d[k] for d in values] for k in keys}
    return {k: [d.get(k) if d else None for d in values] for k in keys}


def _output(values: tuple) -> dict[str, Any]:
    names: dict[str, None] = {}
    for o in values:
        names.update(dict.fromkeys(o))
    # label / score / value: one array each; probabilities: one {class: p} object (or null)
    # per row, since rows may name different classes.
    return {name: [o.get(name) for o in values]
            for name in ("label", "score", "probabilities", "value") if name in names}


def build_columns(kind: str, group: Any, rows: list[tuple]) -> dict[str, Any]:
    """The ``columns`` object of an envelope for rows of one kind and group."""
    columns: dict[str, Any] = {}
    if kind == "prediction":
        columns["model"], columns["version"] = group
    elif kind == "feedback" and group is not None:
        columns["model"] = group
    for name, column in zip(FIELDS[kind], zip(*rows)):
        if name in _NESTED:
            nested = _nested(column)
            if nested is not None:
                columns[name] = nested
        elif name == "output":
            columns[name] = _output(column)
        elif column.count(None) == len(column):
            continue  # optional field nobody set
        elif name in _LOW_CARDINALITY and column.count(column[0]) == len(column):
            columns[name] = column[0]
        else:
            columns[name] = list(column)
    return columns


def encode(kind: str, group: Any, rows: list[tuple]) -> bytes:
    """One columnar envelope as JSON bytes."""
    return orjson.dumps({"type": "batch", "schema_version": 1, "kind": kind, "count": len(rows),
                         "columns": build_columns(kind, group, rows)})


def _too_wide(kind: str, rows: list[tuple]) -> bool:
    """Whether the union of nested keys breaks a per-event limit (each row alone is fine)."""
    if len(rows) < 2:
        return False
    for name, limit in _NESTED_LIMITS.items():
        if name in FIELDS[kind]:
            i = FIELDS[kind].index(name)
            keys: set = set()
            for row in rows:
                if row[i]:
                    keys.update(row[i])
                    if len(keys) > limit:
                        return True
    return False


class _Group:
    __slots__ = ("rows", "since")

    def __init__(self, since: float):
        self.rows: list[tuple] = []
        self.since = since


class Batcher:
    """Pending rows per (kind, group), sealed into :class:`Envelope` s by size and linger.

    Not thread-safe: one owner (the sender) calls it. Memory is bounded by
    ``max_events`` rows per group.
    """

    def __init__(self, max_events: int = 500, linger: float = 0.1, max_bytes: int = 900_000):
        if max_events < 1:
            raise ValueError(f"batch_size: must be at least 1, got {max_events}")
        if linger < 0:
            raise ValueError(f"linger: must not be negative, got {linger}")
        if max_bytes < 1024:
            raise ValueError(f"max_message_bytes: must be at least 1024, got {max_bytes}")
        self.max_events = max_events
        self.linger = linger
        self.max_bytes = max_bytes
        self._groups: dict[tuple[str, Any], _Group] = {}
        self.pending = 0
        self.oversized: list[tuple[str, Any, tuple]] = []  # single events no broker would take

    def add(self, kind: str, group: Any, row: tuple, now: float) -> list[Envelope]:
        """Queue one row; returns the envelope(s) sealed because the group filled up."""
        g = self._groups.get((kind, group))
        if g is None:
            g = self._groups[(kind, group)] = _Group(now)
        g.rows.append(row)
        self.pending += 1
        if len(g.rows) >= self.max_events:
            del self._groups[(kind, group)]
            self.pending -= len(g.rows)
            return self.seal(kind, group, g.rows)
        return []

    def add_many(self, items: Iterable[tuple[str, Any, tuple]], now: float) -> list[Envelope]:
        out: list[Envelope] = []
        for kind, group, row in items:
            sealed = self.add(kind, group, row, now)
            if sealed:
                out.extend(sealed)
        return out

    def seal(self, kind: str, group: Any, rows: list[tuple]) -> list[Envelope]:
        """Encode rows into envelopes, halving until each fits ``max_bytes`` and the limits."""
        if _too_wide(kind, rows):
            half = len(rows) // 2
            return self.seal(kind, group, rows[:half]) + self.seal(kind, group, rows[half:])
        payload = encode(kind, group, rows)
        if len(payload) > self.max_bytes:
            if len(rows) == 1:
                self.oversized.append((kind, group, rows[0]))
                return []
            half = len(rows) // 2
            return self.seal(kind, group, rows[:half]) + self.seal(kind, group, rows[half:])
        return [Envelope(kind, message_key(kind, group), len(rows), payload)]

    def due(self, now: float) -> list[Envelope]:
        """Seal every group whose oldest row has waited ``linger`` seconds or more."""
        out: list[Envelope] = []
        for key in [k for k, g in self._groups.items() if now - g.since >= self.linger]:
            g = self._groups.pop(key)
            self.pending -= len(g.rows)
            out.extend(self.seal(key[0], key[1], g.rows))
        return out

    def seal_all(self) -> list[Envelope]:
        out: list[Envelope] = []
        for (kind, group), g in self._groups.items():
            out.extend(self.seal(kind, group, g.rows))
        self._groups.clear()
        self.pending = 0
        return out

    def next_due(self) -> float | None:
        """When the oldest pending group will be due (same clock as ``now``), or None."""
        if not self._groups:
            return None
        return min(g.since for g in self._groups.values()) + self.linger
