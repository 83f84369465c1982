"""Deterministic assignment of units (users, sessions) to experiment variants.

The layout is GrowthBook's, so any GrowthBook SDK assigns the same units to the
same variants:

* variant ranges: weights ``w_i`` and coverage ``c`` give variant ``i`` the range
  ``[W_i, W_i + c * w_i)`` with ``W_i = w_0 + ... + w_{i-1}``; a unit whose hash
  ``gb_hash(seed, unit_id)`` (v2) falls in no range is not in the experiment;
* namespaces (prodlens calls them *layers*): an experiment may hold a slice
  ``[start, end)`` of a layer; a unit is in the slice when
  ``gb_hash("__" + layer, unit_id, 1)`` falls inside it (GrowthBook's namespace
  check, which uses the v1 hash). Experiments with disjoint slices of one layer are
  mutually exclusive; experiments in different layers (or in none) are independent,
  because every experiment and every layer hashes with its own seed.

Stickiness. The hash alone is stable while the configuration is: the same unit
always gets the same variant. Changing the weights moves range boundaries, so
some units would switch variant. To keep units that were already exposed where
they were, the :class:`Assigner` records each in-experiment assignment in a
:class:`StickyBucketStore` (GrowthBook's "sticky bucketing") under the key
``"<experiment>__<bucket_version>"`` and answers from it before hashing. Bumping
``bucket_version`` deliberately re-randomises everyone; ``min_bucket_version``
excludes units assigned under older versions. The in-memory store is bounded
(LRU); a unit evicted from it falls back to the hash (evictions are counted), so
give the store room for every unit active during an experiment, or plug in a
shared store (Redis, a cookie) implementing the same two methods.

Canary ladders need the opposite: a unit's share *should* follow the step. With
variants ``(baseline, canary)`` and weights ``(1 - p, p)`` the canary range is
``[1 - p, 1)``, which only grows as ``p`` grows: a unit on the canary stays on it
through every promotion, and a rollback (``p = 0``) moves everyone back at once.
:func:`canary_experiment` builds that experiment with stickiness off.

>>> exp = Experiment("checkout", ("control", "treatment"))
>>> a = Assigner([exp]).assign("checkout", "user-1")
>>> a.in_experiment, a.variant in exp.variants
(True, True)
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Protocol

from .hashing import CODE_UNITS, gb_hash

# Assignment reasons (also the `reason` field of non-exposures).
HASHED = "hashed"
STICKY = "sticky"
INACTIVE = "inactive"
EMPTY_UNIT = "empty_unit"
NOT_IN_NAMESPACE = "not_in_namespace"
NOT_COVERED = "not_covered"
BUCKET_VERSION_EXCLUDED = "bucket_version_excluded"
UNKNOWN_EXPERIMENT = "unknown_experiment"


def bucket_ranges(weights: Iterable[float], coverage: float = 1.0) -> list[tuple[float, float]]:
    """GrowthBook's ``getBucketRanges``: one ``[start, end)`` range per variant.

    Unlike GrowthBook (which silently falls back to equal weights) bad weights raise.

    >>> bucket_ranges([0.5, 0.5], coverage=0.5)
    [(0.0, 0.25), (0.5, 0.75)]
    """
    weights = [float(w) for w in weights]
    _check_weights(weights, len(weights))
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage!r}")
    cumulative = 0.0
    ranges = []
    for w in weights:
        start = cumulative
        cumulative += w
        ranges.append((start, start + coverage * w))
    return ranges


def choose_variant(n: float, ranges: list[tuple[float, float]]) -> int:
    """Index of the range holding ``n``, or -1."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def _check_weights(weights: list[float], n_variants: int) -> None:
    if len(weights) != n_variants:
        raise ValueError(f"weights: expected {n_variants} values (one per variant), got {len(weights)}")
    for w in weights:
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite and >= 0, got {w!r}")
    total = sum(weights)
    if not 0.99 <= total <= 1.01:  # GrowthBook's tolerance; weights are used as given
        raise ValueError(f"weights must sum to 1 (got {total!r})")


