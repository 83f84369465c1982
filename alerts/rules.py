"""Alert rules over any pipeline metric: the ``alerts:`` section of prodlens.yaml.

A rule names a metric and label matchers; every series that matches is one
alert candidate (one state machine per rule × label set, see
:mod:`prodlens.alerts.state`). The engine knows nothing about prodlens'
metrics: :data:`DEFAULT_CATALOGUE` only serves to validate names at start.

.. code-block:: yaml

    alerts:
      evaluation_interval: 30s     # how often the pipeline evaluates (used by the Prometheus export)
      window: 1m                   # the pipeline's window: "previous window" in change rules
      rules:
        - name: AccuracyDrop                  # the alertname; letters, digits, _
          metric: prodlens_quality
          match: {metric: accuracy, model: churn}   # value = equality; also [a, b] (any of),
                                                    # {regex: "..."}, {not: "..."}, {not_regex: "..."}
          condition: below                    # above | below | outside | no_data
          threshold: 0.80
          resolve_threshold: 0.83             # hysteresis: resolves only at or above 0.83
          for: 10m                            # the condition must hold this long ...
          for_evaluations: 3                  # ... and/or for N consecutive evaluations
          keep_firing_for: 5m                 # and keeps firing this long after it recovers
          min_samples: 200                    # needs the companion series <metric>_n >= 200
          # samples_metric: prodlens_quality_n   # default: <metric>_n
          severity: critical                  # free-form; info | warning | critical | page usual
          labels: {team: ml-platform}
          summary: "Accuracy of {model} {version} dropped in {segment}"
          description: "accuracy {$value:.3f} < {$threshold} (n={$n:.0f})"
          runbook_url: https://runbooks.example.com/accuracy-drop
        - name: ErrorRateJumpAfterRelease
          metric: prodlens_quality
          match: {metric: error_rate}
          change: {vs: {version: v6}, mode: relative}   # vs: previous | {label: value, ...}
          condition: above                              # mode: relative | absolute | ratio
          threshold: 0.5                                # 50 % worse than version v6
        - name: LatencyOutsideBand
          metric: prodlens_window_latency_ms
          match: {quantile: "0.99"}
          condition: outside
          band: {low: 1, high: 250}
          resolve_band: {low: 2, high: 200}
        - name: NoTraffic
          metric: prodlens_predictions_total
          function: {increase: 10m}           # or {rate: 5m}; counters only make sense this way
          condition: no_data                  # absent series, or zero (zero_is_no_data: true)
          for: 10m

Templates (``summary``, ``description``) use ``{label}`` for a label of the
series and ``{$value}``, ``{$threshold}``, ``{$resolve_threshold}``,
``{$metric}``, ``{$rule}``, ``{$severity}``, ``{$n}``, ``{$raw}`` (before the
change transform), ``{$reference}``, each with an optional format spec
(``{$value:.3f}``). Nothing else is evaluated.

At start (with the metric catalogue) a rule is rejected, naming it, when its metric
is unknown, a matcher names a label the metric lacks, or its threshold is one the
metric can never cross (``accuracy above 1.5``, a counter ``below 0``: see
:func:`value_range`).
"""

from __future__ import annotations

import difflib
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple

from .durations import parse_duration

CONDITIONS = ("above", "below", "outside", "no_data")
CHANGE_MODES = ("relative", "absolute", "ratio")
FUNCTIONS = ("increase", "rate")
BUILTINS = ("value", "threshold", "resolve_threshold", "metric", "rule", "severity", "n", "raw", "reference")
RULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
METRIC_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
RESERVED_LABELS = ("alertname", "severity")

# The ingest stage's and the alert engine's metrics (name -> label names); the join and analysis
# stages declare their own (``prodlens.validation.metric_catalogue`` merges them all). Only used
# to validate rules at start.
DEFAULT_CATALOGUE: dict[str, tuple[str, ...]] = {
    "prodlens_window_predictions": ("model", "version", "segment"),
    "prodlens_predictions_total": ("model", "version", "segment"),
    "prodlens_window_latency_ms": ("model", "version", "segment", "quantile"),
    "prodlens_window_feature_missing_ratio": ("model", "version", "segment", "feature"),
    "prodlens_events_consumed_total": ("topic",),
    "prodlens_events_rejected_total": ("topic", "reason"),
    "prodlens_alerts_firing": ("alertname", "severity"),
    "prodlens_alert_transitions_total": ("alertname", "state"),
}


