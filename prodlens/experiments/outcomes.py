"""Join business outcomes to experiment variants through the unit.

Outcomes (a conversion, revenue, time on page) arrive after the unit's exposure,
from other services, carrying only ``unit_id``. :class:`OutcomeJoiner` remembers,
for a bounded time and a bounded number of units, which variant each exposed unit
saw, and folds every outcome into that variant's :class:`~.stats.Moments`.

Each exposed unit is one observation per metric (the analysis unit is the user,
not the event): on exposure every configured metric gets a 0 for the unit; each
later outcome moves the unit's aggregate — ``sum`` of values (revenue), ``count``
of events (orders), or ``any`` (1 once an event with value > 0 arrived:
conversion) — and the variant's Σx and Σx² are adjusted by the change. So
``n`` is the number of exposed units and the mean is per exposed unit, the
denominator every A/B dashboard uses.

Attribution window: outcomes count from the exposure time (minus ``skew_s`` of
clock tolerance) to ``horizon_s`` after it. Exposures older than the horizon are
dropped by :meth:`OutcomeJoiner.expire` (the stream layer calls it with its
watermark); their contribution stays in the statistics. Memory is capped at
``max_units`` (experiment, unit) entries: the oldest entry is evicted first
and counted (``evicted``); its later outcomes are then unmatched. A unit exposed
again after its entry expired or was evicted starts a new attribution window and
is counted again — give ``max_units`` room for every unit exposed within a horizon.

Arrival order: exposures and outcomes come from different topics, so an outcome may reach the
joiner before its unit's exposure even though it happened later. Such an outcome waits (at most
``max_early`` of them, for ``early_horizon_s`` of event time behind the watermark given to
:meth:`OutcomeJoiner.expire`) and is applied when the exposure arrives; outcomes still waiting
count in ``unmatched_outcomes`` on arrival; ``early_matched`` of them were applied later, ``early_dropped``
gave up (no exposure within ``early_horizon_s``, or evicted by the ``max_early`` cap).

Partition the exposure and outcome streams by ``unit_id`` so one worker sees both
sides of a unit; per-partition :class:`~.stats.ExperimentStats` then merge exactly.

>>> j = OutcomeJoiner([ExperimentOutcomes("exp", ("a", "b"), (OutcomeMetric("conversion", "any"),))])
>>> j.expose("exp", "b", "u1", 100.0)
True
>>> j.outcome("u1", "conversion", 1.0, 160.0)
1
>>> j.stats["exp"].moments("conversion", "b").to_dict()
{'n': 1, 'sum': 1.0, 'sum_sq': 1.0}
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .stats import MEAN, PROPORTION, ExperimentStats

SUM = "sum"
ANY = "any"
COUNT = "count"
AGGREGATIONS = (SUM, ANY, COUNT)

COUNTERS = ("exposures", "duplicate_exposures", "conflicting_exposures", "unknown_experiment",
            "unknown_variant", "outcomes", "outcome_updates", "unmatched_outcomes", "unknown_metric",
            "before_exposure", "after_horizon", "expired", "evicted", "merge_duplicates", "early_outcomes",
            "early_matched", "early_dropped")


@dataclass(frozen=True)
class OutcomeMetric:
    """An outcome metric and how a unit's events aggregate into its one observation."""

    name: str
    aggregation: str = SUM

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"metric {self.name!r}: aggregation must be one of {AGGREGATIONS}, "
                             f"got {self.aggregation!r}")

    @property
    def kind(self) -> str:
        """The statistics kind to analyse it with: proportion for ``any``, else mean."""
        return PROPORTION if self.aggregation == ANY else MEAN


@dataclass(frozen=True)
class ExperimentOutcomes:
    """Which outcome metrics an experiment tracks; ``variants`` (if given) filters stray ones."""

    experiment: str
    variants: tuple[str, ...] | None
    metrics: tuple[OutcomeMetric, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.variants is not None:
            object.__setattr__(self, "variants", tuple(self.variants))
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.experiment}: metric names must be unique, got {names}")

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, "variants": list(self.variants) if self.variants else None,
                "metrics": [[m.name, m.aggregation] for m in self.metrics]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ExperimentOutcomes":
        return cls(d["experiment"], tuple(d["variants"]) if d["variants"] else None,
                   tuple(OutcomeMetric(n, a) for n, a in d["metrics"]))