@dataclass(frozen=True)
class Experiment:
    """One experiment's assignment configuration (everything an SDK needs).

    ``namespace`` is ``(layer, start, end)``; ``seed`` defaults to ``name``;
    ``weights`` default to equal.
    """

    name: str
    variants: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    coverage: float = 1.0
    seed: str | None = None
    namespace: tuple[str, float, float] | None = None
    hash_version: int = 2
    bucket_version: int = 0
    min_bucket_version: int = 0
    sticky: bool = True
    active: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("experiment name must be a non-empty string")
        variants = tuple(self.variants)
        if not variants or not all(isinstance(v, str) and v for v in variants):
            raise ValueError(f"{self.name}: variants must be non-empty strings")
        if len(set(variants)) != len(variants):
            raise ValueError(f"{self.name}: variants must be unique, got {variants}")
        object.__setattr__(self, "variants", variants)
        if self.weights is None:
            weights = tuple(1.0 / len(variants) for _ in variants)
        else:
            weights = tuple(float(w) for w in self.weights)
        try:
            _check_weights(list(weights), len(variants))
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        object.__setattr__(self, "weights", weights)
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"{self.name}: coverage must be in [0, 1], got {self.coverage!r}")
        if self.hash_version not in (1, 2):
            raise ValueError(f"{self.name}: hash_version must be 1 or 2, got {self.hash_version!r}")
        if self.bucket_version < 0 or self.min_bucket_version < 0 or self.min_bucket_version > self.bucket_version:
            raise ValueError(f"{self.name}: need 0 <= min_bucket_version <= bucket_version")
        if self.namespace is not None:
            layer, start, end = self.namespace
            if not isinstance(layer, str) or not layer:
                raise ValueError(f"{self.name}: namespace layer must be a non-empty string")
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(f"{self.name}: namespace range must satisfy 0 <= start < end <= 1, "
                                 f"got ({start!r}, {end!r})")
            object.__setattr__(self, "namespace", (layer, float(start), float(end)))

    @property
    def hash_seed(self) -> str:
        return self.seed if self.seed is not None else self.name

    @cached_property
    def ranges(self) -> list[tuple[float, float]]:
        return bucket_ranges(self.weights, self.coverage)

    def with_weights(self, weights: Iterable[float]) -> "Experiment":
        """The same experiment with new weights (units already exposed stay put via the sticky store)."""
        return Experiment(**{**self.to_dict(), "weights": tuple(weights)})

    def to_dict(self) -> dict:
        return {"name": self.name, "variants": list(self.variants), "weights": list(self.weights),
                "coverage": self.coverage, "seed": self.seed,
                "namespace": list(self.namespace) if self.namespace else None,
                "hash_version": self.hash_version, "bucket_version": self.bucket_version,
                "min_bucket_version": self.min_bucket_version, "sticky": self.sticky, "active": self.active}

    @classmethod
    def from_dict(cls, d: dict) -> "Experiment":
        d = dict(d)
        d["variants"] = tuple(d["variants"])
        if d.get("weights") is not None:
            d["weights"] = tuple(d["weights"])
        if d.get("namespace") is not None:
            d["namespace"] = tuple(d["namespace"])
        return cls(**d)


