"""The drift analyser: closed windows against their reference, change detection, drift events.

Consumes ``window_summary`` records of the summaries topic (one per (model, version, segment,
window) per ingest partition; ``fields`` = :meth:`SegmentSummary.to_dict`). Partials are kept
in a :class:`~prodlens.analysis.partials.PartialStore` keyed ``(model, version, window_start)``
with one partial per (source, segment), so straggling and re-published partials replace
themselves and the merged window equals one processor fed every event. When a window is due
(quiet for ``settle`` seconds) it is merged into a :class:`~prodlens.sketches.summary.WindowSummary`
(plus an ``__all__`` view of all its segments when it has several) and

* compared with the model's reference by :func:`prodlens.drift.compare.compare` (effect sizes
  with sample-size-aware thresholds, Benjamini-Hochberg across every field x segment of the
  window at ``alpha``: with no drift a window raises any warning with probability <= ``alpha``);
* fed, the first time it is evaluated and in window order, to a
  :class:`~prodlens.drift.detectors.DetectorBank` (series of
  :func:`~prodlens.drift.detectors.window_series`: traffic and the means of numeric
  configured features, ``output.score`` and ``output.value``). A partial arriving after that
  first evaluation updates verdicts and metrics, not the detectors' value for the window.

Warn/alert results and change points go to ``config.topics.drift`` (key = model; format
``schemas/drift.v1.json``). A (window, segment, field) is announced once per verdict: a repeat
evaluation with the same verdict is silent, a verdict cleared by a later partial is announced
as ``"ok"`` with ``previous_verdict``.

References (per model; the ``drift:`` section of prodlens.yaml)::

    models:
      churn:
        reference: refs/churn.json       # (a) file from `prodlens reference build`
    drift:
      alpha: 0.01                        # DriftConfig keys (prodlens/drift/config.py) ...
      settle: 5s                         # quiet time before a window is evaluated
      retention: 4m                      # event time windows stay mergeable (default 3 windows + lateness)
      all_segments: true                 # also compare the __all__ view of segmented windows
      detectors: {warmup: 30}            # DetectorConfig; `false` turns change detection off
      models:
        churn:
          min_samples: 200               # ... and per-model DriftConfig overrides
          reference:
            window: {start: "2026-11-01T00:00:00Z", end: "2026-11-02T00:00:00Z"}   # (b)
        ranker:
          reference: {version: v1}       # (c) champion: other versions vs v1's same window

(a) ``config.models[m].reference``: a reference file, loaded at start (a missing or bad file is
an error naming the field). (b) ``reference.window``: the live windows of the model lying inside
``[start, end)`` (epoch seconds or ISO-8601; optional ``version`` restricts them to one
version), merged with :func:`prodlens.reference.reference_from_windows` and frozen at the first
evaluation of a window starting at or after ``end``; windows evaluated before that get no
verdict, nor do the windows of the range itself. It takes precedence over (a). (c) ``reference.version``: every other version is
compared with the champion's window of the same ``window_start`` (waiting for it when it comes
later; the champion's window makes its peers due again); the champion itself uses (b) or (a)
if configured. Without a reference a window only feeds the change detectors.

Cardinality: drift statistics cover the configured features (``config.models[m].features``;
none when the model declares none), ``output.score``/``value``/``label``,
``output.probabilities.<class>`` of configured classes and ``label``; segments arrive folded.

Error bounds: those of :func:`~prodlens.drift.compare.compare` (each result carries its sketch
``bounds``); merging partials is exact for counts and moments and within the KLL rank error
for quantiles (exact below about ``k`` = 200 values per summary).

>>> from prodlens.config import load_config
>>> a = DriftAnalyser(load_config(data={"models": {"m": {"output": "binary"}}}))
>>> a.tick(0.0), sorted(a.types)
([], ['window_summary'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from prodlens.analysis.partials import PartialStore
from prodlens.config import Config, parse_duration
from prodlens.drift.compare import DriftResult, compare
from prodlens.drift.config import DriftConfig
from prodlens.drift.detectors import ChangePoint, DetectorBank, DetectorConfig, window_series
from prodlens.reference import Reference, load_reference, reference_from_windows
from prodlens.sketches.summary import ALL, SegmentSummary, WindowSummary

Emit = tuple[str, bytes, dict]
Key = tuple[str, str, float]            # (model, version, window_start)

METRICS: dict[str, tuple[str, ...]] = {
    "prodlens_drift": ("model", "version", "segment", "feature", "statistic"),
    "prodlens_drift_verdict": ("model", "version", "segment", "feature"),
    "prodlens_drift_flagged": ("model", "version", "segment"),
    "prodlens_drift_events_total": ("model", "verdict"),
    "prodlens_change_points_total": ("model", "version", "segment", "series", "detector"),
    "prodlens_drift_window_end_timestamp_seconds": ("model", "version"),
    "prodlens_drift_partials_total": ("outcome",),
}
VERDICT_LEVEL = {"ok": 0, "warn": 1, "alert": 2}
ANALYSER_KEYS = ("models", "detectors", "settle", "retention", "all_segments")
_MERGED_KEYS = ("fields", "thresholds")     # per-model overrides merge into these, key by key
_OUTCOMES = ("accepted", "stale", "too_late", "unknown_model", "no_reference")
SCHEMA_VERSION = 1


# -- settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelDrift:
    """What applies to one model: compare settings, where its reference comes from, which fields."""

    config: DriftConfig
    fields: frozenset[str]                     # field paths compared (bounded cardinality)
    detector_fields: tuple[str, ...]           # numeric fields whose window means are monitored
    reference_path: str | None = None          # (a)
    window: tuple[float, float] | None = None  # (b) [start, end)
    window_version: str | None = None
    champion: str | None = None                # (c)


@dataclass(frozen=True)
class DriftSettings:
    settle: float
    retention: float
    all_segments: bool
    detectors: DetectorConfig | None
    models: dict[str, ModelDrift] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> "DriftSettings":
        """Parse ``config.drift`` (errors name the offending key, ``drift.…``)."""
        d = config.drift or {}
        if not isinstance(d, Mapping):
            raise ValueError("drift: expected a mapping")
        base = {k: v for k, v in d.items() if k not in ANALYSER_KEYS}
        DriftConfig.from_dict(base)  # validate the global part even when no model overrides it
        settle = _duration(d.get("settle", 5.0), "drift.settle")
        default_retention = 3 * config.window.length + config.window.allowed_lateness
        retention = _duration(d.get("retention", default_retention), "drift.retention")
        all_segments = d.get("all_segments", True)
        if not isinstance(all_segments, bool):
            raise ValueError(f"drift.all_segments: expected true or false, got {all_segments!r}")
        det = d.get("detectors", {})
        if det is False:
            detectors = None
        elif isinstance(det, Mapping) or det is None or det is True:
            try:
                detectors = DetectorConfig.from_dict(det if isinstance(det, Mapping) else {})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"drift.{exc}" if str(exc).startswith("detectors") else f"drift.detectors: {exc}") from None
        else:
            raise ValueError(f"drift.detectors: expected a mapping or false, got {det!r}")
        per_model = d.get("models") or {}
        if not isinstance(per_model, Mapping):
            raise ValueError("drift.models: expected a mapping model -> settings")
        for name in per_model:
            if name not in config.models:
                raise ValueError(f"drift.models.{name}: not a model declared under models: "
                                 f"({', '.join(sorted(config.models))})")
        models = {name: _model_drift(name, mc, base, per_model.get(name) or {})
                  for name, mc in config.models.items()}
        return cls(settle, retention, all_segments, detectors, models)


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _timestamp(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected epoch seconds or an ISO-8601 time, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{where}: expected epoch seconds or an ISO-8601 time, got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _model_drift(name: str, mc: Any, base: Mapping[str, Any], overrides: Mapping[str, Any]) -> ModelDrift:
    where = f"drift.models.{name}"
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    overrides = dict(overrides)
    ref = overrides.pop("reference", None)
    merged = dict(base)
    for k, v in overrides.items():
        if k in _MERGED_KEYS and isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    try:
        cfg = DriftConfig.from_dict(merged)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    window = window_version = champion = None
    if ref is not None:
        if not isinstance(ref, Mapping):
            raise ValueError(f"{where}.reference: expected {{version: v}} and/or {{window: {{start, end}}}}, got {ref!r}")
        unknown = set(ref) - {"version", "window"}
        if unknown:
            raise ValueError(f"{where}.reference: unknown key(s) {sorted(unknown)} (version, window)")
        if "version" in ref:
            if not isinstance(ref["version"], (str, int)) or isinstance(ref["version"], bool):
                raise ValueError(f"{where}.reference.version: expected a version name, got {ref['version']!r}")
            champion = str(ref["version"])
        if "window" in ref:
            w = ref["window"]
            if not isinstance(w, Mapping) or "start" not in w or "end" not in w:
                raise ValueError(f"{where}.reference.window: expected {{start, end[, version]}}, got {w!r}")
            unknown = set(w) - {"start", "end", "version"}
            if unknown:
                raise ValueError(f"{where}.reference.window: unknown key(s) {sorted(unknown)}")
            start = _timestamp(w["start"], f"{where}.reference.window.start")
            end = _timestamp(w["end"], f"{where}.reference.window.end")
            if not end > start:
                raise ValueError(f"{where}.reference.window: end must be after start")
            window = (start, end)
            window_version = None if w.get("version") is None else str(w["version"])
    features = dict(mc.features)
    fields = {f"features.{f}" for f in features} | {"output.score", "output.value", "output.label", "label"}
    fields |= {f"output.probabilities.{c}" for c in (mc.classes or [])}
    detector_fields = tuple(sorted(f"features.{f}" for f, kind in features.items() if kind == "numeric")) \
        + ("output.score", "output.value")
    return ModelDrift(cfg, frozenset(fields), detector_fields, mc.reference, window, window_version, champion)


# -- state pieces ---------------------------------------------------------------------------------
@dataclass
class _Part:
    """One source's summary of one segment of a window."""

    segment: str
    end: float
    summary: SegmentSummary

    def to_dict(self) -> dict:
        return {"segment": self.segment, "end": self.end, "summary": self.summary.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "_Part":
        return cls(d["segment"], float(d["end"]), SegmentSummary.from_dict(d["summary"]))


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _require(record: Mapping[str, Any], name: str, types: tuple[type, ...]) -> Any:
    if name not in record or record[name] is None:
        raise ValueError(f"window_summary.{name}: missing")
    value = record[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"window_summary.{name}: expected {' or '.join(t.__name__ for t in types)}, "
                         f"got {type(value).__name__}")
    return value


# -- the analyser ---------------------------------------------------------------------------------
class DriftAnalyser:
    """Drift of closed windows against their reference, change points, drift events, metrics."""

    types = frozenset({"window_summary"})

    def __init__(self, config: Config):
        self.config = config
        self.settings = DriftSettings.from_config(config)
        self.topic = config.topics.drift
        self.files: dict[str, Reference] = {}
        for name, md in self.settings.models.items():
            if md.reference_path and md.window is None:
                try:
                    self.files[name] = load_reference(md.reference_path)
                except (OSError, ValueError, KeyError) as exc:
                    raise ValueError(f"models.{name}.reference: cannot load {md.reference_path}: {exc}") from None
        self._reset()

    def _reset(self) -> None:
        self.store: PartialStore[_Part] = PartialStore(self.settings.settle)
        self.unevaluated: set[Key] = set()
        self.newest: dict[str, float] = {}                       # model -> newest window_start seen
        self.latest: dict[tuple[str, str], dict] = {}            # (model, version) -> latest evaluated window
        self.emitted: dict[Key, dict[tuple[str, str], str]] = {}  # window -> (segment, field) -> verdict
        self.events_total: dict[tuple[str, str], int] = {}
        self.change_points_total: dict[tuple[str, str, str, str, str], int] = {}
        self.partials_total: dict[str, int] = {k: 0 for k in _OUTCOMES}
        self.fed: dict[tuple[str, str], float] = {}              # (model, version) -> last window fed to detectors
        self.bank = DetectorBank(self.settings.detectors) if self.settings.detectors else None
        self.frozen: dict[str, Reference] = {}                   # model -> reference of its window range
        self.building: dict[str, tuple[WindowSummary, int]] = {}  # model -> (evicted in-range windows, count)

    # -- input ------------------------------------------------------------------------------------
    def update(self, key: bytes, record: dict, now: float) -> None:
        """Store one ``window_summary`` partial (ValueError naming the field for a bad record)."""
        if record.get("type") != "window_summary":
            raise ValueError(f"type: the drift analyser takes window_summary records, got {record.get('type')!r}")
        model = _require(record, "model", (str,))
        version = _require(record, "version", (str,))
        segment = _require(record, "segment", (str,))
        source = _require(record, "source", (str,))
        seq = _require(record, "seq", (int,))
        start = float(_require(record, "window_start", (int, float)))
        end = float(_require(record, "window_end", (int, float)))
        fields = _require(record, "fields", (dict,))
        if not end > start:
            raise ValueError(f"window_summary.window_end: {end} is not after window_start {start}")
        md = self.settings.models.get(model)
        if md is None:
            self.partials_total["unknown_model"] += 1
            return
        if start < self.newest.get(model, -math.inf) - self.settings.retention:
            self.partials_total["too_late"] += 1
            return
        try:
            summary = SegmentSummary.from_dict(fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"window_summary.fields: {exc}") from None
        for path in [p for p in summary.fields if p not in md.fields]:
            del summary.fields[path]
        wkey: Key = (model, version, start)
        if self.store.put(wkey, f"{source}#{segment}", seq, _Part(segment, end, summary), now):
            self.partials_total["accepted"] += 1
            self.unevaluated.add(wkey)
            self.newest[model] = max(self.newest.get(model, -math.inf), start)
        else:
            self.partials_total["stale"] += 1

    # -- evaluation -------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Emit]:
        """Evaluate the windows that are due; returns drift-topic messages."""
        due = self.store.due(now)
        if not due:
            return []
        todo = set(due)
        self.unevaluated.difference_update(due)
        for model, version, start in due:
            if self.settings.models[model].champion == version:  # its peers were waiting for it
                todo.update(k for k in self.store.keys() if k[0] == model and k[2] == start and k[1] != version)
        for model in {k[0] for k in due}:
            self._maybe_freeze(model, max(k[2] for k in due if k[0] == model))
        out: list[Emit] = []
        for key in sorted(todo, key=lambda k: (k[2], k[0], k[1])):
            out.extend(self._evaluate(key, now))
        self._evict()
        return out

    def _merged(self, key: Key, all_view: bool = True) -> WindowSummary | None:
        parts = self.store.states(key)
        if not parts:
            return None
        model, version, start = key
        window = WindowSummary(model, version, start, max(p.end for p in parts))
        for p in sorted(parts, key=lambda p: p.segment):
            window.segment(p.segment).merge(p.summary)
        if all_view and self.settings.all_segments and len(window.segments) > 1 and ALL not in window.segments:
            window.segments[ALL] = window.combined()
        return window

    def _reference(self, model: str, version: str, start: float) -> tuple[Any, dict | None]:
        md = self.settings.models[model]
        if md.champion is not None and version != md.champion:
            ref = self._merged((model, md.champion, start))
            return ref, {"kind": "version", "version": md.champion}
        if md.window is not None:
            if md.window[0] <= start < md.window[1]:
                return None, None   # a window of the range is not judged against itself
            ref = self.frozen.get(model)
            return ref, {"kind": "window", "version": md.window_version, "start": md.window[0], "end": md.window[1]}
        if model in self.files:
            return self.files[model], {"kind": "file", "version": self.files[model].version,
                                       "path": md.reference_path}
        return None, None

    def _evaluate(self, key: Key, now: float) -> list[Emit]:
        window = self._merged(key)
        if window is None:
            return []
        model, version, start = key
        md = self.settings.models[model]
        out: list[Emit] = []
        out.extend(self._detect(window, md, now))
        reference, info = self._reference(model, version, start)
        if reference is None:
            self.partials_total["no_reference"] += 1
            return out
        results = compare(window, reference, md.config)
        latest = self.latest.get((model, version))
        if latest is None or start >= latest["window_start"]:
            self.latest[(model, version)] = {
                "window_start": start, "window_end": window.end,
                "results": [[r.segment, r.field, r.verdict,
                             {k: v for k, v in {**r.statistics, "qvalue": r.qvalue}.items() if _finite(v) is not None}]
                            for r in results]}
        announced = self.emitted.setdefault(key, {})
        for r in results:
            ident = (r.segment, r.field)
            before = announced.get(ident)
            if r.flagged and r.verdict != before:
                announced[ident] = r.verdict
                self.events_total[(model, r.verdict)] = self.events_total.get((model, r.verdict), 0) + 1
                out.append((self.topic, model.encode(), self._drift_event(r, info, before, now)))
            elif not r.flagged and before in ("warn", "alert"):
                announced[ident] = "ok"
                out.append((self.topic, model.encode(), self._drift_event(r, info, before, now)))
        return out

    def _detect(self, window: WindowSummary, md: ModelDrift, now: float) -> list[Emit]:
        if self.bank is None:
            return []
        mv = (window.model, window.version)
        if window.start <= self.fed.get(mv, -math.inf):
            return []
        self.fed[mv] = window.start
        base = f"{window.model}/{window.version}"
        values = window_series(window, md.detector_fields, prefix=base)
        names: dict[str, tuple[str, str, str | None]] = {}   # series name -> (segment, series label, field)
        for seg_key, seg in window.segments.items():
            names[f"{base}/{seg_key}/traffic"] = (seg_key, "traffic", None)
            for path in seg.fields:
                names[f"{base}/{seg_key}/{path}/mean"] = (seg_key, f"{path}/mean", path)
        out: list[Emit] = []
        for point in self.bank.update(window.start, values):
            segment, series, path = names[point.series]
            for det in point.detectors:
                k = (window.model, window.version, segment, series, det)
                self.change_points_total[k] = self.change_points_total.get(k, 0) + 1
            out.append((self.topic, window.model.encode(),
                        self._change_event(window, segment, series, path, point, now)))
        return out

    def _maybe_freeze(self, model: str, newest_due: float) -> None:
        md = self.settings.models[model]
        if md.window is None or model in self.frozen or newest_due < md.window[1]:
            return
        windows = [w for k in self.store.keys() if k[0] == model and self._in_range(md, k)
                   for w in [self._merged(k, all_view=False)] if w is not None]
        built = self.building.pop(model, None)
        count = len(windows) + (built[1] if built else 0)
        if built:
            windows.insert(0, built[0])
        if not windows:
            return  # nothing of the range was seen (e.g. it is older than this analyser's data)
        ref = reference_from_windows(windows, model, created_at="")
        ref.source.update({"start": md.window[0], "end": md.window[1], "windows": count,
                           "version": md.window_version})
        ref.created_at = datetime.fromtimestamp(md.window[1], timezone.utc).isoformat(timespec="seconds")
        self.frozen[model] = ref

    @staticmethod
    def _in_range(md: ModelDrift, key: Key) -> bool:
        if md.window is None:
            return False
        version_ok = md.window_version is None or key[1] == md.window_version
        return version_ok and md.window[0] <= key[2] < md.window[1]

    def _evict(self) -> None:
        """Drop windows older than ``retention`` (event time, per model) once evaluated; in-range
        windows of a reference still being built are folded into it first."""
        old = [k for k in self.store.keys()
               if k not in self.unevaluated and k[2] < self.newest[k[0]] - self.settings.retention]
        for key in sorted(old, key=lambda k: (k[2], k[0], k[1])):
            model = key[0]
            md = self.settings.models[model]
            if model not in self.frozen and self._in_range(md, key):
                w = self._merged(key, all_view=False)
                if w is not None:
                    acc = self.building.get(model)
                    if acc is None:
                        w.version = md.window_version or "*"
                        self.building[model] = (w, 1)
                    else:
                        w.version = acc[0].version
                        acc[0].merge(w)
                        self.building[model] = (acc[0], acc[1] + 1)
            self.emitted.pop(key, None)
        self.store.drop(old)

    # -- events -----------------------------------------------------------------------------------
    @staticmethod
    def _drift_event(r: DriftResult, info: dict | None, before: str | None, now: float) -> dict:
        d = r.to_dict()
        verdict = r.verdict if r.flagged else "ok"
        return {"type": "drift", "schema_version": SCHEMA_VERSION,
                "event_id": f"drift/{r.model}/{r.version}/{r.segment}/{r.window_start}/{r.field}/{verdict}",
                "model": r.model, "version": r.version, "segment": r.segment,
                "window_start": r.window_start, "window_end": r.window_end,
                "field": r.field, "kind": r.kind, "verdict": verdict, "previous_verdict": before,
                "n_current": r.n_current, "n_reference": r.n_reference,
                "statistics": d["statistics"], "bounds": d["bounds"], "thresholds": d["thresholds"],
                "test": r.test, "pvalue": d["pvalue"], "qvalue": d["qvalue"],
                "reference": {**(info or {}), "segment": r.reference_segment},
                "reasons": list(r.reasons) if r.flagged else [f"{before} cleared after a later partial"],
                "emitted_at": now}

    @staticmethod
    def _change_event(window: WindowSummary, segment: str, series: str, path: str | None,
                      p: ChangePoint, now: float) -> dict:
        return {"type": "change_point", "schema_version": SCHEMA_VERSION,
                "event_id": f"change/{window.model}/{window.version}/{segment}/{window.start}/{series}",
                "model": window.model, "version": window.version, "segment": segment,
                "window_start": window.start, "window_end": window.end, "series": series, "field": path,
                "direction": p.direction, "magnitude": _finite(p.magnitude), "score": _finite(p.score),
                "value": _finite(p.value), "detectors": list(p.detectors), "emitted_at": now}

    # -- metrics ----------------------------------------------------------------------------------
    def collect(self) -> Iterable[Any]:
        stat = GaugeMetricFamily("prodlens_drift", "Drift statistic of the latest evaluated window vs the "
                                 "reference (feature = field path)", labels=METRICS["prodlens_drift"])
        verdict = GaugeMetricFamily("prodlens_drift_verdict", "Drift verdict of the latest window: 0 ok, "
                                    "1 warn, 2 alert", labels=METRICS["prodlens_drift_verdict"])
        flagged = GaugeMetricFamily("prodlens_drift_flagged", "Fields flagged (warn or alert) in the latest "
                                    "window", labels=METRICS["prodlens_drift_flagged"])
        events = CounterMetricFamily("prodlens_drift_events_total", "Drift events announced",
                                     labels=METRICS["prodlens_drift_events_total"])
        changes = CounterMetricFamily("prodlens_change_points_total", "Change points found by the online "
                                      "detectors", labels=METRICS["prodlens_change_points_total"])
        end = GaugeMetricFamily("prodlens_drift_window_end_timestamp_seconds", "End (event time) of the latest "
                                "window evaluated for drift", labels=METRICS["prodlens_drift_window_end_timestamp_seconds"])
        partials = CounterMetricFamily("prodlens_drift_partials_total", "window_summary partials by what the "
                                       "drift analyser did with them", labels=METRICS["prodlens_drift_partials_total"])
        for (model, version), latest in sorted(self.latest.items()):
            end.add_metric([model, version], latest["window_end"])
            n_flagged: dict[str, int] = {}
            for segment, path, v, stats in latest["results"]:
                for name, value in sorted(stats.items()):
                    stat.add_metric([model, version, segment, path, name], value)
                if v in VERDICT_LEVEL:
                    verdict.add_metric([model, version, segment, path], VERDICT_LEVEL[v])
                n_flagged[segment] = n_flagged.get(segment, 0) + (v in ("warn", "alert"))
            for segment, n in sorted(n_flagged.items()):
                flagged.add_metric([model, version, segment], n)
        for (model, v), n in sorted(self.events_total.items()):
            events.add_metric([model, v], n)
        for labels, n in sorted(self.change_points_total.items()):
            changes.add_metric(list(labels), n)
        for outcome, n in sorted(self.partials_total.items()):
            partials.add_metric([outcome], n)
        return [stat, verdict, flagged, events, changes, end, partials]

    # -- snapshots --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "store": self.store.to_dict(lambda p: p.to_dict()),
            "unevaluated": sorted([list(k) for k in self.unevaluated]),
            "newest": dict(self.newest),
            "latest": [[m, v, d] for (m, v), d in sorted(self.latest.items())],
            "emitted": [[list(k), [[s, f, v] for (s, f), v in sorted(e.items())]]
                        for k, e in sorted(self.emitted.items())],
            "events_total": [[m, v, n] for (m, v), n in sorted(self.events_total.items())],
            "change_points_total": [[*k, n] for k, n in sorted(self.change_points_total.items())],
            "partials_total": dict(self.partials_total),
            "fed": [[m, v, s] for (m, v), s in sorted(self.fed.items())],
            "bank": self.bank.to_dict() if self.bank is not None else None,
            "frozen": {m: r.to_dict() for m, r in sorted(self.frozen.items())},
            "building": {m: [w.to_dict(), n] for m, (w, n) in sorted(self.building.items())},
        }

    def restore(self, state: dict) -> None:
        self._reset()
        self.store = PartialStore.from_dict(state["store"], _Part.from_dict)
        self.store.settle = self.settings.settle
        self.unevaluated = {(m, v, float(s)) for m, v, s in state["unevaluated"]}
        self.newest = {m: float(s) for m, s in state["newest"].items()}
        self.latest = {(m, v): d for m, v, d in state["latest"]}
        self.emitted = {(k[0], k[1], float(k[2])): {(s, f): v for s, f, v in e} for k, e in state["emitted"]}
        self.events_total = {(m, v): int(n) for m, v, n in state["events_total"]}
        self.change_points_total = {tuple(row[:5]): int(row[5]) for row in state["change_points_total"]}
        self.partials_total.update({k: int(n) for k, n in state["partials_total"].items()})
        self.fed = {(m, v): float(s) for m, v, s in state["fed"]}
        if state.get("bank") is not None and self.settings.detectors is not None:
            self.bank = DetectorBank.from_dict(state["bank"])
        self.frozen = {m: Reference.from_dict(r) for m, r in state["frozen"].items()}
        self.building = {m: (WindowSummary.from_dict(w), int(n)) for m, (w, n) in state["building"].items()}


__all__ = ["DriftAnalyser", "DriftSettings", "ModelDrift", "METRICS"]
