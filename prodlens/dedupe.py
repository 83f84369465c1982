"""Deduplication by event_id within a bounded horizon.

FIFO (insertion order, not LRU) on purpose: the set after a sequence of
messages depends only on that sequence, so a restarted worker rebuilds exactly
the same set by re-reading the input from :attr:`oldest_offset` (see
``streams/checkpoint.py``) instead of storing every id in each snapshot.

>>> d = EventIdDeduper(capacity=2)
>>> d.seen("a", offset=0), d.seen("a", offset=1), d.seen("b", 2), d.seen("c", 3), d.seen("a", 4)
(False, True, False, False, False)
"""

from __future__ import annotations

from collections import OrderedDict


class EventIdDeduper:
    """Remembers the last ``capacity`` distinct event ids and the offset each came from."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._ids: OrderedDict[str, int] = OrderedDict()

    def seen(self, event_id: str, offset: int) -> bool:
        """True if ``event_id`` is a duplicate; otherwise remember it and return False."""
        if self.capacity <= 0:
            return False
        if event_id in self._ids:
            return True
        self._ids[event_id] = offset
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    @property
    def oldest_offset(self) -> int | None:
        """Input offset of the oldest remembered id: re-reading from here rebuilds the set."""
        return next(iter(self._ids.values())) if self._ids else None

    def __len__(self) -> int:
        return len(self._ids)
