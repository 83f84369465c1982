"""The event contract: decode Kafka message bytes into validated, normalised events.

Every message becomes a :class:`Decoded`: the kind of its events, the good events
as columns (one list per field, the shape the summarisers consume), and a list of
:class:`Rejection` for whatever was wrong, each naming the field and the problem.
Nothing raises on bad input: a bad message is a rejection, never an exception.

Accepted message forms (see ``schemas/``):

* one event object (prediction, feedback or outcome);
* a batch envelope of rows: ``{"type": "batch", "events": [...]}``;
* a batch envelope of columns: ``{"type": "batch", "count": n, "columns": {...}}``.

Timestamps are event time: epoch seconds (int or float; numbers of 1e11 and above
are read as epoch milliseconds) or RFC 3339 strings with a timezone offset or ``Z``.

>>> d = decode_message(b'{"event_id":"e","prediction_id":"p","timestamp":10,'
...                    b'"model":"m","version":"v","output":{"label":"a"}}', "prediction")
>>> d.count, d.columns["model"], d.rejections
(1, ['m'], [])
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import fastjsonschema
import orjson

from .columnar import event_seconds, fast_columns, fast_rows, prediction_columns, valid_prediction

KINDS = ("prediction", "feedback", "outcome")
SCHEMA_FILES = {
    "prediction": "prediction.v1.json",
    "feedback": "feedback.v1.json",
    "outcome": "outcome.v1.json",
    "batch": "batch.v1.json",
    "deadletter": "deadletter.v1.json",
    "summary": "summary.v1.json",
    "quality_summary": "quality_summary.v1.json",
    "drift": "drift.v1.json",
    "sample": "sample.v1.json",
}
MILLISECONDS_THRESHOLD = 1e11  # epoch seconds of year 5138: larger numbers are milliseconds

# Reasons a message or event is rejected; they label metrics and dead letters.
MALFORMED_JSON = "malformed_json"
SCHEMA_VIOLATION = "schema_violation"
NON_FINITE = "non_finite_value"
UNKNOWN_MODEL = "unknown_model"
OVERSIZED = "oversized_message"
LATE = "late_event"
DUPLICATE = "duplicate_event"
INVALID_ENVELOPE = "invalid_envelope"
REASONS = (MALFORMED_JSON, SCHEMA_VIOLATION, NON_FINITE, UNKNOWN_MODEL, OVERSIZED, LATE,
           DUPLICATE, INVALID_ENVELOPE)


@dataclass(slots=True)
class Rejection:
    """One rejected message (``index is None``) or one rejected event of an envelope."""

    reason: str
    error: str
    index: int | None = None
    event: dict | None = None


class Decoded:
    """The outcome of decoding one Kafka message.

    A message holding one valid prediction keeps it as ``single`` (the event dict,
    ``timestamp`` already in epoch seconds) and builds ``columns`` only when asked:
    the single-event path of the pipeline reads the dict directly.
    """

    __slots__ = ("kind", "count", "rejections", "envelope", "single", "_columns")

    def __init__(self, kind: str, count: int = 0, columns: dict[str, Any] | None = None,
                 rejections: list[Rejection] | None = None, envelope: bool = False):
        self.kind = kind
        self.count = count
        self._columns = columns if columns is not None else {}
        self.rejections = rejections if rejections is not None else []
        self.envelope = envelope
        self.single: dict[str, Any] | None = None

    @property
    def columns(self) -> dict[str, Any]:
        if not self._columns and self.single is not None:
            self._columns = prediction_columns(self.single)
        return self._columns

    @columns.setter
    def columns(self, value: dict[str, Any]) -> None:
        self._columns = value


def schema_text(name: str) -> bytes:
    """The bytes of a shipped schema file, by kind (``prediction``) or file name."""
    filename = SCHEMA_FILES.get(name, name)
    return resources.files("prodlens.schemas").joinpath(filename).read_bytes()


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    return orjson.loads(schema_text(name))


def _ref_handler(uri: str) -> dict:
    return load_schema(uri.rsplit("/", 1)[-1])


@lru_cache(maxsize=None)
def validator(kind: str):
    """A compiled fastjsonschema validator for one kind (cached: compiling is slow)."""
    handlers = {"https": _ref_handler, "http": _ref_handler}
    return fastjsonschema.compile(load_schema(kind), handlers=handlers, use_formats=True)


def parse_timestamp(value: Any) -> float:
    """Event time as epoch seconds. Raises ValueError with a reason otherwise.

    >>> parse_timestamp("1970-01-01T00:01:00Z"), parse_timestamp(1.5e12)
    (60.0, 1500000000.0)
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be a number or an RFC 3339 string, not a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"timestamp {value!r} is not a finite non-negative number")
        return value / 1000.0 if value >= MILLISECONDS_THRESHOLD else float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not RFC 3339 (e.g. 2026-11-25T06:30:00Z)") from None
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no timezone offset (add Z or +HH:MM)")
        return parsed.timestamp()
    raise ValueError(f"timestamp must be a number or an RFC 3339 string, got {type(value).__name__}")


