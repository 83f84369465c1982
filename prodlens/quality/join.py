"""The pure state of the prediction ⨝ feedback join (by prediction_id).

Why co-partitioned by prediction_id: feedback carries only the prediction_id (the
model and version come from the prediction), and it may arrive days later on another
topic. If predictions (projected to what scoring needs) and feedback are both keyed
by prediction_id onto topics with the same partition count and partitioner, a
prediction and all its feedback land on the same partition number, so exactly one
worker — the owner of that partition — holds the prediction and sees its feedback.
The join is then a local dictionary lookup: no cross-worker queries, no global
state, and the state for a partition is checkpointed with that partition's offsets
and moves with it on a rebalance. Keep one :class:`FeedbackJoin` per partition.

Pieces:

* :class:`PendingPredictions` — predictions waiting for feedback, keyed by
  prediction_id, holding only what scoring needs (model, version, segment key,
  prediction time, output label / score / class probabilities / value, and which
  feedback kinds it has had). The window start is derived from the prediction time.
  Entries expire ``horizon`` seconds of event time after their prediction (at
  bucket granularity: an entry is dropped once the watermark passes its bucket's end
  + horizon, i.e. it lives between ``horizon`` and ``horizon + bucket_seconds``),
  oldest bucket first; ``max_entries`` is a hard cap, beyond which the oldest are
  evicted and counted. Expired and evicted ids go into a :class:`RotatingBloom`
  so late feedback for them is told apart from feedback for ids never seen (at most
  ~2% of unknown ids are misreported as expired with the default filter).
  Predictions sharing a prediction_id (a primary and its shadow) are chained under
  one key; a chain expires with its first prediction.
* :class:`EarlyFeedback` — feedback whose prediction has not arrived yet, held until
  the *prediction* watermark passes its timestamp + ``grace`` (the prediction
  precedes its feedback in event time, so by then it is not coming), then reported
  as an orphan (``grace_expired``). Matched feedback is kept as long in a second
  buffer (``recent``), so a prediction of another version with the same id that
  arrives after its feedback (a shadow scored late) still joins it.
* :class:`OrphanLog` — orphan counts by reason (``unknown_prediction``: not pending,
  not remembered, and its grace already over on arrival; ``expired_prediction``;
  ``grace_expired``; ``buffer_full``) and a uniform sample of orphans (bottom-k by a
  stable hash, so it is mergeable and needs no RNG state).
* :class:`FeedbackJoin` — the three together; it consumes decoded columns (see
  :mod:`prodlens.contract`) and returns joined rows as :class:`Matches`.

Memory is bounded by ``max_entries`` waiting predictions (see
:meth:`PendingPredictions.bytes_per_entry`; about 250 bytes each for a binary
classifier with label and score on CPython 3.11, measured), ``max_early`` held feedback
events (twice: early and recent) and the two Bloom generations.

Watermarks: ``advance()`` is called with event time; by default the join uses the
largest timestamp it has seen (predictions for the early buffer; predictions and
feedback for the pending horizon).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import sys
import heapq
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

from .bloom import RotatingBloom
from .classification import label_key

KIND_BITS = {"label": 1, "correction": 2, "complaint": 4, "rating": 8, "implicit": 16}
TRUTH_BIT = 32
TRUTH_KINDS = ("label", "correction")
ORPHAN_REASONS = ("unknown_prediction", "expired_prediction", "grace_expired", "buffer_full")


def segment_key(segment: Mapping[str, Any] | None) -> str:
    """Unbounded default segment label: ``"country=US,device=ios"`` (sorted by attribute),
    ``"__all__"`` for none. The pipeline passes bounded labels instead (``segment_label``
    column, e.g. from :class:`prodlens.segments.SegmentFolder`)."""
    if not segment:
        return "__all__"
    parts = []
    for k in sorted(segment):
        v = segment[k]
        parts.append(f"{k}={'' if v is None else label_key(v)}")
    return ",".join(parts)


def segment_labels(columns: Mapping[str, Any], key: Callable[[Mapping | None], str] = segment_key) -> list[str]:
    """The ``segment_label`` column when the caller computed it, else labels from ``segment``."""
    if columns.get("segment_label") is not None:
        return list(columns["segment_label"])
    segments = columns.get("segment")
    if segments is None:
        segments = [None] * len(columns["timestamp"])
    return [key(s) for s in segments]


def window_start(t: float, window_seconds: float) -> float:
    """Start of the tumbling event-time window holding t."""
    return math.floor(t / window_seconds) * window_seconds


class Pending:
    """One waiting prediction. ``key`` is a shared (model, version, segment) tuple."""

    __slots__ = ("key", "time", "label", "score", "value", "classes", "probs", "seen", "next")

    def __init__(self, key: tuple, time: float, label: str | None, score: float | None, value: float | None,
                 classes: tuple | None, probs: tuple | None, seen: int = 0):
        self.key, self.time, self.label, self.score, self.value = key, time, label, score, value
        self.classes, self.probs, self.seen = classes, probs, seen
        self.next: Pending | None = None

    @property
    def probabilities(self) -> dict | None:
        return None if self.classes is None else dict(zip(self.classes, self.probs))

    def chain(self) -> Iterable["Pending"]:
        e: Pending | None = self
        while e is not None:
            yield e
            e = e.next


class PendingPredictions:
    """Predictions waiting for feedback, bounded by an event-time horizon and a hard cap."""

    def __init__(self, horizon_seconds: float, max_entries: int = 1_000_000, bucket_seconds: float | None = None,
                 expired_capacity: int = 100_000):
        if horizon_seconds <= 0:
            raise ValueError(f"horizon_seconds must be > 0, got {horizon_seconds}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.horizon = float(horizon_seconds)
        self.max_entries = max_entries
        self.bucket_seconds = float(bucket_seconds or max(self.horizon / 64, 1.0))
        self.watermark = -math.inf
        self.expired_ids = RotatingBloom(expired_capacity)
        self.stats = {"added": 0, "duplicate": 0, "expired": 0, "evicted": 0, "too_old": 0}
        self._entries: dict[str, Pending] = {}
        self._buckets: dict[int, deque] = {}
        self._keys: dict[tuple, tuple] = {}
        self._class_sets: dict[tuple, tuple] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: str) -> bool:
        return pid in self._entries

    def get(self, pid: str) -> Pending | None:
        return self._entries.get(pid)

    def _bucket(self, t: float) -> int:
        return math.floor(t / self.bucket_seconds)

    def make_entry(self, time: float, model: str, version: str, segment: str, output: Mapping | None) -> Pending:
        """A :class:`Pending` from a prediction's output object (only scoring fields kept)."""
        key = (model, version, segment)
        key = self._keys.setdefault(key, key)
        out = output or {}
        classes = probs = None
        p = out.get("probabilities")
        if p:
            ck = tuple(label_key(c) for c in p)
            classes = self._class_sets.setdefault(ck, ck)
            probs = tuple(float(v) for v in p.values())
        score = out.get("score")
        value = out.get("value")
        label = label_key(out.get("label"))
        return Pending(key, float(time), label, None if score is None else float(score),
                       None if value is None else float(value), classes, probs)

    def add(self, pid: str, entry: Pending) -> Pending | None:
        """Store ``entry`` under ``pid``; returns the stored entry, or None for a duplicate
        (same pid, model and version). A prediction older than the horizon is not stored
        (counted ``too_old``, remembered as expired) and is returned so early feedback
        waiting for it can still be joined."""
        head = self._entries.get(pid)
        if head is not None:
            for e in head.chain():
                if e.key[:2] == entry.key[:2]:
                    self.stats["duplicate"] += 1
                    return None
                last = e
            last.next = entry
            self.stats["added"] += 1
            return entry
        if entry.time < self.watermark - self.horizon:
            self.stats["too_old"] += 1
            self.expired_ids.add(pid)
            return entry
        self._entries[pid] = entry
        self._buckets.setdefault(self._bucket(entry.time), deque()).append(pid)
        self.stats["added"] += 1
        if len(self._entries) > self.max_entries:
            self._evict(len(self._entries) - self.max_entries)
        return entry

    def _evict(self, count: int) -> None:
        gone = []
        while count > 0 and self._buckets:
            b = min(self._buckets)
            dq = self._buckets[b]
            while dq and count > 0:
                pid = dq.popleft()
                if self._entries.pop(pid, None) is not None:
                    gone.append(pid)
                    count -= 1
            if not dq:
                del self._buckets[b]
        self.stats["evicted"] += len(gone)
        self.expired_ids.add_many(gone)

    def advance(self, watermark: float) -> int:
        """Move event time forward; drop entries past the horizon. Returns how many expired."""
        self.watermark = max(self.watermark, float(watermark))
        cutoff = self.watermark - self.horizon
        gone = []
        while self._buckets:
            b = min(self._buckets)
            if (b + 1) * self.bucket_seconds > cutoff:
                break
            for pid in self._buckets.pop(b):
                if self._entries.pop(pid, None) is not None:
                    gone.append(pid)
        self.stats["expired"] += len(gone)
        self.expired_ids.add_many(gone)
        return len(gone)

    def bytes_per_entry(self, sample: int = 256) -> float:
        """Estimated bytes per waiting prediction: the entry object, its id string, unshared
        floats and probability tuple, its dict slot and bucket pointer (shared key tuples and
        label strings are amortised away). Measured on up to ``sample`` entries."""
        if not self._entries:
            return math.nan
        total, count = 0, 0
        for pid, head in self._entries.items():
            total += sys.getsizeof(pid) + 8  # id string + bucket deque pointer
            for e in head.chain():
                total += sys.getsizeof(e) + sys.getsizeof(e.time)
                total += sum(sys.getsizeof(x) for x in (e.score, e.value) if x is not None)
                if e.probs is not None:
                    total += sys.getsizeof(e.probs) + sum(sys.getsizeof(x) for x in e.probs)
            count += 1
            if count >= sample:
                break
        return total / count + sys.getsizeof(self._entries) / len(self._entries)

    def estimated_bytes(self) -> float:
        n = len(self._entries)
        return (self.bytes_per_entry() * n if n else 0.0) + self.expired_ids.nbytes

    # -- state --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Columnar, JSON-ready state (one row per prediction, chains in order)."""
        keys: dict[tuple, int] = {}
        csets: dict[tuple, int] = {}
        cols: dict[str, list] = {n: [] for n in ("id", "key", "time", "label", "score", "value",
                                                 "classes", "probs", "seen")}
        for pid, head in self._entries.items():
            for e in head.chain():
                cols["id"].append(pid)
                cols["key"].append(keys.setdefault(e.key, len(keys)))
                cols["time"].append(e.time)
                cols["label"].append(e.label)
                cols["score"].append(e.score)
                cols["value"].append(e.value)
                cols["classes"].append(None if e.classes is None else csets.setdefault(e.classes, len(csets)))
                cols["probs"].append(None if e.probs is None else list(e.probs))
                cols["seen"].append(e.seen)
        return {"horizon": self.horizon, "max_entries": self.max_entries, "bucket_seconds": self.bucket_seconds,
                "watermark": None if self.watermark == -math.inf else self.watermark,
                "stats": dict(self.stats), "keys": [list(k) for k in keys], "class_sets": [list(c) for c in csets],
                "entries": cols, "expired_ids": self.expired_ids.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "PendingPredictions":
        p = cls(d["horizon"], d["max_entries"], d["bucket_seconds"], d["expired_ids"]["capacity"])
        p.expired_ids = RotatingBloom.from_dict(d["expired_ids"])
        p.watermark = -math.inf if d["watermark"] is None else float(d["watermark"])
        p.stats = {k: int(v) for k, v in d["stats"].items()}
        keys = [p._keys.setdefault(tuple(k), tuple(k)) for k in d["keys"]]
        csets = [p._class_sets.setdefault(tuple(c), tuple(c)) for c in d["class_sets"]]
        c = d["entries"]
        for i, pid in enumerate(c["id"]):
            e = Pending(keys[c["key"][i]], c["time"][i], c["label"][i], c["score"][i], c["value"][i],
                        None if c["classes"][i] is None else csets[c["classes"][i]],
                        None if c["probs"][i] is None else tuple(c["probs"][i]), c["seen"][i])
            head = p._entries.get(pid)
            if head is None:
                p._entries[pid] = e
                p._buckets.setdefault(p._bucket(e.time), deque()).append(pid)
            else:
                *_, last = head.chain()
                last.next = e
        return p


class EarlyFeedback:
    """Feedback waiting for its prediction, released or orphaned by event time.

    Records are tuples ``(time, kind, value, size, corrected)``.
    """

    def __init__(self, grace_seconds: float, max_entries: int = 100_000):
        if grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, got {grace_seconds}")
        self.grace = float(grace_seconds)
        self.max_entries = max_entries
        self.size = 0
        self._items: dict[str, list[tuple]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    def __len__(self) -> int:
        return self.size

    def add(self, pid: str, record: tuple) -> bool:
        """Hold ``record``; False when the buffer is full (the caller counts an orphan)."""
        if self.size >= self.max_entries:
            return False
        self._items.setdefault(pid, []).append(record)
        self.size += 1
        heapq.heappush(self._heap, (record[0] + self.grace, self._seq, pid))
        self._seq += 1
        return True

    def get(self, pid: str) -> list[tuple] | None:
        return self._items.get(pid)

    def pop(self, pid: str) -> list[tuple] | None:
        records = self._items.pop(pid, None)
        if records:
            self.size -= len(records)
        return records

    def expire(self, watermark: float) -> list[tuple[str, tuple]]:
        """Remove and return ``(pid, record)`` for every record with time + grace <= watermark."""
        out = []
        while self._heap and self._heap[0][0] <= watermark:
            _, _, pid = heapq.heappop(self._heap)
            records = self._items.get(pid)
            if not records:
                continue
            keep = [r for r in records if r[0] + self.grace > watermark]
            out.extend((pid, r) for r in records if r[0] + self.grace <= watermark)
            self.size -= len(records) - len(keep)
            if keep:
                self._items[pid] = keep
            else:
                del self._items[pid]
        return out

    def to_dict(self) -> dict:
        return {"grace": self.grace, "max_entries": self.max_entries,
                "items": {pid: [list(r) for r in recs] for pid, recs in self._items.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "EarlyFeedback":
        e = cls(d["grace"], d["max_entries"])
        for pid, recs in d["items"].items():
            for r in recs:
                e.add(pid, tuple(r))
        return e


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class OrphanLog:
    """Orphan counts by reason and a mergeable uniform sample (the ``sample_size`` orphans of
    smallest stable hash: a uniform sample without replacement when ids hash uniformly)."""

    def __init__(self, sample_size: int = 20):
        self.sample_size = sample_size
        self.counts = {r: 0 for r in ORPHAN_REASONS}
        self._sample: list[tuple[int, dict]] = []

    def record(self, reason: str, pid: str, time: float, kind: str, value: Any = None) -> None:
        if reason not in self.counts:
            raise ValueError(f"reason: unknown orphan reason {reason!r}; expected one of {ORPHAN_REASONS}")
        self.counts[reason] += 1
        item = {"reason": reason, "prediction_id": pid, "timestamp": time, "kind": kind,
                "value": value if value is None or isinstance(value, (bool, int, float)) else str(value)[:200]}
        self._offer(_stable_hash(f"{reason}|{pid}|{kind}|{time!r}"), item)

    def _offer(self, h: int, item: dict) -> None:
        if len(self._sample) >= self.sample_size and h >= self._sample[-1][0]:
            return
        if any(h == x for x, _ in self._sample):
            return
        bisect.insort(self._sample, (h, item), key=lambda x: x[0])
        del self._sample[self.sample_size:]

    @property
    def sample(self) -> list[dict]:
        return [item for _, item in self._sample]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "OrphanLog") -> "OrphanLog":
        for r in ORPHAN_REASONS:
            self.counts[r] += other.counts[r]
        for h, item in other._sample:
            self._offer(h, item)
        return self

    def to_dict(self) -> dict:
        return {"sample_size": self.sample_size, "counts": dict(self.counts),
                "sample": [[str(h), item] for h, item in self._sample]}

    @classmethod
    def from_dict(cls, d: dict) -> "OrphanLog":
        o = cls(d["sample_size"])
        o.counts = {r: int(d["counts"][r]) for r in ORPHAN_REASONS}
        o._sample = [(int(h), item) for h, item in d["sample"]]
        return o


@dataclass
class Matches:
    """Joined (prediction, feedback) rows, one list per field."""

    prediction_id: list = field(default_factory=list)
    model: list = field(default_factory=list)
    version: list = field(default_factory=list)
    segment: list = field(default_factory=list)
    window_start: list = field(default_factory=list)
    prediction_time: list = field(default_factory=list)
    feedback_time: list = field(default_factory=list)
    delay: list = field(default_factory=list)
    kind: list = field(default_factory=list)
    value: list = field(default_factory=list)
    size: list = field(default_factory=list)
    corrected: list = field(default_factory=list)
    label: list = field(default_factory=list)
    score: list = field(default_factory=list)
    probabilities: list = field(default_factory=list)
    pred_value: list = field(default_factory=list)
    first_any: list = field(default_factory=list)
    first_of_kind: list = field(default_factory=list)
    first_truth: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prediction_id)

    def extend(self, other: "Matches") -> "Matches":
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))
        return self


