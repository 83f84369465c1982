"""A bounded, mergeable, deterministic sample of violating events (bottom-k by hash).

Each candidate gets a priority from a hash of its identity (e.g. invariant +
event_id); the sample keeps the ``k`` smallest priorities. Because priorities
are a fixed function of identity, the sample is a uniform random sample of the
distinct candidates offered (without replacement), a re-delivered event cannot
enter twice, and ``merge`` of two samples equals the sample of the union —
exactly, in any order.

>>> s = BottomK(2)
>>> for i in range(10):
...     _ = s.offer(f"e{i}", lambda i=i: {"event_id": f"e{i}"})
>>> len(s.items), s.seen
(2, 10)
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

_MASK = (1 << 53) - 1  # priorities stay exact in any JSON parser


def priority(identity: str) -> int:
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK


@dataclass
class BottomK:
    """Keeps the ``k`` candidates with the smallest hash priority; ``seen`` counts offers."""

    k: int = 10
    items: list[list] = field(default_factory=list)  # [[priority, record], ...] sorted by priority
    seen: int = 0

    def offer(self, identity: str, make_record: Callable[[], dict[str, Any]]) -> bool:
        """Offer one candidate; ``make_record`` is only called when it is kept."""
        self.seen += 1
        if self.k <= 0:
            return False
        p = priority(identity)
        if len(self.items) >= self.k and p >= self.items[-1][0]:
            return False
        keys = [item[0] for item in self.items]
        i = bisect.bisect_left(keys, p)
        if i < len(keys) and keys[i] == p:
            return False  # the same identity again (a re-delivered event)
        self.items.insert(i, [p, make_record()])
        del self.items[self.k:]
        return True

    def merge(self, other: "BottomK") -> "BottomK":
        by_p = {item[0]: item for item in self.items}
        for item in other.items:
            by_p.setdefault(item[0], item)
        self.items = [list(by_p[p]) for p in sorted(by_p)][: self.k]
        self.seen += other.seen
        return self

    def records(self) -> list[dict]:
        return [item[1] for item in self.items]

    def to_dict(self) -> dict:
        return {"k": self.k, "seen": self.seen, "items": [[p, r] for p, r in self.items]}

    @classmethod
    def from_dict(cls, data: dict) -> "BottomK":
        return cls(k=data["k"], items=[[p, r] for p, r in data["items"]], seen=data["seen"])
