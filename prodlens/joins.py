"""The JOIN stage's pure core: one ``prodlens.joins`` partition's state and what each record does to it.

Ingest re-keys slim records onto the joins topic — predictions and feedback by
``prediction_id``, exposures and outcomes by ``unit_id`` (see the stage
architecture) — so everything that must meet lands on one partition. A
:class:`JoinProcessor` per joins partition keeps:

1. prediction ⨝ feedback: a :class:`~prodlens.quality.join.FeedbackJoin` and
   :class:`~prodlens.quality.windows.QualityWindows` (windows of *prediction* time,
   ``quality.window`` long, kept for the label horizon). Predictions feed the
   coverage denominator and CBPE sums; joined rows feed the realised metrics,
   whenever they arrive (a label three days late updates its prediction's window).
2. shadow pairs: predictions sharing a prediction_id, role ``shadow`` vs the primary
   (role ``primary`` or none) → :class:`~prodlens.experiments.shadow.ShadowStats`
   per (model, primary_version, shadow_version, segment), see :class:`ShadowPairs`.
3. agreement invariants (``InvariantEvaluator(partitioning="prediction_id")``).
4. exposures ⨝ outcomes: :class:`~prodlens.experiments.outcomes.OutcomeJoiner`, configured by
   :func:`prodlens.experiments.config.parse_experiments` (``experiments.ab`` and ``attribution``).

Records an ingest worker routes again after restarting from an older snapshot (same
``source``, ``kind`` and ``seq`` = its input offset, now at new joins offsets) are skipped:
the highest seq applied per (source, kind) is kept in the snapshot (``upstream``). If an
input topic is ever recreated (offsets restart at 0) the join state must be reset with it.

``tick(now)`` advances event time (the watermark is the largest prediction/exposure
timestamp seen, so a snapshot + replay reproduces every emission exactly), emits the
cumulative partial state of every key changed since the last emission to the summaries
topic, and drops quality windows no label can reach any more.

CBPE: prodlens has no calibration reference per model yet, so scores are treated as
calibrated probabilities (:func:`calibrated_reference`: identity calibration, reference
ECE 0, no score-drift bins). The estimates are then exact under calibration and wrong
by the model's calibration error otherwise; whether to trust them is decided downstream
from the realised calibration error of labelled windows.

>>> from prodlens.config import load_config
>>> cfg = load_config(data={"models": {"m": {"output": "binary", "classes": ["no", "yes"]}},
...                         "quality": {"window": "60s"}})
>>> p = JoinProcessor(cfg, "prodlens.joins", 0)
>>> _ = p.process(orjson.dumps({"kind": "prediction", "source": "prodlens.predictions:0", "seq": 1,
...     "columns": {"prediction_id": ["p1"], "timestamp": [10.0], "model": ["m"], "version": ["v1"],
...                 "segment": ["__all__"], "role": [None], "output": {"label": ["yes"], "score": [0.9]}}}), 0)
>>> _ = p.process(orjson.dumps({"kind": "feedback", "source": "prodlens.feedback:0", "seq": 1,
...     "columns": {"prediction_id": ["p1"], "timestamp": [500.0], "kind": ["label"], "value": ["yes"]}}), 1)
>>> [(t, r["type"], r["window_start"], r["state"]["classification"]["confusion"]) for t, _, r in p.tick(0).messages]
[('prodlens.summaries', 'quality_partial', 0.0, [[1]])]
>>> p.counters["joined"]
{'m': 1}
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .config import Config, ModelConfig, parse_duration
from .contract import row_of, take
from .experiments.config import parse_experiments
from .experiments.outcomes import COUNTERS as OUTCOME_COUNTERS
from .experiments.outcomes import OutcomeJoiner
from .experiments.shadow import CLASSIFICATION, REGRESSION, ShadowStats
from .invariants import AgreementCheck, InvariantEvaluator, parse_invariants_section
from .pipeline import Emit, Outputs, message_deadletter
from .quality.cbpe import CBPEReference
from .quality.classification import label_key
from .quality.join import KIND_BITS, ORPHAN_REASONS, FeedbackJoin, Matches, window_start
from .quality.windows import ModelSpec, QualityWindows, WindowQuality

STATE_FORMAT = "prodlens.join_state.v1"
RECORD_KINDS = ("prediction", "feedback", "exposure", "outcome")
ROLE_SHADOW = "shadow"

METRICS: dict[str, tuple[str, ...]] = {
    "prodlens_feedback_joined_total": ("model",),
    "prodlens_feedback_orphaned_total": ("reason",),
    "prodlens_join_pending_predictions": (),
    "prodlens_join_early_feedback": (),
    "prodlens_join_state_bytes": (),
    "prodlens_experiment_outcome_events_total": ("event",),
}


# ----------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class JoinSettings:
    """The join stage's keys of the shared ``quality:`` section (durations in seconds)."""

    window: float = 3600.0          # quality window length (prediction time)
    horizon: float = 7 * 86400.0    # label horizon: how long a prediction waits for feedback
    grace: float = 600.0            # how long feedback waits for its prediction (prediction time)
    max_pending: int = 1_000_000    # waiting predictions per joins partition (hard cap, oldest evicted)
    max_early: int = 100_000        # feedback events waiting for their prediction


