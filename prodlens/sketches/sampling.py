"""Sampling raw events for people to look at: stratified reservoirs and priority sampling.

:class:`StratifiedReservoir` — a uniform sample per stratum (e.g. (model, version, segment))
under one global cap, with a minimum quota per stratum so rare segments are represented
(adaptive targeting: the rest of the cap is shared in proportion to traffic). Each event
gets a uniform random key; a stratum keeps exactly the events whose key is below its
threshold ``tau`` (bottom-k / threshold sampling), so given ``tau`` every event of the
stratum was kept independently with probability ``tau``: ``inclusion_probability(s)`` is
``tau`` (1.0 while nothing was evicted) and ``1 / tau`` is the Horvitz-Thompson weight that
re-weights the sample to the stratum's traffic (unbiased, as for bottom-k sketches with the
(k+1)-th key as threshold; Cohen & Kaplan 2007). Shrinking an allocation evicts the largest
keys and lowers ``tau``, which keeps the invariant, so allocations can change at any time.
Allocations are applied when an update adds an entry to the sample (so memory stays within
the cap plus one batch) and, without changing the state, when the sample is read: a stratum
holding more than its current allocation shows its ``alloc`` smallest keys and the next key
as ``tau``. Updates that keep nothing (the common case once a window is full) cost O(1) per
event instead of a reallocation over all strata.

:class:`PrioritySampler` — priority sampling of "interesting" events (Duffield, Lund &
Thorup 2007): event i with weight ``w_i > 0`` (a caller-given priority: loss, invalid,
disagreement...) gets priority ``w_i / u_i`` with ``u_i`` uniform in (0, 1]; the ``k``
highest priorities are kept and ``tau`` is the (k+1)-th highest. ``max(w_i, tau)`` is an
unbiased estimate of ``w_i`` for sampled events (0 otherwise), so any subset sum of weights
is estimated without bias; ``inclusion_probability = min(1, w_i / tau)``. With fewer than
``k + 1`` events everything is kept and the estimates are exact.

Both are deterministic given ``seed`` and the input sequence (numpy PCG64; its state is
checkpointed in ``to_dict``), and merge: give each worker its own seed (keys must be
independent), then ``merge`` unions per stratum and applies the smaller threshold, which is
again a valid threshold sample of the union. Memory is bounded by the cap (plus one batch).

>>> r = StratifiedReservoir(capacity=4, min_per_stratum=1, seed=1)
>>> r.update_many(list(range(100)), ["US"] * 99 + ["IS"])
>>> len(r.samples("US")), len(r.samples("IS")), r.inclusion_probability("IS")
(3, 1, 1.0)
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np


def _rng_state(rng: np.random.Generator) -> dict:
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"],
            "state": {k: str(v) for k, v in state["state"].items()},
            "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


def _rng_from(state: Mapping[str, Any]) -> np.random.Generator:
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"rng.bit_generator: expected 'PCG64', got {state.get('bit_generator')!r}")
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {k: int(v) for k, v in state["state"].items()},
                               "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}
    return rng


def _key_out(key: Hashable) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _key_in(key: Any) -> Hashable:
    return tuple(key) if isinstance(key, list) else key


class _Stratum:
    __slots__ = ("seen", "tau", "entries")

    def __init__(self) -> None:
        self.seen = 0
        self.tau = 1.0
        self.entries: list[tuple[float, Any]] = []   # (key, item), unordered

    def shrink(self, size: int) -> None:
        if len(self.entries) > size:
            self.entries.sort(key=_first)
            self.tau = min(self.tau, self.entries[size][0])
            del self.entries[size:]

    def view(self, size: int) -> tuple[list[tuple[float, Any]], float]:
        """(entries in key order, tau) as :meth:`shrink` would leave them, without changing anything."""
        entries = sorted(self.entries, key=_first)
        if len(entries) > size:
            return entries[:size], min(self.tau, entries[size][0])
        return entries, self.tau


def _first(entry: tuple) -> Any:
    return entry[0]


def allocate(seen: Mapping[Hashable, int], capacity: int, quota: int) -> dict[Hashable, int]:
    """Sample sizes per stratum: at least ``min(seen, quota)`` each (an equal share of the cap
    if the quotas alone exceed it), the rest in proportion to ``seen``, never above ``seen``."""
    keys = sorted(seen, key=repr)
    if not keys:
        return {}
    base_quota = min(quota, capacity // len(keys))
    alloc = {s: min(seen[s], base_quota) for s in keys}
    left = capacity - sum(alloc.values())
    while left > 0:
        open_ = [s for s in keys if alloc[s] < seen[s]]
        if not open_:
            break
        total = sum(seen[s] for s in open_)
        shares = {s: left * seen[s] / total for s in open_}
        given = 0
        for s in open_:
            add = min(int(shares[s]), seen[s] - alloc[s])
            alloc[s] += add
            given += add
        if given == 0:  # hand out the remainder one by one, largest share first
            for s in sorted(open_, key=lambda s: (-shares[s], repr(s)))[:left]:
                alloc[s] += 1
                given += 1
        left -= given
    return alloc


class StratifiedReservoir:
    """Uniform sample per stratum under a global ``capacity`` with a per-stratum minimum."""

    def __init__(self, capacity: int = 1000, min_per_stratum: int = 20, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        if min_per_stratum < 0:
            raise ValueError(f"min_per_stratum: must be >= 0, got {min_per_stratum}")
        self.capacity = int(capacity)
        self.min_per_stratum = int(min_per_stratum)
        self.rng = np.random.default_rng(seed)
        self.strata: dict[Hashable, _Stratum] = {}
        self._seen = 0
        self._alloc: dict[Hashable, int] | None = None   # allocation for the current counts (reads)

    def update(self, item: Any, stratum: Hashable) -> None:
        self.update_many([item], [stratum])

    def update_many(self, items: Sequence[Any], strata: Sequence[Hashable],
                    keep: Callable[[Any], Any] | None = None) -> None:
        """Offer a batch of items, ``strata[i]`` naming the stratum of ``items[i]``; ``keep(item)``,
        if given, is what is stored for an item that enters the sample (called only for those)."""
        if len(items) != len(strata):
            raise ValueError(f"strata: has {len(strata)} values, items has {len(items)}")
        keys = self.rng.random(len(items)) if len(items) != 1 else (self.rng.random(),)
        added = False
        for item, stratum, key in zip(items, strata, keys):
            st = self.strata.get(stratum)
            if st is None:
                st = self.strata[stratum] = _Stratum()
            st.seen += 1
            if key < st.tau:
                st.entries.append((float(key), item if keep is None else keep(item)))
                added = True
        self._seen += len(items)
        self._alloc = None
        if added and self._seen > self.capacity:  # below the cap every event is kept
            self._rebalance()

    def _allocation(self) -> dict[Hashable, int]:
        if self._alloc is None:
            self._alloc = allocate({s: st.seen for s, st in self.strata.items()}, self.capacity,
                                   self.min_per_stratum)
        return self._alloc

    def _rebalance(self) -> None:
        alloc = self._allocation()
        for s, st in self.strata.items():
            st.shrink(alloc[s])

    def merge(self, other: "StratifiedReservoir") -> "StratifiedReservoir":
        """Add another worker's sample (drawn with a different seed) into this one."""
        for s, ost in other.strata.items():
            st = self.strata.get(s)
            if st is None:
                st = self.strata[s] = _Stratum()
            st.seen += ost.seen
            st.tau = min(st.tau, ost.tau)
            st.entries = [e for e in st.entries + ost.entries if e[0] < st.tau]
        self._seen += other._seen
        self._alloc = None
        self._rebalance()
        return self

    # -- results -------------------------------------------------------------------------
    def samples(self, stratum: Hashable | None = None) -> list[Any]:
        """The sampled items of one stratum (or of all), in key order."""
        if stratum is None:
            return [item for s in sorted(self.strata, key=repr) for item in self.samples(s)]
        st = self.strata.get(stratum)
        return [item for _, item in st.view(self._allocation()[stratum])[0]] if st else []

    def inclusion_probability(self, stratum: Hashable) -> float:
        st = self.strata.get(stratum)
        return st.view(self._allocation()[stratum])[1] if st else 1.0

    def weight(self, stratum: Hashable) -> float:
        """Horvitz-Thompson weight of each sampled item of the stratum (1 / tau)."""
        return 1.0 / self.inclusion_probability(stratum)

    def rates(self) -> dict[Hashable, dict[str, float]]:
        """Per stratum: events seen, sampled, and the inclusion probability (for metrics)."""
        alloc = self._allocation()
        return {s: {"seen": st.seen, "sampled": min(len(st.entries), alloc[s]),
                    "inclusion_probability": st.view(alloc[s])[1]} for s, st in self.strata.items()}

    def __len__(self) -> int:
        alloc = self._allocation()
        return sum(min(len(st.entries), alloc[s]) for s, st in self.strata.items())

    # -- state ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"capacity": self.capacity, "min_per_stratum": self.min_per_stratum, "rng": _rng_state(self.rng),
                "strata": [{"stratum": _key_out(s), "seen": st.seen, "tau": st.tau,
                            "keys": [k for k, _ in sorted(st.entries, key=lambda e: e[0])],
                            "items": [i for _, i in sorted(st.entries, key=lambda e: e[0])]}
                           for s, st in sorted(self.strata.items(), key=lambda kv: repr(kv[0]))]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StratifiedReservoir":
        r = cls(d["capacity"], d["min_per_stratum"])
        r.rng = _rng_from(d["rng"])
        for entry in d["strata"]:
            st = _Stratum()
            st.seen, st.tau = int(entry["seen"]), float(entry["tau"])
            if len(entry["keys"]) != len(entry["items"]):
                raise ValueError(f"strata[{entry['stratum']!r}].keys: length differs from items")
            st.entries = list(zip((float(k) for k in entry["keys"]), entry["items"]))
            r.strata[_key_in(entry["stratum"])] = st
            r._seen += st.seen
        return r