def canary_experiment(name: str, baseline: str, canary: str, share: float, seed: str | None = None) -> Experiment:
    """The two-variant experiment that routes ``share`` of units to ``canary`` (monotone in share)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"{name}: canary share must be in [0, 1], got {share!r}")
    return Experiment(name, (baseline, canary), (1.0 - share, share), seed=seed, sticky=False)


def layer_slices(layer: str, shares: dict[str, float]) -> dict[str, tuple[str, float, float]]:
    """Contiguous, disjoint slices of ``layer`` for mutually exclusive experiments.

    >>> layer_slices("checkout", {"a": 0.5, "b": 0.25})
    {'a': ('checkout', 0.0, 0.5), 'b': ('checkout', 0.5, 0.75)}
    """
    total = sum(shares.values())
    if any(s <= 0 for s in shares.values()) or total > 1.0 + 1e-9:
        raise ValueError(f"layer {layer}: shares must be > 0 and sum to at most 1 (got {total!r})")
    out, start = {}, 0.0
    for name, share in shares.items():
        end = min(1.0, start + share)
        out[name] = (layer, start, end)
        start = end
    return out


def validate_layers(experiments: Iterable[Experiment]) -> None:
    """Raise ValueError when two active experiments share a layer with overlapping slices."""
    by_layer: dict[str, list[Experiment]] = {}
    for exp in experiments:
        if exp.active and exp.namespace is not None:
            by_layer.setdefault(exp.namespace[0], []).append(exp)
    for layer, exps in by_layer.items():
        exps.sort(key=lambda e: e.namespace[1])
        for prev, cur in zip(exps, exps[1:]):
            if cur.namespace[1] < prev.namespace[2]:
                raise ValueError(f"layer {layer}: experiments {prev.name!r} {prev.namespace[1:]} and "
                                 f"{cur.name!r} {cur.namespace[1:]} overlap; slices must be disjoint")


def sticky_key(experiment: str, bucket_version: int) -> str:
    return f"{experiment}__{bucket_version}"


class StickyBucketStore(Protocol):
    """Where sticky assignments live: unit id -> {"<experiment>__<bucket_version>": variant}."""

    def get(self, unit_id: str) -> dict[str, str] | None: ...

    def put(self, unit_id: str, assignments: dict[str, str]) -> None: ...


class InMemoryStickyStore:
    """Bounded LRU sticky-bucket store: at most ``max_units`` units; the least recently
    used unit is evicted first (counted in ``evictions``). Thread-safe."""

    def __init__(self, max_units: int = 100_000):
        if max_units < 1:
            raise ValueError("max_units must be >= 1")
        self.max_units = max_units
        self.evictions = 0
        self._data: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, unit_id: str) -> dict[str, str] | None:
        with self._lock:
            found = self._data.get(unit_id)
            if found is None:
                return None
            self._data.move_to_end(unit_id)
            return dict(found)

    def put(self, unit_id: str, assignments: dict[str, str]) -> None:
        with self._lock:
            self._data[unit_id] = dict(assignments)
            self._data.move_to_end(unit_id)
            while len(self._data) > self.max_units:
                self._data.popitem(last=False)
                self.evictions += 1

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict:
        with self._lock:
            return {"max_units": self.max_units, "evictions": self.evictions,
                    "units": [[u, a] for u, a in self._data.items()]}

    @classmethod
    def from_dict(cls, state: dict) -> "InMemoryStickyStore":
        store = cls(state["max_units"])
        store.evictions = state["evictions"]
        for unit, assignments in state["units"]:
            store._data[unit] = dict(assignments)
        return store


@dataclass(frozen=True, slots=True)
class Assignment:
    """The result of assigning one unit to one experiment."""

    experiment: str
    unit_id: str
    variant: str | None
    variant_index: int
    in_experiment: bool
    reason: str
    hash_value: float | None = None
    bucket_version: int = 0

    def exposure_event(self, timestamp: float, *, event_id: str | None = None, model: str | None = None,
                       segment: dict | None = None) -> dict:
        """The exposure event to log (only for units in the experiment).

        The default ``event_id`` is deterministic per (experiment, bucket version, unit), so
        repeated exposures of one unit collapse in ingest's dedupe; only the first counts.
        """
        if not self.in_experiment:
            raise ValueError(f"unit {self.unit_id!r} is not in experiment {self.experiment!r} "
                             f"({self.reason}); log no exposure")
        if event_id is None:
            digest = hashlib.blake2b(f"{self.experiment}\x00{self.bucket_version}\x00{self.unit_id}".encode(),
                                     digest_size=16).hexdigest()
            event_id = f"x-{digest}"
        event = {"type": "exposure", "schema_version": 1, "event_id": event_id, "timestamp": timestamp,
                 "experiment": self.experiment, "variant": self.variant, "unit_id": self.unit_id,
                 "bucket_version": self.bucket_version, "sticky": self.reason == STICKY}
        if model is not None:
            event["model"] = model
        if segment:
            event["segment"] = dict(segment)
        return event


class Assigner:
    """Assigns units to the configured experiments; GrowthBook-compatible, sticky when a store is given.

    ``code_units`` picks how non-BMP characters are hashed (see :mod:`.hashing`);
    ``namespace_hash_version`` 1 is GrowthBook's namespace check. Thread-safe for
    concurrent ``assign`` calls; ``upsert`` swaps the configuration atomically.
    """

    def __init__(self, experiments: Iterable[Experiment] = (), sticky_store: StickyBucketStore | None = None,
                 code_units: str = "utf16", namespace_hash_version: int = 1):
        if code_units not in CODE_UNITS:
            raise ValueError(f"code_units must be one of {CODE_UNITS}, got {code_units!r}")
        if namespace_hash_version not in (1, 2):
            raise ValueError(f"namespace_hash_version must be 1 or 2, got {namespace_hash_version!r}")
        exps = list(experiments)
        names = [e.name for e in exps]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names must be unique, got {names}")
        validate_layers(exps)
        self.sticky_store = sticky_store
        self.code_units = code_units
        self.namespace_hash_version = namespace_hash_version
        self._experiments: dict[str, Experiment] = {e.name: e for e in exps}

    def upsert(self, experiment: Experiment) -> None:
        """Add an experiment or replace its configuration (e.g. new weights, new canary step)."""
        candidate = {**self._experiments, experiment.name: experiment}
        validate_layers(candidate.values())
        self._experiments = candidate

    def remove(self, name: str) -> None:
        self._experiments.pop(name, None)

    def get(self, name: str) -> Experiment:
        return self._experiments[name]

    def names(self) -> list[str]:
        return list(self._experiments)

    def assign(self, name: str, unit_id: str) -> Assignment:
        """The variant of ``unit_id`` in experiment ``name`` (never raises for unknown names)."""
        exp = self._experiments.get(name)
        if exp is None:
            return Assignment(name, unit_id, None, -1, False, UNKNOWN_EXPERIMENT)
        bv = exp.bucket_version

        def out(reason: str, idx: int = -1, n: float | None = None) -> Assignment:
            return Assignment(name, unit_id, exp.variants[idx] if idx >= 0 else None, idx, idx >= 0, reason, n, bv)

        if not exp.active:
            return out(INACTIVE)
        if unit_id is None or unit_id == "":
            return out(EMPTY_UNIT)
        store = self.sticky_store if exp.sticky else None
        stored: dict[str, str] = {}
        if store is not None:
            stored = store.get(unit_id) or {}
            if any(sticky_key(name, v) in stored for v in range(exp.min_bucket_version)):
                return out(BUCKET_VERSION_EXCLUDED)
            previous = stored.get(sticky_key(name, bv))
            if previous in exp.variants:  # a removed variant falls through to hashing
                return out(STICKY, exp.variants.index(previous))
        if exp.namespace is not None:
            layer, start, end = exp.namespace
            if not start <= gb_hash("__" + layer, unit_id, self.namespace_hash_version, self.code_units) < end:
                return out(NOT_IN_NAMESPACE)
        n = gb_hash(exp.hash_seed, unit_id, exp.hash_version, self.code_units)
        idx = choose_variant(n, exp.ranges)
        if idx < 0:
            return out(NOT_COVERED, n=n)
        if store is not None:
            stored[sticky_key(name, bv)] = exp.variants[idx]
            store.put(unit_id, stored)
        return out(HASHED, idx, n)

    def assign_all(self, unit_id: str) -> list[Assignment]:
        """Assignments of ``unit_id`` in every experiment it is part of."""
        result = []
        for name in self._experiments:
            a = self.assign(name, unit_id)
            if a.in_experiment:
                result.append(a)
        return result


class CanaryTraffic:
    """Follows a canary ladder from its decision records (the decisions topic), so an app
    (the SDK, the simulator) shifts traffic without a deploy.

    Feed every record of the decisions topic to :meth:`apply`; records of other ladders,
    and records older than the last one applied (a replay after a restart of the analysis
    stage), are ignored. :attr:`share` is the canary's current traffic share (``initial``
    until the first decision), :meth:`experiment` the assignment for it (monotone: a unit on
    the canary stays there as the share grows, a rollback moves everyone back at once) and
    :meth:`version_for` the version that serves a unit. Standard library only.

    >>> t = CanaryTraffic("churn_v8", "v7", "v8", initial=0.01)
    >>> t.apply({"type": "canary_decision", "ladder": "churn_v8", "action": "promote",
    ...          "status": "running", "step": 1, "traffic": 0.05, "timestamp": 100.0})
    True
    >>> t.share, t.apply({"type": "canary_decision", "ladder": "other", "traffic": 1.0, "timestamp": 200.0})
    (0.05, False)
    """

    def __init__(self, ladder: str, baseline: str, canary: str, initial: float = 0.0, seed: str | None = None):
        if not 0.0 <= initial <= 1.0:
            raise ValueError(f"{ladder}: initial share must be in [0, 1], got {initial!r}")
        self.ladder = ladder
        self.baseline = baseline
        self.canary = canary
        self.seed = seed
        self.share = float(initial)
        self.status = "pending"
        self.action: str | None = None
        self.step = 0
        self.timestamp: float | None = None
        self._experiment = canary_experiment(ladder, baseline, canary, self.share, seed)

    def apply(self, record: dict) -> bool:
        """Apply one decision record (a dict as on the topic); True when the share state changed."""
        if not isinstance(record, dict) or record.get("type", "canary_decision") != "canary_decision" \
                or record.get("ladder") != self.ladder:
            return False
        ts = record.get("timestamp")
        share = record.get("traffic")
        if not isinstance(ts, (int, float)) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ValueError(f"{self.ladder}: decision record needs numeric 'timestamp' and 'traffic' in [0, 1], "
                             f"got timestamp={ts!r}, traffic={share!r}")
        if self.timestamp is not None and ts < self.timestamp:
            return False
        self.timestamp = float(ts)
        self.action = record.get("action")
        self.status = record.get("status", self.status)
        self.step = int(record.get("step", self.step))
        if float(share) == self.share:
            return False
        self.share = float(share)
        self._experiment = canary_experiment(self.ladder, self.baseline, self.canary, self.share, self.seed)
        return True

    def experiment(self) -> Experiment:
        return self._experiment

    def version_for(self, unit_id: str) -> str:
        """The version serving ``unit_id`` at the current share (the same hash as the Assigner)."""
        exp = self._experiment
        idx = choose_variant(gb_hash(exp.hash_seed, unit_id, exp.hash_version), exp.ranges)
        return exp.variants[idx] if idx >= 0 else self.baseline

    def to_dict(self) -> dict:
        return {"ladder": self.ladder, "baseline": self.baseline, "canary": self.canary, "seed": self.seed,
                "share": self.share, "status": self.status, "action": self.action, "step": self.step,
                "timestamp": self.timestamp}

    @classmethod
    def from_dict(cls, d: dict) -> "CanaryTraffic":
        t = cls(d["ladder"], d["baseline"], d["canary"], d["share"], d["seed"])
        t.status, t.action, t.step, t.timestamp = d["status"], d["action"], d["step"], d["timestamp"]
        return t
