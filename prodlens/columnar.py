"""The fast path for columnar batch envelopes: check whole columns at once.

:func:`fast_columns` either vouches that *every* row of a columnar envelope
satisfies the event schema and returns the canonical columns, or returns
``None`` — and the caller falls back to validating row by row with the JSON
Schema, which names the field of each bad row. So this module may be strict
(anything unusual falls back) but never lenient: a row it accepts must be one
the schema accepts. ``tests/core/test_columnar.py`` checks that equivalence on
generated envelopes.

Values come from orjson, which refuses NaN and infinity, so numbers here are
always finite.
"""

from __future__ import annotations

import re
from typing import Any, Callable


_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_NUMBER = (int, float)
_SEGMENT_TYPES = frozenset({str, int, bool, type(None)})
_FEATURE_TYPES = frozenset({str, int, float, bool, type(None)})
_MS_THRESHOLD = 1e11  # as contract.MILLISECONDS_THRESHOLD
ROLES = frozenset({"primary", "shadow", "canary", "challenger", "blue", "green"})


class _Fallback(Exception):
    """This envelope needs the row-by-row path."""


def _is_number(v: Any) -> bool:
    return type(v) is float or type(v) is int


def _column(value: Any, count: int) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise _Fallback
        return value
    if isinstance(value, dict):
        raise _Fallback
    return [value] * count


def _strings(value: Any, count: int, max_len: int, required: bool, name_pattern: bool = False) -> list:
    column = _column(value, count)
    try:
        distinct = set(column)  # ids are unique, but model/version/role repeat: check each once
    except TypeError:
        raise _Fallback from None
    for v in distinct:
        if type(v) is str:
            if len(v) > max_len or (required and not v) or (name_pattern and not _NAME.match(v)):
                raise _Fallback
        elif v is not None or required:
            raise _Fallback
    return column


def _timestamps(value: Any, count: int) -> list[float]:
    column = _column(value, count)
    out = []
    for v in column:
        if type(v) is float or type(v) is int:
            if v < 0:
                raise _Fallback
            out.append(v / 1000.0 if v >= _MS_THRESHOLD else float(v))
        else:
            raise _Fallback  # strings: the row path parses and reports them precisely
    return out


def _numbers(value: Any, count: int, minimum: float | None = None, maximum: float | None = None,
             required: bool = False) -> list:
    column = _column(value, count)
    for v in column:
        if type(v) is float or type(v) is int:
            if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
                raise _Fallback
        elif v is not None or required:
            raise _Fallback
    return column


def _nested(value: Any, count: int, types: frozenset, max_keys: int) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > max_keys:
        raise _Fallback
    out = {}
    for key, column in value.items():
        column = _column(column, count)
        for v in column:
            if type(v) not in types:
                raise _Fallback
        out[key] = column
    return out


def _output(value: Any, count: int) -> dict[str, list]:
    if not isinstance(value, dict) or not value or set(value) - {"label", "score", "probabilities", "value"}:
        raise _Fallback
    out: dict[str, list] = {}
    if "label" in value:
        column = _column(value["label"], count)
        for v in column:
            if not (type(v) is str or type(v) is int or type(v) is bool or v is None):
                raise _Fallback
        out["label"] = column
    if "score" in value:
        out["score"] = _numbers(value["score"], count, 0, 1)
    if "value" in value:
        out["value"] = _numbers(value["value"], count)
    if "probabilities" in value:
        column = _column(value["probabilities"], count)
        for v in column:
            if v is None:
                continue
            if not isinstance(v, dict) or len(v) < 2:
                raise _Fallback
            for p in v.values():
                if not _is_number(p) or not 0 <= p <= 1:
                    raise _Fallback
        out["probabilities"] = column
    columns = list(out.values())
    for i in range(count):  # every row must answer something
        if all(c[i] is None for c in columns):
            raise _Fallback
    return out


def _prediction(cols: dict, n: int) -> dict[str, Any]:
    return {
        "event_id": _strings(cols.get("event_id"), n, 128, True),
        "prediction_id": _strings(cols.get("prediction_id"), n, 128, True),
        "timestamp": _timestamps(cols.get("timestamp"), n),
        "model": _strings(cols.get("model"), n, 128, True, name_pattern=True),
        "version": _strings(cols.get("version"), n, 128, True, name_pattern=True),
        "role": _enum(cols.get("role"), n, ROLES),
        "experiment": _strings(cols.get("experiment"), n, 128, False),
        "variant": _strings(cols.get("variant"), n, 128, False),
        "unit_id": _strings(cols.get("unit_id"), n, 256, False),
        "segment": _nested(cols.get("segment"), n, _SEGMENT_TYPES, 16),
        "features": _nested(cols.get("features"), n, _FEATURE_TYPES, 512),
        "output": _output(cols.get("output"), n),
        "latency_ms": _numbers(cols.get("latency_ms"), n, 0),
    }


