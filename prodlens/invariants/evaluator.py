"""Evaluate invariants over batches of events, per event-time window × (model, version, segment).

:class:`InvariantEvaluator` takes events as columns (what ``prodlens.contract``
decodes: one list per field, nested objects one dict per row) or as row dicts,
counts checked / failed events per tumbling window and key with a bounded
sample of violating events, keeps the bounded cross-event state (agreement
pairing buffer, per-unit flip history), and on :meth:`~InvariantEvaluator.close_windows`
returns one :class:`WindowResult` per window × key × invariant.

``violations`` of a result is what ``prodlens_invariant_violations_total`` adds:
violating events for per-event checks and stability; 1 per breached window for
window-level bounds (agreement, rare, business), so normal disagreement below
the bound never counts.

Memory: per open window one small tally per (key, invariant) with at most
``sample_size`` sampled events; agreement keeps at most ``max_pending`` waiting
predictions; stability at most ``max_units`` units of ``max_flips + 1`` times;
business bounds remember keys for ``key_ttl`` seconds. Nothing grows with the
number of events.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from prodlens.contract import rows_to_columns

from .expr import Path, column_values, to_array
from .sample import BottomK, priority
from .spec import (AgreementCheck, BusinessBound, EnumCheck, Invariant, ModelInvariants, NotNullCheck,
                   RangeCheck, RareBound, RuleCheck, Selector, StabilityCheck, TypeCheck, path_text)

ALL = "__all__"
STATE_VERSION = 1
Key = tuple[str, str, str]  # (model, version, segment)


def default_segment_label(segment: Mapping[str, Any] | None) -> str:
    """``country=US,device=ios`` (sorted keys), ``__all__`` for no segment attributes.

    The stream layer normally passes its own labels (with top-K folding) instead.
    """
    if not segment:
        return ALL
    return ",".join(f"{k}={'' if v is None else v}" for k, v in sorted(segment.items()))


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def _strict(v: Any) -> tuple:
    """A value with its JSON type, so True != 1 and "1" != 1 (but 1 == 1.0)."""
    t = _json_type(v)
    return (t, float(v)) if t == "number" else (t, v)


def _show(v: Any) -> str:
    return f"{_json_type(v)} {v!r}" if v is not None else "null"


# ----------------------------------------------------------------------------------- tallies
@dataclass
class Tally:
    """Counts for one window × key × invariant. Mergeable by addition (samples by bottom-k)."""

    checked: int = 0
    failed: int = 0
    errors: int = 0
    unpaired: int = 0
    total: float = 0.0
    sample: BottomK = field(default_factory=BottomK)

    def merge(self, other: "Tally") -> "Tally":
        self.checked += other.checked
        self.failed += other.failed
        self.errors += other.errors
        self.unpaired += other.unpaired
        self.total += other.total
        self.sample.merge(other.sample)
        return self

    def to_dict(self) -> dict:
        return {"checked": self.checked, "failed": self.failed, "errors": self.errors,
                "unpaired": self.unpaired, "total": self.total, "sample": self.sample.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Tally":
        return cls(d["checked"], d["failed"], d["errors"], d["unpaired"], d["total"],
                   BottomK.from_dict(d["sample"]))


@dataclass
class WindowResult:
    """The verdict of one invariant for one closed window and (model, version, segment)."""

    window_start: float
    window_end: float
    model: str
    version: str
    segment: str
    invariant: str
    kind: str
    checked: int
    failed: int
    errors: int
    unpaired: int
    violations: int
    status: str  # ok | violated | insufficient
    value: float | None
    bound: dict
    samples: list[dict]
    # What a downstream merge needs to rebuild the exact Tally of several partitions:
    total: float = 0.0                                   # business: sum of the values
    priorities: list[int] = field(default_factory=list)  # bottom-k priority of each sample

    def labels(self) -> dict[str, str]:
        """Labels of ``prodlens_invariant_violations_total``."""
        return {"model": self.model, "version": self.version, "segment": self.segment,
                "invariant": self.invariant}

    def tally(self, sample_size: int | None = None) -> Tally:
        """The window's :class:`Tally` again (exact for results of this version; older
        records without ``total`` / ``priorities`` get them re-derived)."""
        total = self.total
        if not total and self.kind == "business" and self.value is not None:
            aggregate = self.bound.get("aggregate")
            total = self.value if aggregate == "sum" else self.value * self.checked if aggregate == "mean" else 0.0
        priorities = list(self.priorities)
        if len(priorities) != len(self.samples):
            priorities = [priority(json.dumps(r, sort_keys=True, default=str)) for r in self.samples]
        by_p: dict[int, dict] = {}
        for p, r in zip(priorities, self.samples):
            by_p.setdefault(int(p), r)
        items = [[p, by_p[p]] for p in sorted(by_p)]
        k = max(len(items), sample_size if sample_size is not None else len(items))
        return Tally(self.checked, self.failed, self.errors, self.unpaired, float(total),
                     BottomK(k=k, items=items, seen=max(self.failed, len(items))))

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WindowResult":
        """From ``to_dict()`` (extra keys such as a record's type/source/seq are ignored)."""
        missing = [f for f in _RESULT_REQUIRED if f not in d]
        if missing:
            raise ValueError(f"invariant window result: missing field(s) {', '.join(missing)}")
        return cls(**{f: d[f] for f in _RESULT_FIELDS if f in d})


def window_result(inv: Invariant, window_start: float, window_end: float, model: str, version: str,
                  segment: str, t: Tally) -> WindowResult:
    """The verdict of ``inv`` on the (possibly merged) tally of one window and key."""
    value: float | None = t.failed / t.checked if t.checked else None
    bound: dict = {}
    status = "violated" if t.failed else "ok"
    violations = t.failed
    if isinstance(inv, AgreementCheck):
        value = (t.checked - t.failed) / t.checked if t.checked else None
        bound = {"min_agreement": inv.min_agreement, "min_pairs": inv.min_pairs}
        if t.checked < inv.min_pairs:
            status = "insufficient"
        else:
            status = "violated" if value < inv.min_agreement else "ok"
        violations = int(status == "violated")
    elif isinstance(inv, RareBound):
        value = float(t.failed)
        bound = {k: v for k, v in (("max_count", inv.max_count), ("max_rate", inv.max_rate)) if v is not None}
        breached = (inv.max_count is not None and t.failed > inv.max_count) or (
            inv.max_rate is not None and t.checked > 0 and t.failed / t.checked > inv.max_rate)
        status = "violated" if breached else "ok"
        violations = int(breached)
    elif isinstance(inv, BusinessBound):
        bound = {k: v for k, v in (("lower", inv.lower), ("upper", inv.upper)) if v is not None}
        bound["aggregate"] = inv.aggregate
        if t.checked < inv.min_count or (inv.aggregate == "mean" and t.checked == 0):
            value, status = None, "insufficient"
        else:
            value = {"sum": t.total, "count": float(t.checked),
                     "mean": t.total / t.checked if t.checked else None}[inv.aggregate]
            low = inv.lower is not None and value < inv.lower
            high = inv.upper is not None and value > inv.upper
            status = "violated" if low or high else "ok"
        violations = int(status == "violated")
    elif isinstance(inv, StabilityCheck):
        bound = {"max_flips": inv.max_flips, "within": inv.within}
    return WindowResult(window_start, window_end, model, version, segment, inv.name, inv.kind, t.checked,
                        t.failed, t.errors, t.unpaired, violations, status, value, bound,
                        t.sample.records(), t.total, [item[0] for item in t.sample.items])


_RESULT_FIELDS = tuple(WindowResult.__dataclass_fields__)
_RESULT_REQUIRED = _RESULT_FIELDS[:-2]


# ----------------------------------------------------------------------------------- batches
class _Batch:
    """One batch as columns, with cached field arrays and group ids."""

    def __init__(self, columns: Mapping[str, Any], n: int):
        self.columns = columns
        self.n = n
        self._lists: dict[Path, list] = {}
        self._arrays: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def values(self, path: Path) -> list:
        if path not in self._lists:
            self._lists[path] = column_values(self.columns, path, self.n)
        return self._lists[path]

    def array(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path not in self._arrays:
            self._arrays[path] = to_array(self.values(path))
        return self._arrays[path]

    def value(self, path: Path, i: int) -> Any:
        return self.values(path)[i]

    def equals(self, path: Path, value: str) -> np.ndarray:
        return np.fromiter((v == value for v in self.values(path)), dtype=bool, count=self.n)


_EVENT_ID, _PREDICTION_ID, _UNIT_ID = ("event_id",), ("prediction_id",), ("unit_id",)


class InvariantEvaluator:
    """Windowed invariant evaluation for one or more models.

    ``partitioning`` selects the invariants this instance runs: ``"version"``
    (everything but agreement: feed it the (model, version)-keyed streams,
    predictions and outcomes), ``"prediction_id"`` (agreement only: feed it
    predictions re-keyed by prediction_id) or ``None`` (all; tests, one worker).

    >>> from prodlens.invariants import parse_invariants
    >>> spec = parse_invariants("m", [{"name": "b", "kind": "type", "field": "features.f", "type": "boolean"}])
    >>> ev = InvariantEvaluator(spec, window_seconds=60)
    >>> ev.update_many([{"event_id": "1", "prediction_id": "p", "timestamp": 5, "model": "m",
    ...                  "version": "v", "features": {"f": "true"}, "output": {"label": "a"}}])
    1
    >>> [(r.invariant, r.checked, r.violations) for r in ev.close_windows(120)]
    [('b', 1, 1)]
    """

    def __init__(self, specs: ModelInvariants | Iterable[ModelInvariants] | Mapping[str, ModelInvariants],
                 *, window_seconds: float = 60.0, allowed_lateness: float = 0.0, sample_size: int = 10,
                 partitioning: str | None = None,
                 segment_of: Callable[[Mapping[str, Any] | None], str] = default_segment_label,
                 key_ttl: float = 86_400.0, max_empty_windows: int = 1440):
        if window_seconds <= 0:
            raise ValueError("window_seconds: must be positive")
        if allowed_lateness < 0:
            raise ValueError("allowed_lateness: must not be negative")
        if partitioning not in (None, "version", "prediction_id"):
            raise ValueError(f"partitioning: must be None, 'version' or 'prediction_id', got {partitioning!r}")
        if isinstance(specs, ModelInvariants):
            specs = [specs]
        elif isinstance(specs, Mapping):
            specs = list(specs.values())
        self.window = float(window_seconds)
        self.lateness = float(allowed_lateness)
        self.sample_size = sample_size
        self.segment_of = segment_of
        self.key_ttl = key_ttl
        self.max_empty_windows = max_empty_windows
        self.partitioning = partitioning
        # (model, invariant) for every invariant this instance runs
        self.invariants: dict[tuple[str, str], Invariant] = {}
        for spec in specs:
            for inv in spec.invariants:
                if partitioning is None or inv.partitioning == partitioning:
                    self.invariants[(spec.model, inv.name)] = inv
        # A window closes only once its pairs cannot complete any more.
        self.close_delay = max([self.lateness] + [i.pair_timeout for i in self.invariants.values()
                                                  if isinstance(i, AgreementCheck)])
        self.watermark: float | None = None
        self.closed_until: float | None = None
        self.counters = {"late_events": 0, "late_pairs": 0, "unpaired_after_close": 0,
                         "evicted_units": 0, "out_of_order": 0}
        # window start -> {(owner model, invariant, model, version, segment): Tally}
        self._windows: dict[float, dict[tuple[str, str, str, str, str], Tally]] = {}
        self._pending: dict[tuple[str, str], OrderedDict] = {}
        self._units: dict[tuple[str, str], OrderedDict] = {}
        self._known: dict[tuple[str, str], dict[Key, list[float]]] = {}  # key -> [first, last] window
        for mk, inv in self.invariants.items():
            if isinstance(inv, AgreementCheck):
                self._pending[mk] = OrderedDict()
            elif isinstance(inv, StabilityCheck):
                self._units[mk] = OrderedDict()
            elif isinstance(inv, BusinessBound) and inv.checks_empty_windows:
                self._known[mk] = {}

    # ------------------------------------------------------------------ input
    def update_many(self, events: Sequence[Mapping[str, Any]], kind: str = "prediction",
                    segments: Sequence[str] | None = None) -> int:
        """Evaluate validated row events (prediction or outcome dicts). Returns the count."""
        if not events:
            return 0
        return self.update_columns(rows_to_columns(kind, list(events)), kind, segments)

    def update_columns(self, columns: Mapping[str, Any], kind: str = "prediction",
                       segments: Sequence[str] | None = None) -> int:
        """Evaluate a columnar batch (``Decoded.columns``; timestamps in epoch seconds).

        ``segments``: the segment label of each row as the stream layer folded it;
        default :func:`default_segment_label` of the ``segment`` column.
        """
        if kind not in ("prediction", "outcome"):
            return 0
        ts_col = columns.get("timestamp")
        if not ts_col:
            return 0
        n = len(ts_col)
        batch = _Batch(columns, n)
        ts = np.asarray(ts_col, dtype=np.float64)
        wstart = np.floor(ts / self.window) * self.window
        top = float(ts.max())
        self.watermark = top if self.watermark is None else max(self.watermark, top)
        late = wstart < self.closed_until if self.closed_until is not None else np.zeros(n, dtype=bool)
        if segments is None:
            segments = [self.segment_of(s) for s in batch.values(("segment",))]
        elif len(segments) != n:
            raise ValueError(f"segments: has {len(segments)} labels for {n} events")
        ctx = _Context(batch, ts, wstart, late, list(segments), kind)
        for (model, _name), inv in self.invariants.items():
            if inv.source != kind:
                continue
            if isinstance(inv, AgreementCheck):
                self._agreement(model, inv, ctx)
                continue
            rows = self._model_rows(model, inv, ctx) & ~late
            if inv.where is not None and rows.any():
                applies, holds, _ = inv.where.evaluate_columns(batch.array, n)
                rows &= applies & holds
            if not rows.any():
                continue
            if isinstance(inv, StabilityCheck):
                self._stability(model, inv, ctx, rows)
            elif isinstance(inv, RareBound):
                applies, holds, error = inv.when.evaluate_columns(batch.array, n)
                self._count(model, inv, ctx, rows, applies & holds, error, "matches: " + inv.when.source)
            elif isinstance(inv, BusinessBound):
                self._business(model, inv, ctx, rows)
            elif isinstance(inv, RuleCheck):
                applies, holds, error = inv.rule.evaluate_columns(batch.array, n)
                if inv.on_missing == "skip":
                    rows &= applies  # the rule does not apply where a field is missing
                failed = (applies & ~holds) | (~applies if inv.on_missing == "violate" else False)

                def why(i: int, inv: RuleCheck = inv, applies=applies, error=error) -> str:
                    if not applies[i]:
                        return f"rule {inv.rule.source!r}: a referenced field is null or missing"
                    if error[i]:
                        return f"rule {inv.rule.source!r}: cannot be evaluated (type error, division by zero or overflow)"
                    return f"rule {inv.rule.source!r} is false"
                self._count(model, inv, ctx, rows, failed, error, why)
            else:
                failed, reasons = self._per_event(inv, batch, rows)
                self._count(model, inv, ctx, rows, failed, None, reasons)
        self.counters["late_events"] += int(late.sum())
        self._expire_pending()
        return n

    def _model_rows(self, model: str, inv: Invariant, ctx: "_Context") -> np.ndarray:
        models = ctx.batch.values(("model",))
        if ctx.kind == "outcome":
            rows = np.fromiter((m is None or m == model for m in models), dtype=bool, count=ctx.batch.n)
            return rows & ctx.batch.equals(("metric",), inv.metric)
        return np.fromiter((m == model for m in models), dtype=bool, count=ctx.batch.n)

    # ------------------------------------------------------------------ per-event checks
    def _per_event(self, inv: Invariant, batch: _Batch, rows: np.ndarray):
        """(failed mask, reason function of row index) for type / range / enum / not_null."""
        n = batch.n
        if isinstance(inv, NotNullCheck):
            missing = np.zeros(n, dtype=bool)
            for p in inv.fields:
                missing |= ~batch.array(p)[1]

            def why(i: int) -> str:
                gone = [path_text(p) for p in inv.fields if batch.value(p, i) is None]
                return f"null or missing: {', '.join(gone)}"
            return missing & rows, why
        path = inv.field
        values = batch.values(path)
        name = path_text(path)
        if isinstance(inv, TypeCheck):
            ok = _TYPE_TESTS[inv.type]
            failed = np.fromiter(((not ok(v)) if v is not None else not inv.allow_null for v in values),
                                 dtype=bool, count=n)
            return failed & rows, lambda i: f"{name}: must be {_ARTICLE[inv.type]}, got {_show(values[i])}"
        if isinstance(inv, RangeCheck):
            arr, present = batch.array(path)
            if arr.dtype.kind == "f":
                bad = np.zeros(n, dtype=bool)
                if inv.min is not None:
                    bad |= (arr <= inv.min) if inv.exclusive_min else (arr < inv.min)
                if inv.max is not None:
                    bad |= (arr >= inv.max) if inv.exclusive_max else (arr > inv.max)
                bad &= present
            else:
                bad = np.fromiter((v is not None and not _in_range(inv, v) for v in values), dtype=bool, count=n)
            if not inv.allow_null:
                bad |= ~present
            lo = "(" if inv.exclusive_min else "["
            hi = ")" if inv.exclusive_max else "]"
            span = f"{lo}{'-inf' if inv.min is None else inv.min}, {'inf' if inv.max is None else inv.max}{hi}"
            return bad & rows, lambda i: f"{name}: {_show(values[i])} is outside {span}"
        if isinstance(inv, EnumCheck):
            allowed = {_strict(v) for v in inv.values}
            bad = np.fromiter(((_strict(v) not in allowed) if v is not None else not inv.allow_null
                               for v in values), dtype=bool, count=n)
            return bad & rows, lambda i: f"{name}: {_show(values[i])} is not one of {list(inv.values)}"
        raise AssertionError(type(inv))

    # ------------------------------------------------------------------ tally helpers
    def _tally(self, ws: float, key: Key, owner: str, name: str) -> Tally:
        window = self._windows.setdefault(ws, {})
        k = (owner, name, key[0], key[1], key[2])
        t = window.get(k)
        if t is None:
            t = window[k] = Tally(sample=BottomK(self.sample_size))
        return t

    def _count(self, model: str, inv: Invariant, ctx: "_Context", rows: np.ndarray, failed: np.ndarray,
               error: np.ndarray | None, reason) -> None:
        gid, groups = ctx.groups(model)
        failed = failed & rows
        checked = np.bincount(gid[rows], minlength=len(groups))
        bad = np.bincount(gid[failed], minlength=len(groups))
        errs = np.bincount(gid[error & rows], minlength=len(groups)) if error is not None else None
        for g in np.flatnonzero(checked):
            ws, key = groups[g]
            t = self._tally(ws, key, model, inv.name)
            t.checked += int(checked[g])
            t.failed += int(bad[g])
            if errs is not None:
                t.errors += int(errs[g])
        for i in np.flatnonzero(failed):
            ws, key = groups[gid[i]]
            t = self._tally(ws, key, model, inv.name)
            t.sample.offer(ctx.identity(inv.name, i), lambda i=i: ctx.record(
                i, reason(i) if callable(reason) else reason, inv))

    # ------------------------------------------------------------------ stability
    def _stability(self, model: str, inv: StabilityCheck, ctx: "_Context", rows: np.ndarray) -> None:
        units = self._units[(model, inv.name)]
        batch = ctx.batch
        unit_vals, values = batch.values(inv.unit), batch.values(inv.field)
        versions = batch.values(("version",))
        idx = np.flatnonzero(rows)
        idx = idx[np.argsort(ctx.ts[idx], kind="stable")]
        for i in idx:
            unit, value = unit_vals[i], values[i]
            if unit is None or value is None:
                continue
            if inv.threshold is not None:
                if _json_type(value) != "number":
                    continue
                value = value >= inv.threshold
            t = float(ctx.ts[i])
            key = (versions[i], str(unit))
            state = units.get(key)
            flicker = False
            if state is not None:
                last_value, last_ts, flips = state
                if t < last_ts:
                    self.counters["out_of_order"] += 1
                    continue
                if t - last_ts > inv.within:
                    flips = []
                elif _strict(value) != _strict(last_value):
                    flips = [f for f in flips if f > t - inv.within]
                    flips.append(t)
                    flicker = len(flips) > inv.max_flips
                    del flips[: max(0, len(flips) - (inv.max_flips + 1))]
                state[0], state[1], state[2] = value, t, flips
                units.move_to_end(key)
            else:
                units[key] = [value, t, []]
                while len(units) > inv.max_units:
                    units.popitem(last=False)
                    self.counters["evicted_units"] += 1
            ws = float(ctx.wstart[i])
            tally = self._tally(ws, (model, versions[i], ctx.segments[i]), model, inv.name)
            tally.checked += 1
            if flicker:
                tally.failed += 1
                flips_now = len(units[key][2])
                tally.sample.offer(ctx.identity(inv.name, i), lambda i=i, f=flips_now: ctx.record(
                    i, f"unit {unit_vals[i]!r}: {path_text(inv.field)} flipped {f} times within "
                       f"{inv.within:g}s (at most {inv.max_flips} allowed)", inv))

    def _expire_units(self) -> None:
        if self.watermark is None:
            return
        for (model, name), units in self._units.items():
            horizon = self.watermark - self.invariants[(model, name)].within
            while units:
                key, state = next(iter(units.items()))
                if state[1] >= horizon:
                    break
                units.popitem(last=False)

    # ------------------------------------------------------------------ agreement
    def _agreement(self, model: str, inv: AgreementCheck, ctx: "_Context") -> None:
        batch = ctx.batch
        pending = self._pending[(model, inv.name)]
        ref = _selector_mask(inv.reference, batch)
        cand = _selector_mask(inv.candidate, batch) & ~ref
        if inv.where is not None:
            applies, holds, _ = inv.where.evaluate_columns(batch.array, batch.n)
            ok = applies & holds
            ref &= ok
            cand &= ok
        idx = np.flatnonzero(ref | cand)
        if not idx.size:
            return
        idx = idx[np.argsort(ctx.ts[idx], kind="stable")]
        pids, values = batch.values(_PREDICTION_ID), batch.values(inv.field)
        models, versions, eids = batch.values(("model",)), batch.values(("version",)), batch.values(_EVENT_ID)
        for i in idx:
            pid = pids[i]
            if pid is None:
                continue
            side = "r" if ref[i] else "c"
            entry = [side, float(ctx.ts[i]), float(ctx.wstart[i]), models[i], versions[i],
                     ctx.segments[i], values[i], eids[i]]
            other = pending.get(pid)
            if other is not None and abs(entry[1] - other[1]) > inv.pair_timeout:
                # Too far apart to pair: the waiting side has timed out (as the watermark would say).
                del pending[pid]
                self._unpaired(model, inv, other)
                other = None
            if other is None:
                pending[pid] = entry
                while len(pending) > inv.max_pending:
                    _, old = pending.popitem(last=False)
                    self._unpaired(model, inv, old)
                continue
            if other[0] == side:
                continue  # the same side again within the timeout: a duplicate
            del pending[pid]
            r, c = (entry, other) if side == "r" else (other, entry)
            self._pair(model, inv, pid, r, c)

    def _pair(self, model: str, inv: AgreementCheck, pid: str, r: list, c: list) -> None:
        ws = c[2]
        if self.closed_until is not None and ws < self.closed_until:
            self.counters["late_pairs"] += 1
            return
        agree = _agree(r[6], c[6], inv.tolerance)
        t = self._tally(ws, (c[3], c[4], c[5]), model, inv.name)
        t.checked += 1
        if not agree:
            t.failed += 1
            t.sample.offer(f"{inv.name}|{pid}", lambda: {
                "prediction_id": pid, "timestamp": c[1],
                "reason": f"{path_text(inv.field)}: reference {r[3]}/{r[4]} said {_show(r[6])}, "
                          f"candidate {c[3]}/{c[4]} said {_show(c[6])}",
                "reference": {"event_id": r[7], "model": r[3], "version": r[4], "value": r[6]},
                "candidate": {"event_id": c[7], "model": c[3], "version": c[4], "value": c[6]}})

    def _unpaired(self, model: str, inv: AgreementCheck, entry: list) -> None:
        ws = entry[2]
        if self.closed_until is not None and ws < self.closed_until:
            self.counters["unpaired_after_close"] += 1
            return
        self._tally(ws, (entry[3], entry[4], entry[5]), model, inv.name).unpaired += 1

    def _expire_pending(self) -> None:
        if self.watermark is None:
            return
        for (model, name), pending in self._pending.items():
            inv = self.invariants[(model, name)]
            horizon = self.watermark - inv.pair_timeout
            while pending:
                pid, entry = next(iter(pending.items()))
                if entry[1] >= horizon:
                    break
                pending.popitem(last=False)
                self._unpaired(model, inv, entry)

    # ------------------------------------------------------------------ business
    def _business(self, model: str, inv: BusinessBound, ctx: "_Context", rows: np.ndarray) -> None:
        path = ("value",) if inv.metric is not None else inv.field
        values = ctx.batch.values(path)
        numeric = np.fromiter((_json_type(v) == "number" for v in values), dtype=bool, count=ctx.batch.n)
        gid, groups = ctx.groups(model)
        use = rows & numeric
        vals = np.array([float(v) if ok else 0.0 for v, ok in zip(values, use)], dtype=np.float64)
        counts = np.bincount(gid[use], minlength=len(groups))
        sums = np.bincount(gid[use], weights=vals[use], minlength=len(groups))
        errs = np.bincount(gid[rows & ~numeric & np.array([v is not None for v in values], dtype=bool)],
                           minlength=len(groups))
        known = self._known.get((model, inv.name))
        for g in np.flatnonzero(counts + errs):
            ws, key = groups[g]
            t = self._tally(ws, key, model, inv.name)
            t.checked += int(counts[g])
            t.total += float(sums[g])
            t.errors += int(errs[g])
            if known is not None:
                span = known.get(key)
                known[key] = [ws, ws] if span is None else [min(span[0], ws), max(span[1], ws)]

    # ------------------------------------------------------------------ closing windows
    def close_windows(self, watermark: float | None = None) -> list[WindowResult]:
        """Results of every window whose end + allowed lateness is at or before the watermark.

        (With agreement invariants: end + max(allowed lateness, pair_timeout).)

        ``watermark`` defaults to the largest event time seen; pass wall-clock time
        to close windows when traffic stops. Closed windows are dropped from state;
        events for them arriving later are counted in ``counters["late_events"]``.
        """
        if watermark is not None:
            self.watermark = watermark if self.watermark is None else max(self.watermark, watermark)
        if self.watermark is None:
            return []
        self._expire_pending()
        self._expire_units()
        boundary = math.floor((self.watermark - self.close_delay) / self.window) * self.window
        if self.closed_until is not None and boundary <= self.closed_until:
            return []
        self._fill_empty_windows(boundary)
        results: list[WindowResult] = []
        for ws in sorted(w for w in self._windows if w + self.window <= boundary):
            for (owner, name, model, version, segment), tally in sorted(self._windows.pop(ws).items()):
                inv = self.invariants.get((owner, name))
                if inv is not None:
                    results.append(self._result(ws, model, version, segment, inv, tally))
        self.closed_until = boundary
        self._forget_keys()
        return results

    def _fill_empty_windows(self, boundary: float) -> None:
        """Zero tallies for keys seen before, so a lower-bounded sum or count sees empty windows."""
        for (owner, name), known in self._known.items():
            for key, (first_seen, last_seen) in known.items():
                start = first_seen if self.closed_until is None else max(first_seen, self.closed_until)
                ws = max(start, boundary - self.max_empty_windows * self.window)
                while ws + self.window <= boundary and ws - last_seen <= self.key_ttl:
                    self._tally(ws, key, owner, name)
                    ws += self.window

    def _forget_keys(self) -> None:
        if self.closed_until is None:
            return
        for known in self._known.values():
            for key in [k for k, span in known.items() if self.closed_until - span[1] > self.key_ttl]:
                del known[key]

    def _result(self, ws: float, model: str, version: str, segment: str, inv: Invariant,
                t: Tally) -> WindowResult:
        return window_result(inv, ws, ws + self.window, model, version, segment, t)

    # ------------------------------------------------------------------ merge and state
    def open_windows(self) -> list[float]:
        return sorted(self._windows)

    def merge(self, other: "InvariantEvaluator") -> "InvariantEvaluator":
        """Fold in another evaluator of the same spec (e.g. another worker's partitions).

        Tallies add exactly; pairing buffers and unit histories are unioned (they
        are disjoint when partitioning is respected).
        """
        for ws, window in other._windows.items():
            mine = self._windows.setdefault(ws, {})
            for k, t in window.items():
                if k in mine:
                    mine[k].merge(t)
                else:
                    mine[k] = Tally.from_dict(t.to_dict())
        for name, value in other.counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        for mk, pend in other._pending.items():
            for pid, entry in pend.items():
                self._pending.setdefault(mk, OrderedDict()).setdefault(pid, list(entry))
        for mk, units in other._units.items():
            for key, state in units.items():
                self._units.setdefault(mk, OrderedDict()).setdefault(key, [state[0], state[1], list(state[2])])
        for mk, known in other._known.items():
            mine_k = self._known.setdefault(mk, {})
            for key, span in known.items():
                have = mine_k.get(key)
                mine_k[key] = list(span) if have is None else [min(have[0], span[0]), max(have[1], span[1])]
        if other.watermark is not None:
            self.watermark = other.watermark if self.watermark is None else max(self.watermark, other.watermark)
        if other.closed_until is not None:
            self.closed_until = other.closed_until if self.closed_until is None else max(
                self.closed_until, other.closed_until)
        return self

    def to_dict(self) -> dict:
        """JSON-ready state; ``from_dict(to_dict())`` restores it exactly."""
        return {
            "state_version": STATE_VERSION,
            "window_seconds": self.window,
            "allowed_lateness": self.lateness,
            "watermark": self.watermark,
            "closed_until": self.closed_until,
            "counters": dict(self.counters),
            "windows": [[ws, [[*k, t.to_dict()] for k, t in sorted(window.items())]]
                        for ws, window in sorted(self._windows.items())],
            "pending": [[m, n, [[pid, *entry] for pid, entry in pend.items()]]
                        for (m, n), pend in self._pending.items()],
            "units": [[m, n, [[*key, state[0], state[1], list(state[2])] for key, state in units.items()]]
                      for (m, n), units in self._units.items()],
            "known": [[m, n, [[*key, span[0], span[1]] for key, span in known.items()]]
                      for (m, n), known in self._known.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  specs: ModelInvariants | Iterable[ModelInvariants] | Mapping[str, ModelInvariants],
                  **kwargs: Any) -> "InvariantEvaluator":
        """Restore state for (possibly changed) specs: state of invariants no longer configured is dropped."""
        if data.get("state_version") != STATE_VERSION:
            raise ValueError(f"state_version: expected {STATE_VERSION}, got {data.get('state_version')!r}")
        kwargs.setdefault("window_seconds", data["window_seconds"])
        kwargs.setdefault("allowed_lateness", data["allowed_lateness"])
        ev = cls(specs, **kwargs)
        ev.watermark = data["watermark"]
        ev.closed_until = data["closed_until"]
        ev.counters.update(data["counters"])
        for ws, items in data["windows"]:
            for owner, n, m, v, s, t in items:
                if (owner, n) in ev.invariants:
                    ev._windows.setdefault(ws, {})[(owner, n, m, v, s)] = Tally.from_dict(t)
        for m, n, entries in data["pending"]:
            if (m, n) in ev._pending:
                ev._pending[(m, n)] = OrderedDict((e[0], list(e[1:])) for e in entries)
        for m, n, entries in data["units"]:
            if (m, n) in ev._units:
                ev._units[(m, n)] = OrderedDict(((e[0], e[1]), [e[2], e[3], list(e[4])]) for e in entries)
        for m, n, entries in data["known"]:
            if (m, n) in ev._known:
                ev._known[(m, n)] = {(e[0], e[1], e[2]): [e[3], e[4]] for e in entries}
        return ev


# ----------------------------------------------------------------------------------- helpers
class _Context:
    """Per-batch data shared by all invariants: timestamps, windows, segments, group ids per model."""

    def __init__(self, batch: _Batch, ts: np.ndarray, wstart: np.ndarray, late: np.ndarray,
                 segments: list[str], kind: str):
        self.batch, self.ts, self.wstart, self.late, self.segments, self.kind = batch, ts, wstart, late, segments, kind
        self._groups: dict[str, tuple[np.ndarray, list]] = {}

    def groups(self, model: str) -> tuple[np.ndarray, list[tuple[float, Key]]]:
        """Group id per row over (window, (model, version, segment)); outcomes get version ``__all__``."""
        if model not in self._groups:
            versions = [ALL] * self.batch.n if self.kind == "outcome" else self.batch.values(("version",))
            index: dict[tuple, int] = {}
            groups: list[tuple[float, Key]] = []
            gid = np.empty(self.batch.n, dtype=np.int64)
            for i, (ws, v, s) in enumerate(zip(self.wstart.tolist(), versions, self.segments)):
                k = (ws, v, s)
                g = index.get(k)
                if g is None:
                    g = index[k] = len(groups)
                    groups.append((ws, (model, v, s)))
                gid[i] = g
            self._groups[model] = (gid, groups)
        return self._groups[model]

    def identity(self, name: str, i: int) -> str:
        eid = self.batch.value(_EVENT_ID, i)
        return f"{name}|{eid if eid is not None else repr((float(self.ts[i]), i))}"

    def record(self, i: int, reason: str, inv: Invariant) -> dict:
        b = self.batch
        rec: dict[str, Any] = {"event_id": b.value(_EVENT_ID, i), "timestamp": float(self.ts[i]), "reason": reason}
        if self.kind == "prediction":
            rec["prediction_id"] = b.value(_PREDICTION_ID, i)
        rec["unit_id"] = b.value(_UNIT_ID, i)
        rec["values"] = {path_text(p): b.value(p, i) for p in _paths_of(inv)}
        return rec


def _paths_of(inv: Invariant) -> list[Path]:
    paths: list[Path] = []
    if isinstance(inv, (TypeCheck, RangeCheck, EnumCheck, StabilityCheck)):
        paths.append(inv.field)
    if isinstance(inv, StabilityCheck):
        paths.append(inv.unit)
    if isinstance(inv, NotNullCheck):
        paths.extend(inv.fields)
    if isinstance(inv, RuleCheck):
        paths.extend(inv.rule.fields)
    if isinstance(inv, RareBound):
        paths.extend(inv.when.fields)
    for p in inv.referenced_fields():
        if p not in paths:
            paths.append(p)
    return paths


def _selector_mask(sel: Selector, batch: _Batch) -> np.ndarray:
    mask = np.ones(batch.n, dtype=bool)
    for key in ("model", "version", "role"):
        want = getattr(sel, key)
        if want is not None:
            values = batch.values((key,))
            if key == "role":  # the contract's default role
                values = ["primary" if v is None else v for v in values]
            mask &= np.fromiter((v == want for v in values), dtype=bool, count=batch.n)
    return mask


def _agree(a: Any, b: Any, tolerance: float) -> bool:
    if _json_type(a) == "number" and _json_type(b) == "number":
        return abs(float(a) - float(b)) <= tolerance
    return _strict(a) == _strict(b)


def _in_range(inv: RangeCheck, v: Any) -> bool:
    if _json_type(v) != "number":
        return False
    v = float(v)
    if inv.min is not None and (v <= inv.min if inv.exclusive_min else v < inv.min):
        return False
    if inv.max is not None and (v >= inv.max if inv.exclusive_max else v > inv.max):
        return False
    return True


def _is_integer(v: Any) -> bool:
    return _json_type(v) == "number" and float(v).is_integer()


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "number": lambda v: _json_type(v) == "number",
    "integer": _is_integer,
    "string": lambda v: isinstance(v, str),
}
_ARTICLE = {"boolean": "a boolean (true/false, not a string)", "number": "a number",
            "integer": "an integer", "string": "a string"}