_PATH_CLEAN = re.compile(r"^data\.?")


def _malformed(raw: bytes, exc: Exception) -> Rejection:
    """Tell NaN / Infinity / 1e999 (which Python's json writes) apart from broken JSON."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Rejection(MALFORMED_JSON, f"not valid JSON: {exc}")
    where = _first_non_finite(doc) or "(value)"
    return Rejection(NON_FINITE, f"{where}: must be a finite number (NaN and infinity are not allowed)")


def _describe(exc: fastjsonschema.JsonSchemaValueException) -> str:
    name = exc.name or "data"
    where = _PATH_CLEAN.sub("", name) or "(the event)"
    message = exc.message
    if message.startswith(name):
        message = message[len(name):].strip()
    missing = re.match(r"must contain \[(.*)\] properties", message)
    if missing:
        return f"{where}: missing required field(s) {missing.group(1)}"
    if exc.rule == "additionalProperties":
        return f"{where}: has unknown field(s); allowed are {sorted(exc.definition.get('properties', {}))}"
    return f"{where}: {message}"


def _first_non_finite(obj: Any, path: str = "") -> str | None:
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path or "(value)"
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _first_non_finite(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found = _first_non_finite(value, f"{path}[{i}]")
            if found:
                return found
    return None


def check_event(event: Any, kind: str, finite_checked: bool = False) -> Rejection | None:
    """Validate one event object; ``None`` when it is good.

    Schema violations name the field; non-finite numbers are rejected separately
    because JSON Schema cannot say "finite". orjson already refuses NaN and
    infinity, so decoded messages pass ``finite_checked=True`` and skip that walk.
    """
    if not isinstance(event, dict):
        return Rejection(SCHEMA_VIOLATION, f"(the event): must be an object, got {type(event).__name__}")
    try:
        validator(kind)(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        return Rejection(SCHEMA_VIOLATION, _describe(exc))
    if not finite_checked:
        bad = _first_non_finite(event)
        if bad:
            return Rejection(NON_FINITE, f"{bad}: must be a finite number (NaN and infinity are not allowed)")
    try:
        parse_timestamp(event["timestamp"])
    except ValueError as exc:
        return Rejection(SCHEMA_VIOLATION, f"timestamp: {exc}")
    return None


# Top-level fields of each kind; NESTED ones are objects that become dicts of columns.
FIELDS: dict[str, tuple[str, ...]] = {
    "prediction": ("event_id", "prediction_id", "timestamp", "model", "version", "role", "experiment",
                   "variant", "unit_id", "segment", "features", "output", "latency_ms"),
    "feedback": ("event_id", "prediction_id", "timestamp", "model", "kind", "value", "size", "corrected"),
    "outcome": ("event_id", "unit_id", "timestamp", "metric", "value", "model", "experiment", "segment"),
}
NESTED = frozenset({"segment", "features", "output"})


def rows_to_columns(kind: str, events: list[dict]) -> dict[str, Any]:
    """Validated row events -> the canonical columns every stage consumes.

    Plain fields become one list each (``None`` where absent); nested objects
    (segment, features, output) become a dict of such lists; ``timestamp`` is
    epoch seconds.

    >>> rows_to_columns("outcome", [{"event_id": "a", "unit_id": "u", "timestamp": 1,
    ...                               "metric": "m", "value": 2.0, "segment": {"c": "US"}}])["segment"]
    {'c': ['US']}
    """
    columns: dict[str, Any] = {}
    for name in FIELDS[kind]:
        if name in NESTED:
            nested: dict[str, list] = {}
            for i, event in enumerate(events):
                for key, value in (event.get(name) or {}).items():
                    column = nested.get(key)
                    if column is None:
                        column = nested[key] = [None] * len(events)
                    column[i] = value
            columns[name] = nested
        else:
            columns[name] = [event.get(name) for event in events]
    columns["timestamp"] = [parse_timestamp(t) for t in columns["timestamp"]]
    return columns


def row_of(columns: dict[str, Any], i: int) -> dict[str, Any]:
    """Event ``i`` rebuilt from canonical columns (for dead letters), without null fields."""
    row: dict[str, Any] = {}
    for name, column in columns.items():
        if isinstance(column, dict):
            nested = {k: v[i] for k, v in column.items() if v[i] is not None}
            if nested:
                row[name] = nested
        elif column[i] is not None:
            row[name] = column[i]
    return row


def columns_to_rows(kind: str, count: int, columns: dict[str, Any]) -> list[dict]:
    """Expand a columnar envelope into row events (scalars repeat; nested objects of arrays split).

    The slow path: used when the fast columnar check (``prodlens.columnar``) cannot
    vouch for every row, so each row is validated, and rejected, on its own.
    """
    rows: list[dict] = [{} for _ in range(count)]
    for name, column in columns.items():
        if isinstance(column, list):
            if len(column) != count:
                raise ValueError(f"columns.{name}: has {len(column)} values, count says {count}")
            for row, value in zip(rows, column):
                if value is not None:
                    row[name] = value
        elif isinstance(column, dict):
            for row, value in zip(rows, _split_nested(name, column, count)):
                if value or name == "output":
                    row[name] = value
        elif column is not None:
            for row in rows:
                row[name] = column
    return rows


def _split_nested(path: str, column: dict, count: int) -> list[dict]:
    out: list[dict] = [{} for _ in range(count)]
    for key, values in column.items():
        if isinstance(values, list):
            if len(values) != count:
                raise ValueError(f"columns.{path}.{key}: has {len(values)} values, count says {count}")
            keep_null = path in ("features", "segment")  # null there means "missing", a value
            for row, value in zip(out, values):
                if value is not None or keep_null:
                    row[key] = value
        else:
            for row in out:
                row[key] = values
    return out


class Decoder:
    """Decodes messages of one topic kind; checks models against the configured set.

    ``known_models`` of ``None`` accepts every model (used by ``prodlens validate``).
    """

    def __init__(self, known_models: Iterable[str] | None = None, max_message_bytes: int = 8 << 20):
        self.known_models = frozenset(known_models) if known_models is not None else None
        self.max_message_bytes = max_message_bytes

    def decode(self, raw: bytes | None, kind: str) -> Decoded:
        out = Decoded(kind=kind)
        if raw is None:
            out.rejections.append(Rejection(MALFORMED_JSON, "message has no value (null / tombstone)"))
            return out
        if len(raw) > self.max_message_bytes:
            out.rejections.append(Rejection(
                OVERSIZED, f"message is {len(raw)} bytes, the limit is {self.max_message_bytes}"))
            return out
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            out.rejections.append(_malformed(raw, exc))
            return out
        if isinstance(doc, dict) and doc.get("type") == "batch":
            self._decode_batch(doc, out)
        elif isinstance(doc, list):
            out.rejections.append(Rejection(
                INVALID_ENVELOPE, "a bare JSON array is not an event; wrap it as {\"type\": \"batch\", \"events\": [...]}"))
        else:
            doc_kind = doc.get("type", kind) if isinstance(doc, dict) else kind
            if doc_kind not in KINDS:
                out.rejections.append(Rejection(SCHEMA_VIOLATION, f"type: unknown event type {doc_kind!r}"))
                return out
            out.kind = doc_kind
            self._add_rows(out, [doc], whole_message=True)
        return out

    def _decode_batch(self, doc: dict, out: Decoded) -> None:
        out.envelope = True
        try:
            validator("batch")(doc)
        except fastjsonschema.JsonSchemaValueException as exc:
            out.rejections.append(Rejection(INVALID_ENVELOPE, _describe(exc)))
            return
        out.kind = doc.get("kind", out.kind)
        if "events" in doc:
            self._add_rows(out, doc["events"], whole_message=False)
            return
        fast = fast_columns(out.kind, doc["count"], doc["columns"])
        if fast is not None:
            self._add_fast(out, fast, doc["count"])
            return
        try:
            rows = columns_to_rows(out.kind, doc["count"], doc["columns"])
        except ValueError as exc:
            out.rejections.append(Rejection(INVALID_ENVELOPE, str(exc)))
            return
        self._add_rows(out, rows, whole_message=False)

    def _add_fast(self, out: Decoded, columns: dict[str, Any], count: int,
                  whole_message: bool = False) -> None:
        """A columnar envelope whose every row is known valid: only model names remain to check."""
        if self.known_models is not None and out.kind == "prediction":
            models = columns["model"]
            unknown = [i for i, m in enumerate(models) if m not in self.known_models] \
                if len(set(models)) > 1 or models[0] not in self.known_models else []
            if unknown:
                bad = set(unknown)
                for i in unknown:
                    out.rejections.append(Rejection(UNKNOWN_MODEL, self._unknown(models[i])) if whole_message
                                          else Rejection(UNKNOWN_MODEL, self._unknown(models[i]), i,
                                                         row_of(columns, i)))
                keep = [i for i in range(count) if i not in bad]
                columns = take(columns, keep)
                count = len(keep)
        out.count = count
        if count:
            out.columns = columns

    def _unknown(self, model: str) -> str:
        return f"model: {model!r} is not configured (known: {', '.join(sorted(self.known_models)) or 'none'})"

    def _add_rows(self, out: Decoded, events: list, whole_message: bool) -> None:
        if whole_message and out.kind == "prediction" and valid_prediction(events[0]):
            event = events[0]
            if self.known_models is not None and event["model"] not in self.known_models:
                out.rejections.append(Rejection(UNKNOWN_MODEL, self._unknown(event["model"])))
                return
            event["timestamp"] = event_seconds(event["timestamp"])
            out.single, out.count = event, 1
            return
        fast = fast_rows(out.kind, events)
        if fast is not None:
            self._add_fast(out, fast, len(events), whole_message)
            return
        good: list[dict] = []
        for i, event in enumerate(events):
            rejection = check_event(event, out.kind, finite_checked=True)
            if rejection is None and self.known_models is not None and out.kind == "prediction" \
                    and event["model"] not in self.known_models:
                rejection = Rejection(UNKNOWN_MODEL, self._unknown(event["model"]))
            if rejection is None:
                good.append(event)
            else:
                if not whole_message:
                    rejection.index = i
                    rejection.event = event if isinstance(event, dict) else {"value": event}
                out.rejections.append(rejection)
        out.count = len(good)
        if good:
            out.columns = rows_to_columns(out.kind, good)


def take(columns: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    return {name: ({k: [v[i] for i in rows] for k, v in col.items()} if isinstance(col, dict)
                   else [col[i] for i in rows]) for name, col in columns.items()}


def decode_message(raw: bytes, kind: str) -> Decoded:
    """Decode with every model accepted (a convenience for tools and tests)."""
    return Decoder().decode(raw, kind)
