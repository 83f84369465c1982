"""Shadow releases: compare a shadow model's answers with the primary's, request by request.

The primary and its shadow log predictions with the same ``prediction_id``.
:class:`ShadowMonitor` pairs them (either may arrive first) in a bounded buffer,
and feeds one :class:`ShadowStats` per key — the stream layer's ``(model, segment)``
key, see :func:`shadow_key` — with:

* classification: the disagreement rate (Wilson interval);
* regression: the difference ``shadow - primary`` (mean with t interval) and a
  DDSketch of ``|shadow - primary|`` (quantiles within 1 % relative error);
* latency: a DDSketch per side (updated on arrival, paired or not);
* once labels arrive (``add_label``): each side's accuracy and error rate
  (classification; Wilson intervals, paired difference with a Wald interval on the
  discordant pairs and McNemar's exact p-value) or mean absolute error and RMSE
  (regression; paired difference of absolute errors with a t interval).

Buffers: an unpaired prediction waits ``pair_horizon_s`` for its partner, a pair
waits ``label_horizon_s`` for its label (``None``: labels not tracked); expired and
evicted (capacity) entries are counted, never silently lost. Memory: at most
``max_pending`` unpaired plus ``max_awaiting_label`` paired entries, plus one
fixed-size ``ShadowStats`` per key.

>>> m = ShadowMonitor("classification")
>>> m.add_primary("p1", "churn", {"label": "stay"}, 10.0, latency_ms=12.0)
>>> m.add_shadow("p1", "churn", {"label": "leave"}, 10.1, latency_ms=15.0)
>>> m.stats["churn"].pairs, m.stats["churn"].disagreements
(1, 1)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from scipy import stats as sstats

from ..sketches.ddsketch import DDSketch
from .stats import Estimate, Moments, proportion_confint

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
PRIMARY = "primary"
SHADOW = "shadow"
_MISSING = None

COUNTERS = ("primary", "shadow", "pairs", "duplicates", "expired_unpaired", "evicted_unpaired", "labels",
            "labelled_pairs", "labels_without_pair", "expired_awaiting_label", "evicted_awaiting_label",
            "unusable_outputs")


def shadow_key(model: str, segment: Mapping[str, Any] | None = None) -> str:
    """A stable string key for (model, segment): ``"churn|country=US,device=ios"``."""
    if not segment:
        return model
    return model + "|" + ",".join(f"{k}={segment[k]}" for k in sorted(segment))


def normalize_class(value: Any) -> str:
    """Class labels compared as strings; booleans and integral numbers normalise so that
    ``True``, ``1``, ``1.0`` and ``"1"`` are the same class."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def extract_output(output: Any, task: str, threshold: float = 0.5) -> Any:
    """The comparable answer in a prediction's ``output``: for classification the label,
    else the argmax of ``probabilities``, else ``score >= threshold``; for regression
    ``value``. Scalars pass through. Returns None when there is nothing usable."""
    if not isinstance(output, Mapping):
        if output is None:
            return None
        return normalize_class(output) if task == CLASSIFICATION else float(output)
    if task == CLASSIFICATION:
        if output.get("label") is not None:
            return normalize_class(output["label"])
        probs = output.get("probabilities")
        if probs:
            return normalize_class(max(probs, key=probs.get))
        if output.get("score") is not None:
            return "1" if output["score"] >= threshold else "0"
        return None
    value = output.get("value")
    return float(value) if value is not None else None


def _sketch_for_diffs() -> DDSketch:
    return DDSketch(alpha=0.01, min_value=1e-9, max_value=1e9)


def _wilson(k: int, n: int, alpha: float) -> Estimate:
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan)
    p = k / n
    lo, hi = proportion_confint(k, n, alpha, "wilson")
    return Estimate(p, math.sqrt(p * (1 - p) / n), lo, hi)


def _t_estimate(m: Moments, alpha: float) -> Estimate:
    if m.n < 2:
        return Estimate(m.mean, math.nan, math.nan, math.nan)
    se = math.sqrt(m.variance / m.n)
    w = float(sstats.t.ppf(1 - alpha / 2, m.n - 1)) * se
    return Estimate(m.mean, se, m.mean - w, m.mean + w)


def _quantiles(s: DDSketch, qs=(0.5, 0.9, 0.95, 0.99)) -> dict:
    return {"n": s.count, **{f"p{round(q * 100)}": (s.quantile(q) if s.count else None) for q in qs}}