# Values a metric can take, for rejecting rules that can never fire ("accuracy above 1.5").
# Checked with the catalogue (at start); a rule with a change transform is not checked.
UNIT_INTERVAL_QUALITY = frozenset({
    "accuracy", "error_rate", "error_rate_lower_bound", "precision", "recall", "f1", "macro_precision",
    "macro_recall", "macro_f1", "roc_auc", "brier", "ece", "label_coverage", "label_rate", "complaint_rate",
    "correction_rate", "implicit_rate", "corrected_share"})
QUALITY_FAMILIES = frozenset({"prodlens_quality", "prodlens_quality_lower", "prodlens_quality_upper",
                              "prodlens_quality_estimated", "prodlens_quality_estimated_lower",
                              "prodlens_quality_estimated_upper"})
VALUE_RANGES: dict[str, tuple[float, float]] = {
    "prodlens_invariant_violation_ratio": (0.0, 1.0),
    "prodlens_label_coverage_ratio": (0.0, 1.0),
    "prodlens_quality_estimate_trusted": (0.0, 1.0),
    "prodlens_drift_verdict": (0.0, 2.0),
}
NON_NEGATIVE_SUFFIXES = ("_total", "_n", "_seconds", "_bytes", "_ms", "_count", "_ratio")


def value_range(metric: str, matchers: Iterable["Matcher"] = ()) -> tuple[float, float] | None:
    """The values ``metric`` can take (low, high), or None when unknown.

    >>> value_range("prodlens_quality", [Matcher("metric", "=", "accuracy")])
    (0.0, 1.0)
    >>> value_range("prodlens_invariant_violations_total")
    (0.0, inf)
    >>> value_range("prodlens_quality", [Matcher("metric", "=", "mean_error")]) is None
    True
    """
    if metric in VALUE_RANGES:
        return VALUE_RANGES[metric]
    if metric in QUALITY_FAMILIES:
        names = {m.value for m in matchers if m.label == "metric" and m.op == "="}
        return (0.0, 1.0) if names and names <= UNIT_INTERVAL_QUALITY else None
    if metric.startswith("prodlens_") and metric.endswith(NON_NEGATIVE_SUFFIXES):
        return (0.0, math.inf)
    return None


def _check_possible(metric: str, matchers: tuple["Matcher", ...], condition: str, threshold: float | None,
                    band: tuple[float, float] | None, function: str | None, at: str) -> None:
    """Reject a threshold the metric can never cross (the rule could never fire)."""
    rng = value_range(metric, matchers)
    if rng is None:
        return
    low, high = rng
    if function is not None:  # increase / rate of a non-negative counter: >= 0, unbounded above
        if low < 0:
            return
        low, high = 0.0, math.inf
    span = f"[{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
    what = f"{metric}" + (f" ({function})" if function else "")
    if condition == "above" and threshold >= high:
        raise AlertConfigError(f"{at}.threshold: {what} is {span}, so 'above {threshold:g}' can never fire")
    if condition == "below" and threshold <= low:
        raise AlertConfigError(f"{at}.threshold: {what} is {span}, so 'below {threshold:g}' can never fire")
    if condition == "outside" and band[0] <= low and band[1] >= high:
        raise AlertConfigError(f"{at}.band: {what} is {span}, so outside [{band[0]:g}, {band[1]:g}] can "
                               "never fire")


class AlertConfigError(ValueError):
    """A bad alert rule; the message names the rule and the field."""


LabelsKey = tuple[tuple[str, str], ...]


def labels_key(labels: Mapping[str, str]) -> LabelsKey:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


class Sample(NamedTuple):
    """One value of one series: a metric name, its labels, the value, optionally the time it is for.

    ``timestamp`` (e.g. a window's end) tells "previous window" rules when a new
    value arrived; without it every evaluation counts as a new point.
    """

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp: float | None = None


