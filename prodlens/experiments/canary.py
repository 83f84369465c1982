"""Canary releases (and blue/green) as one sequential experiment.

A :class:`CanaryLadder` walks a canary version up traffic steps (e.g. 1 %, 5 %,
20 %, 50 %, 100 %). At every evaluation it compares canary with baseline on the
configured metrics — statistics accumulated over the whole ladder, not per step —
and answers with a :class:`Decision`:

* ``rollback``: a metric is confidently worse, an invariant was violated, or
  latency regressed; traffic goes to 0 at once (the state is terminal);
* ``insufficient_data``: the step's minimum duration or sample is not reached yet,
  or an arm has too few observations to judge — silence is never a failure;
* ``hold``: enough data, but non-inferiority is not established yet;
* ``promote``: minimum duration and sample met, every metric non-inferior and no
  latency regression; the ladder moves to the next step (after the last one the
  canary is fully promoted and serves 100 %).

Per metric the *harm* is the canary's shortfall oriented so that positive means
worse (``baseline - canary`` when higher is better), relative to the baseline mean
by default, and ``tolerance`` is the non-inferiority margin. From the anytime-valid
confidence sequence [lo, hi] of the harm (see :mod:`.stats`), so that any number of
evaluations keeps the error rates at ``alpha``:

* non-inferior when ``hi < tolerance``;
* worse (rollback) when ``lo > 0`` and ``hi >= tolerance``: confidently worse and
  not shown to be within the tolerance;
* undecided otherwise.

Error rates (asymptotic, as the CS is): an equal canary is wrongly rolled back on a
metric with probability at most ``alpha`` (about ``alpha / 2``, one side of the CS)
over the whole ladder however often it is evaluated; a canary worse by at least the
margin is wrongly promoted past a step with the same bound; with several metrics the
bounds add up. In between, whichever bound is nearer wins (harm below about half the
margin tends to promote). Near ``tuning_n`` the CS half-width is about 3 standard
errors (1.96 for a single fixed look), so a decision needs roughly
``(3 * sd / margin)**2`` canary observations while the canary share is small.

Statistics are pooled over the steps; if the metric drifts in time while the
canary's share changes, the pooled comparison carries a small Simpson-type bias —
keep steps short relative to daily seasonality or compare within steps.

Latency: ``p`` (default p95) of canary over baseline from DDSketches. The point
ratio above ``latency_tolerance`` blocks promotion; rollback needs the ratio of the
canary's lower to the baseline's upper order-statistic bound (normal approximation
to the binomial rank, sketch error included) to exceed it. That check is a
fixed-level test repeated at each evaluation, so keep ``min_latency_samples`` high.

Blue/green is :meth:`CanaryConfig.blue_green`: one 100 % step with the same checks;
pass the blue version's recent (frozen) statistics as the baseline, and call
:meth:`CanaryLadder.rollback` for the instant way back.

The SDK follows :attr:`CanaryLadder.traffic` (or :meth:`CanaryLadder.experiment`),
so traffic shifts without a deploy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from scipy import stats as sstats

from ..sketches.ddsketch import DDSketch
from .assignment import Experiment, canary_experiment
from .stats import KINDS, PROPORTION, Moments, Sequential, compare

PROMOTE = "promote"
HOLD = "hold"
ROLLBACK = "rollback"
INSUFFICIENT_DATA = "insufficient_data"
ACTIONS = (PROMOTE, HOLD, ROLLBACK, INSUFFICIENT_DATA)

PENDING = "pending"
RUNNING = "running"
ROLLED_BACK = "rolled_back"
PROMOTED = "promoted"
STATUSES = (PENDING, RUNNING, ROLLED_BACK, PROMOTED)

# Per-metric verdicts.
NON_INFERIOR = "non_inferior"
WORSE = "worse"
UNDECIDED = "undecided"
NOT_ENOUGH = "insufficient_data"


@dataclass(frozen=True)
class CanaryStep:
    """One rung: the canary's traffic share, and what the step needs before promotion.

    ``min_samples`` counts canary observations gathered during this step (the smallest
    ``n`` over the metrics); ``max_duration_s`` (optional) rolls back a step that keeps
    holding — non-inferiority could not be shown in time.
    """

    traffic: float
    min_duration_s: float = 0.0
    min_samples: int = 0
    max_duration_s: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.traffic <= 1.0:
            raise ValueError(f"step traffic must be in (0, 1], got {self.traffic!r}")
        if self.min_duration_s < 0 or self.min_samples < 0:
            raise ValueError("step min_duration_s and min_samples must be >= 0")
        if self.max_duration_s is not None and self.max_duration_s < self.min_duration_s:
            raise ValueError("step max_duration_s must be >= min_duration_s")


@dataclass(frozen=True)
class CanaryMetric:
    """A guarded metric: its kind, good direction and non-inferiority margin ``tolerance``
    (a fraction of the baseline mean when ``relative``, else in the metric's units)."""

    name: str
    kind: str = PROPORTION
    higher_is_better: bool = True
    tolerance: float = 0.05
    relative: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.tolerance > 0:
            raise ValueError(f"metric {self.name!r}: tolerance must be > 0 "
                             "(with no margin an equal canary could never be shown non-inferior)")


@dataclass(frozen=True)
class CanaryConfig:
    """A canary ladder. ``tuning_n`` is the total sample (both arms) at which the
    confidence sequence is tightest: set it near where you expect decisions."""

    name: str
    baseline: str
    canary: str
    steps: tuple[CanaryStep, ...]
    metrics: tuple[CanaryMetric, ...]
    alpha: float = 0.05
    tuning_n: float = 10_000.0
    min_samples_for_rollback: int = 100
    max_invariant_violations: int | None = 0
    latency_quantile: float = 0.95
    latency_tolerance: float | None = 1.2
    min_latency_samples: int = 500

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.steps:
            raise ValueError(f"{self.name}: a ladder needs at least one step")
        shares = [s.traffic for s in self.steps]
        if any(b <= a for a, b in zip(shares, shares[1:])):
            raise ValueError(f"{self.name}: step traffic must increase, got {shares}")
        if self.baseline == self.canary:
            raise ValueError(f"{self.name}: baseline and canary must differ")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: metric names must be unique, got {names}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"{self.name}: alpha must be in (0, 1)")
        if not 0 < self.latency_quantile < 1:
            raise ValueError(f"{self.name}: latency_quantile must be in (0, 1)")
        if self.latency_tolerance is not None and not self.latency_tolerance > 0:
            raise ValueError(f"{self.name}: latency_tolerance must be > 0")
        if self.min_samples_for_rollback < 2:
            raise ValueError(f"{self.name}: min_samples_for_rollback must be >= 2")

    @classmethod
    def blue_green(cls, name: str, blue: str, green: str, metrics: tuple[CanaryMetric, ...],
                   min_duration_s: float = 0.0, min_samples: int = 0, **kwargs) -> "CanaryConfig":
        """Blue/green: a single 100 % step (green) with the same checks."""
        return cls(name, blue, green, (CanaryStep(1.0, min_duration_s, min_samples),), metrics, **kwargs)

    def to_dict(self) -> dict:
        return {"name": self.name, "baseline": self.baseline, "canary": self.canary,
                "steps": [vars(s).copy() for s in self.steps], "metrics": [vars(m).copy() for m in self.metrics],
                "alpha": self.alpha, "tuning_n": self.tuning_n,
                "min_samples_for_rollback": self.min_samples_for_rollback,
                "max_invariant_violations": self.max_invariant_violations,
                "latency_quantile": self.latency_quantile, "latency_tolerance": self.latency_tolerance,
                "min_latency_samples": self.min_latency_samples}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CanaryConfig":
        d = dict(d)
        d["steps"] = tuple(CanaryStep(**s) for s in d["steps"])
        d["metrics"] = tuple(CanaryMetric(**m) for m in d["metrics"])
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    """One evaluation's outcome, JSON-ready for the decisions topic via ``to_dict``.

    ``traffic`` is the canary share the SDK must follow *after* this decision;
    ``step`` the (0-based) step index after it.
    """

    ladder: str
    baseline: str
    canary: str
    action: str
    status: str
    step: int
    traffic: float
    timestamp: float
    reasons: list[str]
    metrics: list[dict] = field(default_factory=list)
    latency: dict | None = None

    def to_dict(self) -> dict:
        return {"type": "canary_decision", "schema_version": 1, "ladder": self.ladder, "baseline": self.baseline,
                "canary": self.canary, "action": self.action, "status": self.status, "step": self.step,
                "traffic": self.traffic, "timestamp": self.timestamp, "reasons": list(self.reasons),
                "metrics": [dict(m) for m in self.metrics], "latency": dict(self.latency) if self.latency else None}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Decision":
        return cls(d["ladder"], d["baseline"], d["canary"], d["action"], d["status"], d["step"], d["traffic"],
                   d["timestamp"], list(d["reasons"]), [dict(m) for m in d["metrics"]],
                   dict(d["latency"]) if d.get("latency") else None)


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _fmt(x: float | None) -> str:
    return "inf" if x is None else f"{x:.3g}"