class ShadowStats:
    """Mergeable comparison state of one (model, segment) key."""

    __slots__ = ("task", "pairs", "disagreements", "diff", "abs_diff", "latency_primary", "latency_shadow",
                 "labelled", "correct_primary", "correct_shadow", "only_primary_correct", "only_shadow_correct",
                 "abs_err_primary", "abs_err_shadow", "abs_err_diff", "_buffers")
    _STATE = __slots__[:-1]
    _FLUSH_AT = 512  # sketch updates are batched: one numpy call per 512 values, not per value

    def __init__(self, task: str = CLASSIFICATION):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.pairs = 0
        self.disagreements = 0
        self.diff = Moments()
        self.abs_diff = _sketch_for_diffs()
        self.latency_primary = DDSketch()
        self.latency_shadow = DDSketch()
        self.labelled = 0
        self.correct_primary = 0
        self.correct_shadow = 0
        self.only_primary_correct = 0
        self.only_shadow_correct = 0
        self.abs_err_primary = Moments()
        self.abs_err_shadow = Moments()
        self.abs_err_diff = Moments()
        self._buffers: dict[str, list[float]] = {"abs_diff": [], "latency_primary": [], "latency_shadow": []}

    def _buffer(self, name: str, value: float) -> None:
        buf = self._buffers[name]
        buf.append(value)
        if len(buf) >= self._FLUSH_AT:
            getattr(self, name).update_many(buf)
            buf.clear()

    def flush(self) -> None:
        """Apply buffered sketch updates (done before every read, merge and snapshot)."""
        for name, buf in self._buffers.items():
            if buf:
                getattr(self, name).update_many(buf)
                buf.clear()

    def update_pair(self, primary: Any, shadow: Any) -> None:
        self.pairs += 1
        if self.task == CLASSIFICATION:
            self.disagreements += primary != shadow
        else:
            d = shadow - primary
            self.diff.update(d)
            self._buffer("abs_diff", abs(d))

    def update_latency(self, side: str, latency_ms: float) -> None:
        self._buffer("latency_primary" if side == PRIMARY else "latency_shadow", float(latency_ms))

    def update_label(self, primary: Any, shadow: Any, label: Any) -> None:
        self.labelled += 1
        if self.task == CLASSIFICATION:
            p_ok, s_ok = primary == label, shadow == label
            self.correct_primary += p_ok
            self.correct_shadow += s_ok
            self.only_primary_correct += p_ok and not s_ok
            self.only_shadow_correct += s_ok and not p_ok
        else:
            ep, es = abs(primary - label), abs(shadow - label)
            self.abs_err_primary.update(ep)
            self.abs_err_shadow.update(es)
            self.abs_err_diff.update(es - ep)

    def merge(self, other: "ShadowStats") -> "ShadowStats":
        if other.task != self.task:
            raise ValueError("can only merge ShadowStats of the same task")
        self.flush()
        other.flush()
        for name in ("pairs", "disagreements", "labelled", "correct_primary", "correct_shadow",
                     "only_primary_correct", "only_shadow_correct"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("diff", "abs_diff", "latency_primary", "latency_shadow", "abs_err_primary",
                     "abs_err_shadow", "abs_err_diff"):
            getattr(self, name).merge(getattr(other, name))
        return self

    def to_dict(self) -> dict:
        self.flush()
        return {name: (v.to_dict() if hasattr(v, "to_dict") else v)
                for name in self._STATE for v in (getattr(self, name),)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ShadowStats":
        s = cls(d["task"])
        for name in cls._STATE:
            if name == "task":
                continue
            current = getattr(s, name)
            setattr(s, name, type(current).from_dict(d[name]) if hasattr(current, "to_dict") else d[name])
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShadowStats) and self.to_dict() == other.to_dict()

    def result(self, key: str = "", alpha: float = 0.05) -> "ShadowResult":
        self.flush()
        lat = {PRIMARY: _quantiles(self.latency_primary), SHADOW: _quantiles(self.latency_shadow)}
        p95p, p95s = lat[PRIMARY]["p95"], lat[SHADOW]["p95"]
        lat["p95_ratio"] = p95s / p95p if p95p and p95s is not None else None
        out = dict(key=key, task=self.task, pairs=self.pairs, labelled=self.labelled, latency=lat)
        if self.task == CLASSIFICATION:
            out["disagreement"] = _wilson(self.disagreements, self.pairs, alpha)
            n = self.labelled
            out["accuracy_primary"] = _wilson(self.correct_primary, n, alpha)
            out["accuracy_shadow"] = _wilson(self.correct_shadow, n, alpha)
            b, c = self.only_shadow_correct, self.only_primary_correct
            if n:
                d = (b - c) / n
                se = math.sqrt(max((b + c) - (b - c) ** 2 / n, 0.0)) / n
                z = float(sstats.norm.isf(alpha / 2))
                p = float(sstats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
                out["accuracy_diff"] = Estimate(d, se, d - z * se, d + z * se, p)
        else:
            out["diff"] = _t_estimate(self.diff, alpha)
            out["abs_diff"] = _quantiles(self.abs_diff)
            out["mae_primary"] = _t_estimate(self.abs_err_primary, alpha)
            out["mae_shadow"] = _t_estimate(self.abs_err_shadow, alpha)
            if self.abs_err_diff.n >= 2:
                t = _t_estimate(self.abs_err_diff, alpha)
                p = (float(2 * sstats.t.sf(abs(t.value / t.se), self.abs_err_diff.n - 1)) if t.se > 0
                     else math.nan)
                out["mae_diff"] = Estimate(t.value, t.se, t.ci_low, t.ci_high, p)
            for side, m in (("primary", self.abs_err_primary), ("shadow", self.abs_err_shadow)):
                out[f"rmse_{side}"] = math.sqrt(m.sum_sq / m.n) if m.n else None
        return ShadowResult(**out)


@dataclass(frozen=True)
class ShadowResult:
    """Figures of one key; Estimates hold value, se, interval (and p-value for differences)."""

    key: str
    task: str
    pairs: int
    labelled: int
    latency: dict
    disagreement: Estimate | None = None
    accuracy_primary: Estimate | None = None
    accuracy_shadow: Estimate | None = None
    accuracy_diff: Estimate | None = None
    diff: Estimate | None = None
    abs_diff: dict | None = None
    mae_primary: Estimate | None = None
    mae_shadow: Estimate | None = None
    mae_diff: Estimate | None = None
    rmse_primary: float | None = None
    rmse_shadow: float | None = None

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, Estimate) else v) for k, v in vars(self).items()}

    _ESTIMATES = ("disagreement", "accuracy_primary", "accuracy_shadow", "accuracy_diff", "diff", "mae_primary",
                  "mae_shadow", "mae_diff")

    @classmethod
    def from_dict(cls, d: Mapping) -> "ShadowResult":
        return cls(**{k: (Estimate.from_dict(v) if k in cls._ESTIMATES and v is not None else v)
                      for k, v in d.items()})


