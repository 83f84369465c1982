"""Partial states from several source partitions, merged exactly into one view per key.

Upstream stages run one processor per Kafka partition, so a (model, version,
segment, window) is usually summarised by several partitions at once. Each
source publishes its *cumulative* partial state for a key (a closed ingest
window, or the current quality state of a window on a join partition) with a
``seq`` that never decreases for that source (its input offset). The analysis
stage keeps the latest partial per (key, source) and merges them on demand:

* idempotent — a partial published twice (at-least-once delivery after a
  crash) replaces itself, so nothing is counted twice;
* exact — the merged view equals one processor fed every event, because the
  partial states merge exactly (sums, counts, mergeable sketches).

A key is *due* for evaluation once it has been quiet for ``settle`` seconds of
processing time since its last update (sources close the same window at
nearly the same moment); a straggling partial makes it due again, and the
evaluation is repeated with the complete view.

>>> store = PartialStore(settle=2.0)
>>> store.put(("m", "v1", 0.0), "prodlens.predictions:0", 10, 3, now=100.0)
True
>>> store.put(("m", "v1", 0.0), "prodlens.predictions:1", 7, 4, now=100.5)
True
>>> store.put(("m", "v1", 0.0), "prodlens.predictions:1", 5, 99, now=100.6)  # older: ignored
False
>>> store.merged(("m", "v1", 0.0), sum)
7
>>> store.due(101.0), store.due(103.0)
([], [('m', 'v1', 0.0)])
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Hashable, Iterable, TypeVar

S = TypeVar("S")


class PartialStore(Generic[S]):
    """Latest partial state per (key, source); merged views; which keys are due."""

    def __init__(self, settle: float = 2.0):
        self.settle = settle
        self.partials: dict[Hashable, dict[str, tuple[int, S]]] = {}
        self._updated: dict[Hashable, float] = {}   # key -> processing time of the last update not yet evaluated

    def put(self, key: Hashable, source: str, seq: int, state: S, now: float) -> bool:
        """Store ``state`` as ``source``'s partial for ``key`` unless an older ``seq``."""
        sources = self.partials.setdefault(key, {})
        current = sources.get(source)
        if current is not None and seq < current[0]:
            return False
        sources[source] = (seq, state)
        self._updated[key] = now
        return True

    def states(self, key: Hashable) -> list[S]:
        return [state for _, state in self.partials.get(key, {}).values()]

    def merged(self, key: Hashable, merge: Callable[[list[S]], S]) -> S | None:
        states = self.states(key)
        return merge(states) if states else None

    def due(self, now: float) -> list[Hashable]:
        """Keys updated since their last evaluation and quiet for ``settle`` seconds; marks
        them evaluated."""
        ready = [key for key, at in self._updated.items() if now - at >= self.settle]
        for key in ready:
            del self._updated[key]
        return sorted(ready, key=repr)

    def pending(self) -> int:
        return len(self._updated)

    def keys(self) -> Iterable[Hashable]:
        return self.partials.keys()

    def drop(self, keys: Iterable[Hashable]) -> None:
        for key in list(keys):
            self.partials.pop(key, None)
            self._updated.pop(key, None)

    def __len__(self) -> int:
        return len(self.partials)

    # -- snapshots -------------------------------------------------------------------------------
    def to_dict(self, state_to_dict: Callable[[S], Any] = lambda s: s) -> dict:
        return {"settle": self.settle,
                "partials": [[list(key) if isinstance(key, tuple) else key, source, seq, state_to_dict(state)]
                             for key, sources in self.partials.items()
                             for source, (seq, state) in sources.items()],
                "updated": [[list(key) if isinstance(key, tuple) else key, at] for key, at in self._updated.items()]}

    @classmethod
    def from_dict(cls, d: dict, state_from_dict: Callable[[Any], S] = lambda s: s) -> "PartialStore[S]":
        store = cls(d["settle"])
        for key, source, seq, state in d["partials"]:
            key = tuple(key) if isinstance(key, list) else key
            store.partials.setdefault(key, {})[source] = (seq, state_from_dict(state))
        for key, at in d["updated"]:
            store._updated[tuple(key) if isinstance(key, list) else key] = at
        return store
