"""The ingest stage's pure core: one input partition's state and what each message does to it.

A :class:`PartitionProcessor` owns everything derived from one input topic
partition: counters, the dedupe horizon, open event-time windows per
(model, version, segment), the last closed window of each key, and
``next_offset`` — the first input offset not yet applied. The stream layer
feeds it raw messages in offset order and publishes what it returns
(dead letters, closed windows); it never computes anything itself.

Because state and ``next_offset`` always move together, a snapshot of
:meth:`to_dict` plus a replay of the input from ``next_offset`` reproduces the
state exactly (messages below ``next_offset`` only rebuild the dedupe horizon:
see :meth:`process`). That is the recovery contract of ``streams/checkpoint.py``.

>>> from prodlens.config import load_config
>>> cfg = load_config(data={"models": {"m": {"output": "binary"}}})
>>> p = PartitionProcessor(cfg, "prodlens.predictions", 0, "prediction")
>>> out = p.process(b'{"event_id":"e1","prediction_id":"p1","timestamp":5,"model":"m",'
...                 b'"version":"v1","output":{"score":0.3}}', offset=0, now=6.0)
>>> p.counters["valid"], p.totals[("m", "v1", "__all__")], p.next_offset
(1, 1, 1)
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .config import ModelConfig
from .contract import DUPLICATE, LATE, Decoder, Rejection, row_of, rows_to_columns, take
from .dedupe import EventIdDeduper
from .fanout import JoinRouter
from .invariants import InvariantEvaluator, parse_invariants_section
from .samples import WindowSampler
from .segments import OTHER, SegmentFolder
from .sketches.summary import SegmentSummary, SummarySpec
from .sketches.summary import WindowSummary as FieldSketches
from .summary import WindowSummary

MAX_VERSIONS = 32  # versions tracked per model; more fold into __other__ (cardinality cap)

Key = tuple[str, str, str]               # (model, version, segment)
SketchKey = tuple[str, str, float]       # (model, version, window start)
WindowKey = tuple[str, str, str, float]  # (model, version, segment, window start)
Emit = tuple[str, bytes, dict]           # (topic, key, record) for the stream layer to produce


@dataclass
class ClosedWindow:
    model: str
    version: str
    segment: str
    start: float
    end: float
    summary: WindowSummary
    fields: SegmentSummary | None = None   # feature and output sketches (drift)

    def to_record(self, source: str = "", seq: int = 0) -> dict[str, Any]:
        """The summaries-topic record (schemas/summary.v1.json)."""
        return {"type": "window_summary", "schema_version": 1, "source": source, "seq": seq,
                "model": self.model, "version": self.version, "segment": self.segment,
                "window_start": self.start, "window_end": self.end, "summary": self.summary.to_dict(),
                "fields": self.fields.to_dict() if self.fields is not None else None}


@dataclass
class Outputs:
    deadletters: list[tuple[bytes, dict]] = field(default_factory=list)  # (key, record)
    closed: list[ClosedWindow] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)  # event time -> processed, seconds
    messages: list[Emit] = field(default_factory=list)  # other stage outputs: (topic, key, record[, partition])
    alert_events: list = field(default_factory=list)    # alerts.state.AlertEvent, for the sink dispatcher

    def __bool__(self) -> bool:
        return bool(self.deadletters or self.closed or self.messages or self.alert_events)


def message_deadletter(topic: str, partition: int, offset: int, reason: str, error: str,
                       raw: bytes | None, now: float | None = None, index: int | None = None,
                       event: dict[str, Any] | None = None) -> tuple[bytes, dict]:
    """The dead-letter (key, record) of a whole message, or of event ``index`` of it (then
    ``event`` is that event and the original bytes are left out), for any stage
    (schemas/deadletter.v1.json)."""
    whole = index is None
    key = f"{topic}:{partition}:{offset}:{'-' if whole else index}".encode()
    return key, {"reason": reason, "error": error,
                 "source": {"topic": topic, "partition": partition, "offset": offset, "index": index},
                 "original_b64": base64.b64encode(raw).decode() if raw is not None and whole else None,
                 "event": None if whole else event, "rejected_at": time.time() if now is None else now}


class PartitionProcessor:
    """State and processing of one input topic partition (pure: no Kafka, no asyncio)."""

    def __init__(self, config: Config, topic: str, partition: int, kind: str):
        self.config = config
        self.topic = topic
        self.partition = partition
        self.kind = kind
        self.decoder = Decoder(config.models, config.ingest.max_message_bytes)
        self.window_length = config.window.length
        self.lateness = config.window.allowed_lateness
        self.idle_after = config.window.idle_close or self.window_length + self.lateness
        self.dedupe = EventIdDeduper(config.ingest.dedupe_horizon)
        self.folders = {
            name: SegmentFolder({k: s.top_k for k, s in m.segments.items()},
                                {k: s.values for k, s in m.segments.items()})
            for name, m in config.models.items()}
        self.features = {name: list(m.features) for name, m in config.models.items()}
        self.source = f"{topic}:{partition}"
        self.router = JoinRouter(config.topics.joins, config.broker.partitions, self.source)
        self.sketch_specs = {name: sketch_spec(m) for name, m in config.models.items()}
        self.sketches: dict[SketchKey, FieldSketches] = {}
        self.samplers: dict[SketchKey, WindowSampler] = {}
        # rows waiting for their sketches: one update per few thousand rows, not per message,
        # because a KLL update has a fixed cost that dominates small per-segment batches
        self._sketch_buffers: dict[SketchKey, SketchBuffer] = {}
        self.sample_rates: dict[Key, float] = {}   # reservoir inclusion probability, last closed window
        self.ready: list[Emit] = []                # messages produced outside a message's own steps
        # accepted single events waiting for their downstream steps (sketches, samples,
        # invariants, join fan-out), run on PENDING_ROWS of them at once: per-event calls of
        # those steps cost more than the rest of the single-event path
        self._pending: list[tuple[dict[str, Any], WindowKey, int]] = []
        specs = parse_invariants_section(config.invariants, config.models) if config.invariants else []
        self.invariants = InvariantEvaluator(specs, window_seconds=config.window.length,
                                             allowed_lateness=config.window.allowed_lateness,
                                             partitioning="version") \
            if kind in ("prediction", "outcome") and specs else None
        self.versions: dict[str, dict[str, None]] = {name: {} for name in config.models}
        self.next_offset = 0
        self.watermark = -math.inf
        self.counters: dict[str, int] = {"messages": 0, "events": 0, "valid": 0, "duplicate": 0,
                                         "late": 0, "windows_closed": 0}
        self.rejected: dict[str, int] = {}
        self.totals: dict[Key, int] = {}
        self.windows: dict[WindowKey, WindowSummary] = {}
        self._earliest_start = math.inf  # start of the oldest open window: cheap "anything to close?"
        self.last_closed: dict[Key, ClosedWindow] = {}
        self.last_event_at: float | None = None   # processing time, for idle window closing

    # -- processing ------------------------------------------------------------------------------
    def process(self, raw: bytes | None, offset: int, now: float | None = None,
                key: bytes | None = None) -> Outputs:
        """Apply one message. Messages below ``next_offset`` were applied before the last
        snapshot: they only re-enter the dedupe horizon, so counts are never doubled."""
        out = self._process(raw, offset, now)
        if self.ready:  # earlier rows than this message's own outputs: first
            out.messages[:0] = self.ready
            self.ready = []
        return out

    def _process(self, raw: bytes | None, offset: int, now: float | None) -> Outputs:
        out = Outputs()
        decoded = self.decoder.decode(raw, self.kind)
        if offset < self.next_offset:
            ids = (decoded.single["event_id"],) if decoded.single else decoded.columns.get("event_id", ())
            for event_id in ids:
                self.dedupe.seen(event_id, offset)
            return out
        now = time.time() if now is None else now
        self.next_offset = offset + 1
        self.last_event_at = now
        self.counters["messages"] += 1
        self.counters["events"] += decoded.count + len(decoded.rejections)
        for rejection in decoded.rejections:
            self._reject(out, rejection, raw, offset)
        if not decoded.count:
            return out
        if decoded.single is not None:
            self._process_one(out, decoded.single, raw, offset, now)
            return out
        if self._pending:
            self._flush_pending()
        columns = decoded.columns
        keep: list[int] = []
        for i, event_id in enumerate(columns["event_id"]):
            if self.dedupe.seen(event_id, offset):
                self.counters["duplicate"] += 1
                if self.config.ingest.deadletter_duplicates:
                    self._reject(out, Rejection(DUPLICATE, f"event_id {event_id!r} was already processed",
                                                i if decoded.envelope else None, row_of(columns, i)),
                                 raw, offset, count=False)
            else:
                keep.append(i)
        self.counters["valid"] += len(keep)
        timestamps = columns["timestamp"]
        out.delays = [now - timestamps[i] for i in keep]
        if self.kind == "prediction":
            self._summarise(out, decoded.envelope, columns, keep, raw, offset)
        elif keep and self.kind == "feedback":
            out.messages.extend(self.router.feedback(columns, keep, offset))
        elif keep:
            out.messages.extend(self.router.outcomes(columns, keep, offset))
            if self.invariants is not None:
                self.invariants.update_columns(take(columns, keep), "outcome")
                self._close_invariants(out.messages, max(timestamps[i] for i in keep))
        return out

    def _process_one(self, out: Outputs, event: dict[str, Any], raw: bytes, offset: int,
                     now: float) -> None:
        """A single-event message: the batch path's steps on the event dict itself."""
        if self.dedupe.seen(event["event_id"], offset):
            self.counters["duplicate"] += 1
            if self.config.ingest.deadletter_duplicates:
                self._reject(out, Rejection(DUPLICATE, f"event_id {event['event_id']!r} was already "
                                                       "processed"), raw, offset, count=False)
            return
        self.counters["valid"] += 1
        ts = event["timestamp"]
        out.delays = [now - ts]
        start = math.floor(ts / self.window_length) * self.window_length
        if self._late(out, ts, start, self.watermark, None, event, raw, offset):
            return
        if ts > self.watermark:
            self.watermark = ts
        model = event["model"]
        key = (model, self._version(model, event["version"]), self.folders[model].label(event.get("segment")),
               start)
        self._window(key).add_event(event, self.features[model])
        self.totals[key[:3]] = self.totals.get(key[:3], 0) + 1
        self._pending.append((event, key, offset))
        if len(self._pending) >= PENDING_ROWS:
            self._flush_pending()
        out.closed.extend(self.close_windows())

    def _flush_pending(self) -> None:
        """Run the downstream steps of the waiting single events, as one batch, into ``ready``."""
        pending, self._pending = self._pending, []
        columns = rows_to_columns("prediction", [event for event, _, _ in pending])
        groups: dict[WindowKey, list[int]] = {}
        for i, (_, key, _) in enumerate(pending):
            group = groups.get(key)
            if group is None:
                groups[key] = [i]
            else:
                group.append(i)
        self._downstream(self.ready, columns, groups, [offset for _, _, offset in pending])

    def _late(self, out: Outputs, ts: float, start: float, watermark: float, index: int | None,
              event: dict[str, Any], raw: bytes, offset: int) -> bool:
        """Count and dead-letter an event whose window has closed; True if it was late."""
        if start + self.window_length + self.lateness > watermark:
            return False
        self.counters["late"] += 1
        self._reject(out, Rejection(
            LATE, f"event time {ts:.3f} is in window [{start:.0f}, {start + self.window_length:.0f}) which "
                  f"closed at watermark {watermark:.3f} (allowed lateness {self.lateness:g}s)",
            index, event if index is not None else None), raw, offset, count=False)
        return True

    def _window(self, key: WindowKey) -> WindowSummary:
        summary = self.windows.get(key)
        if summary is None:
            summary = self.windows[key] = WindowSummary()
            self._earliest_start = min(self._earliest_start, key[3])
        return summary

    def _summarise(self, out: Outputs, envelope: bool, columns: dict[str, Any], rows: list[int],
                   raw: bytes, offset: int) -> None:
        length = self.window_length
        timestamps, models, versions = columns["timestamp"], columns["model"], columns["version"]
        watermark = self.watermark
        by_model: dict[str, list[int]] = {}
        for i in rows:
            ts = timestamps[i]
            start = math.floor(ts / length) * length
            if start + length + self.lateness <= watermark and self._late(
                    out, ts, start, watermark, i if envelope else None, row_of(columns, i), raw, offset):
                continue
            if ts > watermark:
                watermark = ts
            model = models[i]
            group = by_model.get(model)
            if group is None:
                by_model[model] = [i]
            else:
                group.append(i)
        groups: dict[WindowKey, list[int]] = {}
        for model, model_rows in by_model.items():
            labels = self.folders[model].labels(columns["segment"], model_rows)
            for i, segment in zip(model_rows, labels):
                key = (model, self._version(model, versions[i]), segment,
                       math.floor(timestamps[i] / length) * length)
                group = groups.get(key)
                if group is None:
                    groups[key] = [i]
                else:
                    group.append(i)
        for key, group in groups.items():
            self._window(key).add(group, columns, self.features[key[0]])
            total_key = key[:3]
            self.totals[total_key] = self.totals.get(total_key, 0) + len(group)
        self.watermark = watermark
        if groups:
            self._downstream(out.messages, columns, groups, offset)
        out.closed.extend(self.close_windows())

    def _downstream(self, messages: list[Emit], columns: dict[str, Any], groups: dict[WindowKey, list[int]],
                    offset: int | list[int]) -> None:
        """What accepted predictions feed besides their window: field sketches (drift),
        event-level invariants, and the join stage (re-keyed by prediction_id / unit_id).
        ``offset`` is the input offset of every row, or one per row of ``columns``."""
        rows: list[int] = []
        versions: list[str] = []
        segments: list[str] = []
        by_sketch: dict[SketchKey, tuple[list[int], list[str]]] = {}
        for (model, version, segment, start), group in groups.items():
            rows.extend(group)
            versions.extend([version] * len(group))
            segments.extend([segment] * len(group))
            sk = by_sketch.get((model, version, start))
            if sk is None:
                by_sketch[(model, version, start)] = (list(group), [segment] * len(group))
            else:
                sk[0].extend(group)
                sk[1].extend([segment] * len(group))
        for key, (group, labels) in by_sketch.items():
            buffer = self._sketch_buffers.get(key)
            if buffer is None:
                buffer = self._sketch_buffers[key] = SketchBuffer()
            if buffer.add(columns, group, labels) >= SKETCH_FLUSH_ROWS:
                self._flush_sketches(key)
            if self.config.sampling.per_window:
                sampler = self.samplers.get(key)
                if sampler is None:
                    sampling = self.config.sampling
                    sampler = self.samplers[key] = WindowSampler(
                        self.source, *key, per_window=sampling.per_window,
                        min_per_segment=sampling.min_per_segment, interesting=sampling.interesting)
                sampler.offer(columns, group, labels)
        if self.invariants is not None:
            self.invariants.update_columns(take(columns, rows), "prediction", segments)
            self._close_invariants(messages, self.watermark)
        if len(groups) > 1:  # rows in input order: the join skips rows at or below the last offset it saw
            rows, versions, segments = map(list, zip(*sorted(zip(rows, versions, segments))))
        messages.extend(self.router.predictions(columns, rows, versions, segments, offset))

    def _flush_sketches(self, key: SketchKey | None = None) -> None:
        for k in [key] if key is not None else list(self._sketch_buffers):
            buffer = self._sketch_buffers.pop(k, None)
            if buffer is None or not buffer.labels:
                continue
            sketches = self.sketches.get(k)
            if sketches is None:
                sketches = self.sketches[k] = FieldSketches(k[0], k[1], k[2], spec=self.sketch_specs[k[0]])
            sketches.update_columns(buffer.columns, buffer.labels)

    def _close_invariants(self, messages: list[Emit], watermark: float) -> None:
        if not math.isfinite(watermark):  # nothing seen yet, or a caller closing everything
            return
        for result in self.invariants.close_windows(watermark):
            messages.append((self.config.topics.summaries, result.model.encode(),
                                 {"type": "invariant_window", "source": self.source, "seq": self.next_offset,
                                  **result.to_dict()}))

    def _version(self, model: str, version: str) -> str:
        seen = self.versions[model]
        if version in seen:
            return version
        if len(seen) < MAX_VERSIONS:
            seen[version] = None
            return version
        return OTHER

    def _reject(self, out: Outputs, rejection: Rejection, raw: bytes | None, offset: int,
                count: bool = True) -> None:
        if count:
            self.rejected[rejection.reason] = self.rejected.get(rejection.reason, 0) + 1
        out.deadletters.append(message_deadletter(self.topic, self.partition, offset, rejection.reason,
                                                  rejection.error, raw, index=rejection.index,
                                                  event=rejection.event))

    # -- windows -------------------------------------------------------------------------------------
    def close_windows(self) -> list[ClosedWindow]:
        """Close every open window whose end plus allowed lateness the watermark has passed."""
        closed: list[ClosedWindow] = []
        limit = self.watermark - self.lateness
        if not self.windows or limit < self._earliest_start + self.window_length:
            return closed
        if self._pending:  # their rows belong in the sketches and samples of what closes
            self._flush_pending()
        for key in {(m, v, start) for m, v, _, start in self.windows if start + self.window_length <= limit}:
            self._flush_sketches(key)
        for key in [k for k in self.windows if k[3] + self.window_length <= limit]:
            model, version, segment, start = key
            sketches = self.sketches.get((model, version, start))
            window = ClosedWindow(model, version, segment, start, start + self.window_length,
                                  self.windows.pop(key),
                                  sketches.segments.get(segment) if sketches is not None else None)
            previous = self.last_closed.get(key[:3])
            if previous is None or previous.start <= start:
                self.last_closed[key[:3]] = window
            closed.append(window)
        self.counters["windows_closed"] += len(closed)
        self._earliest_start = min((k[3] for k in self.windows), default=math.inf)
        if closed:
            open_starts = {k[3] for k in self.windows}
            for key in [k for k in self.sketches if k[2] not in open_starts]:
                del self.sketches[key]
            for key in [k for k in self.samplers if k[2] not in open_starts]:
                sampler = self.samplers.pop(key)
                for segment, rate in sampler.rates().items():
                    self.sample_rates[(key[0], key[1], segment)] = rate
                topic = self.config.topics.samples
                self.ready.extend((topic, key[0].encode(), record)
                                  for record in sampler.records(key[2] + self.window_length))
        return sorted(closed, key=lambda w: (w.start, w.model, w.version, w.segment))

    def tick(self, now: float) -> Outputs:
        """Timers: run the waiting single events' downstream steps, close the windows of a
        partition that has gone quiet, send the buffered join rows."""
        if self._pending:
            self._flush_pending()
        out = Outputs(closed=self.advance_idle(now, self.idle_after))
        out.messages, self.ready = self.ready, []
        if out.closed and self.invariants is not None:
            self._close_invariants(out.messages, self.watermark)
        out.messages.extend(self.router.flush())
        return out

    def advance_idle(self, now: float, idle_after: float) -> list[ClosedWindow]:
        """Close windows of a partition that has been silent for ``idle_after`` seconds of
        processing time, as if event time had moved on by the silence."""
        if self.last_event_at is None or not self.windows or now - self.last_event_at < idle_after:
            return []
        self.watermark += now - self.last_event_at
        self.last_event_at = now
        return self.close_windows()

    # -- snapshots ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._flush_sketches()
        return {
            "format": "prodlens.partition_state.v1", "topic": self.topic, "partition": self.partition,
            "kind": self.kind, "next_offset": self.next_offset,
            "dedupe_from": self.dedupe.oldest_offset,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "counters": self.counters, "rejected": self.rejected,
            "totals": [[*k, v] for k, v in self.totals.items()],
            "versions": {m: list(v) for m, v in self.versions.items()},
            "segments": {m: f.to_dict() for m, f in self.folders.items()},
            "windows": [[*k, s.to_dict()] for k, s in self.windows.items()],
            "sketches": [[*k, s.to_dict()] for k, s in self.sketches.items()],
            "samplers": [[*k, s.to_dict()] for k, s in self.samplers.items()],
            "sample_rates": [[*k, v] for k, v in self.sample_rates.items()],
            "join_buffers": self.router.to_dict(),
            "pending": [[event, list(key), offset] for event, key, offset in self._pending],
            "invariants": self.invariants.to_dict() if self.invariants is not None else None,
            "last_closed": [[w.model, w.version, w.segment, w.start, w.summary.to_dict()]
                            for w in self.last_closed.values()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a snapshot taken by :meth:`to_dict` (replay from ``replay_from`` afterwards)."""
        self.next_offset = state["next_offset"]
        self.watermark = state["watermark"] if state["watermark"] is not None else -math.inf
        self.counters.update(state["counters"])
        self.rejected = dict(state["rejected"])
        self.totals = {(m, v, s): n for m, v, s, n in state["totals"]}
        for model, versions in state["versions"].items():
            if model in self.versions:
                self.versions[model] = dict.fromkeys(versions)
        for model, admitted in state["segments"].items():
            if model in self.folders:
                self.folders[model].restore(admitted)
        self.windows = {(m, v, s, start): WindowSummary.from_dict(d) for m, v, s, start, d in state["windows"]}
        self._earliest_start = min((k[3] for k in self.windows), default=math.inf)
        self.sketches = {(m, v, start): FieldSketches.from_dict(d) for m, v, start, d in state.get("sketches", ())}
        self.samplers = {(m, v, start): WindowSampler.from_dict(d) for m, v, start, d in state.get("samplers", ())}
        self.sample_rates = {(m, v, seg): r for m, v, seg, r in state.get("sample_rates", ())}
        self.router.restore(state.get("join_buffers", []))
        self._pending = [(event, tuple(key), offset) for event, key, offset in state.get("pending", ())]
        if self.invariants is not None and state.get("invariants"):
            self.invariants = InvariantEvaluator.from_dict(
                state["invariants"], parse_invariants_section(self.config.invariants, self.config.models),
                partitioning="version")
        self.last_closed = {
            (m, v, s): ClosedWindow(m, v, s, start, start + self.window_length, WindowSummary.from_dict(d))
            for m, v, s, start, d in state["last_closed"]}
        self._dedupe_from = state.get("dedupe_from")

    @property
    def replay_from(self) -> int:
        """Where to resume reading after :meth:`restore`: far enough back to rebuild the
        dedupe horizon; messages below ``next_offset`` are not applied twice."""
        dedupe_from = getattr(self, "_dedupe_from", None)
        return min(dedupe_from, self.next_offset) if dedupe_from is not None else self.next_offset



def sketch_spec(model: ModelConfig) -> SummarySpec:
    """The fields summarised per window for drift: the configured features (booleans as
    categories) and the model output (score or value, and the predicted label)."""
    fields = {f"features.{name}": "numeric" if kind == "numeric" else "categorical"
              for name, kind in model.features.items()}
    if model.output == "regression":
        fields["output.value"] = "numeric"
    else:
        fields["output.label"] = "categorical"
        if model.output == "binary":
            fields["output.score"] = "numeric"
    return SummarySpec(fields=fields, infer=False)


SKETCH_FLUSH_ROWS = 4096
PENDING_ROWS = 512


class SketchBuffer:
    """Features and outputs of accepted rows of one (model, version, window), as columns."""

    __slots__ = ("columns", "labels")

    def __init__(self) -> None:
        self.columns: dict[str, dict[str, list]] = {"features": {}, "output": {}}
        self.labels: list[str] = []

    def add(self, columns: dict[str, Any], rows: list[int], labels: list[str]) -> int:
        n = len(self.labels)
        for part in ("features", "output"):
            mine = self.columns[part]
            for name, col in columns[part].items():
                if name == "probabilities":
                    continue
                values = mine.get(name)
                if values is None:
                    values = mine[name] = [None] * n
                values.extend([col[i] for i in rows])
            for name, values in mine.items():  # absent from this message: missing
                if len(values) < n + len(rows):
                    values.extend([None] * (n + len(rows) - len(values)))
        self.labels.extend(labels)
        return len(self.labels)
