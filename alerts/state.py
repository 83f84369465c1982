"""Alert lifecycle: one state machine per (rule, label set), deduplicated, one event per transition.

::

    inactive ──breach──▶ pending ──breach held for `for` and N evaluations──▶ firing ──recovered──▶ resolved
        ▲                  │ no breach                                          │  (past the resolve
        └──────────────────┘                                                    │   threshold, then
                                                                                │   keep_firing_for)
    inactive ◀──────────────────────────────────────────────────────────────────┘

Events are emitted on pending → firing (``status="firing"``) and firing →
resolved (``status="resolved"``) only. Between the fire and the resolve
threshold a firing alert stays firing and a pending one falls back to
inactive, so a metric oscillating around the fire threshold fires once and
does not flap. An evaluation without a verdict (too few samples, no reference,
not enough history for ``increase``/``rate``, the series absent) changes nothing.

:class:`AlertEngine` is pure (no I/O, no clock): call
:meth:`~AlertEngine.evaluate` with a timestamp and the current samples; save
:meth:`~AlertEngine.to_dict` and restore with :meth:`~AlertEngine.from_dict`
so that after a restart a firing alert is neither lost nor fired again.

Delivery across a crash: every event also waits in an outbox (part of the
state) until acknowledged (:meth:`~AlertEngine.acknowledge`). Checkpoint the state, publish
the events, acknowledge them; after a restart re-publish
:meth:`~AlertEngine.unacknowledged`. A re-published event carries the same
``event_id`` (a hash of fingerprint, status and start), so consumers drop the
duplicate: the transition is delivered, and counted, once.

``increase`` / ``rate`` use the samples the engine saw within the range
(first to last, counter resets handled as in Prometheus) without Prometheus'
extrapolation to the range edges, so they read low by at most one evaluation
interval's worth of increase.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .rules import AlertRule, AlertsSpec, LabelsKey, Sample, labels_key

STATE_VERSION = 1
BREACH, CLEAR, HOLD, UNKNOWN = "breach", "clear", "hold", "unknown"
MAX_POINTS = 512
MAX_OUTBOX = 10_000


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable id of an alert's label set (sha256 of the sorted labels, 16 hex digits)."""
    text = json.dumps(sorted(labels.items()), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class AlertEvent:
    """A firing or resolved alert, as every sink receives it (see schemas/alert.v1.json)."""

    status: str
    rule: str
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    metric: str
    value: float | None
    threshold: float | list[float] | None
    starts_at: float
    ends_at: float | None
    severity: str
    generated_at: float
    event_id: str = ""

    def __post_init__(self) -> None:
        if not self.event_id:
            # Deterministic: a consumer can drop a re-sent duplicate of the same transition.
            self.event_id = hashlib.sha256(
                f"{self.fingerprint}|{self.status}|{self.starts_at!r}".encode()).hexdigest()[:32]

    def to_dict(self) -> dict:
        return {"type": "alert", "schema_version": 1, "event_id": self.event_id, "status": self.status,
                "rule": self.rule, "fingerprint": self.fingerprint, "severity": self.severity,
                "labels": dict(self.labels), "annotations": dict(self.annotations), "metric": self.metric,
                "value": self.value, "threshold": self.threshold, "starts_at": self.starts_at,
                "ends_at": self.ends_at, "generated_at": self.generated_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AlertEvent":
        return cls(status=d["status"], rule=d["rule"], fingerprint=d["fingerprint"], labels=dict(d["labels"]),
                   annotations=dict(d["annotations"]), metric=d["metric"], value=d["value"],
                   threshold=d["threshold"], starts_at=d["starts_at"], ends_at=d["ends_at"],
                   severity=d["severity"], generated_at=d["generated_at"], event_id=d["event_id"])


@dataclass
class _Alert:
    """State of one alert that is pending or firing (inactive alerts are not stored)."""

    state: str  # pending | firing
    series: dict[str, str]
    active_since: float
    consecutive: int = 0
    fired_at: float | None = None
    recovered_since: float | None = None
    value: float | None = None
    last: dict | None = None  # the last firing event, for resends

    def to_dict(self) -> dict:
        return {"state": self.state, "series": self.series, "active_since": self.active_since,
                "consecutive": self.consecutive, "fired_at": self.fired_at,
                "recovered_since": self.recovered_since, "value": self.value, "last": self.last}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "_Alert":
        return cls(d["state"], dict(d["series"]), d["active_since"], d["consecutive"], d["fired_at"],
                   d["recovered_since"], d["value"], d["last"])


@dataclass
class _Series:
    """What a rule remembers of one series: when it was seen, raw history for increase/rate,
    transformed-value history for "previous window" changes (both bounded)."""

    labels: dict[str, str]
    last_seen: float
    raw: list[list[float]] = field(default_factory=list)  # [[stamp, value], ...]
    values: list[list[float]] = field(default_factory=list)  # [[stamp, value], ...]
    updated_at: float | None = None
    current: float | None = None

    def to_dict(self) -> dict:
        return {"labels": self.labels, "last_seen": self.last_seen, "raw": self.raw, "values": self.values,
                "updated_at": self.updated_at, "current": self.current}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "_Series":
        return cls(dict(d["labels"]), d["last_seen"], [list(p) for p in d["raw"]],
                   [list(p) for p in d["values"]], d["updated_at"], d["current"])


def _push(points: list[list[float]], stamp: float, value: float, keep: float) -> None:
    """Append (or replace same-stamp) and prune to ``keep`` seconds, keeping one point older than that."""
    if points and points[-1][0] == stamp:
        points[-1][1] = value
    elif points and stamp < points[-1][0]:
        return
    else:
        min_gap = keep / MAX_POINTS
        if len(points) >= 2 and stamp - points[-2][0] < min_gap:
            points[-1] = [stamp, value]  # thin: keep the newest of close points
        else:
            points.append([stamp, value])
    horizon = stamp - keep
    cut = 0
    while cut + 1 < len(points) and points[cut + 1][0] <= horizon:
        cut += 1
    if cut:
        del points[:cut]


def _increase(points: list[list[float]], now: float, rng: float) -> tuple[float, float] | None:
    """(increase, seconds spanned) over points within [now - rng, now]; None with fewer than two."""
    inside = [p for p in points if p[0] >= now - rng]
    if len(inside) < 2:
        return None
    total = 0.0
    for (_, a), (_, b) in zip(inside, inside[1:]):
        total += b - a if b >= a else b  # a counter reset: it restarted from zero
    return total, inside[-1][0] - inside[0][0]


def _ref_value(points: list[list[float]], stamp: float, window: float) -> float | None:
    """The newest value at least ``window`` before ``stamp`` (1 ‰ slack for jitter)."""
    limit = stamp - window * 0.999
    best = None
    for s, v in points:
        if s <= limit:
            best = v
        else:
            break
    return best


class AlertEngine:
    """Evaluates alert rules on samples and keeps every alert's lifecycle.

    >>> from prodlens.alerts.rules import parse_alerts, Sample
    >>> spec = parse_alerts([{"name": "Slow", "metric": "lat", "condition": "above", "threshold": 100,
    ...                       "resolve_threshold": 80}], catalogue=None)
    >>> engine = AlertEngine(spec)
    >>> [e.status for e in engine.evaluate(0, [Sample("lat", {"model": "m"}, 120)])]
    ['firing']
    >>> engine.evaluate(30, [Sample("lat", {"model": "m"}, 90)])  # between thresholds: still firing
    []
    >>> [e.status for e in engine.evaluate(60, [Sample("lat", {"model": "m"}, 70)])]
    ['resolved']
    """

    def __init__(self, spec: AlertsSpec | Iterable[AlertRule], *, absent_selector: bool = True):
        """``absent_selector=False``: a ``no_data`` rule judges only series this engine has seen
        (it never fires for a selector that matched nothing yet). For engines that see a part
        of the metrics, e.g. one analysis partition that owns some of the models."""
        rules = spec.rules if hasattr(spec, "rules") else tuple(spec)  # an AlertsSpec or rules
        self.absent_selector = absent_selector
        self.rules: dict[str, AlertRule] = {r.name: r for r in rules}
        self.last_evaluation: float | None = None
        self._alerts: dict[tuple[str, LabelsKey], _Alert] = {}
        self._series: dict[str, dict[LabelsKey, _Series]] = {r: {} for r in self.rules}  # per rule
        self._orphans: list[_Alert] = []  # firing alerts of rules removed from the config
        self._outbox: dict[str, dict] = {}  # event_id -> event, until acknowledged
        self.outbox_dropped = 0

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, now: float, samples: Iterable[Sample | tuple]) -> list[AlertEvent]:
        """Evaluate every rule at time ``now`` (seconds) on the current samples; the transitions' events."""
        if self.last_evaluation is not None and now < self.last_evaluation:
            now = self.last_evaluation  # a clock step back must not undo durations
        index: dict[str, dict[LabelsKey, Sample]] = {}
        for s in samples:
            s = s if isinstance(s, Sample) else Sample(*s)
            index.setdefault(s.name, {})[labels_key(s.labels)] = s
        events: list[AlertEvent] = []
        for alert in self._orphans:
            events.append(self._resolve_event(alert, now, alert.value, "the rule was removed from the config"))
        self._orphans = []
        for rule in self.rules.values():
            self._evaluate_rule(rule, now, index, events)
        self.last_evaluation = now
        for e in events:
            self._outbox[e.event_id] = e.to_dict()
        while len(self._outbox) > MAX_OUTBOX:  # nobody acknowledges: keep the newest
            del self._outbox[next(iter(self._outbox))]
            self.outbox_dropped += 1
        return events

    def idle(self) -> bool:
        """Nothing to evaluate: no rules, and no alert of a removed rule left to resolve."""
        return not self.rules and not self._orphans

    def acknowledge(self, event_ids: Iterable[str] | Iterable[AlertEvent]) -> None:
        """Mark events as published (e.g. written to the alerts topic)."""
        for e in event_ids:
            self._outbox.pop(e.event_id if isinstance(e, AlertEvent) else e, None)

    def unacknowledged(self) -> list[AlertEvent]:
        """Events produced but not acknowledged, oldest first: re-publish them after a restart."""
        return [AlertEvent.from_dict(d) for d in self._outbox.values()]

    def _evaluate_rule(self, rule: AlertRule, now: float, index: Mapping[str, Mapping[LabelsKey, Sample]],
                       events: list[AlertEvent]) -> None:
        by_metric = index.get(rule.metric, {})
        matched = {k: s for k, s in by_metric.items() if rule.selects(s.labels)}
        for key, sample in matched.items():
            self._observe(rule, key, sample, now)
        if rule.condition == "no_data":
            self._evaluate_no_data(rule, now, matched, events)
        else:
            for key, sample in matched.items():
                verdict, value, extra = self._verdict(rule, key, sample, now, index)
                self._step(rule, key, sample.labels, verdict, value, now, extra, events)
        self._expire(rule, now, set(matched), events)

    def _observe(self, rule: AlertRule, key: LabelsKey, sample: Sample, now: float) -> _Series:
        """Record a sample once per evaluation; returns the series with ``current`` set (None: no value yet)."""
        known = self._series[rule.name]
        series = known.get(key)
        if series is None:
            series = known[key] = _Series(dict(sample.labels), now)
        if series.updated_at == now:
            return series
        series.updated_at = now
        series.last_seen = now
        stamp = sample.timestamp if sample.timestamp is not None else now
        value: float | None = float(sample.value)
        if value != value:  # NaN (e.g. a ratio of empty windows): no verdict
            series.current = None
            return series
        if rule.function is not None:
            _push(series.raw, stamp, value, rule.range)
            inc = _increase(series.raw, stamp, rule.range)
            if inc is None:
                value = None
            elif rule.function == "increase":
                value = inc[0]
            else:
                value = inc[0] / inc[1] if inc[1] > 0 else None
        series.current = value
        if value is not None and rule.change is not None and rule.change.vs == "previous":
            _push(series.values, stamp, value, 2 * rule.change.window)
        return series

    def _verdict(self, rule: AlertRule, key: LabelsKey, sample: Sample, now: float,
                 index: Mapping[str, Mapping[LabelsKey, Sample]]) -> tuple[str, float | None, dict]:
        series = self._series[rule.name][key]
        raw = series.current
        extra: dict[str, Any] = {"raw": raw}
        if raw is None:
            return UNKNOWN, None, extra
        value = raw
        ref_key = None
        if rule.change is not None:
            if rule.change.vs == "previous":
                stamp = sample.timestamp if sample.timestamp is not None else now
                ref = _ref_value(series.values, stamp, rule.change.window)
            else:
                ref_labels = {**dict(sample.labels), **rule.change.vs}
                ref_key = labels_key(ref_labels)
                if ref_key == key:
                    return UNKNOWN, None, extra  # the reference series itself
                ref_sample = index.get(rule.metric, {}).get(ref_key)
                ref = None
                if ref_sample is not None:
                    ref = self._observe(rule, ref_key, ref_sample, now).current
            extra["reference"] = ref
            if ref is None:
                return UNKNOWN, None, extra
            value = rule.change.transform(raw, ref)
            if value is None:
                return UNKNOWN, None, extra
        if rule.min_samples is not None:
            companions = index.get(rule.companion(), {})
            n = companions.get(key)
            extra["n"] = n.value if n is not None else None
            if n is None or n.value < rule.min_samples:
                return UNKNOWN, value, extra
            if ref_key is not None:
                rn = companions.get(ref_key)
                if rn is None or rn.value < rule.min_samples:
                    return UNKNOWN, value, extra
        if rule.breaches(value):
            return BREACH, value, extra
        if rule.recovered(value):
            return CLEAR, value, extra
        return HOLD, value, extra

    def _evaluate_no_data(self, rule: AlertRule, now: float, matched: Mapping[LabelsKey, Sample],
                          events: list[AlertEvent]) -> None:
        by_key = self._series[rule.name]
        known = set(by_key)
        for key in known | set(matched):
            series = by_key.get(key)
            if key in matched:
                value = series.current if series is not None else None
                if value is None:
                    verdict = UNKNOWN
                elif rule.zero_is_no_data and value == 0:
                    verdict = BREACH
                else:
                    verdict = CLEAR
                self._step(rule, key, matched[key].labels, verdict, value, now, {"raw": value}, events)
            else:
                self._step(rule, key, series.labels, BREACH, None, now, {"raw": None}, events)
        if not self.absent_selector:
            return
        selector_key = labels_key(rule.equality_labels())
        if not matched and not known:
            self._step(rule, selector_key, rule.equality_labels(), BREACH, None, now, {"raw": None}, events)
        elif selector_key not in known and selector_key not in matched:
            self._step(rule, selector_key, rule.equality_labels(), CLEAR, None, now, {"raw": None}, events)

    def _expire(self, rule: AlertRule, now: float, present: set[LabelsKey], events: list[AlertEvent]) -> None:
        horizon = now - rule.forget_seconds
        by_key = self._series[rule.name]
        for key in [k for k, s in by_key.items() if s.last_seen < horizon]:
            del by_key[key]
            alert = self._alerts.pop((rule.name, key), None)
            if alert is not None and alert.state == "firing":
                events.append(self._resolve_event(
                    alert, now, None, f"the series has been absent for {rule.forget_seconds:g}s"))

    # ------------------------------------------------------------------ the state machine
    def _step(self, rule: AlertRule, key: LabelsKey, series_labels: Mapping[str, str], verdict: str,
              value: float | None, now: float, extra: dict, events: list[AlertEvent]) -> None:
        ak = (rule.name, key)
        alert = self._alerts.get(ak)
        if verdict == UNKNOWN:
            return
        if verdict == BREACH:
            if alert is None:
                alert = self._alerts[ak] = _Alert("pending", dict(series_labels), now)
            alert.value = value
            if alert.state == "pending":
                alert.consecutive += 1
                if now - alert.active_since >= rule.for_seconds and alert.consecutive >= rule.for_evaluations:
                    alert.state, alert.fired_at = "firing", now
                    event = self._event(rule, alert, "firing", value, now, extra)
                    alert.last = event.to_dict()
                    events.append(event)
            else:
                alert.recovered_since = None
            return
        if alert is None:
            return
        if alert.state == "pending":
            del self._alerts[ak]  # the fire condition no longer holds: back to inactive
            return
        alert.value = value
        if verdict == HOLD:
            alert.recovered_since = None
            return
        if alert.recovered_since is None:
            alert.recovered_since = now
        if now - alert.recovered_since >= rule.keep_firing_for:
            del self._alerts[ak]
            events.append(self._event(rule, alert, "resolved", value, now, extra))

    def _event(self, rule: AlertRule, alert: _Alert, status: str, value: float | None, now: float,
               extra: dict) -> AlertEvent:
        labels = {**alert.series, **dict(rule.labels), "alertname": rule.name, "severity": rule.severity}
        values = {"value": value, "n": extra.get("n"), "raw": extra.get("raw"), "reference": extra.get("reference")}
        threshold = rule.fire_threshold() if status == "firing" else rule.clear_threshold()
        annotations = {
            "summary": rule.render(rule.summary, labels, values) if rule.summary
            else rule.render("{$rule} " + status + ": {$metric}", labels, values),
            "description": rule.render(rule.description or rule.default_description(), labels, values),
            "metric": rule.metric,
            "value": "n/a" if value is None else repr(float(value)),
            "threshold": json.dumps(threshold),
        }
        if rule.runbook_url:
            annotations["runbook_url"] = rule.runbook_url
        return AlertEvent(status=status, rule=rule.name, fingerprint=fingerprint(labels), labels=labels,
                          annotations=annotations, metric=rule.metric, value=value, threshold=threshold,
                          starts_at=alert.fired_at if alert.fired_at is not None else now,
                          ends_at=now if status == "resolved" else None, severity=rule.severity,
                          generated_at=now)

    def _resolve_event(self, alert: _Alert, now: float, value: float | None, reason: str) -> AlertEvent:
        last = dict(alert.last)
        last.update(status="resolved", ends_at=now, generated_at=now, value=value, event_id="")
        last["annotations"] = {**last["annotations"], "resolved_reason": reason}
        return AlertEvent.from_dict(last)

    # ------------------------------------------------------------------ views
    def firing(self) -> list[AlertEvent]:
        """The currently firing alerts (their firing events), e.g. to re-send to Alertmanager."""
        return [AlertEvent.from_dict(a.last) for a in self._alerts.values() if a.state == "firing" and a.last]

    def states(self) -> list[dict]:
        """Pending and firing alerts: rule, labels, state, since, value."""
        return [{"rule": rule, "labels": a.series, "state": a.state,
                 "since": a.fired_at if a.state == "firing" else a.active_since, "value": a.value}
                for (rule, _), a in sorted(self._alerts.items())]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """JSON-ready state (checkpoint it after each evaluation, with the events it produced)."""
        return {
            "state_version": STATE_VERSION,
            "last_evaluation": self.last_evaluation,
            "alerts": [[rule, [list(p) for p in key], a.to_dict()] for (rule, key), a in sorted(self._alerts.items())],
            "series": [[rule, [list(p) for p in key], s.to_dict()]
                       for rule, by_key in sorted(self._series.items()) for key, s in sorted(by_key.items())],
            "orphans": [a.to_dict() for a in self._orphans],
            "outbox": list(self._outbox.values()),
            "outbox_dropped": self.outbox_dropped,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], spec: AlertsSpec | Iterable[AlertRule],
                  **kwargs: Any) -> "AlertEngine":
        """Restore; firing alerts of rules no longer configured resolve at the next evaluation.
        ``kwargs``: constructor options (``absent_selector``)."""
        if data.get("state_version") != STATE_VERSION:
            raise ValueError(f"state_version: expected {STATE_VERSION}, got {data.get('state_version')!r}")
        engine = cls(spec, **kwargs)
        engine.last_evaluation = data["last_evaluation"]
        for rule, key, a in data["alerts"]:
            alert = _Alert.from_dict(a)
            if rule in engine.rules:
                engine._alerts[(rule, tuple((k, v) for k, v in key))] = alert
            elif alert.state == "firing" and alert.last:
                engine._orphans.append(alert)
        for rule, key, s in data["series"]:
            if rule in engine.rules:
                engine._series[rule][tuple((k, v) for k, v in key)] = _Series.from_dict(s)
        engine._orphans.extend(_Alert.from_dict(a) for a in data["orphans"])
        engine._outbox = {d["event_id"]: dict(d) for d in data["outbox"]}
        engine.outbox_dropped = data["outbox_dropped"]
        return engine
