"""The experiments analyser: A/B results, canary / blue-green ladders, shadow comparisons.

Consumes summaries-topic records (see the stage architecture) and, per tick, evaluates what changed:

* ``experiment_partial`` — cumulative :class:`~prodlens.experiments.stats.ExperimentStats` of one
  experiment from each join partition, merged exactly with a :class:`PartialStore`; analysed with
  :func:`~prodlens.experiments.stats.analyze_experiment` (sequential by default, Holm/BH, SRM at
  p < ``srm_alpha``) into an ``experiment_result`` record on the summaries topic (key
  ``experiment/<name>``) — :func:`result_from_record` gives the CLI its ExperimentResult back;
* ``quality_partial`` / ``window_summary`` / ``invariant_window`` — the canary ladder's inputs per
  (model, version): metric :class:`~prodlens.experiments.stats.Moments` from the quality state of each
  window, merged over segments and sources and pooled since the ladder started; the latency DDSketch
  of the windows of the current step; the canary's invariant violations since the start. Each
  evaluation's :class:`~prodlens.experiments.canary.Decision` goes to the decisions topic (key = model;
  ``schemas/decision.v1.json``); apps follow it with :class:`~prodlens.experiments.assignment.CanaryTraffic`;
* ``shadow_partial`` — cumulative ShadowStats per (model, primary, shadow, segment) merged over join
  partitions, per segment and ``__all__``, into ``shadow_result`` records and gauges.

Clocks. The ladder runs on **event time**: its clock is the newest window end seen for its versions,
so step durations, the decision timestamp and which windows belong to a step are deterministic
and a replay after a restart decides the same way. Processing time (``now``) only paces the
evaluations (``settle`` seconds after the last update, at most one per ``evaluate_every``).

Memory. Per ladder, live windows are kept per (version, window) × source/segment until they are
older than their retention (quality: ``quality.horizon + quality.window + quality.grace`` — the
join stops updating them then; latency and invariants: ``2 * (window.length +
window.allowed_lateness) + 5 min``), then folded into a running total; a partial for an already
folded window is ignored and counted (``records_ignored{reason="retired"}``). So state grows with
versions × segments × sources × retained windows, never with events.

Error bounds: counts and sums are exact (float rounding ~1e-16 relative; quality means are
converted from Welford moments, ``Σx = n·mean``, ``Σx² = M2 + n·mean²``, exact up to the same
rounding); latency quantiles carry DDSketch's relative error (1 %); the statistics' bounds are
those of :mod:`prodlens.experiments.stats` / :mod:`~prodlens.experiments.canary` / ``shadow``
(asymptotic CS, normal approximations, Wilson intervals).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..config import Config, parse_duration
from ..experiments.canary import INSUFFICIENT_DATA, PROMOTED, ROLLED_BACK, CanaryLadder, Decision
from ..experiments.config import CanarySpec, ExperimentsConfig, parse_experiments
from ..experiments.report import canary_samples, experiment_samples, shadow_samples
from ..experiments.shadow import ShadowResult, ShadowStats
from ..experiments.stats import ExperimentResult, ExperimentStats, Moments, analyze_experiment
from ..quality.windows import ModelSpec, WindowQuality
from ..sketches.ddsketch import DDSketch
from .partials import PartialStore

Emit = tuple[str, bytes, dict]
S = TypeVar("S")
ALL = "__all__"
_LADDER = ("model", "ladder", "baseline", "canary")
_EXP_VAR = ("experiment", "metric", "variant")
_SHADOW = ("model", "version", "primary_version", "segment")

METRICS: dict[str, tuple[str, ...]] = {
    # A/B: prodlens.experiments.report.experiment_samples
    "prodlens_experiment_exposures": ("experiment", "variant"),
    "prodlens_experiment_srm_p_value": ("experiment",),
    "prodlens_experiment_srm_alarm": ("experiment",),
    "prodlens_experiment_decision": ("experiment", "decision"),
    **{f"prodlens_experiment_{n}": _EXP_VAR for n in (
        "units", "mean", "mean_ci_low", "mean_ci_high", "lift_absolute", "lift_absolute_ci_low",
        "lift_absolute_ci_high", "lift_relative", "lift_relative_ci_low", "lift_relative_ci_high", "p_value",
        "p_value_adjusted", "chance_to_beat", "significant")},
    # canary: report.canary_samples (+ model)
    "prodlens_canary_traffic": _LADDER,
    "prodlens_canary_step": _LADDER,
    "prodlens_canary_decision_timestamp_seconds": _LADDER,
    "prodlens_canary_decision": _LADDER + ("action",),
    "prodlens_canary_status": _LADDER + ("status",),
    "prodlens_canary_harm": _LADDER + ("metric",),
    "prodlens_canary_harm_ci_low": _LADDER + ("metric",),
    "prodlens_canary_harm_ci_high": _LADDER + ("metric",),
    "prodlens_canary_tolerance": _LADDER + ("metric",),
    "prodlens_canary_latency_ratio": _LADDER,
    # shadow: report.shadow_samples, labelled by model, shadow version, primary version, segment
    "prodlens_shadow_pairs": _SHADOW,
    "prodlens_shadow_labelled": _SHADOW,
    "prodlens_shadow_latency_ms": _SHADOW + ("side", "quantile"),
    "prodlens_shadow_disagreement_rate": _SHADOW,
    "prodlens_shadow_disagreement_rate_ci_low": _SHADOW,
    "prodlens_shadow_disagreement_rate_ci_high": _SHADOW,
    "prodlens_shadow_accuracy": _SHADOW + ("side",),
    "prodlens_shadow_diff_mean": _SHADOW,
    "prodlens_shadow_diff_mean_ci_low": _SHADOW,
    "prodlens_shadow_diff_mean_ci_high": _SHADOW,
    "prodlens_shadow_abs_diff": _SHADOW + ("quantile",),
    "prodlens_shadow_mae": _SHADOW + ("side",),
    # bookkeeping
    "prodlens_experiment_records_ignored_total": ("type", "reason"),
}

_HELP = {"prodlens_experiment_records_ignored_total": "summaries records the experiments analyser could not use"}


# ------------------------------------------------------------------------------------ records
def result_from_record(record: Mapping[str, Any]) -> ExperimentResult:
    """The :class:`ExperimentResult` of an ``experiment_result`` record (for ``prodlens report``)."""
    if record.get("type") != "experiment_result":
        raise ValueError(f"type: expected 'experiment_result', got {record.get('type')!r}")
    return ExperimentResult.from_dict(record["result"])


def decision_from_record(record: Mapping[str, Any]) -> Decision:
    """The canary :class:`Decision` of a decisions-topic record."""
    if record.get("type") != "canary_decision":
        raise ValueError(f"type: expected 'canary_decision', got {record.get('type')!r}")
    return Decision.from_dict(record)


def shadow_result_from_record(record: Mapping[str, Any]) -> tuple[str, ShadowResult]:
    """``(key, ShadowResult)`` of a ``shadow_result`` record; key ``model|segment``."""
    if record.get("type") != "shadow_result":
        raise ValueError(f"type: expected 'shadow_result', got {record.get('type')!r}")
    result = ShadowResult.from_dict(record["result"])
    return result.key, result


# ------------------------------------------------------------------------------------ quality -> moments
def _from_welford(d: Any) -> Moments:
    """prodlens.quality Moments (n, mean, M2) as experiment Moments (n, Σx, Σx²)."""
    n, mean, m2 = d.n, d.mean, d.m2
    return Moments(n, n * mean, m2 + n * mean * mean) if n else Moments()


def quality_moments(state: Mapping[str, Any], spec: ModelSpec, metrics: Iterable[str]) -> dict[str, Moments]:
    """Per-metric Moments of one WindowQuality state (``quality_partial["state"]``) for the canary
    metrics named (see :data:`prodlens.experiments.config.CANARY_METRICS`)."""
    wq = WindowQuality.from_dict(dict(state), spec)
    wq.flush()
    fb = wq.feedback
    out: dict[str, Moments] = {}
    for name in metrics:
        if name in ("error_rate", "accuracy") and wq.classification is not None:
            c = wq.classification.confusion
            n, correct = int(c.sum()), int(c.trace()) if c.size else 0
            out[name] = Moments.from_counts(n - correct if name == "error_rate" else correct, n)
        elif name in ("log_loss", "brier") and wq.classification is not None:
            out[name] = _from_welford(getattr(wq.classification, name))
        elif name in ("mae", "mse", "mape") and wq.regression is not None:
            attr = {"mae": "abs_error", "mse": "sq_error", "mape": "ape"}[name]
            out[name] = _from_welford(getattr(wq.regression, attr))
        elif name in ("complaint_rate", "correction_rate"):
            kind = name.removesuffix("_rate")
            n = fb.predictions
            out[name] = Moments.from_counts(min(fb.units[kind], n), n)
        elif name == "rating":
            out[name] = _from_welford(fb.ratings)
        else:
            out[name] = Moments()
    return out


def _add_moments(into: dict[str, Moments] | None, other: dict[str, Moments]) -> dict[str, Moments]:
    into = {} if into is None else into
    for k, m in other.items():
        into.setdefault(k, Moments()).merge(m)
    return into


def _add_sketch(into: DDSketch | None, other: DDSketch) -> DDSketch:
    if into is None:
        return DDSketch.from_dict(other.to_dict())
    return into.merge(other)


def _add_int(into: int | None, other: int) -> int:
    return (into or 0) + other


_CODECS: dict[str, tuple[Callable, Callable, Callable]] = {
    "quality": (_add_moments, lambda s: {k: m.to_dict() for k, m in s.items()},
                lambda d: {k: Moments.from_dict(m) for k, m in d.items()}),
    "latency": (_add_sketch, lambda s: s.to_dict(), DDSketch.from_dict),
    "invariants": (_add_int, lambda s: s, int),
}


class Accrual(Generic[S]):
    """Partials per (version, window) × source, folded into a running total per version once a
    window is older than ``retention`` (event time behind the newest window end seen).

    ``since`` (a window start) selects what counts: live windows starting before it are
    excluded, and they are discarded rather than folded when they retire. Exact: each
    (window, source) partial counts once, its latest version (idempotent re-delivery)."""

    def __init__(self, kind: str, retention: float):
        self.kind = kind
        self.add, self._enc, self._dec = _CODECS[kind]
        self.retention = float(retention)
        self.store: PartialStore[S] = PartialStore(settle=0.0)
        self.folded: dict[str, S] = {}
        self.retired_before: float | None = None   # windows ending at or before this are folded
        self.watermark: float | None = None        # newest window end seen

    def put(self, version: str, start: float, end: float, source: str, seq: int, state: S, now: float) -> bool:
        if self.retired_before is not None and end <= self.retired_before:
            return False
        self.watermark = end if self.watermark is None else max(self.watermark, end)
        return self.store.put((version, float(start), float(end)), source, seq, state, now)

    def total(self, version: str, since: float | None) -> S | None:
        acc = self.add(None, self.folded[version]) if version in self.folded else None  # a copy
        for key in self.store.keys():
            if key[0] == version and since is not None and key[1] >= since:
                for state in self.store.states(key):
                    acc = self.add(acc, state)
        return acc

    def retire(self, since: float | None) -> None:
        """Fold windows older than the retention (those starting at or after ``since``)."""
        self.store.due(math.inf)  # evaluation bookkeeping is the analyser's, not the store's
        if self.watermark is None:
            return
        limit = self.watermark - self.retention
        if self.retired_before is not None and limit <= self.retired_before:
            return
        old = [k for k in self.store.keys() if k[2] <= limit]
        for key in old:
            if since is not None and key[1] >= since:
                for state in self.store.states(key):
                    self.folded[key[0]] = self.add(self.folded.get(key[0]), state)
        self.store.drop(old)
        self.retired_before = limit

    def reset_folded(self) -> None:
        self.folded.clear()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "retention": self.retention, "store": self.store.to_dict(self._enc),
                "folded": {v: self._enc(s) for v, s in self.folded.items()},
                "retired_before": self.retired_before, "watermark": self.watermark}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Accrual":
        a = cls(d["kind"], d["retention"])
        a.store = PartialStore.from_dict(d["store"], a._dec)
        a.folded = {v: a._dec(s) for v, s in d["folded"].items()}
        a.retired_before, a.watermark = d["retired_before"], d["watermark"]
        return a


# ------------------------------------------------------------------------------------ ladders
class LadderRun:
    """One configured ladder's state in the analyser: the CanaryLadder plus its inputs."""

    def __init__(self, spec: CanarySpec, quality_retention: float, window_retention: float):
        self.spec = spec
        self.ladder = CanaryLadder(spec.ladder)
        self.quality: Accrual = Accrual("quality", quality_retention)
        self.latency: Accrual = Accrual("latency", window_retention)
        self.invariants: Accrual = Accrual("invariants", window_retention)
        self.start_window: float | None = None   # first canary window start: the ladder's data start
        self.step_window: float | None = None    # event time the current step started
        self.dirty_at: float | None = None       # processing time of the last unevaluated update
        self.last_eval: float | None = None
        self.evaluations = 0

    @property
    def done(self) -> bool:
        return self.ladder.status in (ROLLED_BACK, PROMOTED)

    @property
    def seen(self) -> bool:
        """Has this ladder's model reached this analyser (this summaries partition) at all?"""
        return self.ladder.last_decision is not None or self.clock is not None

    @property
    def clock(self) -> float | None:
        marks = [a.watermark for a in (self.quality, self.latency, self.invariants) if a.watermark is not None]
        return max(marks) if marks else None

    def _started(self, start: float) -> None:
        start = float(start)
        if self.start_window is None:
            self.start_window = self.step_window = start
            self.ladder.start(start)
        elif start < self.start_window:
            # Partials of different windows arrive in any order (several join / ingest partitions):
            # the ladder's data start is the EARLIEST canary window, whichever came first.
            if self.ladder.step == 0 and self.step_window == self.start_window:
                self.step_window = start
                if self.ladder.step_started_at == self.ladder.started_at:
                    self.ladder.step_started_at = start
            self.ladder.started_at = min(self.ladder.started_at, start)
            self.start_window = start

    def evaluate(self) -> Decision | None:
        if self.start_window is None or self.done:
            return None
        c = self.spec.ladder
        now = self.clock
        names = [m.name for m in c.metrics]
        base = self.quality.total(c.baseline, self.start_window) or {}
        can = self.quality.total(c.canary, self.start_window) or {}
        base = {n: base.get(n, Moments()) for n in names}
        can = {n: can.get(n, Moments()) for n in names}
        step = self.ladder.step
        decision = self.ladder.evaluate(
            now, base, can, baseline_latency=self.latency.total(c.baseline, self.step_window),
            canary_latency=self.latency.total(c.canary, self.step_window),
            invariant_violations=int(self.invariants.total(c.canary, self.start_window) or 0))
        self.evaluations += 1
        if self.ladder.step != step:   # a new step: latency is judged on its own windows
            self.step_window = now
            self.latency.reset_folded()
        if self.done:                  # terminal: the inputs are no longer needed
            for acc in (self.quality, self.latency, self.invariants):
                acc.store = PartialStore(settle=0.0)
                acc.folded.clear()
        return decision

    def retire(self) -> None:
        self.quality.retire(self.start_window)
        self.latency.retire(self.step_window)
        self.invariants.retire(self.start_window)

    def placeholder(self) -> Decision:
        """What the gauges show before the first decision: explicitly not enough data yet."""
        c = self.spec.ladder
        reason = ("no data for the canary version yet" if self.start_window is None
                  else "waiting for the first evaluation")
        return Decision(c.name, c.baseline, c.canary, INSUFFICIENT_DATA, self.ladder.status, self.ladder.step,
                        self.ladder.traffic, math.nan, [reason])

    def to_dict(self) -> dict:
        return {"config": self.spec.ladder.to_dict(), "ladder": self.ladder.to_dict(),
                "quality": self.quality.to_dict(), "latency": self.latency.to_dict(),
                "invariants": self.invariants.to_dict(), "start_window": self.start_window,
                "step_window": self.step_window, "dirty_at": self.dirty_at, "last_eval": self.last_eval,
                "evaluations": self.evaluations}

    def restore(self, d: Mapping[str, Any]) -> bool:
        """Restore unless the ladder's configuration changed (then it starts afresh: False)."""
        if d["config"] != self.spec.ladder.to_dict():
            return False
        self.ladder = CanaryLadder.from_dict(d["ladder"])
        self.quality = Accrual.from_dict(d["quality"])
        self.latency = Accrual.from_dict(d["latency"])
        self.invariants = Accrual.from_dict(d["invariants"])
        self.start_window, self.step_window = d["start_window"], d["step_window"]
        self.dirty_at, self.last_eval, self.evaluations = d["dirty_at"], d["last_eval"], d["evaluations"]
        return True