def _duration_field(section: Mapping, name: str, default: float, positive: bool = True) -> float:
    if section.get(name) is None:
        return default
    try:
        seconds = parse_duration(section[name])
    except ValueError as exc:
        raise ValueError(f"quality.{name}: {exc}") from None
    if positive and seconds <= 0:
        raise ValueError(f"quality.{name}: must be positive, got {section[name]!r}")
    return seconds


def _int_field(section: Mapping, where: str, name: str, default: int, minimum: int = 1) -> int:
    value = section.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}.{name}: must be an integer >= {minimum}, got {value!r}")
    return value


def parse_join_settings(section: Mapping[str, Any] | None) -> JoinSettings:
    """The keys the join owns in ``config.quality`` (window, horizon, grace, max_pending,
    max_early). Other keys of the section belong to the quality analyser and are ignored.

    >>> parse_join_settings({"window": "60s", "horizon": "2d"}).horizon
    172800.0
    """
    section = section or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"quality: must be a mapping, got {type(section).__name__}")
    s = JoinSettings(
        window=_duration_field(section, "window", JoinSettings.window),
        horizon=_duration_field(section, "horizon", JoinSettings.horizon),
        grace=_duration_field(section, "grace", JoinSettings.grace, positive=False),
        max_pending=_int_field(section, "quality", "max_pending", JoinSettings.max_pending),
        max_early=_int_field(section, "quality", "max_early", JoinSettings.max_early))
    if s.horizon < s.window:
        raise ValueError(f"quality.horizon: must be at least quality.window ({s.window:g}s), got {s.horizon:g}s")
    return s


# ----------------------------------------------------------------------------------- model specs
def model_spec(model: ModelConfig) -> ModelSpec:
    """How the quality core scores a configured model.

    Binary: the positive label is ``positive_class``, else the second of ``classes``
    (``[negative, positive]``); the negative label the other class. A binary model
    without classes scores as a labelled classifier (no score-derived labels, AUC, CBPE).
    """
    if model.output == "regression":
        return ModelSpec("regression")
    if model.output == "binary":
        positive = model.positive_class
        if positive is None and model.classes:
            positive = model.classes[1]
        negative = None
        if model.classes and positive is not None:
            negative = next((c for c in model.classes if c != positive), None)
        return ModelSpec("classification", positive_label=positive, negative_label=negative)
    return ModelSpec("classification", max_classes=max(50, len(model.classes or ())))


def calibrated_reference(threshold: float = 0.5) -> CBPEReference:
    """The CBPE reference of a model with no calibration data: scores taken as calibrated
    probabilities (identity map), reference ECE 0, one score bin (PSI always 0)."""
    return CBPEReference(None, threshold, [], [1.0], 0.0, 0)


def cbpe_reference(spec: ModelSpec) -> CBPEReference | None:
    """CBPE needs a binary classifier with a known positive class; None otherwise."""
    if spec.task != "classification" or spec.positive_label is None:
        return None
    return calibrated_reference(spec.threshold)


def window_quality_from_record(record: Mapping[str, Any]) -> WindowQuality:
    """The WindowQuality of a ``quality_partial`` record (spec and CBPE reference ride along)."""
    spec = ModelSpec(**record["spec"])
    ref = record.get("cbpe_reference")
    return WindowQuality.from_dict(record["state"], spec, None if ref is None else CBPEReference.from_dict(ref))


class _Windows(QualityWindows):
    """QualityWindows whose CBPE reference is per model (versions are not known up front)."""

    def __init__(self, window_seconds: float, specs: Mapping[str, ModelSpec],
                 references: Mapping[str, CBPEReference]):
        super().__init__(window_seconds, specs)
        self.model_references = dict(references)

    def state(self, key: tuple) -> WindowQuality:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = WindowQuality(self.spec(key[1]), self.model_references.get(key[1]))
        return w

    def restore_windows(self, d: Mapping[str, Any]) -> None:
        self.windows = {tuple(k): WindowQuality.from_dict(s, self.spec(k[1]), self.model_references.get(k[1]))
                        for k, s in d["windows"]}


# ----------------------------------------------------------------------------------- shadow pairs
def comparable_output(spec: ModelSpec, output: Mapping[str, Any] | None) -> Any:
    """The answer primary and shadow are compared on: the label (else derived from the score
    with the spec's threshold, else the argmax of probabilities) as :func:`label_key`, or the
    regression value. None when the output has nothing usable."""
    out = output or {}
    if spec.task == "regression":
        v = out.get("value")
        return None if v is None else float(v)
    if out.get("label") is not None:
        return label_key(out["label"])
    score = out.get("score")
    if score is not None:
        positive = score >= spec.threshold
        if spec.positive_label is not None:
            return label_key(spec.positive_label if positive else spec.negative_label)
        return label_key(bool(positive))
    probs = out.get("probabilities")
    if probs:
        return label_key(max(probs, key=probs.get))
    return None


def _stats_state(stats: ShadowStats) -> tuple[dict, dict]:
    """ShadowStats state *without* flushing its sketch buffers: flushing at snapshot time would
    batch the float sums differently from an uninterrupted run (exact replay needs the same)."""
    buffers = {name: list(values) for name, values in stats._buffers.items()}
    for values in stats._buffers.values():
        values.clear()
    state = stats.to_dict()
    for name, values in buffers.items():
        stats._buffers[name].extend(values)
    return state, buffers