def _enum(value: Any, count: int, allowed: frozenset) -> list:
    column = _column(value, count)
    for v in column:
        if v is not None and v not in allowed:
            raise _Fallback
    return column


_FEEDBACK_KINDS = frozenset({"label", "correction", "complaint", "rating", "implicit"})


def _feedback(cols: dict, n: int) -> dict[str, Any]:
    value = _column(cols.get("value"), n)
    for v in value:
        if not (type(v) in (str, int, float, bool) or v is None):
            raise _Fallback
    kinds = _enum(cols.get("kind"), n, _FEEDBACK_KINDS)
    if any(k is None for k in kinds):
        raise _Fallback
    return {
        "event_id": _strings(cols.get("event_id"), n, 128, True),
        "prediction_id": _strings(cols.get("prediction_id"), n, 128, True),
        "timestamp": _timestamps(cols.get("timestamp"), n),
        "model": _strings(cols.get("model"), n, 128, False, name_pattern=True),
        "kind": kinds, "value": value,
        "size": _numbers(cols.get("size"), n, 0),
        "corrected": _numbers(cols.get("corrected"), n, 0),
    }


def _outcome(cols: dict, n: int) -> dict[str, Any]:
    return {
        "event_id": _strings(cols.get("event_id"), n, 128, True),
        "unit_id": _strings(cols.get("unit_id"), n, 256, True),
        "timestamp": _timestamps(cols.get("timestamp"), n),
        "metric": _strings(cols.get("metric"), n, 128, True, name_pattern=True),
        "value": _numbers(cols.get("value"), n, required=True),
        "model": _strings(cols.get("model"), n, 128, False, name_pattern=True),
        "experiment": _strings(cols.get("experiment"), n, 128, False),
        "segment": _nested(cols.get("segment"), n, _SEGMENT_TYPES, 16),
    }


_KINDS: dict[str, tuple[Callable[[dict, int], dict], frozenset]] = {
    "prediction": (_prediction, frozenset({"event_id", "prediction_id", "timestamp", "model", "version",
                                           "role", "experiment", "variant", "unit_id", "segment",
                                           "features", "output", "latency_ms"})),
    "feedback": (_feedback, frozenset({"event_id", "prediction_id", "timestamp", "model", "kind",
                                       "value", "size", "corrected"})),
    "outcome": (_outcome, frozenset({"event_id", "unit_id", "timestamp", "metric", "value", "model",
                                     "experiment", "segment"})),
}
_CONSTANTS = {"type", "schema_version"}


def fast_columns(kind: str, count: int, columns: dict) -> dict[str, Any] | None:
    """Canonical columns if every row is valid, else ``None`` (use the row path)."""
    entry = _KINDS.get(kind)
    if entry is None or count == 0 or not isinstance(columns, dict):
        return None
    build, allowed = entry
    extra = set(columns) - allowed
    if extra:
        if extra - _CONSTANTS:
            return None
        for name, const in (("type", kind), ("schema_version", 1)):
            if name in columns and any(v != const for v in _column(columns[name], count)):
                return None
    try:
        return build(columns, count)
    except _Fallback:
        return None


_NESTED = ("segment", "features", "output")
# Row events may say null only where the schema allows it; elsewhere null is a violation
# (in the columnar form a null cell means "absent for this row" instead).
_NULLABLE = {"prediction": frozenset({"experiment", "variant", "unit_id"}),
             "feedback": frozenset({"value"}),
             "outcome": frozenset({"experiment"})}


def fast_rows(kind: str, events: list) -> dict[str, Any] | None:
    """Canonical columns for row events (a single event or an ``events`` envelope) if every
    row is valid, else ``None``: rows are transposed to columns and checked as such."""
    entry = _KINDS.get(kind)
    if entry is None or not events:
        return None
    allowed = entry[1] | _CONSTANTS
    n = len(events)
    names: set[str] = set()
    nullable = _NULLABLE[kind]
    for event in events:
        if type(event) is not dict:
            return None
        for key, value in event.items():
            if value is None and key not in nullable:
                return None
        output = event.get("output")
        if type(output) is dict and None in output.values():
            return None
        names.update(event)
    if names - allowed:
        return None
    columns: dict[str, Any] = {}
    for name in names:
        if name in _NESTED:
            nested: dict[str, list] = {}
            for i, event in enumerate(events):
                obj = event.get(name)
                if obj is None:
                    continue
                if type(obj) is not dict:
                    return None
                for key, value in obj.items():
                    column = nested.get(key)
                    if column is None:
                        column = nested[key] = [None] * n
                    column[i] = value
            columns[name] = nested
        else:
            columns[name] = [event.get(name) for event in events]
    if "output" in columns and not columns["output"]:
        return None
    return fast_columns(kind, n, columns)