class FeedbackJoin:
    """Prediction ⨝ feedback by prediction_id, for one partition (see the module docstring).

    >>> j = FeedbackJoin(horizon_seconds=86400, grace_seconds=60, window_seconds=300)
    >>> _ = j.add_predictions({"prediction_id": ["p1"], "timestamp": [1000.0], "model": ["m"],
    ...                        "version": ["v1"], "segment": [{"country": "US"}], "output": [{"label": "a"}]})
    >>> m = j.add_feedback({"prediction_id": ["p1"], "timestamp": [4600.0], "kind": ["label"], "value": ["b"]})
    >>> m.model, m.segment, m.window_start, m.delay, m.label, m.value
    (['m'], ['country=US'], [900.0], [3600.0], ['a'], ['b'])
    """

    def __init__(self, horizon_seconds: float, grace_seconds: float = 300.0, window_seconds: float = 300.0,
                 max_pending: int = 1_000_000, max_early: int = 100_000, orphan_sample: int = 20,
                 expired_capacity: int = 100_000, bucket_seconds: float | None = None,
                 segment_key: Callable[[Mapping | None], str] = segment_key):
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        self.window_seconds = float(window_seconds)
        self.segment_key = segment_key
        self.pending = PendingPredictions(horizon_seconds, max_pending, bucket_seconds, expired_capacity)
        self.early = EarlyFeedback(grace_seconds, max_early)
        # Matched feedback is also kept for the grace period, so a prediction of another version
        # with the same id (a shadow scored a little later) that arrives after it still joins it.
        self.recent = EarlyFeedback(grace_seconds, max_early)
        self.orphans = OrphanLog(orphan_sample)
        self.prediction_watermark = -math.inf
        self.feedback_watermark = -math.inf
        self.stats = {"feedback": 0, "matched": 0, "early_held": 0, "early_matched": 0, "late_version_matched": 0}

    # -- input --------------------------------------------------------------------------------
    def add_predictions(self, columns: Mapping[str, Sequence]) -> Matches:
        """Store decoded predictions (columns prediction_id, timestamp, model, version, output, and
        either ``segment_label`` — bounded labels computed by the caller — or ``segment``);
        returns matches for feedback that was waiting for them."""
        out = Matches()
        pids, times = columns["prediction_id"], columns["timestamp"]
        models, versions = columns["model"], columns["version"]
        labels = segment_labels(columns, self.segment_key)
        outputs = columns["output"]
        pending, early, recent = self.pending, self.early, self.recent
        for i, pid in enumerate(pids):
            entry = pending.make_entry(times[i], models[i], versions[i], labels[i], outputs[i])
            chained = recent.size and pid in pending
            stored = pending.add(pid, entry)
            if times[i] > self.prediction_watermark:
                self.prediction_watermark = float(times[i])
            if stored is None:
                continue
            if chained and (joined := recent.get(pid)):
                self._release(out, pid, stored, joined, "late_version_matched")
            if early.size and (waiting := early.pop(pid)):
                self._release(out, pid, stored, waiting, "early_matched")
                if recent.grace:
                    for rec in waiting:
                        recent.add(pid, rec)
        return out

    def _release(self, out: Matches, pid: str, entry: Pending, records: list[tuple], stat: str) -> None:
        """Join feedback that arrived before ``entry`` (held early, or matched by another version)."""
        self.stats[stat] += len(records)
        for rec in records:
            self._emit(out, pid, entry, rec)

    def add_feedback(self, columns: Mapping[str, Sequence]) -> Matches:
        """Join decoded feedback (columns prediction_id, timestamp, kind, value, size, corrected);
        unmatched feedback is held (early) or counted as an orphan."""
        out = Matches()
        pids, times, kinds = columns["prediction_id"], columns["timestamp"], columns["kind"]
        n = len(pids)
        none = [None] * n
        values, sizes, corrected = (none if columns.get(c) is None else columns[c]
                                    for c in ("value", "size", "corrected"))
        unmatched = []
        for i, pid in enumerate(pids):
            rec = (float(times[i]), kinds[i], values[i], sizes[i], corrected[i])
            if rec[1] not in KIND_BITS:
                raise ValueError(f"kind: unknown feedback kind {rec[1]!r}; expected one of {tuple(KIND_BITS)}")
            head = self.pending.get(pid)
            if head is not None:
                for e in head.chain():
                    self._emit(out, pid, e, rec)
                if self.recent.grace:
                    self.recent.add(pid, rec)
            else:
                unmatched.append((pid, rec))
            if rec[0] > self.feedback_watermark:
                self.feedback_watermark = rec[0]
        self.stats["feedback"] += n
        if unmatched:
            expired = self.pending.expired_ids.contains_many([pid for pid, _ in unmatched])
            for (pid, rec), was_expired in zip(unmatched, expired):
                if was_expired:
                    self.orphans.record("expired_prediction", pid, rec[0], rec[1], rec[2])
                elif rec[0] + self.early.grace <= self.prediction_watermark:
                    self.orphans.record("unknown_prediction", pid, rec[0], rec[1], rec[2])
                elif self.early.add(pid, rec):
                    self.stats["early_held"] += 1
                else:
                    self.orphans.record("buffer_full", pid, rec[0], rec[1], rec[2])
        return out

    def _emit(self, out: Matches, pid: str, e: Pending, rec: tuple) -> None:
        t, kind, value, size, corrected = rec
        bit = KIND_BITS[kind]
        truth = kind in TRUTH_KINDS and value is not None
        out.prediction_id.append(pid)
        model, version, segment = e.key
        out.model.append(model)
        out.version.append(version)
        out.segment.append(segment)
        out.window_start.append(window_start(e.time, self.window_seconds))
        out.prediction_time.append(e.time)
        out.feedback_time.append(t)
        out.delay.append(t - e.time)
        out.kind.append(kind)
        out.value.append(value)
        out.size.append(size)
        out.corrected.append(corrected)
        out.label.append(e.label)
        out.score.append(e.score)
        out.probabilities.append(e.probabilities)
        out.pred_value.append(e.value)
        out.first_any.append(e.seen == 0)
        out.first_of_kind.append(not e.seen & bit)
        out.first_truth.append(truth and not e.seen & TRUTH_BIT)
        e.seen |= bit | (TRUTH_BIT if truth else 0)
        self.stats["matched"] += 1

    # -- time ---------------------------------------------------------------------------------
    def advance(self, watermark: float | None = None) -> dict[str, int]:
        """Expire predictions past the horizon and early feedback past its grace.

        ``watermark`` defaults to the largest event time seen (for the pending horizon) and
        the largest prediction time seen (for the early buffer). Returns what expired.
        """
        wm = max(self.prediction_watermark, self.feedback_watermark) if watermark is None else watermark
        expired = self.pending.advance(wm) if math.isfinite(wm) else 0
        early_wm = self.prediction_watermark if watermark is None else watermark
        orphaned = self.early.expire(early_wm)
        self.recent.expire(early_wm)
        for pid, rec in orphaned:
            self.orphans.record("grace_expired", pid, rec[0], rec[1], rec[2])
        return {"expired_predictions": expired, "grace_expired": len(orphaned)}

    def to_dict(self) -> dict:
        return {"window_seconds": self.window_seconds, "pending": self.pending.to_dict(),
                "early": self.early.to_dict(), "recent": self.recent.to_dict(), "orphans": self.orphans.to_dict(),
                "prediction_watermark": None if self.prediction_watermark == -math.inf else self.prediction_watermark,
                "feedback_watermark": None if self.feedback_watermark == -math.inf else self.feedback_watermark,
                "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, d: dict, segment_key: Callable[[Mapping | None], str] = segment_key) -> "FeedbackJoin":
        j = cls(1.0, window_seconds=d["window_seconds"], segment_key=segment_key)
        j.pending = PendingPredictions.from_dict(d["pending"])
        j.early = EarlyFeedback.from_dict(d["early"])
        if "recent" in d:
            j.recent = EarlyFeedback.from_dict(d["recent"])
        j.orphans = OrphanLog.from_dict(d["orphans"])
        pw, fw = d["prediction_watermark"], d["feedback_watermark"]
        j.prediction_watermark = -math.inf if pw is None else float(pw)
        j.feedback_watermark = -math.inf if fw is None else float(fw)
        j.stats.update({k: int(v) for k, v in d["stats"].items()})
        return j
