"""The invariants analyser: merged invariant windows -> counters, ratios, violation samples.

Ingest partitions (per-event invariants, stability, rare, business) and join
partitions (agreement) each close their invariant windows and publish one
``invariant_window`` record per window × (model, invariant, version, segment):
``{"type": "invariant_window", "source", "seq", "model", **WindowResult.to_dict()}``.
A window of a key is usually seen by several sources, so :class:`InvariantAnalyser`
keeps the latest partial per source in a :class:`~prodlens.analysis.partials.PartialStore`,
merges their :class:`~prodlens.invariants.Tally` exactly once the key has settled, and
judges the merged window with the configured invariant (a window-level bound such as
``rare: max_count: 5`` or ``agreement: min_pairs: 100`` is only meaningful on the
merged counts).

Exported (all with labels ``model, version, segment, invariant``):

* ``prodlens_invariant_violations_total`` / ``prodlens_invariant_checked_total`` —
  counters over every window seen, kept in the snapshotted state so they survive a
  restart. Each window × key adds its merged counts once: a re-delivered partial
  replaces itself, an updated or straggling partial adds only the difference, and a
  partial for a window already evicted is recognised by its source's high-water mark.
  Counters never decrease: if a straggling partial turns a window-level verdict from
  violated to ok (e.g. a business ``lower`` bound), the violation stays counted.
* ``prodlens_invariant_violation_ratio`` — of the latest evaluated window: failed /
  checked (for agreement the share of disagreeing pairs, for rare the share of rare
  events), for business bounds 1.0 when violated and 0.0 when not; absent while the
  window has no verdict. ``prodlens_invariant_violation_ratio_n`` is its ``checked``
  (for alert rules' ``min_samples``).
* ``prodlens_invariant_value`` — the window's value: agreement share, rare count,
  business aggregate, failed share for per-event checks.

A bounded sample (bottom-k by hash, ``sample_size`` per window × key, merged exactly
across sources) of the violating events of each window that counted violations is
emitted once to ``config.topics.samples`` as ``{"type": "invariant_violation", ...}``
records keyed by model; the last ``max_recent`` per model are kept for
:meth:`InvariantAnalyser.recent_violations`.

Memory: per key at most the windows within ``retention`` seconds (event time) of
the model's newest window, each holding one small tally per source; per (source, key)
one high-water mark; totals and latest values per key until unseen for ``key_ttl``
seconds of processing time. Nothing grows with the number of events.

Approximations: none for per-event checks (counts add exactly). A source lagging by
more than ``retention`` (e.g. a backfill on one partition) has its late partials of a
window merged only with each other, so a window-level bound (agreement, rare,
business) is judged on that part of the window alone.

No ``segment="__all__"`` rows are added: the counters are per segment, and
``sum by (model, version, invariant)`` gives the all-segment view without double
counting.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..invariants import Tally, WindowResult, parse_invariants_section
from ..invariants.evaluator import window_result
from ..invariants.sample import BottomK
from .partials import PartialStore

log = logging.getLogger("prodlens.analysis.invariants")

STATE_VERSION = 1
LABELS = ("model", "version", "segment", "invariant")
METRICS: dict[str, tuple[str, ...]] = {
    "prodlens_invariant_violations_total": LABELS,
    "prodlens_invariant_checked_total": LABELS,
    "prodlens_invariant_violation_ratio": LABELS,
    "prodlens_invariant_violation_ratio_n": LABELS,
    "prodlens_invariant_value": LABELS,
    "prodlens_invariant_partials_total": ("outcome",),
}
# Kinds whose violations are the violating events (window-level kinds count 1 per breached window).
PER_EVENT_KINDS = frozenset({"type", "range", "enum", "not_null", "rule", "stability"})
PARTIAL_OUTCOMES = ("accepted", "stale", "redelivered", "rejected")

StoreKey = tuple[str, str, str, str, float]   # (model, invariant, version, segment, window_start)
SeriesKey = tuple[str, str, str, str]         # (model, version, segment, invariant): the metric labels


@dataclass
class _Partial:
    """One source's result for one window × key, as a mergeable tally."""

    tally: Tally
    window_end: float
    kind: str
    violations: int
    status: str

    def to_dict(self) -> dict:
        return {"tally": self.tally.to_dict(), "window_end": self.window_end, "kind": self.kind,
                "violations": self.violations, "status": self.status}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "_Partial":
        return cls(Tally.from_dict(d["tally"]), d["window_end"], d["kind"], d["violations"], d["status"])