ShadowKey = tuple[str, str, str, str]  # (model, primary_version, shadow_version, segment)
_MISSING: Any = None
_SHADOW_COUNTERS = ("primary", "shadow", "pairs", "duplicates", "unpaired_shadows", "evicted_open", "labels",
                    "labelled_pairs", "expired_awaiting_label", "evicted_awaiting_label", "unusable_outputs")


class ShadowPairs:
    """Primary/shadow pairing by prediction_id into :class:`ShadowStats` per
    (model, primary_version, shadow_version, segment of the primary).

    Unlike :class:`~prodlens.experiments.shadow.ShadowMonitor` the key names both versions,
    so it is known only when a pair completes; latency is therefore recorded per pair
    (both sides of the same requests). A prediction waits ``pair_timeout`` seconds of
    event time for its partner; primaries wait only for models in ``shadow_models`` — those
    declared under ``experiments.shadows`` and those whose shadow traffic this partition has
    seen — so models without shadows cost nothing (for an undeclared model the very first
    shadow pairs only if it arrives before its primary). A completed pair waits up to
    ``label_horizon`` for ground truth (the first label/correction of the prediction).
    Memory: at most ``max_open`` + ``max_awaiting`` entries (oldest evicted and counted)
    plus one fixed-size ShadowStats per key.
    """

    def __init__(self, specs: Mapping[str, ModelSpec], pair_timeout: float = 300.0,
                 label_horizon: float = 7 * 86400.0, max_open: int = 100_000, max_awaiting: int = 100_000):
        if not pair_timeout > 0 or not label_horizon > 0:
            raise ValueError("pair_timeout and label_horizon must be > 0")
        if max_open < 1 or max_awaiting < 1:
            raise ValueError("max_open and max_awaiting must be >= 1")
        self.specs = dict(specs)
        self.pair_timeout = float(pair_timeout)
        self.label_horizon = float(label_horizon)
        self.max_open = int(max_open)
        self.max_awaiting = int(max_awaiting)
        self.stats: dict[ShadowKey, ShadowStats] = {}
        self.shadow_models: set[str] = set()
        # pid -> [time, model, primary [version, segment, value, latency] | None, shadows [[version, value,
        #         latency, segment]], label, pairs [[key, primary value, shadow value]]]
        self._open: OrderedDict[str, list] = OrderedDict()
        # pid -> [pair time, pairs [[key, primary value, shadow value]]]
        self._awaiting: OrderedDict[str, list] = OrderedDict()
        self.counters = dict.fromkeys(_SHADOW_COUNTERS, 0)

    def _task(self, model: str) -> str:
        spec = self.specs.get(model)
        return REGRESSION if spec is not None and spec.task == "regression" else CLASSIFICATION

    def add(self, pid: str, time_: float, model: str, version: str, segment: str, role: str | None,
            output: Mapping | None, latency_ms: float | None, changed: set) -> None:
        """One prediction; keys whose stats changed are added to ``changed``."""
        shadow = role == ROLE_SHADOW
        if shadow:
            self.counters["shadow"] += 1
            self.shadow_models.add(model)
        elif model not in self.shadow_models:
            return
        else:
            self.counters["primary"] += 1
        value = comparable_output(self.specs.get(model, ModelSpec()), output)
        if value is None:
            self.counters["unusable_outputs"] += 1
            return
        rec = self._open.get(pid)
        if rec is None:
            rec = [float(time_), model, None, [], _MISSING, []]
            self._open[pid] = rec
            while len(self._open) > self.max_open:
                old_pid, old = self._open.popitem(last=False)
                self.counters["evicted_open"] += 1
                self._close(old_pid, old)
        if shadow:
            if any(s[0] == version for s in rec[3]) or any(p[0][2] == version for p in rec[5]):
                self.counters["duplicates"] += 1
                return
            if rec[2] is None:
                rec[3].append([version, value, latency_ms, segment])
            else:
                self._pair(rec, [version, value, latency_ms, segment], changed)
        else:
            if rec[2] is not None:
                self.counters["duplicates"] += 1
                return
            rec[2] = [version, segment, value, latency_ms]
            waiting, rec[3] = rec[3], []
            for s in waiting:
                self._pair(rec, s, changed)

    def _pair(self, rec: list, s: list, changed: set) -> None:
        model, (pversion, segment, pvalue, platency) = rec[1], rec[2]
        sversion, svalue, slatency, _ = s
        key = (model, pversion, sversion, segment)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = ShadowStats(self._task(model))
        stats.update_pair(pvalue, svalue)
        if platency is not None:
            stats.update_latency("primary", platency)
        if slatency is not None:
            stats.update_latency("shadow", slatency)
        self.counters["pairs"] += 1
        changed.add(key)
        if rec[4] is not _MISSING:
            stats.update_label(pvalue, svalue, rec[4])
            self.counters["labelled_pairs"] += 1
        rec[5].append([key, pvalue, svalue])

    def label(self, pid: str, model: str, value: Any, changed: set) -> None:
        """The first ground truth of prediction ``pid`` (label or correction)."""
        if model not in self.shadow_models or value is None:
            return
        try:
            truth = float(value) if self._task(model) == REGRESSION else label_key(value)
        except (TypeError, ValueError):
            self.counters["unusable_outputs"] += 1
            return
        rec = self._open.get(pid)
        if rec is not None:
            if rec[4] is not _MISSING:
                return
            self.counters["labels"] += 1
            rec[4] = truth
            pairs = rec[5]
        else:
            entry = self._awaiting.pop(pid, None)
            if entry is None:
                return
            self.counters["labels"] += 1
            pairs = entry[1]
        for key, pvalue, svalue in pairs:
            self.stats[key].update_label(pvalue, svalue, truth)
            self.counters["labelled_pairs"] += 1
            changed.add(key)

    def _close(self, pid: str, rec: list) -> None:
        """An open record leaves the pairing buffer: unlabelled pairs go on waiting for a label."""
        self.counters["unpaired_shadows"] += len(rec[3])
        if rec[5] and rec[4] is _MISSING:
            self._awaiting[pid] = [rec[0], rec[5]]
            while len(self._awaiting) > self.max_awaiting:
                self._awaiting.popitem(last=False)
                self.counters["evicted_awaiting_label"] += 1

    def expire(self, watermark: float) -> None:
        """Close open records older than ``pair_timeout`` and drop pairs older than
        ``label_horizon`` (event time), oldest first."""
        limit = watermark - self.pair_timeout
        while self._open:
            pid, rec = next(iter(self._open.items()))
            if rec[0] >= limit:
                break
            del self._open[pid]
            self._close(pid, rec)
        limit = watermark - self.label_horizon
        while self._awaiting:
            pid, entry = next(iter(self._awaiting.items()))
            if entry[0] >= limit:
                break
            del self._awaiting[pid]
            self.counters["expired_awaiting_label"] += 1

    def __len__(self) -> int:
        return len(self._open) + len(self._awaiting)

    def to_dict(self) -> dict:
        return {"pair_timeout": self.pair_timeout, "label_horizon": self.label_horizon,
                "max_open": self.max_open, "max_awaiting": self.max_awaiting,
                "shadow_models": sorted(self.shadow_models),
                "stats": [[list(k), *_stats_state(s)] for k, s in self.stats.items()],
                "open": [[pid, *rec] for pid, rec in self._open.items()],
                "awaiting": [[pid, *entry] for pid, entry in self._awaiting.items()],
                "counters": dict(self.counters)}

    @staticmethod
    def _pairs(pairs: list) -> list:
        return [[tuple(k), p, s] for k, p, s in pairs]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], specs: Mapping[str, ModelSpec]) -> "ShadowPairs":
        sp = cls(specs, d["pair_timeout"], d["label_horizon"], d["max_open"], d["max_awaiting"])
        sp.shadow_models = set(d["shadow_models"])
        for k, state, buffers in d["stats"]:
            stats = sp.stats[tuple(k)] = ShadowStats.from_dict(state)
            for name, values in buffers.items():
                stats._buffers[name].extend(values)
        for pid, t, model, primary, shadows, label, pairs in d["open"]:
            sp._open[pid] = [t, model, primary, [list(s) for s in shadows], label, cls._pairs(pairs)]
        for pid, t, pairs in d["awaiting"]:
            sp._awaiting[pid] = [t, cls._pairs(pairs)]
        sp.counters.update(d["counters"])
        return sp