class ShadowMonitor:
    """Pairs primary/shadow predictions by ``prediction_id`` and keeps a :class:`ShadowStats`
    per key in ``self.stats``; counters in ``self.counters``."""

    def __init__(self, task: str = CLASSIFICATION, pair_horizon_s: float = 300.0,
                 label_horizon_s: float | None = None, max_pending: int = 100_000,
                 max_awaiting_label: int = 100_000, threshold: float = 0.5):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not pair_horizon_s > 0:
            raise ValueError("pair_horizon_s must be > 0")
        if label_horizon_s is not None and not label_horizon_s > 0:
            raise ValueError("label_horizon_s must be > 0 or None")
        if max_pending < 1 or max_awaiting_label < 1:
            raise ValueError("max_pending and max_awaiting_label must be >= 1")
        self.task = task
        self.pair_horizon_s = float(pair_horizon_s)
        self.label_horizon_s = None if label_horizon_s is None else float(label_horizon_s)
        self.max_pending = int(max_pending)
        self.max_awaiting_label = int(max_awaiting_label)
        self.threshold = threshold
        self.stats: dict[str, ShadowStats] = {}
        # prediction_id -> [timestamp, key, primary, shadow, label]
        self._unpaired: OrderedDict[str, list] = OrderedDict()
        self._awaiting: OrderedDict[str, list] = OrderedDict()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def _stats(self, key: str) -> ShadowStats:
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = ShadowStats(self.task)
        return s

    def _add(self, side: str, prediction_id: str, key: str, output: Any, timestamp: float,
             latency_ms: float | None) -> None:
        self.counters[side] += 1
        slot = 2 if side == PRIMARY else 3
        rec = self._unpaired.get(prediction_id)
        if (rec is not None and rec[slot] is not _MISSING) or (rec is None and prediction_id in self._awaiting):
            self.counters["duplicates"] += 1
            return
        if latency_ms is not None:
            self._stats(key).update_latency(side, latency_ms)
        value = extract_output(output, self.task, self.threshold)
        if value is None:
            self.counters["unusable_outputs"] += 1
            return
        if rec is None:
            rec = [float(timestamp), key, _MISSING, _MISSING, _MISSING]
            rec[slot] = value
            self._unpaired[prediction_id] = rec
            while len(self._unpaired) > self.max_pending:
                self._unpaired.popitem(last=False)
                self.counters["evicted_unpaired"] += 1
            return
        rec[slot] = value
        if side == PRIMARY:
            rec[1] = key  # the primary's key wins
        del self._unpaired[prediction_id]
        stats = self._stats(rec[1])
        stats.update_pair(rec[2], rec[3])
        self.counters["pairs"] += 1
        if rec[4] is not _MISSING:
            stats.update_label(rec[2], rec[3], rec[4])
            self.counters["labelled_pairs"] += 1
        elif self.label_horizon_s is not None:
            self._awaiting[prediction_id] = rec
            while len(self._awaiting) > self.max_awaiting_label:
                self._awaiting.popitem(last=False)
                self.counters["evicted_awaiting_label"] += 1

    def add_primary(self, prediction_id: str, key: str, output: Any, timestamp: float,
                    latency_ms: float | None = None) -> None:
        """A primary prediction (``output`` is the event's output dict or an extracted value)."""
        self._add(PRIMARY, prediction_id, key, output, timestamp, latency_ms)

    def add_shadow(self, prediction_id: str, key: str, output: Any, timestamp: float,
                   latency_ms: float | None = None) -> None:
        self._add(SHADOW, prediction_id, key, output, timestamp, latency_ms)

    def add_label(self, prediction_id: str, label: Any, timestamp: float | None = None) -> bool:
        """Ground truth for a prediction; True when it completed a pair's accuracy record."""
        self.counters["labels"] += 1
        if self.label_horizon_s is None:
            self.counters["labels_without_pair"] += 1
            return False
        label = normalize_class(label) if self.task == CLASSIFICATION else float(label)
        rec = self._awaiting.pop(prediction_id, None)
        if rec is not None:
            self._stats(rec[1]).update_label(rec[2], rec[3], label)
            self.counters["labelled_pairs"] += 1
            return True
        rec = self._unpaired.get(prediction_id)
        if rec is not None:  # label before the pair completed: keep it with the record
            rec[4] = label
            return False
        self.counters["labels_without_pair"] += 1
        return False

    def expire(self, now: float) -> int:
        """Drop unpaired predictions older than ``pair_horizon_s`` and pairs whose label did
        not come within ``label_horizon_s`` (event time ``now``)."""
        dropped = 0
        for buf, horizon, counter in ((self._unpaired, self.pair_horizon_s, "expired_unpaired"),
                                      (self._awaiting, self.label_horizon_s, "expired_awaiting_label")):
            if horizon is None:
                continue
            limit = now - horizon
            while buf:
                pid, rec = next(iter(buf.items()))
                if rec[0] >= limit:
                    break
                del buf[pid]
                self.counters[counter] += 1
                dropped += 1
        return dropped

    @property
    def pending(self) -> int:
        return len(self._unpaired) + len(self._awaiting)

    def results(self, alpha: float = 0.05) -> dict[str, ShadowResult]:
        return {k: s.result(k, alpha) for k, s in self.stats.items()}

    def overall(self, alpha: float = 0.05) -> ShadowResult:
        """All keys merged."""
        total = ShadowStats(self.task)
        for s in self.stats.values():
            total.merge(s)
        return total.result("__all__", alpha)

    def to_dict(self) -> dict:
        return {"task": self.task, "pair_horizon_s": self.pair_horizon_s, "label_horizon_s": self.label_horizon_s,
                "max_pending": self.max_pending, "max_awaiting_label": self.max_awaiting_label,
                "threshold": self.threshold, "stats": {k: s.to_dict() for k, s in self.stats.items()},
                "unpaired": [[pid, *rec] for pid, rec in self._unpaired.items()],
                "awaiting_label": [[pid, *rec] for pid, rec in self._awaiting.items()],
                "counters": dict(self.counters)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ShadowMonitor":
        m = cls(d["task"], d["pair_horizon_s"], d["label_horizon_s"], d["max_pending"], d["max_awaiting_label"],
                d["threshold"])
        m.stats = {k: ShadowStats.from_dict(s) for k, s in d["stats"].items()}
        for pid, *rec in d["unpaired"]:
            m._unpaired[pid] = list(rec)
        for pid, *rec in d["awaiting_label"]:
            m._awaiting[pid] = list(rec)
        m.counters.update(d["counters"])
        return m
