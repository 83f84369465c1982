"""Durations as written in prodlens.yaml: ``30s``, ``5m``, ``1h30m``, ``2d``, ``500ms`` or a number of seconds.

>>> parse_duration("1h30m"), parse_duration(90), format_duration(5400.0)
(5400.0, 90.0, '1h30m')
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds as a float. Raises ValueError naming ``what`` for anything else (negative included)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration like 30s, 5m, 1h30m or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"{what}: must not be negative, got {value!r}")
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{what}: {value!r} is not a duration (use e.g. 30s, 5m, 1h30m, 2d)") from None
    else:
        raise ValueError(f"{what}: expected a duration like 30s, 5m, 1h30m, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"{what}: must be finite, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{what}: must not be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A Prometheus duration string (``1h30m``, ``45s``, ``250ms``); ``0s`` for zero."""
    ms = int(round(seconds * 1000))
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