# ----------------------------------------------------------------------------------- the processor
def _output_rows(output: Any, n: int) -> list[dict]:
    """Per-row output dicts from the canonical dict-of-lists column (rows pass through)."""
    if output is None:
        return [{} for _ in range(n)]
    if isinstance(output, list):
        return [o or {} for o in output]
    rows: list[dict] = [{} for _ in range(n)]
    for key, col in output.items():
        values = col if isinstance(col, list) else [col] * n
        for row, v in zip(rows, values):
            if v is not None:
                row[key] = v
    return rows


def _column(columns: Mapping[str, Any], name: str, n: int, required: bool = False) -> list:
    col = columns.get(name)
    if col is None:
        if required:
            raise ValueError(f"columns.{name}: missing")
        return [None] * n
    if not isinstance(col, list):
        return [col] * n
    if len(col) != n:
        raise ValueError(f"columns.{name}: has {len(col)} values, columns.timestamp has {n}")
    return col


class JoinProcessor:
    """State and processing of one joins-topic partition (pure: no Kafka, no asyncio).

    Protocol (stages.md): ``process(raw, offset, now)`` per message in offset order
    (offsets below ``next_offset`` are ignored), ``tick(now)`` once a second,
    ``to_dict()`` / ``restore(state)`` for snapshots, ``replay_from``, ``collect()``.
    """

    def __init__(self, config: Config, topic: str, partition: int, shadow_max_open: int = 100_000):
        self.config = config
        self.topic = topic
        self.partition = partition
        self.source = f"{topic}:{partition}"
        self.settings = parse_join_settings(config.quality)
        self.experiments = parse_experiments(config.experiments, config.models)
        self.specs = {name: model_spec(m) for name, m in config.models.items()}
        self.references = {name: ref for name, spec in self.specs.items()
                           if (ref := cbpe_reference(spec)) is not None}
        s = self.settings
        self.join = FeedbackJoin(s.horizon, s.grace, s.window, s.max_pending, s.max_early)
        self.quality = _Windows(s.window, self.specs, self.references)
        shadows = list(self.experiments.shadows.values())
        self.shadow = ShadowPairs(
            self.specs, max((x.pair_horizon_s for x in shadows), default=300.0),
            max((x.label_horizon_s for x in shadows if x.label_horizon_s is not None), default=s.horizon),
            shadow_max_open)
        self.shadow.shadow_models.update(x.model for x in shadows)  # configured: buffer primaries from the start
        self.invariant_specs = parse_invariants_section(config.invariants, config.models)
        self.invariants = self._new_evaluator()
        self.outcomes = self.experiments.outcome_joiner()
        self.idle_after = (config.window.idle_close if config.window.idle_close is not None
                           else config.window.length + config.window.allowed_lateness)
        self.next_offset = 0
        self.watermark = -math.inf          # max prediction / exposure event time
        self.quality_dropped_until = -math.inf  # quality windows starting at or before this are gone
        self.last_event_at: float | None = None
        self.counters: dict[str, Any] = {
            "messages": 0, "bad_records": 0, "records": dict.fromkeys(RECORD_KINDS, 0),
            "predictions": 0, "duplicate_predictions": 0, "late_for_quality": 0, "invalid_feedback": 0,
            "feedback": 0, "joined": {}, "quality_windows_dropped": 0, "partials_emitted": 0,
            "replayed_records": 0}
        # "source|kind" -> highest seq applied. Ingest emits at most one record per (input message,
        # kind, joins partition) with seq = the input offset, so a record at or below the mark is
        # a re-emission by an ingest worker that restarted from an older snapshot.
        self.upstream: dict[str, int] = {}
        self._dirty_quality: set[tuple] = set()
        self._dirty_shadow: set[ShadowKey] = set()
        self._dirty_experiments: set[str] = set()

    def _new_evaluator(self) -> InvariantEvaluator | None:
        has_agreement = any(isinstance(inv, AgreementCheck)
                            for spec in self.invariant_specs.values() for inv in spec.invariants)
        if not has_agreement:
            return None
        return InvariantEvaluator(self.invariant_specs, partitioning="prediction_id",
                                  window_seconds=self.config.window.length,
                                  allowed_lateness=self.config.window.allowed_lateness)

    # -- processing ------------------------------------------------------------------------------
    def process(self, raw: bytes | None, offset: int, now: float | None = None,
                key: bytes | None = None) -> Outputs:
        """Apply one joins-topic message (a record of kind prediction/feedback/exposure/outcome)."""
        out = Outputs()
        if offset < self.next_offset:
            return out
        self.next_offset = offset + 1
        self.counters["messages"] += 1
        self.last_event_at = time.time() if now is None else now
        if raw is None:
            return out
        try:
            record = orjson.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("a joins record must be a JSON object")
            kind = record.get("kind")
            if kind not in RECORD_KINDS:
                raise ValueError(f"kind: expected one of {RECORD_KINDS}, got {kind!r}")
            columns = record.get("columns")
            if not isinstance(columns, dict) or not isinstance(columns.get("timestamp"), list):
                raise ValueError("columns: must be an object with a timestamp list")
            if isinstance(columns.get("offset"), list):
                columns = self._unapplied(record, kind, columns)
                if columns is None:
                    return out
            elif self._replayed(record, kind):
                return out
            n = len(columns["timestamp"])
            if n:
                getattr(self, "_" + kind)(columns, n, out, raw, offset)
            self.counters["records"][kind] += 1
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            self.counters["bad_records"] += 1
            self._deadletter(out, raw, offset, exc, now)
        return out

    def _unapplied(self, record: dict, kind: str, columns: dict) -> dict | None:
        """The rows of a batched record whose input offset is above the mark of its (source,
        kind): a restarted ingest re-sends rows in batches that need not match the first ones,
        so the check is per row. None when every row was applied before."""
        offsets = columns["offset"]
        mark = f"{record.get('source')}|{kind}"
        last = self.upstream.get(mark)
        keep = list(range(len(offsets))) if last is None else [i for i, o in enumerate(offsets) if o > last]
        if not keep:
            self.counters["replayed_records"] += 1
            return None
        self.upstream[mark] = max(offsets[i] for i in keep)
        return columns if len(keep) == len(offsets) else take(columns, keep)

    def _replayed(self, record: dict, kind: str) -> bool:
        """True for a record its ingest source already delivered (same source, kind, seq or lower):
        after an ingest restart the messages past its snapshot are routed again, at new joins
        offsets, and must not count twice (feedback joined, labels, outcomes). Records without an
        integer seq and string source are always applied."""
        source, seq = record.get("source"), record.get("seq")
        if not isinstance(source, str) or isinstance(seq, bool) or not isinstance(seq, int):
            return False
        mark = f"{source}|{kind}"
        last = self.upstream.get(mark)
        if last is not None and seq <= last:
            self.counters["replayed_records"] += 1
            return True
        self.upstream[mark] = seq
        return False

    def _deadletter(self, out: Outputs, raw: bytes, offset: int, exc: Exception, now: float | None) -> None:
        out.deadletters.append(message_deadletter(self.topic, self.partition, offset, "schema_violation",
                                                  f"{type(exc).__name__}: {exc}", raw, now))

    def _reject_feedback(self, out: Outputs, columns: dict, rows: list[int], offset: int,
                         kinds: list, pids: list) -> None:
        """Dead-letter feedback rows of a joins record (``schema_violation``, the row as the event)."""
        self.counters["invalid_feedback"] += len(rows)
        for i in rows:
            error = (f"kind: unknown feedback kind {kinds[i]!r}" if isinstance(pids[i], str)
                     else "prediction_id: must be a string")
            out.deadletters.append(message_deadletter(self.topic, self.partition, offset, "schema_violation",
                                                      error, None, index=i, event=row_of(columns, i)))

    def _prediction(self, columns: dict, n: int, out: Outputs, raw: bytes, offset: int) -> None:
        pids = _column(columns, "prediction_id", n, True)
        times = [float(t) for t in columns["timestamp"]]
        models = _column(columns, "model", n, True)
        versions = _column(columns, "version", n, True)
        segments = [s if s is not None else "__all__" for s in _column(columns, "segment", n)]
        roles = _column(columns, "role", n)
        latencies = _column(columns, "latency_ms", n)
        outputs = _output_rows(columns.get("output"), n)
        for name, col in (("prediction_id", pids), ("model", models), ("version", versions), ("segment", segments)):
            if not all(isinstance(v, str) for v in col):
                raise ValueError(f"columns.{name}: every value must be a string")
        # Re-delivered predictions (at-least-once upstream) must not count twice: the pending
        # chain of a prediction_id already holding this (model, version) is a duplicate.
        keep: list[int] = []
        seen: set[tuple[str, str, str]] = set()
        for i in range(n):
            ident = (pids[i], models[i], versions[i])
            head = self.join.pending.get(pids[i])
            if ident in seen or (head is not None and any(e.key[0] == models[i] and e.key[1] == versions[i]
                                                          for e in head.chain())):
                self.counters["duplicate_predictions"] += 1
                continue
            seen.add(ident)
            keep.append(i)
        self.counters["predictions"] += len(keep)
        if not keep:
            return
        sub = {"prediction_id": [pids[i] for i in keep], "timestamp": [times[i] for i in keep],
               "model": [models[i] for i in keep], "version": [versions[i] for i in keep],
               "segment_label": [segments[i] for i in keep], "output": [outputs[i] for i in keep]}
        matches = self.join.add_predictions(sub)
        # quality: coverage denominators and CBPE sums, except for windows already dropped
        q_rows = [j for j, t in enumerate(sub["timestamp"])
                  if window_start(t, self.settings.window) > self.quality_dropped_until]
        self.counters["late_for_quality"] += len(keep) - len(q_rows)
        if q_rows:
            q = sub if len(q_rows) == len(keep) else {k: [v[j] for j in q_rows] for k, v in sub.items()}
            self.quality.record_predictions(q)
            w = self.settings.window
            self._dirty_quality.update((window_start(t, w), m, v, s) for t, m, v, s in
                                       zip(q["timestamp"], q["model"], q["version"], q["segment_label"]))
        for i in keep:
            self.shadow.add(pids[i], times[i], models[i], versions[i], segments[i], roles[i], outputs[i],
                            latencies[i], self._dirty_shadow)
        if self.invariants is not None:
            canonical = dict(columns)
            canonical["timestamp"] = times
            canonical.pop("segment", None)
            self.invariants.update_columns(take(canonical, keep) if len(keep) < n else canonical, "prediction",
                                           segments=[segments[i] for i in keep])
        self._route(matches, {})
        top = max(times[i] for i in keep)
        if top > self.watermark:
            self.watermark = top

    def _feedback(self, columns: dict, n: int, out: Outputs, raw: bytes, offset: int) -> None:
        pids = _column(columns, "prediction_id", n, True)
        kinds = _column(columns, "kind", n, True)
        times = [float(t) for t in columns["timestamp"]]
        valid = [kinds[i] in KIND_BITS and isinstance(pids[i], str) for i in range(n)]
        good = [i for i in range(n) if valid[i]]
        if len(good) < n:
            self._reject_feedback(out, columns, [i for i in range(n) if not valid[i]], offset, kinds, pids)
        if not good:
            return
        cols = {"prediction_id": [pids[i] for i in good], "timestamp": [times[i] for i in good],
                "kind": [kinds[i] for i in good]}
        for name in ("value", "size", "corrected"):
            col = _column(columns, name, n)
            cols[name] = [col[i] for i in good]
        # Joined feedback events by model (a feedback event joining a primary and its shadow counts once).
        joined: dict[str, int] = {}
        for pid in cols["prediction_id"]:
            head = self.join.pending.get(pid)
            if head is not None:
                joined[head.key[0]] = joined.get(head.key[0], 0) + 1
        self.counters["feedback"] += len(good)
        self._route(self.join.add_feedback(cols), joined)

    def _route(self, m: Matches, joined: dict[str, int]) -> None:
        """Joined rows to the quality windows (of their prediction time) and shadow labels."""
        if not len(m):
            for model, k in joined.items():
                self.counters["joined"][model] = self.counters["joined"].get(model, 0) + k
            return
        if not joined:  # early feedback released by predictions: one row per feedback event
            for model in m.model:
                joined[model] = joined.get(model, 0) + 1
        for model, k in joined.items():
            self.counters["joined"][model] = self.counters["joined"].get(model, 0) + k
        w = self.settings.window
        starts = [window_start(t, w) for t in m.prediction_time]
        if any(ws <= self.quality_dropped_until for ws in starts):
            keep = [i for i, ws in enumerate(starts) if ws > self.quality_dropped_until]
            self.counters["late_for_quality"] += len(starts) - len(keep)
            sub = Matches()
            for f in sub.__dataclass_fields__:
                setattr(sub, f, [getattr(m, f)[i] for i in keep])
            m, starts = sub, [starts[i] for i in keep]
        if not len(m):
            return
        self.quality.record_matches(m)
        self._dirty_quality.update(zip(starts, m.model, m.version, m.segment))
        for pid, model, first_truth, value in zip(m.prediction_id, m.model, m.first_truth, m.value):
            if first_truth:
                self.shadow.label(pid, model, value, self._dirty_shadow)

    def _exposure(self, columns: dict, n: int, out: Outputs, raw: bytes, offset: int) -> None:
        units = _column(columns, "unit_id", n, True)
        experiments = _column(columns, "experiment", n, True)
        variants = _column(columns, "variant", n, True)
        times = [float(t) for t in columns["timestamp"]]
        for e, v, u, t in zip(experiments, variants, units, times):
            if e is None or v is None or u is None:
                self.outcomes.counters["unknown_variant"] += 1
                continue
            if self.outcomes.expose(e, v, u, t):
                self._dirty_experiments.add(e)
        top = max(times)
        if top > self.watermark:
            self.watermark = top

    def _outcome(self, columns: dict, n: int, out: Outputs, raw: bytes, offset: int) -> None:
        units = _column(columns, "unit_id", n, True)
        metrics = _column(columns, "metric", n, True)
        values = _column(columns, "value", n, True)
        experiments = _column(columns, "experiment", n)
        times = [float(t) for t in columns["timestamp"]]
        for u, metric, value, t, e in zip(units, metrics, values, times, experiments):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                self.outcomes.counters["outcomes"] += 1
                self.outcomes.counters["unknown_metric"] += 1
                continue
            if self.outcomes.outcome(u, metric, value, t, e):
                for name in ([e] if e is not None else self.outcomes.config):
                    if self.outcomes.variant_of(name, u) is not None:
                        self._dirty_experiments.add(name)

    # -- time ------------------------------------------------------------------------------------
    def tick(self, now: float) -> Outputs:
        """Advance event time, emit the cumulative partial of every key changed since the last
        emission, then drop quality windows no feedback can reach any more."""
        out = Outputs()
        self.join.advance()
        if math.isfinite(self.watermark):
            self.shadow.expire(self.watermark)
            self.outcomes.expire(self.watermark)
        if self.invariants is not None:
            results = self.invariants.close_windows()
            if not results and self.last_event_at is not None and now - self.last_event_at >= self.idle_after \
                    and self.invariants.watermark is not None and self.invariants.open_windows():
                # A silent partition closes its windows as if event time had moved on by the silence.
                results = self.invariants.close_windows(self.invariants.watermark + (now - self.last_event_at))
                self.last_event_at = now
            for r in results:
                out.messages.append(self._emit(r.model, {"type": "invariant_window", "model": r.model,
                                                         **r.to_dict()}))
        self._emit_quality(out)
        for key in sorted(self._dirty_shadow):
            model, pv, sv, segment = key
            out.messages.append(self._emit(model, {"type": "shadow_partial", "model": model, "primary_version": pv,
                                                   "shadow_version": sv, "segment": segment,
                                                   "state": self.shadow.stats[key].to_dict()}))
        self._dirty_shadow.clear()
        for name in sorted(self._dirty_experiments):
            out.messages.append(self._emit(f"experiment/{name}", {"type": "experiment_partial", "experiment": name,
                                                                  "state": self.outcomes.stats[name].to_dict()}))
        self._dirty_experiments.clear()
        self._drop_old_quality_windows()
        self.counters["partials_emitted"] += len(out.messages)
        return out

    def _emit(self, key: str, record: dict) -> Emit:
        record["source"] = self.source
        record["seq"] = self.next_offset
        return (self.config.topics.summaries, key.encode(), record)

    def _emit_quality(self, out: Outputs) -> None:
        w = self.settings.window
        for key in sorted(self._dirty_quality):
            state = self.quality.windows.get(key)
            if state is None:
                continue
            ws, model, version, segment = key
            state.flush()
            spec = self.quality.spec(model)
            ref = self.quality.model_references.get(model)
            out.messages.append(self._emit(model, {
                "type": "quality_partial", "model": model, "version": version, "segment": segment,
                "window_start": ws, "window_end": ws + w, "state": state.to_dict(),
                "spec": asdict(spec), "cbpe_reference": None if ref is None else ref.to_dict()}))
        self._dirty_quality.clear()

    def _drop_old_quality_windows(self) -> None:
        """A window is dropped once every prediction in it has left the pending join (bucket end
        + horizon passed), so no feedback can reach it; its last change was emitted before."""
        pending = self.join.pending
        if not math.isfinite(pending.watermark):
            return
        w = self.settings.window
        cutoff = math.floor((pending.watermark - pending.horizon - pending.bucket_seconds - w) / w) * w
        if cutoff <= self.quality_dropped_until:
            return
        self.quality_dropped_until = cutoff
        gone = self.quality.pop_before(cutoff + w / 2)  # starts are multiples of w: "<= cutoff"
        self.counters["quality_windows_dropped"] += len(gone)

    # -- snapshots --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready, exact: restore() + replay from replay_from reproduces state and emissions."""
        return {
            "format": STATE_FORMAT, "topic": self.topic, "partition": self.partition,
            "next_offset": self.next_offset,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "quality_dropped_until": (self.quality_dropped_until if math.isfinite(self.quality_dropped_until)
                                      else None),
            "last_event_at": self.last_event_at,
            "counters": orjson.loads(orjson.dumps(self.counters)),
            "upstream": dict(self.upstream),
            "join": self.join.to_dict(), "quality": self.quality.to_dict(), "shadow": self.shadow.to_dict(),
            "invariants": None if self.invariants is None else self.invariants.to_dict(),
            "outcomes": self.outcomes.to_dict(),
            "dirty": {"quality": [list(k) for k in sorted(self._dirty_quality)],
                      "shadow": [list(k) for k in sorted(self._dirty_shadow)],
                      "experiments": sorted(self._dirty_experiments)},
        }

    def restore(self, state: dict) -> None:
        """Load a snapshot taken by :meth:`to_dict` (then replay the input from ``replay_from``)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"format: expected {STATE_FORMAT!r}, got {state.get('format')!r}")
        self.next_offset = int(state["next_offset"])
        self.watermark = -math.inf if state["watermark"] is None else float(state["watermark"])
        q = state["quality_dropped_until"]
        self.quality_dropped_until = -math.inf if q is None else float(q)
        self.last_event_at = state["last_event_at"]
        self.counters = state["counters"]
        self.counters.setdefault("replayed_records", 0)
        self.upstream = {k: int(v) for k, v in state.get("upstream", {}).items()}
        self.join = FeedbackJoin.from_dict(state["join"])
        self.quality.restore_windows(state["quality"])
        self.shadow = ShadowPairs.from_dict(state["shadow"], self.specs)
        if state["invariants"] is not None and self.invariants is not None:
            self.invariants = InvariantEvaluator.from_dict(
                state["invariants"], self.invariant_specs, partitioning="prediction_id",
                window_seconds=self.config.window.length, allowed_lateness=self.config.window.allowed_lateness)
        self.outcomes = OutcomeJoiner.from_dict(state["outcomes"])
        dirty = state["dirty"]
        self._dirty_quality = {tuple(k) for k in dirty["quality"]}
        self._dirty_shadow = {tuple(k) for k in dirty["shadow"]}
        self._dirty_experiments = set(dirty["experiments"])

    @property
    def replay_from(self) -> int:
        return self.next_offset

    # -- metrics ----------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Estimated bytes of state: waiting predictions (measured per entry on a sample) and the
        expired-id Bloom filter, early feedback (~300 B per event), quality windows (~6 KiB each),
        shadow buffers (~400 B per entry), outcome units (~300 B each). An estimate within a
        factor of ~2, for capacity planning, not accounting."""
        total = self.join.pending.estimated_bytes()
        total += 300 * (len(self.join.early) + len(self.join.recent)) + 6144 * len(self.quality.windows)
        total += 400 * len(self.shadow) + 300 * len(self.outcomes) + sys.getsizeof(self.counters)
        return int(total)

    def collect(self) -> Iterable:
        """The join metrics of this partition (values live in the snapshotted state)."""
        return collect_all([self])