class PrioritySampler:
    """Keep the ``k`` events of highest priority ``w / u``; unbiased subset-sum estimates."""

    def __init__(self, k: int = 100, seed: int = 0):
        if k < 1:
            raise ValueError(f"k: must be >= 1, got {k}")
        self.k = int(k)
        self.rng = np.random.default_rng(seed)
        self.tau = 0.0
        self.seen = 0
        self.skipped = 0          # weights <= 0 or not finite: never sampled
        self._heap: list[tuple[float, int, float, Any]] = []   # (priority, seq, weight, item)
        self._seq = 0

    def update(self, item: Any, weight: float) -> None:
        self.update_many([item], [weight])

    def update_many(self, items: Sequence[Any], weights: Sequence[float] | np.ndarray,
                    keep: Callable[[Any], Any] | None = None) -> None:
        """Offer a batch; ``keep(item)``, if given, is what is stored for an item that enters the
        sample (called only for those)."""
        n = len(items)
        if len(weights) != n:
            raise ValueError(f"weights: has {len(weights)} values, items has {n}")
        uniforms = self.rng.random(n).tolist() if n != 1 else (self.rng.random(),)
        heap, k = self._heap, self.k
        for item, w, r in zip(items, weights, uniforms):
            w = float(w)
            if not (w > 0 and math.isfinite(w)):
                self.skipped += 1
                continue
            self.seen += 1
            p = w / (1.0 - r)       # 1 - r is uniform in (0, 1]
            if len(heap) < k:
                heapq.heappush(heap, (p, self._seq, w, item if keep is None else keep(item)))
            elif p > heap[0][0]:
                out = heapq.heapreplace(heap, (p, self._seq, w, item if keep is None else keep(item)))
                self.tau = max(self.tau, out[0])
            else:
                self.tau = max(self.tau, p)
            self._seq += 1

    def merge(self, other: "PrioritySampler") -> "PrioritySampler":
        """Union of two priority samples (independent seeds): keep the top ``k``, tau = the
        largest of both taus and the (k+1)-th priority of the union."""
        self.seen += other.seen
        self.skipped += other.skipped
        self.tau = max(self.tau, other.tau)
        for p, _, w, item in sorted(other._heap, key=lambda e: (e[0], e[1])):
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, (p, self._seq, w, item))
            elif p > self._heap[0][0]:
                out = heapq.heapreplace(self._heap, (p, self._seq, w, item))
                self.tau = max(self.tau, out[0])
            else:
                self.tau = max(self.tau, p)
            self._seq += 1
        return self

    def sample(self) -> list[tuple[Any, float, float]]:
        """(item, estimated weight max(w, tau), inclusion probability min(1, w / tau)),
        highest priority first."""
        out = []
        for p, _, w, item in sorted(self._heap, key=lambda e: (-e[0], e[1])):
            out.append((item, max(w, self.tau), 1.0 if self.tau == 0 else min(1.0, w / self.tau)))
        return out

    def estimate_sum(self, values: Iterable[float] | None = None) -> float:
        """Unbiased estimate of the sum over *all* events of ``values`` (aligned with
        ``sample()``; default: the weights themselves): ``sum(v_i / p_i)`` over the sample."""
        s = self.sample()
        if values is None:
            return float(sum(west for _, west, _ in s))
        vals = list(values)
        if len(vals) != len(s):
            raise ValueError(f"values: has {len(vals)} entries, the sample has {len(s)}")
        return float(sum(v / p for v, (_, _, p) in zip(vals, s)))

    def __len__(self) -> int:
        return len(self._heap)

    def to_dict(self) -> dict:
        entries = sorted(self._heap, key=lambda e: (-e[0], e[1]))
        return {"k": self.k, "rng": _rng_state(self.rng), "tau": self.tau, "seen": self.seen,
                "skipped": self.skipped, "priorities": [e[0] for e in entries],
                "weights": [e[2] for e in entries], "items": [e[3] for e in entries]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PrioritySampler":
        s = cls(d["k"])
        s.rng = _rng_from(d["rng"])
        s.tau, s.seen, s.skipped = float(d["tau"]), int(d["seen"]), int(d["skipped"])
        if not len(d["priorities"]) == len(d["weights"]) == len(d["items"]):
            raise ValueError("priorities/weights/items: lengths differ")
        for p, w, item in zip(d["priorities"], d["weights"], d["items"]):
            s._heap.append((float(p), s._seq, float(w), item))
            s._seq += 1
        heapq.heapify(s._heap)
        return s