def _check_record(record: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first bad field of an ``invariant_window`` record."""
    def need(name: str, types: type | tuple, what: str) -> Any:
        if name not in record:
            raise ValueError(f"invariant_window.{name}: missing")
        v = record[name]
        if isinstance(v, bool) or not isinstance(v, types):
            raise ValueError(f"invariant_window.{name}: must be {what}, got {v!r}")
        return v

    for name in ("source", "model", "version", "segment", "invariant", "kind", "status"):
        need(name, str, "a string")
    need("seq", int, "an integer")
    for name in ("window_start", "window_end"):
        v = need(name, (int, float), "a number")
        if not math.isfinite(v):
            raise ValueError(f"invariant_window.{name}: must be finite, got {v!r}")
    if record["window_end"] <= record["window_start"]:
        raise ValueError("invariant_window.window_end: must be after window_start")
    for name in ("checked", "failed", "errors", "unpaired", "violations"):
        if need(name, int, "an integer") < 0:
            raise ValueError(f"invariant_window.{name}: must not be negative")
    need("samples", list, "a list")
    need("bound", dict, "a mapping")
    if "priorities" in record and not isinstance(record["priorities"], list):
        raise ValueError("invariant_window.priorities: must be a list")


class InvariantAnalyser:
    """Merges ``invariant_window`` partials, counts violations once, exports metrics and samples.

    >>> from prodlens.config import load_config
    >>> cfg = load_config(data={"models": {"m": {"output": "binary"}}, "invariants": {"m": [
    ...     {"name": "few_big", "kind": "rare", "when": "output.score > 0.99", "max_count": 5}]}})
    >>> a = InvariantAnalyser(cfg, settle=1.0)
    >>> part = {"type": "invariant_window", "model": "m", "version": "v1", "segment": "__all__",
    ...         "invariant": "few_big", "kind": "rare", "window_start": 0.0, "window_end": 60.0,
    ...         "checked": 100, "failed": 4, "errors": 0, "unpaired": 0, "violations": 0,
    ...         "status": "ok", "value": 4.0, "bound": {"max_count": 5}, "samples": []}
    >>> a.update(b"m", {**part, "source": "prodlens.predictions:0", "seq": 7}, now=10.0)
    >>> a.update(b"m", {**part, "source": "prodlens.predictions:1", "seq": 3}, now=10.5)
    >>> _ = a.tick(12.0)       # 8 rare events in the merged window: above max_count 5
    >>> a.totals[("m", "v1", "__all__", "few_big")][:2]
    [200, 1]
    """

    types = frozenset({"invariant_window"})

    def __init__(self, config: Any, *, settle: float = 2.0, retention: float | None = None,
                 key_ttl: float = 7 * 86_400.0, sample_size: int = 10, max_recent: int = 50):
        if settle < 0:
            raise ValueError("settle: must not be negative")
        if sample_size < 0 or max_recent < 0:
            raise ValueError("sample_size / max_recent: must not be negative")
        section = getattr(config, "invariants", None)
        specs = parse_invariants_section(section, config.models) if section else {}
        self.invariants = {(model, inv.name): inv for model, spec in specs.items() for inv in spec.invariants}
        self.samples_topic: str = config.topics.samples
        window = float(config.window.length)
        lateness = float(config.window.allowed_lateness)
        pair_timeout = max([getattr(inv, "pair_timeout", 0.0) for inv in self.invariants.values()] + [0.0])
        # Sources close a window within (lateness + pair timeout) event time of each other.
        self.retention = float(retention) if retention is not None else max(
            5 * window, 2 * (window + lateness + pair_timeout))
        self.settle = settle
        self.key_ttl = key_ttl
        self.sample_size = sample_size
        self.max_recent = max_recent
        self.store: PartialStore[_Partial] = PartialStore(settle)
        self._dirty: set[StoreKey] = set()           # put since last evaluated
        self._counted: dict[StoreKey, list] = {}     # -> [checked, violations, [emitted sample priorities]]
        self._high_water: dict[tuple[str, str, str, str, str], list[float]] = {}  # (source, *key) -> [ws, at]
        self._newest: dict[str, float] = {}          # model -> newest window_end seen
        self.totals: dict[SeriesKey, list] = {}      # -> [checked, violations, last update (processing time)]
        self.latest: dict[SeriesKey, dict] = {}      # -> the latest evaluated window
        self.recent: dict[str, deque] = {}           # model -> last violation records emitted
        self.counters: dict[str, int] = {o: 0 for o in PARTIAL_OUTCOMES}
        self._cleaned_at: float | None = None

    # ------------------------------------------------------------------ input
    def update(self, key: bytes, record: dict, now: float) -> None:
        """Store one ``invariant_window`` partial; a malformed one is counted (``rejected``) and logged."""
        try:
            _check_record(record)
            result = WindowResult.from_dict(record)
        except (ValueError, TypeError) as exc:
            self.counters["rejected"] += 1
            log.warning("invariant_window record rejected (key %r, source %r): %s", key,
                        record.get("source") if isinstance(record, Mapping) else None, exc)
            return
        source, seq = record["source"], record["seq"]
        skey: StoreKey = (result.model, result.invariant, result.version, result.segment,
                          float(result.window_start))
        hw_key = (source, *skey[:4])
        held = self.store.partials.get(skey, {}).get(source)
        if held is not None and held[0] == seq:
            self.counters["redelivered"] += 1    # the same partial again: nothing changes
            return
        if skey not in self.store.partials and self._evicted(result.model, float(result.window_end)):
            hw = self._high_water.get(hw_key)
            if hw is not None and skey[4] <= hw[0]:
                # An evicted window that this source had delivered (a source closes the windows of
                # a key in order, so anything up to its high-water mark was delivered): a re-delivery.
                self.counters["redelivered"] += 1
                return
        partial = _Partial(result.tally(self.sample_size), float(result.window_end), result.kind,
                           int(result.violations), result.status)
        if not self.store.put(skey, source, seq, partial, now):
            self.counters["stale"] += 1
            return
        self.counters["accepted"] += 1
        self._dirty.add(skey)
        hw = self._high_water.get(hw_key)
        self._high_water[hw_key] = [max(skey[4], hw[0]) if hw else skey[4], now]
        self._newest[result.model] = max(self._newest.get(result.model, -math.inf), partial.window_end)

    def _evicted(self, model: str, window_end: float) -> bool:
        """Whether a window ending at ``window_end`` is old enough to have been evicted."""
        return window_end < self._newest.get(model, math.inf) - self.retention

    # ------------------------------------------------------------------ evaluation
    def tick(self, now: float) -> list[tuple[str, bytes, dict]]:
        """Judge the windows that have settled; evict old windows; the sample records to emit."""
        emits: list[tuple[str, bytes, dict]] = []
        for skey in self.store.due(now):
            self._evaluate(skey, now, emits)
        self._evict(now, emits)
        return emits

    def _merged(self, skey: StoreKey) -> tuple[WindowResult, list[_Partial]]:
        parts = self.store.states(skey)
        k = max(p.tally.sample.k for p in parts)
        tally = Tally(sample=BottomK(k))
        for p in parts:
            tally.merge(p.tally)
        model, name, version, segment, ws = skey
        we = max(p.window_end for p in parts)
        inv = self.invariants.get((model, name))
        if inv is not None:
            return window_result(inv, ws, we, model, version, segment, tally), parts
        # The invariant is no longer configured: judge from what the partials said.
        kind = parts[0].kind
        if kind in PER_EVENT_KINDS:
            violations, status = tally.failed, "violated" if tally.failed else "ok"
        else:
            violations = max(p.violations for p in parts)
            status = "violated" if violations else ("ok" if any(p.status == "ok" for p in parts) else
                                                    parts[0].status)
        value = tally.failed / tally.checked if tally.checked else None
        return WindowResult(ws, we, model, version, segment, name, kind, tally.checked, tally.failed,
                            tally.errors, tally.unpaired, violations, status, value, {}, tally.sample.records(),
                            tally.total, [item[0] for item in tally.sample.items]), parts

    def _evaluate(self, skey: StoreKey, now: float, emits: list) -> None:
        self._dirty.discard(skey)
        if skey not in self.store.partials:
            return
        result, _ = self._merged(skey)
        counted = self._counted.setdefault(skey, [0, 0, []])
        series: SeriesKey = (result.model, result.version, result.segment, result.invariant)
        total = self.totals.setdefault(series, [0, 0, now])
        # Add only what this window adds beyond what it already counted; counters never go back.
        total[0] += max(0, result.checked - counted[0])
        total[1] += max(0, result.violations - counted[1])
        total[2] = now
        counted[0], counted[1] = max(counted[0], result.checked), max(counted[1], result.violations)
        current = self.latest.get(series)
        if current is None or result.window_start >= current["window_start"]:
            self.latest[series] = {"window_start": result.window_start, "window_end": result.window_end,
                                   "kind": result.kind, "checked": result.checked, "failed": result.failed,
                                   "violations": result.violations, "status": result.status,
                                   "value": result.value, "at": now}
        if result.violations > 0:
            emitted = set(counted[2])
            for p, record in zip(result.priorities, result.samples):
                if p in emitted:
                    continue
                counted[2].append(p)
                out = {"type": "invariant_violation", "schema_version": 1, "model": result.model,
                       "version": result.version, "segment": result.segment, "invariant": result.invariant,
                       "kind": result.kind, "window_start": result.window_start,
                       "window_end": result.window_end, "status": result.status, "event": record}
                emits.append((self.samples_topic, result.model.encode(), out))
                recent = self.recent.setdefault(result.model, deque(maxlen=self.max_recent))
                recent.append(out)
            # A merged bottom-k only ever pushes items out, so those can never come back.
            current = set(result.priorities)
            counted[2] = [p for p in counted[2] if p in current]

    def _evict(self, now: float, emits: list) -> None:
        old = [k for k in self.store.keys() if self._evicted(k[0], max(p.window_end for p in self.store.states(k)))]
        for skey in old:
            if skey in self._dirty:
                self._evaluate(skey, now, emits)   # a late partial: count it before letting go
        if old:
            self.store.drop(old)
            for skey in old:
                self._counted.pop(skey, None)
                self._dirty.discard(skey)
        if self._cleaned_at is not None and now - self._cleaned_at < 60.0:
            return
        self._cleaned_at = now
        horizon = now - self.key_ttl
        for k in [k for k, v in self._high_water.items() if v[1] < horizon]:
            del self._high_water[k]
        for k in [k for k, v in self.totals.items() if v[2] < horizon]:
            del self.totals[k]
        for k in [k for k, v in self.latest.items() if v["at"] < horizon]:
            del self.latest[k]

    # ------------------------------------------------------------------ views
    def recent_violations(self, model: str | None = None, limit: int | None = None) -> list[dict]:
        """The last emitted violation records (of one model, or all), oldest first."""
        models = [model] if model is not None else sorted(self.recent)
        out = [r for m in models for r in self.recent.get(m, ())]
        return out[-limit:] if limit else out

    @staticmethod
    def ratio(latest: Mapping[str, Any]) -> float | None:
        """``prodlens_invariant_violation_ratio`` of one latest-window entry (None: no verdict)."""
        if latest["status"] == "insufficient":
            return None
        if latest["kind"] == "business":
            return float(latest["violations"] > 0)
        return latest["failed"] / latest["checked"] if latest["checked"] else None

    # ------------------------------------------------------------------ metrics
    def collect(self) -> Iterable[Any]:
        violations = CounterMetricFamily("prodlens_invariant_violations", "Invariant violations (violating "
                                         "events; 1 per breached window for window-level bounds)", labels=LABELS)
        checked = CounterMetricFamily("prodlens_invariant_checked", "Events (agreement: pairs) checked by an "
                                      "invariant", labels=LABELS)
        for series, (n_checked, n_violations, _) in sorted(self.totals.items()):
            violations.add_metric(list(series), n_violations)
            checked.add_metric(list(series), n_checked)
        ratio = GaugeMetricFamily("prodlens_invariant_violation_ratio", "Violating share of the latest "
                                  "closed invariant window (business: 1 if violated)", labels=LABELS)
        ratio_n = GaugeMetricFamily("prodlens_invariant_violation_ratio_n", "Events checked in the latest "
                                    "closed invariant window", labels=LABELS)
        value = GaugeMetricFamily("prodlens_invariant_value", "Value of the latest closed invariant window "
                                  "(agreement share, rare count, business aggregate, failed share)", labels=LABELS)
        for series, latest in sorted(self.latest.items()):
            r = self.ratio(latest)
            if r is not None:
                ratio.add_metric(list(series), r)
                ratio_n.add_metric(list(series), latest["checked"])
            if latest["value"] is not None:
                value.add_metric(list(series), latest["value"])
        partials = CounterMetricFamily("prodlens_invariant_partials", "invariant_window records by outcome",
                                       labels=("outcome",))
        for outcome in PARTIAL_OUTCOMES:
            partials.add_metric([outcome], self.counters[outcome])
        return [violations, checked, ratio, ratio_n, value, partials]

    # ------------------------------------------------------------------ snapshots
    def to_dict(self) -> dict:
        return {
            "state_version": STATE_VERSION,
            "store": self.store.to_dict(_Partial.to_dict),
            "dirty": sorted([list(k) for k in self._dirty]),
            "counted": [[list(k), c[0], c[1], list(c[2])] for k, c in self._counted.items()],
            "high_water": [[list(k), v[0], v[1]] for k, v in self._high_water.items()],
            "newest": dict(self._newest),
            "totals": [[list(k), v[0], v[1], v[2]] for k, v in self.totals.items()],
            "latest": [[list(k), dict(v)] for k, v in self.latest.items()],
            "recent": {m: list(d) for m, d in self.recent.items()},
            "counters": dict(self.counters),
            "cleaned_at": self._cleaned_at,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("state_version") != STATE_VERSION:
            raise ValueError(f"invariants analyser state_version: expected {STATE_VERSION}, "
                             f"got {state.get('state_version')!r}")
        self.store = PartialStore.from_dict(state["store"], _Partial.from_dict)
        self.store.settle = self.settle
        self._dirty = {tuple(k) for k in state["dirty"]}
        self._counted = {tuple(k): [c, v, list(p)] for k, c, v, p in state["counted"]}
        self._high_water = {tuple(k): [ws, at] for k, ws, at in state["high_water"]}
        self._newest = dict(state["newest"])
        self.totals = {tuple(k): [c, v, at] for k, c, v, at in state["totals"]}
        self.latest = {tuple(k): dict(v) for k, v in state["latest"]}
        self.recent = {m: deque(items, maxlen=self.max_recent) for m, items in state["recent"].items()}
        self.counters = {o: 0 for o in PARTIAL_OUTCOMES}
        self.counters.update(state["counters"])
        self._cleaned_at = state["cleaned_at"]