_PREDICTION_FIELDS = _KINDS["prediction"][1] | _CONSTANTS
_OUTPUT_KEYS = frozenset({"label", "score", "probabilities", "value"})
_good_names: set[str] = set()  # model / version names already matched (they repeat endlessly)


def _name_ok(v: Any) -> bool:
    if v in _good_names:
        return True
    if type(v) is str and _NAME.match(v):
        if len(_good_names) < 10_000:
            _good_names.add(v)
        return True
    return False


def _id_ok(v: Any, max_len: int) -> bool:
    return type(v) is str and 0 < len(v) <= max_len


def _opt_str_ok(v: Any, max_len: int) -> bool:
    return v is None or (type(v) is str and len(v) <= max_len)


def _number_ok(v: Any, minimum: float | None = None, maximum: float | None = None) -> bool:
    if type(v) is not float and type(v) is not int:
        return False
    return (minimum is None or v >= minimum) and (maximum is None or v <= maximum)


def _object_ok(v: Any, types: frozenset, max_keys: int) -> bool:
    if v is None:
        return True
    if type(v) is not dict or len(v) > max_keys:
        return False
    for value in v.values():
        if type(value) not in types:
            return False
    return True


def _prediction_output_ok(out: Any) -> bool:
    if type(out) is not dict or not out or not out.keys() <= _OUTPUT_KEYS:
        return False
    for key, v in out.items():
        if v is None:
            return False
        if key == "label":
            if not (type(v) is str or type(v) is int or type(v) is bool):
                return False
        elif key == "score":
            if not _number_ok(v, 0, 1):
                return False
        elif key == "value":
            if not _number_ok(v):
                return False
        elif type(v) is not dict or len(v) < 2 or not all(_number_ok(p, 0, 1) for p in v.values()):
            return False
    return True


def valid_prediction(event: Any) -> bool:
    """True if one prediction event satisfies the schema (the rules of :func:`fast_columns`,
    checked on the dict directly: single-event messages are every pipeline's slow path)."""
    if type(event) is not dict or not event.keys() <= _PREDICTION_FIELDS:
        return False
    for key, value in event.items():
        if value is None and key not in _NULLABLE["prediction"]:
            return False
    if event.get("type", "prediction") != "prediction" or event.get("schema_version", 1) != 1:
        return False
    latency = event.get("latency_ms")
    role = event.get("role")
    return (_id_ok(event.get("event_id"), 128) and _id_ok(event.get("prediction_id"), 128)
            and _number_ok(event.get("timestamp"), 0)
            and _name_ok(event.get("model")) and _name_ok(event.get("version"))
            and (role is None or role in ROLES)
            and _opt_str_ok(event.get("experiment"), 128) and _opt_str_ok(event.get("variant"), 128)
            and _opt_str_ok(event.get("unit_id"), 256)
            and (latency is None or _number_ok(latency, 0))
            and _object_ok(event.get("segment"), _SEGMENT_TYPES, 16)
            and _object_ok(event.get("features"), _FEATURE_TYPES, 512)
            and _prediction_output_ok(event.get("output")))


def event_seconds(ts: float) -> float:
    """Epoch seconds from a validated numeric timestamp (milliseconds above 1e11)."""
    return ts / 1000.0 if ts >= _MS_THRESHOLD else float(ts)


def prediction_columns(event: dict) -> dict[str, Any]:
    """Canonical one-row columns of a valid prediction event."""
    segment, features = event.get("segment"), event.get("features")
    return {
        "event_id": [event["event_id"]], "prediction_id": [event["prediction_id"]],
        "timestamp": [event_seconds(event["timestamp"])],
        "model": [event["model"]], "version": [event["version"]], "role": [event.get("role")],
        "experiment": [event.get("experiment")], "variant": [event.get("variant")],
        "unit_id": [event.get("unit_id")],
        "segment": {k: [v] for k, v in segment.items()} if segment else {},
        "features": {k: [v] for k, v in features.items()} if features else {},
        "output": {k: [v] for k, v in event["output"].items()},
        "latency_ms": [event.get("latency_ms")],
    }


def fast_event(kind: str, event: Any) -> dict[str, Any] | None:
    """Canonical one-row columns for a single event if it is valid, else ``None``."""
    if kind != "prediction":
        return fast_rows(kind, [event])
    return prediction_columns(event) if valid_prediction(event) else None