def samples_from_registry(registry: Any) -> list[Sample]:
    """Every sample of a prometheus_client registry (what the pipeline exports) as :class:`Sample`."""
    out = []
    for metric in registry.collect():
        for s in metric.samples:
            out.append(Sample(s.name, dict(s.labels), float(s.value), s.timestamp))
    return out


def samples_from_families(families: Iterable[Any]) -> list[Sample]:
    """The samples of prometheus_client metric families (``Collector.collect()`` output) as
    :class:`Sample`, named as exported (counters with ``_total``); ``_created`` samples are left out."""
    out = []
    for family in families:
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            ts = s.timestamp
            out.append(Sample(s.name, dict(s.labels), float(s.value), float(ts) if ts is not None else None))
    return out


def catalogue_from_registry(registry: Any) -> dict[str, tuple[str, ...] | None]:
    """Metric names (as exported, ``_total`` included) -> label names, from a prometheus_client registry.

    Label names are known only for families that already have samples (``None``
    otherwise: labels are then not checked). Merge with :data:`DEFAULT_CATALOGUE`
    to validate rules against everything the pipeline exports.
    """
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("", "_count", "_sum"), "gaugehistogram": ("_bucket", "_gcount", "_gsum")}
    out: dict[str, tuple[str, ...] | None] = {}
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            out.setdefault(family.name + suffix, None)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = tuple(sorted(set(out.get(sample.name) or ()) | set(sample.labels)))
            out[sample.name] = labels
    return out


# ----------------------------------------------------------------------------------- matchers
@dataclass(frozen=True)
class Matcher:
    """A label matcher with Prometheus semantics (regexes are anchored; a missing label is "")."""

    label: str
    op: str  # = != =~ !~
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.label, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = self._regex.fullmatch(v) is not None
        return hit if self.op == "=~" else not hit

    @property
    def _regex(self) -> re.Pattern:
        return _compiled(self.value)

    def promql(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op}"{escaped}"'


_REGEX_CACHE: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    if pattern not in _REGEX_CACHE:
        _REGEX_CACHE[pattern] = re.compile(pattern)
    return _REGEX_CACHE[pattern]


# ----------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Change:
    """Compare with the previous window of the same series or with another series (label overrides)."""

    vs: str | dict[str, str]  # "previous" or {label: value}
    mode: str = "relative"
    window: float | None = None  # the previous window's distance, for the Prometheus export

    def transform(self, value: float, reference: float) -> float | None:
        """relative (v - r) / |r|, absolute v - r, ratio v / r; None when undefined (r == 0)."""
        if self.mode == "absolute":
            return value - reference
        if reference == 0:
            return 0.0 if value == 0 and self.mode == "relative" else None
        return (value - reference) / abs(reference) if self.mode == "relative" else value / reference


@dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    matchers: tuple[Matcher, ...] = ()
    condition: str = "above"
    threshold: float | None = None
    resolve_threshold: float | None = None
    band: tuple[float, float] | None = None
    resolve_band: tuple[float, float] | None = None
    function: str | None = None  # increase | rate
    range: float | None = None  # seconds of the function's range
    change: Change | None = None
    for_seconds: float = 0.0
    for_evaluations: int = 1
    keep_firing_for: float = 0.0
    min_samples: float | None = None
    samples_metric: str | None = None
    zero_is_no_data: bool = True
    forget_after: float | None = None  # default: 1 h, 24 h for no_data rules
    severity: str = "warning"
    labels: tuple[tuple[str, str], ...] = ()
    summary: str = ""
    description: str = ""
    runbook_url: str | None = None

    # -------------------------------------------------------------- conditions
    def fire_threshold(self) -> float | list[float] | None:
        if self.condition == "outside":
            return list(self.band)
        return self.threshold

    def clear_threshold(self) -> float | list[float] | None:
        if self.condition == "outside":
            return list(self.resolve_band or self.band)
        return self.resolve_threshold if self.resolve_threshold is not None else self.threshold

    def breaches(self, value: float) -> bool:
        """The fire condition (no_data rules decide elsewhere)."""
        if self.condition == "above":
            return value > self.threshold
        if self.condition == "below":
            return value < self.threshold
        if self.condition == "outside":
            return value < self.band[0] or value > self.band[1]
        return False

    def recovered(self, value: float) -> bool:
        """The resolve condition: past the resolve threshold (equal counts as recovered)."""
        if self.condition == "above":
            return value <= self.clear_threshold()
        if self.condition == "below":
            return value >= self.clear_threshold()
        if self.condition == "outside":
            low, high = self.clear_threshold()
            return low <= value <= high
        return True

    @property
    def forget_seconds(self) -> float:
        """How long an absent series is remembered (its firing alert then resolves as expired)."""
        if self.forget_after is not None:
            return self.forget_after
        return 86_400.0 if self.condition == "no_data" else 3_600.0

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def equality_labels(self) -> dict[str, str]:
        return {m.label: m.value for m in self.matchers if m.op == "="}

    def companion(self) -> str:
        return self.samples_metric or f"{self.metric}_n"

    # -------------------------------------------------------------- templates
    def render(self, template: str, labels: Mapping[str, str], values: Mapping[str, Any]) -> str:
        return render_template(template, labels, {
            "metric": self.metric, "rule": self.name, "severity": self.severity,
            "threshold": self.fire_threshold(), "resolve_threshold": self.clear_threshold(), **values})

    def default_description(self) -> str:
        what = {"above": "above {$threshold}", "below": "below {$threshold}",
                "outside": "outside {$threshold}", "no_data": "absent or zero (no data)"}[self.condition]
        subject = "{$metric}"
        if self.change is not None:
            ref = "the previous window" if self.change.vs == "previous" else ", ".join(
                f"{k}={v}" for k, v in sorted(self.change.vs.items()))
            subject = f"{self.change.mode} change of {{$metric}} vs {ref}"
        if self.condition == "no_data":
            return f"{subject} is {what}"
        return f"{subject} is {{$value:.4g}}, {what}"


_FORMATTER = string.Formatter()


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x, spec) for x in v) + "]"
    if isinstance(v, float) and not spec and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return format(v, spec)


def template_fields(template: str) -> list[tuple[str, str]]:
    """(field, format spec) of every placeholder; raises ValueError for anything but {label} / {$builtin}."""
    out = []
    for _, name, spec, conversion in _FORMATTER.parse(template):
        if name is None:
            continue
        if conversion:
            raise ValueError(f"placeholder {{{name}!{conversion}}}: conversions are not allowed")
        if name.startswith("$"):
            if name[1:] not in BUILTINS:
                raise ValueError(f"placeholder {{{name}}}: unknown; use one of "
                                 + ", ".join("$" + b for b in BUILTINS) + " or a label name")
        elif not LABEL_NAME.match(name or ""):
            raise ValueError(f"placeholder {{{name}}}: must be a label name or one of "
                             + ", ".join("$" + b for b in BUILTINS))
        if spec and ("{" in spec):
            raise ValueError(f"placeholder {{{name}:{spec}}}: nested placeholders are not allowed")
        out.append((name, spec or ""))
    return out


def render_template(template: str, labels: Mapping[str, str], values: Mapping[str, Any]) -> str:
    """Render ``{label}`` and ``{$builtin:spec}`` placeholders (safe: no attribute or index access)."""
    parts = []
    for literal, name, spec, _ in _FORMATTER.parse(template):
        parts.append(literal)
        if name is None:
            continue
        if name.startswith("$"):
            v = values.get(name[1:])
            try:
                parts.append(_fmt(v, spec or ""))
            except (ValueError, TypeError):
                parts.append(_fmt(v, ""))
        else:
            v = labels.get(name, "")
            try:
                parts.append(format(v, spec or ""))
            except (ValueError, TypeError):
                parts.append(str(v))
    return "".join(parts)


@dataclass(frozen=True)
class AlertsSpec:
    rules: tuple[AlertRule, ...] = ()
    evaluation_interval: float = 30.0
    window: float = 60.0
    sinks: tuple[dict, ...] = field(default_factory=tuple)  # parsed by prodlens.alerts.sinks

    def rule(self, name: str) -> AlertRule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)