def collect_all(processors: Sequence[JoinProcessor]) -> list:
    """Join metric families summed over the joins partitions a worker owns (one family per name,
    so a worker with several partitions exposes no duplicate series)."""
    joined = CounterMetricFamily("prodlens_feedback_joined", "Feedback events joined to their prediction",
                                 labels=["model"])
    orphaned = CounterMetricFamily("prodlens_feedback_orphaned", "Feedback events that found no prediction",
                                   labels=["reason"])
    pending = GaugeMetricFamily("prodlens_join_pending_predictions", "Predictions waiting for feedback")
    early = GaugeMetricFamily("prodlens_join_early_feedback", "Feedback waiting for its prediction")
    size = GaugeMetricFamily("prodlens_join_state_bytes", "Estimated bytes of join state")
    outcome_events = CounterMetricFamily("prodlens_experiment_outcome_events",
                                         "Exposures and outcomes seen by the outcome join, by what became of them",
                                         labels=["event"])
    by_model: dict[str, int] = {}
    by_reason = dict.fromkeys(ORPHAN_REASONS, 0)
    for p in processors:
        for model, k in p.counters["joined"].items():
            by_model[model] = by_model.get(model, 0) + k
        for reason, k in p.join.orphans.counts.items():
            by_reason[reason] = by_reason.get(reason, 0) + k
    for model in list(processors[0].config.models) if processors else []:
        by_model.setdefault(model, 0)
    for model, k in sorted(by_model.items()):
        joined.add_metric([model], k)
    for reason, k in by_reason.items():
        orphaned.add_metric([reason], k)
    pending.add_metric([], sum(len(p.join.pending) for p in processors))
    early.add_metric([], sum(len(p.join.early) for p in processors))
    size.add_metric([], sum(p.state_bytes() for p in processors))
    for event in OUTCOME_COUNTERS:
        outcome_events.add_metric([event], sum(p.outcomes.counters.get(event, 0) for p in processors))
    return [joined, orphaned, pending, early, size, outcome_events]
