"""Delivery counters shared by the caller threads and the sender.

All counts are in events (not envelopes). Once everything is flushed with the
broker reachable: ``logged == sent + resent_own + dropped + oversized`` where
``resent_own`` excludes events adopted from an earlier process's spool; at any
moment ``spooled - resent`` (plus adopted events) is what waits in the spool.
"""

from __future__ import annotations

import threading

COUNTERS = (
    "logged",        # accepted by log_prediction / log_feedback / log_outcome
    "sent",          # acknowledged by the broker on the first attempt
    "spooled",       # written to the local spool (broker unreachable, send failed, or queue full)
    "resent",        # acknowledged by the broker after coming back from the spool
    "dropped",       # lost because the spool was full (spool_max_bytes) or could not be written
    "failed",        # send attempts that failed (each such event is then spooled or still spooled)
    "oversized",     # a single event larger than max_message_bytes: never sendable, not kept
    "non_finite",    # NaN / infinite feature values sent as null (missing)
    "adopted",       # events found in the spool at start (left by an earlier process)
    "envelopes",     # envelopes acknowledged by the broker (sent or resent)
)


class Stats:
    """Thread-safe event counters; ``snapshot()`` is a plain dict."""

    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