# ----------------------------------------------------------------------------------- parsing
_RULE_KEYS = {"name", "metric", "match", "condition", "threshold", "resolve_threshold", "band", "resolve_band",
              "function", "change", "for", "for_evaluations", "keep_firing_for", "min_samples", "samples_metric",
              "zero_is_no_data", "forget_after", "severity", "labels", "summary", "description", "runbook_url"}


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AlertConfigError(f"{where}: must be a finite number, got {v!r}")
    return float(v)


def _dur(v: Any, where: str) -> float:
    try:
        return parse_duration(v, where)
    except ValueError as exc:
        raise AlertConfigError(str(exc)) from None


def _band(v: Any, where: str) -> tuple[float, float]:
    if isinstance(v, Mapping) and set(v) == {"low", "high"}:
        low, high = _num(v["low"], f"{where}.low"), _num(v["high"], f"{where}.high")
    elif isinstance(v, (list, tuple)) and len(v) == 2:
        low, high = _num(v[0], f"{where}[0]"), _num(v[1], f"{where}[1]")
    else:
        raise AlertConfigError(f"{where}: must be {{low: x, high: y}} or [low, high], got {v!r}")
    if low > high:
        raise AlertConfigError(f"{where}: low {low:g} is above high {high:g}; the band is impossible")
    return low, high


def _matchers(v: Any, where: str) -> tuple[Matcher, ...]:
    if v is None:
        return ()
    if not isinstance(v, Mapping):
        raise AlertConfigError(f"{where}: must be a mapping of label to value, got {type(v).__name__}")
    out = []
    for label, spec in v.items():
        at = f"{where}.{label}"
        if not isinstance(label, str) or not LABEL_NAME.match(label):
            raise AlertConfigError(f"{at}: {label!r} is not a label name")
        if isinstance(spec, bool) or spec is None:
            raise AlertConfigError(f"{at}: must be a string, a list of strings or "
                                   "{regex|not|not_regex: ...}, got {spec!r}")
        if isinstance(spec, (str, int, float)):
            out.append(Matcher(label, "=", str(spec)))
        elif isinstance(spec, list):
            if not spec or not all(isinstance(s, (str, int, float)) and not isinstance(s, bool) for s in spec):
                raise AlertConfigError(f"{at}: a list must hold at least one string")
            out.append(Matcher(label, "=~", "|".join(re.escape(str(s)) for s in spec)))
        elif isinstance(spec, Mapping) and len(spec) == 1:
            (op_name, value), = spec.items()
            op = {"regex": "=~", "not": "!=", "not_regex": "!~", "equals": "="}.get(op_name)
            if op is None or not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise AlertConfigError(f"{at}: use {{regex: ...}}, {{not: ...}} or {{not_regex: ...}}, got {spec!r}")
            if op in ("=~", "!~"):
                try:
                    re.compile(str(value))
                except re.error as exc:
                    raise AlertConfigError(f"{at}: invalid regex {value!r}: {exc}") from None
            out.append(Matcher(label, op, str(value)))
        else:
            raise AlertConfigError(f"{at}: must be a string, a list of strings or {{regex|not|not_regex: ...}}")
    return tuple(out)


def _normalise_catalogue(catalogue: Any) -> dict[str, tuple[str, ...] | None] | None:
    if catalogue is None:
        return None
    if isinstance(catalogue, Mapping):
        return {k: (tuple(v) if v is not None else None) for k, v in catalogue.items()}
    return {k: None for k in catalogue}