# ------------------------------------------------------------------------------------ the analyser
def _merge_experiment_stats(states: list[ExperimentStats]) -> ExperimentStats:
    out = ExperimentStats()
    for s in states:
        out.merge(s)
    return out


def _merge_shadow(states: list[ShadowStats]) -> ShadowStats:
    out = ShadowStats(states[0].task)
    for s in states:
        out.merge(s)
    return out


def _model_specs(config: Config) -> dict[str, ModelSpec]:
    try:  # one definition with the join stage and the quality analyser
        from .quality import model_specs
        return model_specs(config)
    except ImportError:  # pragma: no cover - the quality analyser ships with this package
        return {name: ModelSpec("regression" if m.output == "regression" else "classification")
                for name, m in config.models.items()}


class ExperimentAnalyser:
    """Analysis-stage analyser for A/B experiments, canary ladders and shadow releases."""

    types = frozenset({"experiment_partial", "quality_partial", "window_summary", "invariant_window",
                       "shadow_partial"})

    def __init__(self, config: Config, settle: float = 2.0):
        self.config = config
        self.settings: ExperimentsConfig = parse_experiments(config.experiments, config.models)
        self.settle = float(settle)
        self.specs = _model_specs(config)
        q = config.quality or {}
        qwin = parse_duration(q.get("window", 3600.0))
        qhor = parse_duration(q.get("horizon", 7 * 86400.0))
        qgrace = parse_duration(q.get("grace", 600.0))
        self.quality_retention = qhor + qwin + qgrace
        self.window_retention = 2 * (config.window.length + config.window.allowed_lateness) + 300.0
        self.ab_store: PartialStore[ExperimentStats] = PartialStore(settle)
        self.ab_results: dict[str, ExperimentResult] = {}
        self.shadow_store: PartialStore[ShadowStats] = PartialStore(settle)
        self.shadow_results: dict[tuple[str, str, str, str], ShadowResult] = {}
        self.pending: dict[str, dict[str, Any]] = {"ab": {}, "shadow": {}}   # due keys awaiting their turn
        self.last_eval: dict[str, dict[str, float]] = {"ab": {}, "shadow": {}}
        self.ladders = {name: LadderRun(spec, self.quality_retention, self.window_retention)
                        for name, spec in self.settings.canaries.items()}
        self._by_model: dict[str, list[LadderRun]] = {}
        for run in self.ladders.values():
            self._by_model.setdefault(run.spec.model, []).append(run)
        self.ignored: dict[str, int] = {}   # "type|reason" -> count

    # -- input ------------------------------------------------------------------------------------
    def _ignore(self, record_type: str, reason: str) -> None:
        k = f"{record_type}|{reason}"
        self.ignored[k] = self.ignored.get(k, 0) + 1

    def update(self, key: bytes, record: dict, now: float) -> None:
        rtype = record.get("type", "")
        try:
            source, seq = str(record["source"]), int(record["seq"])
            if rtype == "experiment_partial":
                name = record["experiment"]
                if name not in self.settings.ab:
                    return self._ignore(rtype, "unconfigured")
                self.ab_store.put(name, source, seq, ExperimentStats.from_dict(record["state"]), now)
            elif rtype == "shadow_partial":
                k = (record["model"], record["primary_version"], record["shadow_version"], record["segment"])
                if self.settings.shadows and self.settings.shadow_for(*k[:3]) is None:
                    return self._ignore(rtype, "unconfigured")
                self.shadow_store.put(k, source, seq, ShadowStats.from_dict(record["state"]), now)
            elif rtype in ("quality_partial", "window_summary", "invariant_window"):
                self._ladder_input(rtype, record, source, seq, now)
        except (KeyError, TypeError, ValueError, IndexError):
            self._ignore(rtype, "malformed")

    def _ladder_input(self, rtype: str, record: dict, source: str, seq: int, now: float) -> None:
        runs = self._by_model.get(record["model"])
        if not runs:
            return
        version, start, end = record["version"], float(record["window_start"]), float(record["window_end"])
        sub = f"{source}|{record['segment']}"
        for run in runs:
            c = run.spec.ladder
            if run.done or version not in (c.baseline, c.canary):
                continue
            if rtype == "invariant_window":
                if version != c.canary:
                    continue
                ok = run.invariants.put(version, start, end, f"{sub}|{record['invariant']}", seq,
                                        int(record["violations"]), now)
            elif rtype == "window_summary":
                ok = run.latency.put(version, start, end, sub, seq, DDSketch.from_dict(record["summary"]["latency"]),
                                     now)
            else:
                names = [m.name for m in c.metrics]
                state = quality_moments(record["state"], self.specs.get(record["model"], ModelSpec()), names)
                if version == c.canary and any(m.n for m in state.values()):
                    run._started(start)
                ok = run.quality.put(version, start, end, sub, seq, state, now)
            if version == c.canary and rtype == "window_summary" and record["summary"].get("count"):
                run._started(start)
            if ok:
                run.dirty_at = now
            else:
                self._ignore(rtype, "retired")

    # -- evaluation -------------------------------------------------------------------------------
    def _turn(self, kind: str, keys: Iterable, every: Callable[[Any], float], now: float) -> list:
        pending = self.pending[kind]
        for k in keys:
            pending.setdefault(repr(k), k)
        ready = []
        for rk, k in sorted(pending.items()):
            last = self.last_eval[kind].get(rk)
            if last is None or now - last >= every(k):
                ready.append(k)
                self.last_eval[kind][rk] = now
                del pending[rk]
        return ready

    def tick(self, now: float) -> list[Emit]:
        topics = self.config.topics
        out: list[Emit] = []
        for name in self._turn("ab", self.ab_store.due(now), lambda n: self.settings.ab[n].evaluate_every, now):
            result = analyze_experiment(self.ab_store.merged(name, _merge_experiment_stats),
                                        self.settings.ab[name].analysis)
            self.ab_results[name] = result
            out.append((topics.summaries, f"experiment/{name}".encode(),
                        {"type": "experiment_result", "schema_version": 1, "experiment": name,
                         "timestamp": float(now), "result": result.to_dict()}))
        due_shadow = self._turn("shadow", self.shadow_store.due(now), self._shadow_every, now)
        for view in sorted({k[:3] for k in due_shadow}):
            out.extend(self._evaluate_shadow(view, now))
        for name, run in self.ladders.items():
            if run.dirty_at is None or now - run.dirty_at < self.settle:
                continue
            if run.last_eval is not None and now - run.last_eval < run.spec.evaluate_every:
                continue
            run.dirty_at = None
            run.last_eval = now
            decision = run.evaluate()
            if decision is not None:
                out.append((topics.decisions, run.spec.model.encode(), decision.to_dict()))
            run.retire()
        return out

    def _shadow_every(self, key: tuple) -> float:
        spec = self.settings.shadow_for(*key[:3])
        return spec.evaluate_every if spec is not None else 10.0

    def _evaluate_shadow(self, view: tuple[str, str, str], now: float) -> list[Emit]:
        model, primary, shadow = view
        spec = self.settings.shadow_for(model, primary, shadow)
        alpha = spec.alpha if spec is not None else 0.05
        keys = [k for k in self.shadow_store.keys() if k[:3] == view]
        out: list[Emit] = []
        merged_all: ShadowStats | None = None
        for k in sorted(keys):
            merged = self.shadow_store.merged(k, _merge_shadow)
            merged_all = ShadowStats(merged.task).merge(merged) if merged_all is None else merged_all.merge(merged)
            self.shadow_results[k] = merged.result(f"{model}|{k[3]}", alpha)
        if merged_all is not None and (len(keys) > 1 or keys[0][3] != ALL):
            self.shadow_results[view + (ALL,)] = merged_all.result(f"{model}|{ALL}", alpha)
        for k in sorted({*keys, view + (ALL,)}):
            r = self.shadow_results[k]
            out.append((self.config.topics.summaries, model.encode(),
                        {"type": "shadow_result", "schema_version": 1, "model": model, "primary_version": primary,
                         "shadow_version": shadow, "segment": k[3], "timestamp": float(now),
                         "result": r.to_dict()}))
        return out

    # -- metrics ----------------------------------------------------------------------------------
    def samples(self) -> list:
        """Every gauge sample (name, labels, value) this analyser exports."""
        out = []
        for result in self.ab_results.values():
            out.extend(experiment_samples(result))
        for run in self.ladders.values():
            # Every summaries partition builds every configured ladder, but only the one that owns
            # the model's key gets its records: the others must not export a placeholder series
            # with the same labels (it would shadow or contradict the owner's in Prometheus).
            if not run.seen:
                continue
            decision = run.ladder.last_decision or run.placeholder()
            out.extend(s._replace(labels={"model": run.spec.model, **s.labels}) for s in canary_samples(decision))
        labels = {}
        results = {}
        for (model, primary, shadow, segment), r in self.shadow_results.items():
            k = f"{model}|{primary}|{shadow}|{segment}"
            results[k] = r
            labels[k] = {"model": model, "version": shadow, "primary_version": primary, "segment": segment}
        out.extend(shadow_samples(results, labels))
        return out

    def collect(self) -> Iterable:
        families: dict[str, GaugeMetricFamily] = {}
        for name, labels, value in self.samples():
            names = METRICS[name]
            fam = families.get(name)
            if fam is None:
                fam = families[name] = GaugeMetricFamily(name, name.removeprefix("prodlens_").replace("_", " "),
                                                         labels=names)
            fam.add_metric([str(labels[n]) for n in names], value)
        yield from families.values()
        name = "prodlens_experiment_records_ignored_total"
        counter = CounterMetricFamily(name.removesuffix("_total"), _HELP[name], labels=METRICS[name])
        for k, v in sorted(self.ignored.items()):
            counter.add_metric(k.split("|", 1), v)
        yield counter

    # -- snapshots --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"ab_store": self.ab_store.to_dict(lambda s: s.to_dict()),
                "ab_results": {n: r.to_dict() for n, r in self.ab_results.items()},
                "shadow_store": self.shadow_store.to_dict(lambda s: s.to_dict()),
                "shadow_results": [[list(k), r.to_dict()] for k, r in self.shadow_results.items()],
                "pending": {kind: [[rk, list(k) if isinstance(k, tuple) else k] for rk, k in p.items()]
                            for kind, p in self.pending.items()},
                "last_eval": {kind: dict(d) for kind, d in self.last_eval.items()},
                "ladders": {name: run.to_dict() for name, run in self.ladders.items()},
                "ignored": dict(self.ignored)}

    def restore(self, state: dict) -> None:
        self.ab_store = PartialStore.from_dict(state["ab_store"], ExperimentStats.from_dict)
        self.ab_store.drop([k for k in list(self.ab_store.keys()) if k not in self.settings.ab])
        self.ab_results = {n: ExperimentResult.from_dict(r) for n, r in state["ab_results"].items()
                           if n in self.settings.ab}
        self.shadow_store = PartialStore.from_dict(state["shadow_store"], ShadowStats.from_dict)
        self.shadow_results = {tuple(k): ShadowResult.from_dict(r) for k, r in state["shadow_results"]}
        self.pending = {kind: {rk: tuple(k) if isinstance(k, list) else k for rk, k in p}
                        for kind, p in state["pending"].items()}
        self.last_eval = {kind: dict(d) for kind, d in state["last_eval"].items()}
        for name, d in state["ladders"].items():
            run = self.ladders.get(name)
            if run is not None and not run.restore(d):
                self._ignore("canary_state", "config_changed")
        self.ignored = dict(state["ignored"])