class OutcomeJoiner:
    """Bounded unit → (variant, exposure time, per-metric aggregate) store feeding
    per-experiment :class:`ExperimentStats` (``self.stats``). Counters in ``self.counters``."""

    def __init__(self, experiments: Iterable[ExperimentOutcomes], horizon_s: float = 7 * 86400.0,
                 max_units: int = 200_000, skew_s: float = 0.0, max_early: int = 100_000,
                 early_horizon_s: float = 600.0):
        if not horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0, got {horizon_s!r}")
        if max_units < 1:
            raise ValueError(f"max_units must be >= 1, got {max_units!r}")
        if skew_s < 0:
            raise ValueError(f"skew_s must be >= 0, got {skew_s!r}")
        self.config: dict[str, ExperimentOutcomes] = {}
        for e in experiments:
            if e.experiment in self.config:
                raise ValueError(f"experiment {e.experiment!r} configured twice")
            self.config[e.experiment] = e
        self.horizon_s = float(horizon_s)
        self.max_units = int(max_units)
        self.skew_s = float(skew_s)
        if max_early < 0 or not early_horizon_s >= 0:
            raise ValueError(f"max_early and early_horizon_s must be >= 0, got {max_early!r}, {early_horizon_s!r}")
        self.max_early = int(max_early)
        self.early_horizon_s = float(early_horizon_s)
        # outcomes of units not exposed yet, in arrival order: seq -> [unit, metric, value, timestamp, experiment]
        self._early: OrderedDict[int, list] = OrderedDict()
        self._early_units: dict[str, list[int]] = {}   # unit -> seqs of its waiting outcomes
        self._early_seq = 0
        self._metrics = {name: {m.name: m for m in e.metrics} for name, e in self.config.items()}
        self._known_metrics = {m for d in self._metrics.values() for m in d}
        self.stats: dict[str, ExperimentStats] = {name: ExperimentStats() for name in self.config}
        # (experiment, unit) -> [variant, exposure time, {metric: aggregate}] in arrival order
        self._units: OrderedDict[tuple[str, str], list] = OrderedDict()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def __len__(self) -> int:
        return len(self._units)

    # ------------------------------------------------------------------ exposures
    def expose(self, experiment: str, variant: str, unit_id: str, timestamp: float) -> bool:
        """Record that ``unit_id`` saw ``variant``; True when it is a new exposure."""
        cfg = self.config.get(experiment)
        if cfg is None:
            self.counters["unknown_experiment"] += 1
            return False
        if cfg.variants is not None and variant not in cfg.variants:
            self.counters["unknown_variant"] += 1
            return False
        key = (experiment, unit_id)
        entry = self._units.get(key)
        if entry is not None:
            self.counters["duplicate_exposures" if entry[0] == variant else "conflicting_exposures"] += 1
            return False
        stats = self.stats[experiment]
        stats.add_exposure(variant)
        for metric in self._metrics[experiment]:
            stats.moments(metric, variant).add_zeros(1)
        self._units[key] = [variant, float(timestamp), {}]
        self.counters["exposures"] += 1
        while len(self._units) > self.max_units:
            self._units.popitem(last=False)
            self.counters["evicted"] += 1
        if self._early_units.get(unit_id):
            self._apply_early(experiment, unit_id)
        return True

    def _apply_early(self, experiment: str, unit_id: str) -> None:
        """Apply the waiting outcomes of a unit just exposed to ``experiment``. An outcome that
        names no experiment stays waiting (another experiment may expose the unit later) unless
        no other experiment tracks its metric."""
        for seq in list(self._early_units[unit_id]):
            _, metric, value, t, e = self._early[seq]
            if e not in (None, experiment) or metric not in self._metrics[experiment]:
                continue
            self._fold(experiment, unit_id, metric, value, t)
            self.counters["early_matched"] += 1
            others = e is None and any(metric in m and (n, unit_id) not in self._units
                                       for n, m in self._metrics.items() if n != experiment)
            if not others:
                self._drop_early(seq, matched=True)

    def _fold(self, name: str, unit_id: str, metric: str, value: float, timestamp: float) -> bool:
        """One outcome into one exposed unit's aggregate; False when outside its attribution window."""
        spec = self._metrics[name][metric]
        variant, t0, values = self._units[(name, unit_id)]
        if timestamp < t0 - self.skew_s:
            self.counters["before_exposure"] += 1
            return False
        if timestamp > t0 + self.horizon_s:
            self.counters["after_horizon"] += 1
            return False
        old = values.get(metric, 0.0)
        if spec.aggregation == SUM:
            new = old + value
        elif spec.aggregation == COUNT:
            new = old + 1.0
        else:
            new = 1.0 if (old >= 1.0 or value > 0) else 0.0
        if new != old:
            self.stats[name].moments(metric, variant).adjust(old, new)
            values[metric] = new
        self.counters["outcome_updates"] += 1
        return True

    def expose_many(self, experiments: Sequence[str], variants: Sequence[str], unit_ids: Sequence[str],
                    timestamps: Sequence[float]) -> int:
        """Columnar :meth:`expose`; returns the number of new exposures."""
        _same_length(experiments=experiments, variants=variants, unit_ids=unit_ids, timestamps=timestamps)
        return sum(self.expose(e, v, u, t) for e, v, u, t in zip(experiments, variants, unit_ids, timestamps))

    # ------------------------------------------------------------------ outcomes
    def outcome(self, unit_id: str, metric: str, value: float, timestamp: float,
                experiment: str | None = None) -> int:
        """Fold one outcome into the variant(s) the unit was exposed to (all its experiments
        tracking ``metric``, or only ``experiment``); returns how many were updated."""
        self.counters["outcomes"] += 1
        if metric not in self._known_metrics:
            self.counters["unknown_metric"] += 1
            return 0
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"outcome value must be finite, got {value!r}")
        names = [experiment] if experiment is not None else self.config
        updated = 0
        matched = False
        for name in names:
            if metric not in self._metrics.get(name, {}) or (name, unit_id) not in self._units:
                continue
            matched = True
            updated += self._fold(name, unit_id, metric, value, float(timestamp))
        if not matched:   # no exposure (yet): counted here; ``early_matched`` of them match later
            self.counters["unmatched_outcomes"] += 1
            if self.max_early and any(metric in self._metrics.get(n, {}) for n in names):
                self._wait(unit_id, metric, value, float(timestamp), experiment)
                self.counters["early_outcomes"] += 1
        return updated

    def _wait(self, unit_id: str, metric: str, value: float, timestamp: float, experiment: str | None) -> None:
        seq = self._early_seq
        self._early_seq += 1
        self._early[seq] = [unit_id, metric, value, timestamp, experiment]
        self._early_units.setdefault(unit_id, []).append(seq)
        while len(self._early) > self.max_early:   # the oldest waiting outcome goes first
            self._drop_early(next(iter(self._early)))

    def _drop_early(self, seq: int, matched: bool = False) -> None:
        u = self._early.pop(seq)[0]
        seqs = self._early_units[u]
        seqs.remove(seq)
        if not seqs:
            del self._early_units[u]
        if not matched:
            self.counters["early_dropped"] += 1

    def outcome_many(self, unit_ids: Sequence[str], metrics: Sequence[str], values: Sequence[float],
                     timestamps: Sequence[float], experiments: Sequence[str | None] | None = None) -> int:
        """Columnar :meth:`outcome`; returns the number of variant updates."""
        exps = experiments if experiments is not None else [None] * len(unit_ids)
        _same_length(unit_ids=unit_ids, metrics=metrics, values=values, timestamps=timestamps, experiments=exps)
        return sum(self.outcome(u, m, v, t, e) for u, m, v, t, e in zip(unit_ids, metrics, values, timestamps, exps))

    # ------------------------------------------------------------------ lifecycle
    def expire(self, now: float) -> int:
        """Drop exposures whose attribution window ended before ``now`` (event time).

        Entries leave in arrival order; a late-arriving old exposure waits behind newer
        ones (bounded by the disorder of the stream, and by ``max_units``)."""
        dropped = 0
        limit = now - self.horizon_s
        while self._units:
            key, entry = next(iter(self._units.items()))
            if entry[1] >= limit:
                break
            del self._units[key]
            dropped += 1
        self.counters["expired"] += dropped
        # an outcome whose exposure has not come while the watermark moved early_horizon_s past it
        # never will (exposures precede outcomes in event time)
        early_limit = now - self.early_horizon_s
        for seq in [seq for seq, item in self._early.items() if item[3] < early_limit]:
            self._drop_early(seq)
        return dropped

    def variant_of(self, experiment: str, unit_id: str) -> str | None:
        entry = self._units.get((experiment, unit_id))
        return entry[0] if entry else None

    def merge(self, other: "OutcomeJoiner") -> "OutcomeJoiner":
        """Union with a joiner that holds other units (e.g. another partition). A unit present
        in both keeps this side's entry and is counted in ``merge_duplicates`` (its exposure
        is then counted twice in the statistics)."""
        if other.config != self.config or other.horizon_s != self.horizon_s:
            raise ValueError("can only merge OutcomeJoiners with the same configuration and horizon")
        for name, s in other.stats.items():
            self.stats[name].merge(s)
        for key, entry in other._units.items():
            if key in self._units:
                self.counters["merge_duplicates"] += 1
            else:
                self._units[key] = [entry[0], entry[1], dict(entry[2])]
        for k, v in other.counters.items():
            self.counters[k] = self.counters.get(k, 0) + v
        for item in other._early.values():
            self._wait(*item)
        while len(self._units) > self.max_units:
            self._units.popitem(last=False)
            self.counters["evicted"] += 1
        return self

    def to_dict(self) -> dict:
        return {"experiments": [e.to_dict() for e in self.config.values()], "horizon_s": self.horizon_s,
                "max_units": self.max_units, "skew_s": self.skew_s,
                "stats": {k: s.to_dict() for k, s in self.stats.items()},
                "units": [[e, u, v[0], v[1], v[2]] for (e, u), v in self._units.items()],
                "counters": dict(self.counters), "max_early": self.max_early,
                "early_horizon_s": self.early_horizon_s, "early": [list(x) for x in self._early.values()]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "OutcomeJoiner":
        j = cls([ExperimentOutcomes.from_dict(e) for e in d["experiments"]], d["horizon_s"], d["max_units"],
                d.get("skew_s", 0.0), d.get("max_early", 100_000), d.get("early_horizon_s", 600.0))
        j.stats = {k: ExperimentStats.from_dict(s) for k, s in d["stats"].items()}
        for e, u, variant, t0, values in d["units"]:
            j._units[(e, u)] = [variant, t0, dict(values)]
        j.counters.update(d["counters"])
        for item in d.get("early", []):
            j._wait(*item)
        return j


def _same_length(**columns: Sequence) -> None:
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns must have the same length, got {lengths}")