def _check_metric(name: str, catalogue: dict | None, where: str) -> None:
    if catalogue is None or name in catalogue:
        return
    close = difflib.get_close_matches(name, list(catalogue), n=1) or difflib.get_close_matches(
        f"prodlens_{name}", list(catalogue), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise AlertConfigError(f"{where}: unknown metric {name!r}{hint} (known: {', '.join(sorted(catalogue))})")


def _check_labels(names: Iterable[str], metric: str, catalogue: dict | None, where: str) -> None:
    known = catalogue.get(metric) if catalogue else None
    if known is None:
        return
    for name in names:
        if name not in known:
            raise AlertConfigError(f"{where}: {metric} has no label {name!r} (its labels: {', '.join(known)})")


def parse_rule(item: Any, index: int = 0, catalogue: Any = None, *, window: float = 60.0) -> AlertRule:
    """One rule from its dict; ``catalogue`` (names, or name -> label names) enables metric checks."""
    base = f"alerts.rules[{index}]"
    if not isinstance(item, Mapping):
        raise AlertConfigError(f"{base}: must be a mapping, got {type(item).__name__}")
    name = item.get("name")
    if not isinstance(name, str) or not RULE_NAME.match(name):
        raise AlertConfigError(f"{base}.name: must start with a letter or _ and hold letters, digits, _ "
                               f"(it becomes the alertname), got {name!r}")
    at = f"{base} ({name!r})"
    unknown = set(item) - _RULE_KEYS
    if unknown:
        hint = {k: difflib.get_close_matches(k, sorted(_RULE_KEYS), n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in sorted(hint.items()))
        raise AlertConfigError(f"{at}: unknown field(s) {said}")
    cat = _normalise_catalogue(catalogue)
    metric = item.get("metric")
    if not isinstance(metric, str) or not METRIC_NAME.match(metric):
        raise AlertConfigError(f"{at}.metric: required, a metric name like prodlens_quality, got {metric!r}")
    _check_metric(metric, cat, f"{at}.metric")
    matchers = _matchers(item.get("match"), f"{at}.match")
    _check_labels([m.label for m in matchers], metric, cat, f"{at}.match")

    condition = item.get("condition")
    if condition not in CONDITIONS:
        raise AlertConfigError(f"{at}.condition: unknown condition {condition!r}; choose one of "
                               + ", ".join(CONDITIONS))
    threshold = resolve = None
    band = resolve_band = None
    if condition in ("above", "below"):
        if item.get("threshold") is None:
            raise AlertConfigError(f"{at}.threshold: required for condition {condition}")
        threshold = _num(item["threshold"], f"{at}.threshold")
        if item.get("resolve_threshold") is not None:
            resolve = _num(item["resolve_threshold"], f"{at}.resolve_threshold")
            if condition == "above" and resolve > threshold:
                raise AlertConfigError(
                    f"{at}.resolve_threshold: {resolve:g} is above the fire threshold {threshold:g}; for "
                    "condition above it must be at or below it (the alert resolves when the value falls back)")
            if condition == "below" and resolve < threshold:
                raise AlertConfigError(
                    f"{at}.resolve_threshold: {resolve:g} is below the fire threshold {threshold:g}; for "
                    "condition below it must be at or above it (the alert resolves when the value recovers)")
        for key in ("band", "resolve_band"):
            if item.get(key) is not None:
                raise AlertConfigError(f"{at}.{key}: only for condition outside")
    elif condition == "outside":
        if item.get("band") is None:
            raise AlertConfigError(f"{at}.band: required for condition outside ({{low: x, high: y}})")
        band = _band(item["band"], f"{at}.band")
        if item.get("resolve_band") is not None:
            resolve_band = _band(item["resolve_band"], f"{at}.resolve_band")
            if resolve_band[0] < band[0] or resolve_band[1] > band[1]:
                raise AlertConfigError(f"{at}.resolve_band: [{resolve_band[0]:g}, {resolve_band[1]:g}] must lie "
                                       f"inside the band [{band[0]:g}, {band[1]:g}] (the alert resolves "
                                       "only once the value is back well inside)")
        for key in ("threshold", "resolve_threshold"):
            if item.get(key) is not None:
                raise AlertConfigError(f"{at}.{key}: not used by condition outside; use band / resolve_band")
    else:  # no_data
        for key in ("threshold", "resolve_threshold", "band", "resolve_band", "change", "min_samples"):
            if item.get(key) is not None:
                raise AlertConfigError(f"{at}.{key}: not used by condition no_data")

    function = rng = None
    if item.get("function") is not None:
        fn = item["function"]
        if not isinstance(fn, Mapping) or len(fn) != 1 or next(iter(fn)) not in FUNCTIONS:
            raise AlertConfigError(f"{at}.function: must be {{increase: <range>}} or {{rate: <range>}}, got {fn!r}")
        (function, raw_range), = fn.items()
        rng = _dur(raw_range, f"{at}.function.{function}")
        if rng <= 0:
            raise AlertConfigError(f"{at}.function.{function}: the range must be positive")

    change = None
    if item.get("change") is not None:
        ch = item["change"]
        if not isinstance(ch, Mapping) or "vs" not in ch or set(ch) - {"vs", "mode", "window"}:
            raise AlertConfigError(f"{at}.change: must be {{vs: previous | {{label: value}}, mode: "
                                   f"relative|absolute|ratio}}, got {ch!r}")
        mode = ch.get("mode", "relative")
        if mode not in CHANGE_MODES:
            raise AlertConfigError(f"{at}.change.mode: must be one of {', '.join(CHANGE_MODES)}, got {mode!r}")
        vs = ch["vs"]
        if vs == "previous":
            pass
        elif isinstance(vs, Mapping) and vs and all(isinstance(k, str) and LABEL_NAME.match(k)
                                                    and isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                    for k, v in vs.items()):
            vs = {k: str(v) for k, v in vs.items()}
            _check_labels(vs, metric, cat, f"{at}.change.vs")
        else:
            raise AlertConfigError(f"{at}.change.vs: must be 'previous' or a mapping of label overrides "
                                   f"like {{version: v6}}, got {vs!r}")
        cw = _dur(ch["window"], f"{at}.change.window") if ch.get("window") is not None else window
        if cw <= 0:
            raise AlertConfigError(f"{at}.change.window: must be positive")
        change = Change(vs, mode, cw)

    for_seconds = _dur(item.get("for", 0), f"{at}.for")
    for_evaluations = item.get("for_evaluations", 1)
    if isinstance(for_evaluations, bool) or not isinstance(for_evaluations, int) or for_evaluations < 1:
        raise AlertConfigError(f"{at}.for_evaluations: must be an integer >= 1, got {for_evaluations!r}")
    keep = _dur(item.get("keep_firing_for", 0), f"{at}.keep_firing_for")
    forget = None
    if item.get("forget_after") is not None:
        forget = _dur(item["forget_after"], f"{at}.forget_after")
        if forget <= 0:
            raise AlertConfigError(f"{at}.forget_after: must be positive")

    if forget is not None and condition == "no_data" and forget <= for_seconds:
        raise AlertConfigError(f"{at}.forget_after: {forget:g}s must be longer than for ({for_seconds:g}s), "
                               "or a vanished series is forgotten before it can fire")
    min_samples = None
    samples_metric = item.get("samples_metric")
    if item.get("min_samples") is not None:
        min_samples = _num(item["min_samples"], f"{at}.min_samples")
        if min_samples < 0:
            raise AlertConfigError(f"{at}.min_samples: must not be negative, got {min_samples:g}")
        if samples_metric is None:
            samples_metric = f"{metric}_n"
    if samples_metric is not None:
        if item.get("min_samples") is None:
            raise AlertConfigError(f"{at}.samples_metric: only meaningful with min_samples")
        if not isinstance(samples_metric, str) or not METRIC_NAME.match(samples_metric):
            raise AlertConfigError(f"{at}.samples_metric: must be a metric name, got {samples_metric!r}")
        _check_metric(samples_metric, cat, f"{at}.samples_metric (the sample-size series for min_samples)")

    zero = item.get("zero_is_no_data", True)
    if not isinstance(zero, bool):
        raise AlertConfigError(f"{at}.zero_is_no_data: must be true or false")
    severity = item.get("severity", "warning")
    if not isinstance(severity, str) or not re.match(r"^[A-Za-z0-9_-]{1,32}$", severity):
        raise AlertConfigError(f"{at}.severity: must be a short word like warning or critical, got {severity!r}")
    labels = item.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise AlertConfigError(f"{at}.labels: must be a mapping of label to value")
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_NAME.match(k) or k.startswith("__"):
            raise AlertConfigError(f"{at}.labels: {k!r} is not a valid label name")
        if k in RESERVED_LABELS:
            raise AlertConfigError(f"{at}.labels.{k}: set by prodlens (use the rule's name / severity)")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise AlertConfigError(f"{at}.labels.{k}: must be a string")
    runbook = item.get("runbook_url")
    if runbook is not None and (not isinstance(runbook, str) or not re.match(r"^https?://\S+$", runbook)):
        raise AlertConfigError(f"{at}.runbook_url: must be an http(s) URL, got {runbook!r}")
    texts = {}
    for key in ("summary", "description"):
        text = item.get(key, "")
        if not isinstance(text, str):
            raise AlertConfigError(f"{at}.{key}: must be a string")
        try:
            template_fields(text)
        except ValueError as exc:
            raise AlertConfigError(f"{at}.{key}: {exc}") from None
        texts[key] = text
    if cat is not None and change is None and condition != "no_data":
        _check_possible(metric, matchers, condition, threshold, band, function, at)
    rule = AlertRule(
        name=name, metric=metric, matchers=matchers, condition=condition, threshold=threshold,
        resolve_threshold=resolve, band=band, resolve_band=resolve_band, function=function, range=rng,
        change=change, for_seconds=for_seconds, for_evaluations=for_evaluations, keep_firing_for=keep,
        min_samples=min_samples, samples_metric=samples_metric, zero_is_no_data=zero, forget_after=forget,
        severity=severity, labels=tuple(sorted((k, str(v)) for k, v in labels.items())),
        summary=texts["summary"], description=texts["description"], runbook_url=runbook)
    for key in ("summary", "description"):  # format specs must work on a number
        text = getattr(rule, key)
        for fname, spec in template_fields(text):
            if fname.startswith("$") and spec and fname[1:] not in ("metric", "rule", "severity"):
                try:
                    format(1.5, spec)
                except ValueError as exc:
                    raise AlertConfigError(f"{at}.{key}: format spec {spec!r} of {{{fname}}}: {exc}") from None
    return rule


PIPELINE_CATALOGUE: Any = object()  # parse_alerts' default: every metric of every stage


def parse_alerts(data: Any, catalogue: Any = PIPELINE_CATALOGUE) -> AlertsSpec:
    """The ``alerts:`` section: a mapping with ``rules`` (and optional ``evaluation_interval``,
    ``window``, ``sinks``) or just a list of rules. Rules are checked against every metric the
    pipeline exports (:func:`prodlens.validation.metric_catalogue`) unless another ``catalogue``
    is given; pass ``catalogue=None`` to skip metric checks.
    """
    if catalogue is PIPELINE_CATALOGUE:
        from ..validation import metric_catalogue  # the stages declare their metrics; they import us
        catalogue = metric_catalogue()
    if data is None:
        return AlertsSpec()
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, Mapping):
        raise AlertConfigError(f"alerts: must be a mapping with rules (or a list of rules), got {type(data).__name__}")
    unknown = set(data) - {"rules", "evaluation_interval", "window", "sinks"}
    if unknown:
        raise AlertConfigError(f"alerts: unknown field(s) {sorted(unknown)}; allowed are "
                               "rules, evaluation_interval, window, sinks")
    interval = _dur(data.get("evaluation_interval", 30), "alerts.evaluation_interval")
    window = _dur(data.get("window", 60), "alerts.window")
    if interval <= 0 or window <= 0:
        raise AlertConfigError("alerts.evaluation_interval / alerts.window: must be positive")
    items = data.get("rules") or []
    if not isinstance(items, list):
        raise AlertConfigError("alerts.rules: must be a list")
    rules, seen = [], set()
    for i, item in enumerate(items):
        rule = parse_rule(item, i, catalogue, window=window)
        if rule.name in seen:
            raise AlertConfigError(f"alerts.rules[{i}] ({rule.name!r}).name: duplicate rule name")
        seen.add(rule.name)
        rules.append(rule)
    sinks = data.get("sinks") or []
    if not isinstance(sinks, list) or not all(isinstance(s, Mapping) for s in sinks):
        raise AlertConfigError("alerts.sinks: must be a list of mappings")
    return AlertsSpec(tuple(rules), interval, window, tuple(dict(s) for s in sinks))
