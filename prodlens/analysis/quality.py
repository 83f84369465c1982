"""The quality analyser: merged quality windows per (model, version, segment), metrics and summaries.

Input: ``quality_partial`` records from the join stage — the *cumulative* state of one
quality window × (model, version, segment) on one join partition
(:class:`~prodlens.quality.windows.WindowQuality`). Partials of the same key from several
join partitions are kept in a :class:`~prodlens.analysis.partials.PartialStore` (latest per
source, so re-delivery is idempotent) and merged exactly with
:meth:`WindowQuality.merge`: the merged state equals one join partition fed every event
(counts exactly; moments up to float summation order).

Outputs:

* ``tick(now)``: for each key quiet for ``quality.settle`` seconds since its last update
  (:meth:`PartialStore.due`), a ``quality_summary`` record (``schemas/quality_summary.v1.json``)
  per (model, version, segment, window) and one for ``segment="__all__"`` (all segments of
  the version merged) to ``config.topics.summaries``, key = the model name. A straggling
  partial makes the key due again; the record is then re-emitted with ``revision`` + 1 and
  the complete view (consumers keep the highest revision).
* ``collect()``: Prometheus gauges (:data:`METRICS`) per segment and ``__all__``, for views

  - ``"window"``: the latest quality window of the segment whose end is at most
    ``T - L``, where ``T`` is the newest ``window_end`` seen for the model (any version,
    any segment) and ``L`` the quality window length — i.e. the latest *complete*
    prediction window: the join is still adding predictions to the window ending at ``T``.
    Its labels may still be arriving; ``n`` and the interval say how much is in.
  - each trailing view of ``quality.views`` (default ``1h`` and ``24h``): all windows of the
    segment whose end lies in ``(T - L - span, T - L]``, merged (at least the one window
    ending at ``T - L`` when ``span < L``).

  Every metric the quality core computes is exported as value + n + CI lower/upper
  (``prodlens_quality``, ``_n``, ``_lower``, ``_upper``); ``class=""`` unless per class.
  Names are the core's: feedback proxies ``label_coverage``, ``label_rate``,
  ``complaint_rate``, ``correction_rate``, ``implicit_rate``, ``corrected_share``,
  ``mean_rating``, ``label_delay_p50/p90/p99``; classification ``accuracy``,
  ``precision``/``recall``/``f1`` per class and ``macro_*``, ``log_loss``, ``brier``,
  ``roc_auc`` (binary), ``ece``; regression ``mae``, ``rmse``, ``mape``, ``mean_error`` (the
  bias, prediction − truth). Derived here: ``error_rate`` = 1 − accuracy (the Wilson
  interval mapped through 1 − x, exact), and ``error_rate_lower_bound`` = the complaint
  rate (complaints are a lower bound on errors: silent unhappy users are invisible; from
  complaints alone there is no error rate, only this bound). Estimates with
  ``n < quality.min_n`` are still exported, always with their ``n`` and interval.
  CBPE estimates (binary models with a CBPE reference) go to ``prodlens_quality_estimated``
  (+ ``_n``, ``_lower``, ``_upper``) with metric names without the ``estimated_`` prefix
  (``accuracy``, ``precision``, ``recall``, ``f1``) so they line up with realized ones.

``prodlens_quality_estimate_trusted{model,version}`` (versions with a CBPE reference) is 0 when
any of these holds, else 1:

1. the core's CBPE flag for the latest complete window (``__all__``) is false: reference
   calibration error above the reference's ``max_ece``, score drift (PSI > ``max_psi``), or
   no scores;
2. the realized calibration error of labelled data is significantly above
   ``quality.cbpe_max_ece``: the lower end of the ECE interval over the longest trailing
   view (``__all__``) exceeds it. Applied when the reference uses no calibration map (the
   raw scores are the probabilities CBPE sums); with an isotonic map the raw-score ECE
   says nothing about the calibrated probabilities, and rule 3 covers it;
3. on windows whose labels are in — windows ending at most ``T - max(L, D)``, with ``D`` =
   ``quality.labels_settled`` or, by default, the observed p99 label delay of the version —
   merged over the longest trailing span, realized accuracy (labelled predictions, Wilson
   interval, ``n >= min_n``) and the CBPE accuracy estimate (all predictions of those
   windows, prediction interval) have disjoint intervals.

``prodlens_label_delay_seconds`` is read from the longest trailing view (the latest window
has only seen its short delays). Memory: merged states are kept per window key for
``max(quality.horizon, longest view + L)`` of event time behind ``T`` (older keys are
dropped, later partials for them ignored and counted), so it grows with keys, not events.

Error bounds: merging adds no approximation (counts exact; moments exact up to float
summation order, ~1e-15 relative). The approximations are the core's and travel inside each
estimate: ROC AUC from binned scores (|binned − exact| <= half the share of positive/negative
pairs sharing a bin, already inside the interval); label-delay quantiles from a DDSketch
(relative error 2 %, interval widened by it; so is the default ``labels_settled``); CBPE
intervals are normal approximations of Poisson-binomial sums that assume calibrated
probabilities; the ECE interval is conservative (Bonferroni-Wilson per bin); macro metrics
use the delta method.

The join puts its ``spec`` (ModelSpec fields) and ``cbpe_reference`` on each partial; they are
used when present (else the config's spec, :func:`model_spec`, and ``quality.cbpe``). Partials
scored with another spec or reference than the newest partial of a key (a config change while
windows were open) cannot merge exactly and are left out of views rather than mixed in.

>>> from prodlens.config import Config
>>> cfg = Config.model_validate({"models": {"churn": {"output": "binary", "classes": ["stay", "churn"]}},
...                              "quality": {"window": "60s"}})
>>> qa = QualityAnalyser(cfg)
>>> qa.settings.window, qa.specs["churn"].positive_label
(60.0, 'churn')
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from prodlens.config import Config, ModelConfig, parse_duration
from prodlens.quality.cbpe import CBPEReference
from prodlens.quality.intervals import DEFAULT_CONFIDENCE, DEFAULT_MIN_N, Estimate
from prodlens.quality.windows import ModelSpec, WindowQuality, merge_all

from .partials import PartialStore

ALL = "__all__"
WINDOW_VIEW = "window"
DEFAULT_VIEWS = (("1h", 3600.0), ("24h", 86400.0))
QUANTILES = (("0.5", "label_delay_p50"), ("0.9", "label_delay_p90"), ("0.99", "label_delay_p99"))

_Q = ("model", "version", "segment", "metric", "class", "view")
_E = ("model", "version", "segment", "metric", "view")
METRICS: dict[str, tuple[str, ...]] = {
    "prodlens_quality": _Q, "prodlens_quality_n": _Q, "prodlens_quality_lower": _Q, "prodlens_quality_upper": _Q,
    "prodlens_quality_estimated": _E, "prodlens_quality_estimated_n": _E,
    "prodlens_quality_estimated_lower": _E, "prodlens_quality_estimated_upper": _E,
    "prodlens_quality_estimate_trusted": ("model", "version"),
    "prodlens_label_coverage_ratio": ("model", "version", "segment", "view"),
    "prodlens_label_delay_seconds": ("model", "version", "segment", "quantile"),
    "prodlens_quality_window_end_timestamp_seconds": ("model", "version", "segment"),
    "prodlens_quality_partials_expired": ("model",),  # counter: partials for windows past retention, ignored
}
_HELP = {
    "prodlens_quality": "Realized quality metric (value) per window or trailing view",
    "prodlens_quality_n": "Observations the quality metric rests on",
    "prodlens_quality_lower": "Lower end of the quality metric's confidence interval",
    "prodlens_quality_upper": "Upper end of the quality metric's confidence interval",
    "prodlens_quality_estimated": "CBPE estimate of a quality metric before labels arrive",
    "prodlens_quality_estimated_n": "Predictions the CBPE estimate rests on",
    "prodlens_quality_estimated_lower": "Lower end of the CBPE estimate's prediction interval",
    "prodlens_quality_estimated_upper": "Upper end of the CBPE estimate's prediction interval",
    "prodlens_quality_estimate_trusted": "1 if the CBPE estimate is trusted, 0 if not (see prodlens.analysis.quality)",
    "prodlens_label_coverage_ratio": "Share of predictions with any feedback",
    "prodlens_label_delay_seconds": "Prediction to first feedback delay quantiles (longest trailing view)",
    "prodlens_quality_window_end_timestamp_seconds": "End (prediction time) of the latest complete quality window",
    "prodlens_quality_partials_expired": "Quality partials ignored because their window was past retention",
}

Key = tuple  # (model, version, segment, window_start)


# -- configuration ---------------------------------------------------------------------------------
def _duration(section: Mapping, name: str, default: float | None) -> float | None:
    if section.get(name) is None:
        return default
    try:
        return parse_duration(section[name])
    except ValueError as exc:
        raise ValueError(f"quality.{name}: {exc}") from None


def _number(section: Mapping, name: str, default: float, lo: float, hi: float, integer: bool = False) -> float:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ValueError(f"quality.{name}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"quality.{name}: must be in [{lo}, {hi}], got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class QualitySettings:
    """The ``quality:`` section as the analyser reads it. Unknown keys are ignored (the
    section is shared with the join stage: ``max_pending``, ``grace``, ...).

    >>> QualitySettings.parse({"window": "5m", "views": ["1h", "6h"], "min_n": 30}).views
    (('1h', 3600.0), ('6h', 21600.0))
    """

    window: float = 3600.0                 # quality window length L (prediction time); shared with the join
    horizon: float = 7 * 86400.0           # label horizon; shared with the join
    views: tuple[tuple[str, float], ...] = DEFAULT_VIEWS
    min_n: int = DEFAULT_MIN_N
    confidence: float = DEFAULT_CONFIDENCE
    cbpe_max_ece: float = 0.05
    labels_settled: float | None = None    # None: the observed p99 label delay
    settle: float = 2.0                    # processing-time quiet period before a key is evaluated

    @classmethod
    def parse(cls, section: Mapping[str, Any] | None) -> "QualitySettings":
        s = dict(section or {})
        if not isinstance(section or {}, Mapping):
            raise ValueError(f"quality: expected a mapping, got {type(section).__name__}")
        window = _duration(s, "window", 3600.0)
        if window <= 0:
            raise ValueError("quality.window: must be positive")
        views = s.get("views")
        if views is None:
            parsed = DEFAULT_VIEWS
        else:
            items = list(views.items()) if isinstance(views, Mapping) else \
                [(str(v), v) for v in views] if isinstance(views, (list, tuple)) else None
            if items is None:
                raise ValueError("quality.views: expected a list of durations or a mapping name -> duration")
            parsed = []
            for name, span in items:
                try:
                    seconds = parse_duration(span)
                except ValueError as exc:
                    raise ValueError(f"quality.views.{name}: {exc}") from None
                if seconds <= 0 or name == WINDOW_VIEW:
                    raise ValueError(f"quality.views.{name}: needs a positive span and a name other than 'window'")
                parsed.append((str(name), seconds))
            if len({n for n, _ in parsed}) != len(parsed):
                raise ValueError("quality.views: view names must be distinct")
            parsed = tuple(sorted(parsed, key=lambda v: v[1]))
        return cls(window=window, horizon=_duration(s, "horizon", 7 * 86400.0), views=tuple(parsed),
                   min_n=_number(s, "min_n", DEFAULT_MIN_N, 1, 1e12, integer=True),
                   confidence=_number(s, "confidence", DEFAULT_CONFIDENCE, 1e-9, 1 - 1e-9),
                   cbpe_max_ece=_number(s, "cbpe_max_ece", 0.05, 0.0, 1.0),
                   labels_settled=_duration(s, "labels_settled", None),
                   settle=_duration(s, "settle", 2.0))

    @property
    def longest(self) -> float:
        return max((span for _, span in self.views), default=self.window)

    @property
    def retention(self) -> float:
        """Event time behind the newest window end for which window states are kept."""
        return max(self.horizon, self.longest + self.window)


def model_spec(model: ModelConfig, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """The :class:`ModelSpec` both the join stage and this analyser must use for a model.

    Binary: ``positive_label`` = ``positive_class``, else the last of ``classes`` (as the
    simulator does); without either the model is scored as multiclass (no AUC, no CBPE).
    ``overrides`` (``quality.models.<name>``) may set threshold, max_classes, auc_bins, ece_bins.
    """
    extra = dict(overrides or {})
    bad = set(extra) - {"threshold", "max_classes", "auc_bins", "ece_bins"}
    if bad:
        raise ValueError(f"quality.models: unknown field {sorted(bad)[0]!r} "
                         "(expected threshold, max_classes, auc_bins, ece_bins)")
    if model.output == "regression":
        return ModelSpec(task="regression", **extra)
    positive = negative = None
    if model.output == "binary":
        positive = model.positive_class or (model.classes[-1] if model.classes else None)
        if model.classes and positive is not None:
            negative = next((c for c in model.classes if c != positive), None)
    return ModelSpec(task="classification", positive_label=positive, negative_label=negative, **extra)


def model_specs(config: Config) -> dict[str, ModelSpec]:
    section = config.quality.get("models") or {}
    if not isinstance(section, Mapping):
        raise ValueError("quality.models: expected a mapping model -> options")
    out = {}
    for name, model in config.models.items():
        try:
            out[name] = model_spec(model, section.get(name))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"quality.models.{name}: {exc}") from None
    return out


def load_cbpe_references(config: Config, base: Path | None = None) -> dict[tuple[str, str], CBPEReference]:
    """CBPE references from ``quality.cbpe: {model: {version: path}}``; each file holds
    :meth:`CBPEReference.to_dict` as JSON (relative paths against ``base`` or the cwd)."""
    section = config.quality.get("cbpe") or {}
    if not isinstance(section, Mapping):
        raise ValueError("quality.cbpe: expected a mapping model -> {version: reference file}")
    refs = {}
    for model, versions in section.items():
        if model not in config.models:
            raise ValueError(f"quality.cbpe.{model}: not a configured model")
        if not isinstance(versions, Mapping):
            raise ValueError(f"quality.cbpe.{model}: expected a mapping version -> reference file")
        for version, path in versions.items():
            p = Path(str(path))
            p = p if p.is_absolute() or base is None else base / p
            try:
                refs[(model, str(version))] = CBPEReference.from_dict(json.loads(p.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"quality.cbpe.{model}.{version}: cannot load {p}: {exc}") from None
    return refs


# -- the analyser ----------------------------------------------------------------------------------
def merge_compatible(states: Iterable[WindowQuality | None]) -> WindowQuality | None:
    """merge_all of the states scored like the last one (same ModelSpec and CBPE reference).

    Partials of other specs (the model's config changed while windows were open) cannot be
    merged exactly and are left out rather than mixed in."""
    states = [s for s in states if s is not None]
    if not states:
        return None
    last = states[-1]
    return merge_all(s for s in states if s.spec == last.spec and s.reference is last.reference)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def estimate_record(e: Estimate) -> dict:
    """An Estimate as the quality_summary schema has it (non-finite numbers -> null)."""
    return {"value": _num(e.value), "n": int(e.n), "lower": _num(e.lower), "upper": _num(e.upper),
            "method": e.method, "sufficient": e.sufficient}


def complement(e: Estimate) -> Estimate:
    """1 - x with the interval mapped through it (exact for a proportion's interval)."""
    return Estimate(1 - e.value, e.n, 1 - e.upper, 1 - e.lower, e.method, e.sufficient, e.confidence,
                    e.error_bound)


@dataclass
class Evaluation:
    """Flattened results of one merged window state."""

    metrics: dict[str, Estimate]
    per_class: dict[str, dict[str, Estimate]]
    estimated: dict[str, Estimate]
    trustworthy: bool | None
    untrusted_because: list[str]
    predictions: int
    labelled: int

    @classmethod
    def of(cls, state: WindowQuality, confidence: float, min_n: int) -> "Evaluation":
        res = state.result(confidence, min_n)
        fb = res["feedback"]
        metrics = dict(fb.metrics)
        metrics["error_rate_lower_bound"] = fb.metrics["complaint_rate"]
        per_class: dict[str, dict[str, Estimate]] = {}
        labelled = 0
        for family in ("classification", "regression"):
            ms = res.get(family)
            if ms is None:
                continue
            metrics.update(ms.metrics)
            per_class.update({k: dict(v) for k, v in ms.per_class.items()})
            labelled = (state.classification if family == "classification" else state.regression).n
        if "accuracy" in metrics:
            metrics["error_rate"] = complement(metrics["accuracy"])
        estimated, trusted, reasons = {}, None, []
        if "cbpe" in res:
            cb = res["cbpe"]
            estimated = {k.removeprefix("estimated_"): v for k, v in cb.metrics.items()}
            trusted, reasons = bool(cb.extra["trustworthy"]), list(cb.extra["untrusted_because"])
        return cls(metrics, per_class, estimated, trusted, reasons, int(fb.extra["predictions"]), int(labelled))


class QualityAnalyser:
    """Merges ``quality_partial`` records; exports quality metrics; emits ``quality_summary`` records.

    Per key (model, version, segment, window_start) it keeps the latest partial of each join
    partition; see the module docstring for views, the trust rule and retention.
    """

    types = frozenset({"quality_partial"})

    def __init__(self, config: Config, references: Mapping[tuple[str, str], CBPEReference] | None = None):
        self.config = config
        self.settings = QualitySettings.parse(config.quality)
        self.refresh_every = parse_duration(config.quality.get("refresh_every", "5s"))
        self._stale: set[str] = set()                 # models whose metrics wait for a refresh
        self._refreshed: dict[str, float] = {}        # model -> processing time of its last refresh
        self.specs = model_specs(config)
        self._refs: dict[str, CBPEReference] = {}    # interned CBPE references
        refs = load_cbpe_references(config) if references is None else references
        self.references = {k: self._reference(ref) for k, ref in refs.items()}
        self.topic = config.topics.summaries
        self.store: PartialStore[WindowQuality] = PartialStore(self.settings.settle)
        self.ends: dict[Key, float] = {}           # window_end by key
        self.newest: dict[str, float] = {}         # model -> newest window_end seen (T)
        self.revisions: dict[Key, int] = {}        # evaluations emitted per key (incl. __all__ keys)
        self.expired: dict[str, int] = {}          # model -> partials ignored as past retention
        self._merged: dict[Key, WindowQuality] = {}  # cache, not state: merged partials per key
        self._by_version: dict[tuple[str, str], set[Key]] = {}  # index, not state
        self._exports: dict[tuple[str, str], list[tuple[str, tuple, float]]] = {}
        self._trust: dict[tuple[str, str], tuple[bool, list[str]]] = {}

    # -- input -------------------------------------------------------------------------------------
    def _reference(self, d: Mapping | CBPEReference | None) -> CBPEReference | None:
        """Interned: equal references are one object, so compatibility checks are ``is``."""
        if d is None:
            return None
        given = d if isinstance(d, CBPEReference) else None
        tag = json.dumps(given.to_dict() if given is not None else d, sort_keys=True)
        ref = self._refs.get(tag)
        if ref is None:
            ref = self._refs[tag] = given if given is not None else CBPEReference.from_dict(d)
        return ref

    def _state(self, model: str, version: str, d: Mapping, spec: Mapping | None = None,
               reference: Mapping | None | str = "config") -> WindowQuality:
        """A partial's WindowQuality. The join puts its ModelSpec (``spec``) and CBPE reference
        (``cbpe_reference``) on each partial; they are used when present, so both stages score
        alike; otherwise the spec from the config and ``quality.cbpe`` references."""
        model_spec_ = ModelSpec(**spec) if spec is not None else self.specs[model]
        ref = self.references.get((model, version)) if reference == "config" else self._reference(reference)
        state = WindowQuality.from_dict(d, model_spec_, ref)
        state.flush()
        return state

    def update(self, key: bytes, record: dict, now: float) -> None:
        """Store one ``quality_partial``; raises ValueError naming the field for a bad record."""
        if record.get("type") != "quality_partial":
            raise ValueError(f"type: expected 'quality_partial', got {record.get('type')!r}")
        for name in ("source", "model", "version", "segment"):
            if not isinstance(record.get(name), str):
                raise ValueError(f"quality_partial.{name}: expected a string, got {record.get(name)!r}")
        seq = record.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError(f"quality_partial.seq: expected an integer, got {seq!r}")
        times = {}
        for name in ("window_start", "window_end"):
            v = record.get(name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"quality_partial.{name}: expected a finite number, got {v!r}")
            times[name] = float(v)
        if times["window_end"] <= times["window_start"]:
            raise ValueError("quality_partial.window_end: must be after window_start")
        model, version, segment = record["model"], record["version"], record["segment"]
        if model not in self.specs:
            raise ValueError(f"quality_partial.model: {model!r} is not a configured model")
        if not isinstance(record.get("state"), Mapping):
            raise ValueError("quality_partial.state: expected a WindowQuality state object")
        end = times["window_end"]
        newest = max(self.newest.get(model, end), end)
        if end <= newest - self.settings.retention:
            self.expired[model] = self.expired.get(model, 0) + 1
            return
        try:
            state = self._state(model, version, record["state"], record.get("spec"),
                                record.get("cbpe_reference", "config"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"quality_partial.state: not a WindowQuality state for model {model!r}: {exc}") from None
        k = (model, version, segment, times["window_start"])
        if self.store.put(k, record["source"], seq, state, now):
            self.ends[k] = end
            self._by_version.setdefault((model, version), set()).add(k)
            self.newest[model] = newest
            self._merged.pop(k, None)

    # -- merged views --------------------------------------------------------------------------------
    def merged(self, key: Key) -> WindowQuality | None:
        """The merged state of one window key (cached until a partial for it arrives)."""
        w = self._merged.get(key)
        if w is None:
            entries = sorted(self.store.partials.get(key, {}).values(), key=lambda e: e[0])
            w = merge_compatible(state for _, state in entries)
            if w is not None:
                self._merged[key] = w
        return w

    def _version_keys(self, model: str, version: str) -> list[Key]:
        return sorted(self._by_version.get((model, version), ()))

    def view(self, model: str, version: str, segment: str | None, lo: float, hi: float) -> WindowQuality | None:
        """Merged state of the windows with lo < window_end <= hi; ``segment=None`` or ``"__all__"``
        merges all segments of the version."""
        every = segment in (None, ALL) and not self._has_all_segment(model, version)
        return merge_compatible(self.merged(k) for k in sorted(self._version_keys(model, version))
                         if (every or k[2] == segment) and lo < self.ends[k] <= hi)

    def _has_all_segment(self, model: str, version: str) -> bool:
        return any(k[2] == ALL for k in self._version_keys(model, version))

    def _end(self, key: Key) -> float:
        end = self.ends.get(key)
        if end is None:  # an __all__ key: the end of its segments' windows
            end = max(e for k, e in self.ends.items() if k[:2] == key[:2] and k[3] == key[3])
        return end

    def cutoff(self, model: str) -> float | None:
        """End of the latest complete quality window of the model (T - L)."""
        t = self.newest.get(model)
        return None if t is None else t - self.settings.window

    # -- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, state: WindowQuality) -> Evaluation:
        return Evaluation.of(state, self.settings.confidence, self.settings.min_n)

    def _record(self, key: Key, state: WindowQuality, partials: int) -> dict:
        model, version, segment, start = key
        ev = self._evaluate(state)
        self.revisions[key] = self.revisions.get(key, 0) + 1
        rec = {"type": "quality_summary", "schema_version": 1, "model": model, "version": version,
               "segment": segment, "window_start": start, "window_end": self._end(key),
               "task": self.specs[model].task, "revision": self.revisions[key], "partials": partials,
               "confidence": self.settings.confidence, "min_n": self.settings.min_n,
               "predictions": ev.predictions, "labelled": ev.labelled,
               "metrics": {k: estimate_record(e) for k, e in sorted(ev.metrics.items())},
               "per_class": {k: {c: estimate_record(e) for c, e in sorted(v.items())}
                             for k, v in sorted(ev.per_class.items())}}
        if ev.trustworthy is not None:
            rec["estimated"] = {k: estimate_record(e) for k, e in sorted(ev.estimated.items())}
            rec["estimate_trustworthy"] = ev.trustworthy
            rec["untrusted_because"] = ev.untrusted_because
        return rec

    def tick(self, now: float) -> list[tuple[str, bytes, dict]]:
        """Emit quality_summary records for due keys (and their ``__all__`` window), drop keys past
        retention, refresh the exported metrics of the versions touched."""
        emits: list[tuple[str, bytes, dict]] = []
        touched: set[tuple[str, str]] = set()
        all_windows: set[tuple[str, str, float]] = set()
        for key in self.store.due(now):
            state = self.merged(key)
            if state is None:
                continue
            model, version, segment, start = key
            emits.append((self.topic, model.encode(), self._record(key, state, len(self.store.partials[key]))))
            touched.add((model, version))
            if segment != ALL:
                all_windows.add((model, version, start))
        for model, version, start in sorted(all_windows):
            if self._has_all_segment(model, version):
                continue
            keys = [k for k in self._version_keys(model, version) if k[3] == start]
            state = merge_compatible(self.merged(k) for k in keys)
            if state is not None:
                rec = self._record((model, version, ALL, start), state, max(len(self.store.partials[k]) for k in keys))
                emits.append((self.topic, model.encode(), rec))
        touched |= self._expire()
        # the cutoff T - L is per model: refresh every version of a model that changed, at most
        # every `quality.refresh_every` seconds: a refresh re-evaluates every view of every
        # segment (milliseconds each), and a busy model changes on every tick
        self._stale |= {m for m, _ in touched}
        models = {m for m in self._stale if now - self._refreshed.get(m, -math.inf) >= self.refresh_every}
        self._stale -= models
        for model in models:
            self._refreshed[model] = now
        for mv in sorted({mv for mv in {*self._by_version, *self._exports} if mv[0] in models}):
            self._refresh(*mv)
        return emits

    def _expire(self) -> set[tuple[str, str]]:
        old = [k for k, end in self.ends.items() if end <= self.newest[k[0]] - self.settings.retention]
        self.store.drop(old)
        for k in old:
            del self.ends[k]
            self._merged.pop(k, None)
            keys = self._by_version[k[:2]]
            keys.discard(k)
            if not keys:
                del self._by_version[k[:2]]
        gone = {(k[0], k[1], k[3]) for k in old}
        for k in [k for k in self.revisions if (k[0], k[1], k[3]) in gone]:
            del self.revisions[k]
        return {(k[0], k[1]) for k in old}

    # -- exported metrics ----------------------------------------------------------------------------
    def _refresh(self, model: str, version: str) -> None:
        """Recompute the gauges of one version from the merged window states."""
        rows: list[tuple[str, tuple, float]] = []
        self._exports.pop((model, version), None)
        self._trust.pop((model, version), None)
        cut = self.cutoff(model)
        keys = [] if cut is None else [k for k in self._version_keys(model, version) if self.ends[k] <= cut]
        if not keys:
            return
        segments = sorted({k[2] for k in keys})
        has_all = ALL in segments
        views: dict[str, dict[str, WindowQuality]] = {}
        latest: dict[str, float] = {}
        for seg in segments:
            end = max(self.ends[k] for k in keys if k[2] == seg)
            latest[seg] = end
            views.setdefault(WINDOW_VIEW, {})[seg] = merge_compatible(
                self.merged(k) for k in keys if k[2] == seg and self.ends[k] == end)
            for name, span in self.settings.views:
                views.setdefault(name, {})[seg] = merge_compatible(
                    self.merged(k) for k in keys if k[2] == seg and cut - max(span, self.settings.window)
                    < self.ends[k] <= cut)
        if not has_all:
            end = max(latest.values())
            latest[ALL] = end
            views[WINDOW_VIEW][ALL] = merge_compatible(self.merged(k) for k in keys if self.ends[k] == end)
            for name, _ in self.settings.views:
                views[name][ALL] = merge_compatible(views[name].values())
        longest = self.settings.views[-1][0] if self.settings.views else WINDOW_VIEW
        evals: dict[tuple[str, str], Evaluation] = {}
        for view, by_seg in views.items():
            for seg, state in by_seg.items():
                if state is None:
                    continue
                ev = evals[(view, seg)] = self._evaluate(state)
                base = (model, version, seg)
                for metric, est in ev.metrics.items():
                    self._rows(rows, "prodlens_quality", base + (metric, "", view), est)
                for metric, by_class in ev.per_class.items():
                    for cls, est in by_class.items():
                        self._rows(rows, "prodlens_quality", base + (metric, cls, view), est)
                for metric, est in ev.estimated.items():
                    self._rows(rows, "prodlens_quality_estimated", base + (metric, view), est)
                rows.append(("prodlens_label_coverage_ratio", base + (view,), ev.metrics["label_coverage"].value))
                if view == longest:
                    for q, metric in QUANTILES:
                        rows.append(("prodlens_label_delay_seconds", base + (q,), ev.metrics[metric].value))
        for seg, end in latest.items():
            rows.append(("prodlens_quality_window_end_timestamp_seconds", (model, version, seg), end))
        now_all = views[WINDOW_VIEW].get(ALL)
        trust = self._trusted(model, version, keys, None if now_all is None else now_all.reference,
                              evals.get((WINDOW_VIEW, ALL)), evals.get((longest, ALL)))
        if trust is not None:
            self._trust[(model, version)] = trust
            rows.append(("prodlens_quality_estimate_trusted", (model, version), float(trust[0])))
        self._exports[(model, version)] = rows

    @staticmethod
    def _rows(rows: list, name: str, labels: tuple, est: Estimate) -> None:
        rows.append((name, labels, est.value))
        rows.append((name + "_n", labels, float(est.n)))
        rows.append((name + "_lower", labels, est.lower))
        rows.append((name + "_upper", labels, est.upper))

    def _trusted(self, model: str, version: str, keys: list[Key], ref: CBPEReference | None,
                 latest: Evaluation | None, longest: Evaluation | None) -> tuple[bool, list[str]] | None:
        """The trust rule of the module docstring: (trusted, reasons); None without CBPE."""
        if ref is None or latest is None or latest.trustworthy is None:
            return None
        reasons = list(latest.untrusted_because)
        if ref.calibration is None and longest is not None and "ece" in longest.metrics:
            ece = longest.metrics["ece"]
            if ece.n >= self.settings.min_n and ece.lower > self.settings.cbpe_max_ece:
                reasons.append("realized_calibration_error")
        settled = self.settings.labels_settled
        if settled is None:
            delay = longest.metrics["label_delay_p99"] if longest is not None else None
            settled = delay.value if delay is not None and delay.n > 0 else None
        if settled is not None:
            hi = self.newest[model] - max(settled, self.settings.window)
            lo = hi - max(self.settings.longest, self.settings.window)
            every = not self._has_all_segment(model, version)
            state = merge_compatible(self.merged(k) for k in keys if (every or k[2] == ALL) and lo < self.ends[k] <= hi)
            if state is not None:
                ev = self._evaluate(state)
                real, est = ev.metrics.get("accuracy"), ev.estimated.get("accuracy")
                if real is not None and est is not None and real.n >= self.settings.min_n and \
                        math.isfinite(est.value) and (real.upper < est.lower or real.lower > est.upper):
                    reasons.append("realized_accuracy_outside_estimate")
        return not reasons, reasons

    def trust(self, model: str, version: str) -> tuple[bool, list[str]] | None:
        """(trusted, reasons) behind ``prodlens_quality_estimate_trusted``; None when not exported."""
        return self._trust.get((model, version))

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        families = {name: GaugeMetricFamily(name, _HELP[name], labels=list(labels))
                    for name, labels in METRICS.items() if name != "prodlens_quality_partials_expired"}
        for key in sorted(self._exports):
            for name, labels, value in self._exports[key]:
                families[name].add_metric(list(labels), value)
        expired = CounterMetricFamily("prodlens_quality_partials_expired", _HELP["prodlens_quality_partials_expired"],
                                      labels=["model"])
        for model, count in sorted(self.expired.items()):
            expired.add_metric([model], count)
        return [*families.values(), expired]

    def exported(self) -> dict[tuple[str, tuple], float]:
        """The current gauge values as {(metric name, label values): value} (for tests and tools)."""
        return {(name, labels): value for rows in self._exports.values() for name, labels, value in rows}

    # -- snapshots -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        refs: dict[int, int] = {}    # id(reference) -> index in "references"
        table: list[dict] = []

        def state(w: WindowQuality) -> dict:
            ref = None
            if w.reference is not None:
                if id(w.reference) not in refs:
                    refs[id(w.reference)] = len(table)
                    table.append(w.reference.to_dict())
                ref = refs[id(w.reference)]
            return {"state": w.to_dict(), "spec": asdict(w.spec), "reference": ref}

        store = self.store.to_dict(state)
        return {"store": store, "references": table,
                "ends": [[list(k), end] for k, end in self.ends.items()],
                "newest": dict(self.newest),
                "revisions": [[list(k), n] for k, n in self.revisions.items()],
                "expired": dict(self.expired)}

    def restore(self, state: dict) -> None:
        table = state["references"]
        store: PartialStore = PartialStore.from_dict(state["store"])
        for key, sources in store.partials.items():
            model, version = key[0], key[1]
            if model not in self.specs:
                raise ValueError(f"store: state holds model {model!r}, which is no longer configured")
            for source, (seq, d) in list(sources.items()):
                ref = None if d["reference"] is None else table[d["reference"]]
                sources[source] = (seq, self._state(model, version, d["state"], d["spec"], ref))
        store.settle = self.settings.settle
        self.store = store
        self.ends = {tuple(k): float(end) for k, end in state["ends"]}
        self.newest = {m: float(t) for m, t in state["newest"].items()}
        self.revisions = {tuple(k): int(n) for k, n in state["revisions"]}
        self.expired = {m: int(n) for m, n in state["expired"].items()}
        self._merged, self._exports, self._trust, self._by_version = {}, {}, {}, {}
        for k in self.ends:
            self._by_version.setdefault(k[:2], set()).add(k)
        for mv in sorted(self._by_version):
            self._refresh(*mv)