def _quantile_bounds(sketch: DDSketch, q: float, z: float) -> tuple[float, float]:
    """Distribution-free interval for the q-quantile: the values at ranks
    q ± z·sqrt(q(1-q)/n) (normal approximation to the binomial order statistic)."""
    d = z * math.sqrt(q * (1 - q) / sketch.count)
    return sketch.quantile(max(0.0, q - d)), sketch.quantile(min(1.0, q + d))


class CanaryLadder:
    """State machine of one canary release (serialisable with ``to_dict`` / ``from_dict``)."""

    def __init__(self, config: CanaryConfig):
        self.config = config
        self.status = PENDING
        self.step = 0
        self.started_at: float | None = None
        self.step_started_at: float | None = None
        self.step_start_samples = 0
        self.last_decision: Decision | None = None

    # ------------------------------------------------------------------ traffic
    @property
    def traffic(self) -> float:
        """Canary share the SDK must route now (0 before start and after rollback)."""
        if self.status == RUNNING:
            return self.config.steps[self.step].traffic
        return 1.0 if self.status == PROMOTED else 0.0

    def experiment(self, seed: str | None = None) -> Experiment:
        """The assignment for the current share (monotone: canary units stay canary as it grows)."""
        return canary_experiment(self.config.name, self.config.baseline, self.config.canary, self.traffic, seed)

    def start(self, now: float, samples: int = 0) -> None:
        if self.status != PENDING:
            raise ValueError(f"{self.config.name}: ladder already {self.status}")
        self.status = RUNNING
        self.step = 0
        self.started_at = self.step_started_at = float(now)
        self.step_start_samples = int(samples)

    def rollback(self, now: float, reason: str = "manual rollback") -> Decision:
        """Instant rollback (manual, or from an external alert)."""
        self.status = ROLLED_BACK
        return self._decide(ROLLBACK, now, [reason], [], None)

    # ------------------------------------------------------------------ evaluation
    def _decide(self, action: str, now: float, reasons: list[str], metrics: list[dict],
                latency: dict | None) -> Decision:
        c = self.config
        d = Decision(c.name, c.baseline, c.canary, action, self.status, self.step, self.traffic, float(now),
                     reasons, metrics, latency)
        self.last_decision = d
        return d

    def _metric_verdict(self, m: CanaryMetric, base: Moments, can: Moments) -> dict:
        c = self.config
        out = {"metric": m.name, "kind": m.kind, "higher_is_better": m.higher_is_better,
               "tolerance": m.tolerance, "relative": m.relative, "baseline_n": base.n, "canary_n": can.n,
               "baseline_mean": _finite(base.mean), "canary_mean": _finite(can.mean),
               "harm": None, "harm_ci": [None, None], "p_value": None}
        if base.n < c.min_samples_for_rollback or can.n < c.min_samples_for_rollback:
            out["verdict"] = NOT_ENOUGH
            return out
        comp = compare(base, can, m.kind, c.alpha, Sequential(c.tuning_n), m.higher_is_better)
        est = comp.relative if m.relative else comp.absolute
        if not (math.isfinite(est.ci_low) and math.isfinite(est.ci_high)):
            # e.g. zero variance in both arms (no conversions yet) or a zero baseline
            out["verdict"] = NOT_ENOUGH
            out["note"] = comp.note or "interval undefined (zero variance)"
            return out
        sign = -1.0 if m.higher_is_better else 1.0
        harm, lo, hi = sign * est.value, *sorted((sign * est.ci_low, sign * est.ci_high))
        out.update(harm=harm, harm_ci=[lo, hi], p_value=_finite(est.p_value))
        if hi < m.tolerance:
            out["verdict"] = NON_INFERIOR
        elif lo > 0:
            out["verdict"] = WORSE
        else:
            out["verdict"] = UNDECIDED
        return out

    def _latency(self, base: DDSketch | None, can: DDSketch | None) -> dict | None:
        c = self.config
        if c.latency_tolerance is None or base is None or can is None:
            return None
        q = c.latency_quantile
        out = {"quantile": q, "tolerance": c.latency_tolerance, "baseline_n": base.count, "canary_n": can.count}
        if base.count < c.min_latency_samples or can.count < c.min_latency_samples:
            out["verdict"] = NOT_ENOUGH
            return out
        bq, cq = base.quantile(q), can.quantile(q)
        ratio = cq / bq if bq > 0 else (math.inf if cq > 0 else 1.0)
        z = float(sstats.norm.isf(c.alpha / 4))  # two one-sided bounds, Bonferroni
        c_lo, _ = _quantile_bounds(can, q, z)
        _, b_hi = _quantile_bounds(base, q, z)
        err = (1 + can.alpha) * (1 + base.alpha) / ((1 - can.alpha) * (1 - base.alpha))  # sketch error
        confident = c_lo / (b_hi * err) if b_hi > 0 else (math.inf if c_lo > 0 else 1.0)
        # inf (a zero baseline quantile) is kept for the verdict but serialised as null
        out.update(baseline=bq, canary=cq, ratio=_finite(ratio), ratio_lower_bound=_finite(confident))
        if confident > c.latency_tolerance:
            out["verdict"] = WORSE
        elif ratio > c.latency_tolerance:
            out["verdict"] = UNDECIDED
        else:
            out["verdict"] = NON_INFERIOR
        return out

    def evaluate(self, now: float, baseline: Mapping[str, Moments], canary: Mapping[str, Moments], *,
                 baseline_latency: DDSketch | None = None, canary_latency: DDSketch | None = None,
                 invariant_violations: int = 0) -> Decision:
        """Decide on the current step from cumulative statistics since the ladder started.

        ``baseline`` / ``canary`` map metric name to :class:`Moments`; latency sketches
        should cover a recent window of both versions; ``invariant_violations`` is the
        canary's count since the ladder started. Starts the ladder if it is pending.
        """
        c = self.config
        samples = min((canary.get(m.name, Moments()).n for m in c.metrics), default=0)
        if self.status == PENDING:
            self.start(now, samples)
        if self.status in (ROLLED_BACK, PROMOTED):
            return self._decide(HOLD, now, [f"ladder already {self.status}; traffic stays at {self.traffic:.0%}"],
                                [], None)
        step = c.steps[self.step]
        label = f"step {self.step + 1}/{len(c.steps)} ({step.traffic:.0%})"
        verdicts = [self._metric_verdict(m, baseline.get(m.name, Moments()), canary.get(m.name, Moments()))
                    for m in c.metrics]
        latency = self._latency(baseline_latency, canary_latency)

        rollback: list[str] = []
        if c.max_invariant_violations is not None and invariant_violations > c.max_invariant_violations:
            rollback.append(f"{invariant_violations} invariant violations on {c.canary} "
                            f"(allowed {c.max_invariant_violations})")
        for v in verdicts:
            if v["verdict"] == WORSE:
                lo, hi = v["harm_ci"]
                rollback.append(f"{v['metric']}: canary worse than baseline (harm {v['harm']:+.4g}, "
                                f"CI [{lo:+.4g}, {hi:+.4g}], tolerance {v['tolerance']:.4g}"
                                f"{' relative' if v['relative'] else ''})")
        if latency and latency["verdict"] == WORSE:
            rollback.append(f"latency p{c.latency_quantile * 100:g} regression: ratio {_fmt(latency['ratio'])} "
                            f"(lower bound {_fmt(latency['ratio_lower_bound'])}) > {c.latency_tolerance:g}")
        if rollback:
            self.status = ROLLED_BACK
            return self._decide(ROLLBACK, now, [f"{label}: rolled back"] + rollback, verdicts, latency)

        elapsed = now - (self.step_started_at if self.step_started_at is not None else now)
        step_samples = samples - self.step_start_samples
        missing: list[str] = []
        if elapsed < step.min_duration_s:
            missing.append(f"{label}: {elapsed:.0f}/{step.min_duration_s:.0f} s elapsed")
        if step_samples < step.min_samples:
            missing.append(f"{label}: {step_samples}/{step.min_samples} canary samples")
        for v in verdicts:
            if v["verdict"] == NOT_ENOUGH:
                missing.append(f"{v['metric']}: not enough data (baseline n={v['baseline_n']}, "
                               f"canary n={v['canary_n']}; need {c.min_samples_for_rollback} each"
                               f"{', ' + v['note'] if v.get('note') else ''})")
        if missing:
            return self._decide(INSUFFICIENT_DATA, now, missing, verdicts, latency)

        waiting = [f"{v['metric']}: non-inferiority not shown yet (harm CI [{v['harm_ci'][0]:+.4g}, "
                   f"{v['harm_ci'][1]:+.4g}] vs tolerance {v['tolerance']:.4g})"
                   for v in verdicts if v["verdict"] == UNDECIDED]
        if latency and latency["verdict"] == UNDECIDED:
            waiting.append(f"latency p{c.latency_quantile * 100:g} ratio {_fmt(latency['ratio'])} above "
                           f"{c.latency_tolerance:g} (not confirmed yet)")
        if waiting:
            if step.max_duration_s is not None and elapsed > step.max_duration_s:
                self.status = ROLLED_BACK
                return self._decide(ROLLBACK, now, [f"{label}: still undecided after {elapsed:.0f} s "
                                                    f"(max {step.max_duration_s:.0f} s)"] + waiting,
                                    verdicts, latency)
            return self._decide(HOLD, now, waiting, verdicts, latency)

        reasons = [f"{label}: {step_samples} canary samples in {elapsed:.0f} s, all metrics non-inferior"]
        self.step += 1
        if self.step >= len(c.steps):
            self.step = len(c.steps) - 1
            self.status = PROMOTED
            reasons.append(f"{c.canary} fully promoted")
        else:
            self.step_started_at = float(now)
            self.step_start_samples = samples
            reasons.append(f"moving to step {self.step + 1}/{len(c.steps)} ({c.steps[self.step].traffic:.0%})")
        return self._decide(PROMOTE, now, reasons, verdicts, latency)

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "status": self.status, "step": self.step,
                "started_at": self.started_at, "step_started_at": self.step_started_at,
                "step_start_samples": self.step_start_samples,
                "last_decision": self.last_decision.to_dict() if self.last_decision else None}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CanaryLadder":
        ladder = cls(CanaryConfig.from_dict(d["config"]))
        if d["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {d['status']!r}")
        ladder.status = d["status"]
        ladder.step = d["step"]
        ladder.started_at = d["started_at"]
        ladder.step_started_at = d["step_started_at"]
        ladder.step_start_samples = d["step_start_samples"]
        ladder.last_decision = Decision.from_dict(d["last_decision"]) if d["last_decision"] else None
        return ladder
