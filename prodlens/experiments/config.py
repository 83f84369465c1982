"""The ``experiments:`` section of prodlens.yaml: A/B experiments, canary / blue-green
ladders and shadow releases, validated with errors that name the field.

:func:`parse_experiments` turns the plain section (``Config.experiments``) into an
:class:`ExperimentsConfig` holding the pure-core configuration objects the stages use:

* the join stage builds its outcome joiner with :meth:`ExperimentsConfig.outcome_joiner`
  (or :meth:`ExperimentsConfig.outcomes` for the per-experiment metric specs);
* the analysis stage analyses each A/B experiment with ``ab[name].analysis``
  (:class:`~.stats.AnalysisConfig`), runs a :class:`~.canary.CanaryLadder` per
  ``canaries[name].ladder`` (:class:`~.canary.CanaryConfig`) and reports ``shadows``.

Example (the whole section is optional)::

    experiments:
      attribution:                  # outcomes -> variants, through unit_id (join stage)
        horizon: 7d                 # outcomes count up to this long after a unit's exposure
        max_units: 200000           # exposures remembered per join partition
        skew: 5m                    # clock tolerance: outcomes this much before exposure still count
      ab:
        new_checkout:
          model: churn              # optional: the model whose predictions carry the experiment
          variants: {control: 0.5, treatment: 0.5}   # name: weight (weights sum to 1), first = baseline
          baseline: control         # optional, default the first variant
          metrics:                  # outcome metrics, one observation per exposed unit
            - {name: conversion, aggregation: any}               # 1 once a positive outcome came: a rate
            - {name: revenue, aggregation: sum}                  # per-unit sum: a mean
            - {name: complaints, aggregation: count, direction: lower}
          alpha: 0.05
          sequential: true          # anytime-valid (peeking-safe) intervals; false = fixed horizon
          tuning_n: 20000           # planned total units (CS is tightest there)
          correction: holm          # holm | bh | none, across variants x metrics
          srm_alpha: 0.001          # sample-ratio-mismatch alarm level
      canaries:
        churn_v8:
          model: churn
          baseline: v7
          canary: v8
          steps:                    # traffic shares, or {traffic, min_duration, min_samples, max_duration}
            - {traffic: 0.01, min_duration: 10m, min_samples: 500}
            - {traffic: 0.05, min_duration: 10m}
            - 0.2
            - 0.5
            - 1.0
          min_duration: 5m          # defaults for steps given as bare shares
          min_samples: 0
          metrics:                  # from the join stage's quality state (labelled predictions)
            - {name: error_rate, tolerance: 0.1}                 # relative margin: 10 % of the baseline rate
            - {name: log_loss, tolerance: 0.05}
          latency: {quantile: 0.95, tolerance: 1.2, min_samples: 500}   # or `latency: false`
          max_invariant_violations: 0                           # null: ignore invariants
          alpha: 0.05
          tuning_n: 10000
          evaluate_every: 30s       # at most one decision per ladder this often (processing time)
        churn_bg:
          model: churn
          strategy: blue_green      # one 100 % step with the same checks
          baseline: v7
          canary: v9
          metrics: [{name: error_rate, tolerance: 0.1}]
      shadows:
        churn_v10:
          model: churn
          shadow: v10               # optional: only this shadow version (default: every shadow)
          primary: v7               # optional: only pairs with this primary version
          pair_horizon: 5m          # join stage: how long a prediction waits for its partner
          label_horizon: 1d         # join stage: how long a pair waits for its label (null: no labels)
          alpha: 0.05

Canary metrics (from the quality state of labelled predictions): classification
``error_rate``, ``accuracy``, ``log_loss``, ``brier``; regression ``mae``, ``mse``,
``mape``; any model: ``complaint_rate``, ``correction_rate`` (share of predictions
with such feedback) and ``rating`` (mean rating).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import parse_duration
from .canary import CanaryConfig, CanaryMetric, CanaryStep
from .outcomes import AGGREGATIONS, ExperimentOutcomes, OutcomeJoiner, OutcomeMetric
from .stats import CORRECTIONS, MEAN, PROPORTION, AnalysisConfig, MetricConfig, Sequential

# Canary metric -> (kind, higher_is_better, model outputs it applies to).
_CLS, _REG, _ANY = ("binary", "multiclass"), ("regression",), ("binary", "multiclass", "regression")
CANARY_METRICS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "error_rate": (PROPORTION, False, _CLS),
    "accuracy": (PROPORTION, True, _CLS),
    "log_loss": (MEAN, False, _CLS),
    "brier": (MEAN, False, _CLS),
    "mae": (MEAN, False, _REG),
    "mse": (MEAN, False, _REG),
    "mape": (MEAN, False, _REG),
    "complaint_rate": (PROPORTION, False, _ANY),
    "correction_rate": (PROPORTION, False, _ANY),
    "rating": (MEAN, True, _ANY),
}
DIRECTIONS = {"higher": True, "lower": False}


class ExperimentsConfigError(ValueError):
    """The experiments section is invalid; the message names the field (``experiments.ab.x.metrics[0].name``)."""


@dataclass(frozen=True)
class ABSpec:
    """One A/B experiment: what the join stage tracks and how the analysis stage analyses it."""

    name: str
    model: str | None
    outcomes: ExperimentOutcomes
    analysis: AnalysisConfig
    horizon_s: float | None = None      # this experiment's attribution window, if set
    evaluate_every: float = 10.0


@dataclass(frozen=True)
class CanarySpec:
    """One canary (or blue/green) ladder of ``model``; ``evaluate_every`` throttles decisions."""

    name: str
    model: str
    ladder: CanaryConfig
    strategy: str = "canary"
    evaluate_every: float = 30.0


@dataclass(frozen=True)
class ShadowSpec:
    """A shadow comparison of ``model``: the join pairs primary and shadow by prediction id."""

    name: str
    model: str
    task: str                      # classification | regression (from the model's output)
    shadow: str | None = None      # only this shadow version (None: any)
    primary: str | None = None     # only this primary version (None: any)
    pair_horizon_s: float = 300.0
    label_horizon_s: float | None = 86400.0
    alpha: float = 0.05
    evaluate_every: float = 10.0

    def matches(self, model: str, primary: str, shadow: str) -> bool:
        return (model == self.model and (self.shadow is None or shadow == self.shadow)
                and (self.primary is None or primary == self.primary))


@dataclass(frozen=True)
class ExperimentsConfig:
    ab: dict[str, ABSpec] = field(default_factory=dict)
    canaries: dict[str, CanarySpec] = field(default_factory=dict)
    shadows: dict[str, ShadowSpec] = field(default_factory=dict)
    attribution_horizon_s: float = 7 * 86400.0
    max_units: int = 200_000
    skew_s: float = 0.0

    def outcomes(self) -> list[ExperimentOutcomes]:
        return [spec.outcomes for spec in self.ab.values()]

    def outcome_joiner(self) -> OutcomeJoiner:
        """A fresh joiner for one join partition (exposures ⨝ outcomes by unit)."""
        return OutcomeJoiner(self.outcomes(), self.attribution_horizon_s, self.max_units, self.skew_s)

    def canaries_of(self, model: str) -> list[CanarySpec]:
        return [c for c in self.canaries.values() if c.model == model]

    def shadow_for(self, model: str, primary: str, shadow: str) -> ShadowSpec | None:
        """The first configured shadow comparison covering this pair (None: not configured)."""
        for spec in self.shadows.values():
            if spec.matches(model, primary, shadow):
                return spec
        return None


# ------------------------------------------------------------------------------------ helpers
_SECTIONS = ("attribution", "ab", "canaries", "shadows", "max_units", "clock_skew")
_KIND_AGGREGATION = {"proportion": "any", "mean": "sum", "count": "count"}


def _fail(where: str, message: str) -> ExperimentsConfigError:
    return ExperimentsConfigError(f"{where}: {message}")


def _mapping(value: Any, where: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}")
    return value


def _known(d: Mapping, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown}; allowed: {list(allowed)}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise _fail(where, f"expected a non-empty string of at most 128 characters, got {value!r}")
    return value


def _number(value: Any, where: str, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"expected a number, got {value!r}")
    x = float(value)
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise _fail(where, f"must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and (x > hi or (hi_open and x == hi)):
        raise _fail(where, f"must be {'<' if hi_open else '<='} {hi:g}, got {value!r}")
    return x


def _int(value: Any, where: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _fail(where, f"expected an integer >= {lo}, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, got {value!r}")
    return value


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise _fail(where, str(exc)) from None


def _direction(value: Any, where: str) -> bool:
    if value not in DIRECTIONS:
        raise _fail(where, f"expected 'higher' or 'lower' (which way is better), got {value!r}")
    return DIRECTIONS[value]


def _model(value: Any, models: Mapping[str, Any] | None, where: str) -> str:
    name = _name(value, where)
    if models is not None and name not in models:
        raise _fail(where, f"unknown model {name!r}; declared models: {sorted(models)}")
    return name


def _output_kind(models: Mapping[str, Any] | None, model: str) -> str | None:
    if models is None:
        return None
    m = models[model]
    return m.get("output") if isinstance(m, Mapping) else getattr(m, "output", None)


# ------------------------------------------------------------------------------------ sections
_AB_FIELDS = ("model", "variants", "weights", "baseline", "metrics", "alpha", "sequential", "tuning_n",
              "correction", "srm_alpha", "attribution", "horizon", "kind", "evaluate_every")


def _parse_ab(name: str, d: Mapping, models: Mapping[str, Any] | None) -> ABSpec:
    w = f"experiments.ab.{name}"
    d = _mapping(d, w)
    _known(d, _AB_FIELDS, w)
    model = _model(d["model"], models, f"{w}.model") if d.get("model") is not None else None
    raw = d.get("variants")
    if isinstance(raw, Mapping):
        if "weights" in d:
            raise _fail(f"{w}.weights", "give weights either in `variants: {name: weight}` or here, not both")
        variants = tuple(_name(v, f"{w}.variants") for v in raw)
        weights = tuple(_number(x, f"{w}.variants.{v}", 0.0) for v, x in raw.items())
    elif isinstance(raw, list):
        variants = tuple(_name(v, f"{w}.variants[{i}]") for i, v in enumerate(raw))
        ws = d.get("weights")
        if ws is None:
            weights = None
        elif not isinstance(ws, list) or len(ws) != len(variants):
            raise _fail(f"{w}.weights", f"expected a list of {len(variants)} numbers (one per variant)")
        else:
            weights = tuple(_number(x, f"{w}.weights[{i}]", 0.0) for i, x in enumerate(ws))
    else:
        raise _fail(f"{w}.variants", "required: a list of variant names or a mapping name: weight")
    if len(variants) < 2:
        raise _fail(f"{w}.variants", f"an experiment needs at least 2 variants, got {list(variants)}")
    if len(set(variants)) != len(variants):
        raise _fail(f"{w}.variants", f"variant names must be unique, got {list(variants)}")
    if weights is not None and not 0.99 <= sum(weights) <= 1.01:
        raise _fail(f"{w}.variants", f"weights must sum to 1, got {sum(weights):g}")
    baseline = d.get("baseline")
    if baseline is not None and baseline not in variants:
        raise _fail(f"{w}.baseline", f"{baseline!r} is not one of the variants {list(variants)}")
    metrics_raw = d.get("metrics")
    if isinstance(metrics_raw, Mapping):   # {name: {aggregation: ...}} or {name: kind}
        metrics_raw = [{"name": k, **v} if isinstance(v, Mapping) else {"name": k} if v is None
                       else {"name": k, "kind": v} for k, v in metrics_raw.items()]
    if not isinstance(metrics_raw, list) or not metrics_raw:
        raise _fail(f"{w}.metrics", "required: a non-empty list of {name, aggregation, direction}")
    outcome_metrics, analysis_metrics = [], []
    for i, m in enumerate(metrics_raw):
        mw = f"{w}.metrics[{i}]"
        m = {"name": m} if isinstance(m, str) else _mapping(m, mw)
        _known(m, ("name", "aggregation", "kind", "direction"), mw)
        mname = _name(m.get("name"), f"{mw}.name")
        if "kind" in m and "aggregation" not in m:
            if m["kind"] not in _KIND_AGGREGATION:
                raise _fail(f"{mw}.kind", f"expected one of {list(_KIND_AGGREGATION)}, got {m['kind']!r}")
        agg = m.get("aggregation", _KIND_AGGREGATION.get(m.get("kind"), "sum"))
        if agg not in AGGREGATIONS:
            raise _fail(f"{mw}.aggregation", f"expected one of {list(AGGREGATIONS)}, got {agg!r}")
        om = OutcomeMetric(mname, agg)
        outcome_metrics.append(om)
        higher = _direction(m["direction"], f"{mw}.direction") if "direction" in m else True
        analysis_metrics.append(MetricConfig(mname, om.kind, higher))
    names = [m.name for m in outcome_metrics]
    if len(set(names)) != len(names):
        raise _fail(f"{w}.metrics", f"metric names must be unique, got {names}")
    alpha = _number(d.get("alpha", 0.05), f"{w}.alpha", 0, 1, True, True)
    sequential = _bool(d.get("sequential", True), f"{w}.sequential")
    tuning_n = _number(d.get("tuning_n", 5000.0), f"{w}.tuning_n", 0, lo_open=True)
    correction = d.get("correction", "holm")
    if correction not in CORRECTIONS:
        raise _fail(f"{w}.correction", f"expected one of {list(CORRECTIONS)}, got {correction!r}")
    srm_alpha = _number(d.get("srm_alpha", 0.001), f"{w}.srm_alpha", 0, 1, True, True)
    analysis = AnalysisConfig(name, variants, tuple(analysis_metrics), weights, baseline, alpha,
                              Sequential(tuning_n) if sequential else None, correction, srm_alpha)
    horizon = None
    for f in ("attribution", "horizon"):
        if d.get(f) is not None:
            horizon = _duration(d[f], f"{w}.{f}")
            if horizon <= 0:
                raise _fail(f"{w}.{f}", "the attribution window must be > 0")
    every = _duration(d.get("evaluate_every", 10), f"{w}.evaluate_every")
    return ABSpec(name, model, ExperimentOutcomes(name, variants, tuple(outcome_metrics)), analysis, horizon, every)


_STEP_FIELDS = ("traffic", "min_duration", "min_samples", "max_duration")
_CANARY_FIELDS = ("model", "strategy", "kind", "baseline", "canary", "steps", "min_duration", "min_samples",
                  "max_duration", "metrics", "latency", "max_invariant_violations", "alpha", "tuning_n",
                  "min_samples_for_rollback", "evaluate_every")


def _parse_step(s: Any, where: str, defaults: dict) -> CanaryStep:
    if not isinstance(s, Mapping):
        s = {"traffic": s}
    _known(s, _STEP_FIELDS, where)
    if "traffic" not in s:
        raise _fail(f"{where}.traffic", "required: the canary's traffic share in (0, 1]")
    traffic = _number(s["traffic"], f"{where}.traffic", 0, 1, lo_open=True)
    min_d = _duration(s["min_duration"], f"{where}.min_duration") if "min_duration" in s else defaults["min_duration"]
    min_n = _int(s["min_samples"], f"{where}.min_samples") if "min_samples" in s else defaults["min_samples"]
    max_d = (_duration(s["max_duration"], f"{where}.max_duration") if s.get("max_duration") is not None
             else defaults["max_duration"])
    if max_d is not None and max_d < min_d:
        raise _fail(f"{where}.max_duration", f"must be >= min_duration ({min_d:g} s)")
    return CanaryStep(traffic, min_d, min_n, max_d)


def _parse_canary(name: str, d: Mapping, models: Mapping[str, Any] | None) -> CanarySpec:
    w = f"experiments.canaries.{name}"
    d = _mapping(d, w)
    _known(d, _CANARY_FIELDS, w)
    if "model" not in d:
        raise _fail(f"{w}.model", "required: the model whose versions are compared")
    model = _model(d["model"], models, f"{w}.model")
    output = _output_kind(models, model)
    strategy = d.get("strategy") or {"blue_green": "blue_green", "bluegreen": "blue_green"}.get(
        str(d.get("kind", "canary")).lower(), "canary")
    if strategy not in ("canary", "blue_green"):
        raise _fail(f"{w}.strategy", f"expected 'canary' or 'blue_green', got {strategy!r}")
    for f in ("baseline", "canary"):
        if f not in d:
            raise _fail(f"{w}.{f}", "required: a model version")
    baseline = _name(d["baseline"], f"{w}.baseline")
    canary = _name(d["canary"], f"{w}.canary")
    if baseline == canary:
        raise _fail(f"{w}.canary", f"must differ from the baseline ({baseline!r})")
    defaults = {"min_duration": _duration(d.get("min_duration", 0), f"{w}.min_duration"),
                "min_samples": _int(d.get("min_samples", 0), f"{w}.min_samples"),
                "max_duration": (_duration(d["max_duration"], f"{w}.max_duration")
                                 if d.get("max_duration") is not None else None)}
    if strategy == "blue_green":
        if "steps" in d:
            raise _fail(f"{w}.steps", "blue_green has a single 100 % step; use min_duration / min_samples")
        steps = (_parse_step(1.0, f"{w}.steps[0]", defaults),)
    else:
        raw = d.get("steps")
        if not isinstance(raw, list) or not raw:
            raise _fail(f"{w}.steps", "required: a non-empty list of traffic shares or step mappings")
        steps = tuple(_parse_step(s, f"{w}.steps[{i}]", defaults) for i, s in enumerate(raw))
        shares = [s.traffic for s in steps]
        if any(b <= a for a, b in zip(shares, shares[1:])):
            raise _fail(f"{w}.steps", f"traffic must increase step by step, got {shares}")
    metrics_raw = d.get("metrics")
    if not isinstance(metrics_raw, list) or not metrics_raw:
        raise _fail(f"{w}.metrics", f"required: a non-empty list of {{name, tolerance}}; names: "
                                    f"{sorted(CANARY_METRICS)}")
    metrics = []
    for i, m in enumerate(metrics_raw):
        mw = f"{w}.metrics[{i}]"
        m = {"name": m} if isinstance(m, str) else _mapping(m, mw)
        _known(m, ("name", "tolerance", "relative", "direction"), mw)
        mname = m.get("name")
        if mname not in CANARY_METRICS:
            raise _fail(f"{mw}.name", f"unknown canary metric {mname!r}; known: {sorted(CANARY_METRICS)}")
        kind, higher, outputs = CANARY_METRICS[mname]
        if output is not None and output not in outputs:
            raise _fail(f"{mw}.name", f"{mname} needs a {'/'.join(outputs)} model; {model} is {output}")
        if "direction" in m:
            higher = _direction(m["direction"], f"{mw}.direction")
        tol = _number(m.get("tolerance", 0.05), f"{mw}.tolerance", 0, lo_open=True)
        relative = _bool(m.get("relative", True), f"{mw}.relative")
        metrics.append(CanaryMetric(mname, kind, higher, tol, relative))
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise _fail(f"{w}.metrics", f"metric names must be unique, got {names}")
    lat = d.get("latency", {})
    if lat is False or lat is None:
        lat_q, lat_tol, lat_n = 0.95, None, 500
    else:
        lw = f"{w}.latency"
        lat = _mapping(lat, lw)
        _known(lat, ("quantile", "tolerance", "min_samples"), lw)
        lat_q = _number(lat.get("quantile", 0.95), f"{lw}.quantile", 0, 1, True, True)
        lat_tol = _number(lat.get("tolerance", 1.2), f"{lw}.tolerance", 0, lo_open=True)
        lat_n = _int(lat.get("min_samples", 500), f"{lw}.min_samples", 1)
    inv = d.get("max_invariant_violations", 0)
    inv = None if inv is None else _int(inv, f"{w}.max_invariant_violations")
    ladder = CanaryConfig(
        name, baseline, canary, steps, tuple(metrics),
        alpha=_number(d.get("alpha", 0.05), f"{w}.alpha", 0, 1, True, True),
        tuning_n=_number(d.get("tuning_n", 10_000.0), f"{w}.tuning_n", 0, lo_open=True),
        min_samples_for_rollback=_int(d.get("min_samples_for_rollback", 100), f"{w}.min_samples_for_rollback", 2),
        max_invariant_violations=inv, latency_quantile=lat_q, latency_tolerance=lat_tol, min_latency_samples=lat_n)
    every = _duration(d.get("evaluate_every", 30), f"{w}.evaluate_every")
    return CanarySpec(name, model, ladder, strategy, every)


_SHADOW_FIELDS = ("model", "shadow", "primary", "task", "pair_horizon", "label_horizon", "alpha", "kind",
                  "evaluate_every")


def _parse_shadow(name: str, d: Mapping, models: Mapping[str, Any] | None) -> ShadowSpec:
    w = f"experiments.shadows.{name}"
    d = _mapping(d, w)
    _known(d, _SHADOW_FIELDS, w)
    if "model" not in d:
        raise _fail(f"{w}.model", "required: the model whose shadow is compared")
    model = _model(d["model"], models, f"{w}.model")
    output = _output_kind(models, model)
    task = d.get("task") or ("regression" if output == "regression" else "classification")
    if task not in ("classification", "regression"):
        raise _fail(f"{w}.task", f"expected classification or regression, got {task!r}")
    shadow = _name(d["shadow"], f"{w}.shadow") if d.get("shadow") is not None else None
    primary = _name(d["primary"], f"{w}.primary") if d.get("primary") is not None else None
    pair = _duration(d.get("pair_horizon", 300), f"{w}.pair_horizon")
    if pair <= 0:
        raise _fail(f"{w}.pair_horizon", "must be > 0")
    label = d.get("label_horizon", 86400)
    label = None if label is None else _duration(label, f"{w}.label_horizon")
    if label is not None and label <= 0:
        raise _fail(f"{w}.label_horizon", "must be > 0 (or null to not track labels)")
    alpha = _number(d.get("alpha", 0.05), f"{w}.alpha", 0, 1, True, True)
    every = _duration(d.get("evaluate_every", 10), f"{w}.evaluate_every")
    return ShadowSpec(name, model, task, shadow, primary, pair, label, alpha, every)


def parse_experiments(section: Mapping[str, Any] | None, models: Mapping[str, Any] | None = None
                      ) -> ExperimentsConfig:
    """Validate ``config.experiments`` against the declared ``models`` (``config.models``; None
    skips the model checks). Raises :class:`ExperimentsConfigError` naming the field.

    >>> cfg = parse_experiments({"ab": {"exp": {"variants": ["a", "b"], "metrics": ["revenue"]}}})
    >>> cfg.ab["exp"].analysis.variants, cfg.outcome_joiner().config["exp"].metrics[0].aggregation
    (('a', 'b'), 'sum')
    """
    section = _mapping(section, "experiments")
    ab_raw = dict(_mapping(section.get("ab"), "experiments.ab"))
    canary_raw = dict(_mapping(section.get("canaries"), "experiments.canaries"))
    shadow_raw = dict(_mapping(section.get("shadows"), "experiments.shadows"))
    # Also accepted (the join stage's shorthand): entries directly under `experiments:`, routed
    # by `kind: ab | canary | blue_green | shadow` (default ab).
    for name, entry in section.items():
        if name in _SECTIONS:
            continue
        if not isinstance(entry, Mapping):
            raise _fail(f"experiments.{name}", f"unknown field; expected one of {list(_SECTIONS)} "
                                                "or an experiment (a mapping)")
        kind = str(entry.get("kind", "ab")).lower()
        target = {"ab": ab_raw, "canary": canary_raw, "blue_green": canary_raw, "bluegreen": canary_raw,
                  "shadow": shadow_raw}.get(kind)
        if target is None:
            raise _fail(f"experiments.{name}.kind", f"expected ab, canary, blue_green or shadow, got {kind!r}")
        if name in target:
            raise _fail(f"experiments.{name}", "defined twice")
        target[name] = entry
    att = _mapping(section.get("attribution"), "experiments.attribution")
    _known(att, ("horizon", "max_units", "skew"), "experiments.attribution")
    ab = {_name(n, "experiments.ab"): _parse_ab(n, d, models) for n, d in ab_raw.items()}
    canaries = {_name(n, "experiments.canaries"): _parse_canary(n, d, models) for n, d in canary_raw.items()}
    shadows = {_name(n, "experiments.shadows"): _parse_shadow(n, d, models) for n, d in shadow_raw.items()}
    if "horizon" in att:
        horizon = _duration(att["horizon"], "experiments.attribution.horizon")
        if horizon <= 0:
            raise _fail("experiments.attribution.horizon", "must be > 0")
    else:  # one attribution window per joiner: the longest configured
        horizon = max((a.horizon_s for a in ab.values() if a.horizon_s is not None), default=7 * 86400.0)
    max_units = _int(att.get("max_units", section.get("max_units", 200_000)), "experiments.attribution.max_units", 1)
    skew = _duration(att.get("skew", section.get("clock_skew", 0)), "experiments.attribution.skew")
    return ExperimentsConfig(ab, canaries, shadows, horizon, max_units, skew)
