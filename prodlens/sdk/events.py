"""Turn ``log_*`` arguments into compact event rows that follow ``schemas/*.v1.json``.

Checks are cheap (type and range checks, no JSON Schema) so logging stays in the
microseconds; a wrong argument raises ``ValueError`` / ``TypeError`` naming the
field. NaN and infinite *feature* values become ``None`` (missing) and are
counted, because JSON cannot carry them; a non-finite output, latency, feedback
or outcome value is an error.

A row is a tuple in the order of ``FIELDS[kind]``; the group key says which
envelope (and Kafka message key) the row belongs to: ``(model, version)`` for
predictions, ``model`` (or ``None``) for feedback, ``None`` for outcomes.

>>> b = EventBuilder(Privacy(salt="s"))
>>> kind, group, row = b.prediction("churn", "v7", label="stay", features={"x": float("nan")})
>>> group, row[FIELDS["prediction"].index("features")], b.non_finite
(('churn', 'v7'), {'x': None}, 1)
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prodlens.contract import parse_timestamp
from prodlens.sdk.privacy import Privacy
from prodlens.sdk.stats import Stats

FIELDS: dict[str, tuple[str, ...]] = {
    "prediction": ("event_id", "prediction_id", "timestamp", "role", "experiment", "variant",
                   "unit_id", "segment", "features", "output", "latency_ms"),
    "feedback": ("event_id", "prediction_id", "timestamp", "kind", "value", "size", "corrected"),
    "outcome": ("event_id", "unit_id", "timestamp", "metric", "value", "model", "experiment",
                "segment"),
}
ROLES = frozenset({"primary", "shadow", "canary", "challenger", "blue", "green"})
FEEDBACK_KINDS = frozenset({"label", "correction", "complaint", "rating", "implicit"})
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_SEGMENT_KEYS = 16
MAX_FEATURES = 512
_NAME_CACHE_LIMIT = 10_000

_UUID_MASK = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> str:
    """A random UUID4 as 32 hex characters (same as ``uuid.uuid4().hex``, twice as fast)."""
    return "%032x" % ((int.from_bytes(os.urandom(16), "big") & _UUID_MASK) | _UUID_BITS)


_NOT_SCALAR = object()


def _plain(value: Any) -> Any:
    """numpy scalars and subclasses of bool/int/float/str as the plain Python value
    (``_NOT_SCALAR`` for anything else), so orjson can write them."""
    if hasattr(value, "item") and not isinstance(value, (str, int, float)):
        try:
            value = value.item()  # numpy scalar or 0-d array
        except (ValueError, TypeError):
            return _NOT_SCALAR
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return _NOT_SCALAR


def _number(value: Any, where: str) -> float | int:
    """A finite int/float (numpy scalars accepted) or a ValueError/TypeError naming the field."""
    t = type(value)
    if t is not float and t is not int:
        plain = _plain(value)
        if type(plain) is not float and type(plain) is not int:
            raise TypeError(f"{where}: must be a number, got {type(value).__name__}")
        value = plain
    if type(value) is float and value - value != 0:
        raise ValueError(f"{where}: must be a finite number, got {value!r}")
    return value


def _event_id(value: Any, where: str) -> str:
    if value is None:
        return new_id()
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise ValueError(f"{where}: must be a string of 1 to 128 characters, got {value!r}")
    return value


def _timestamp(value: Any) -> float:
    if value is None:
        return time.time()
    t = type(value)
    if t is float or t is int:
        if value >= 0 and value - value == 0:  # finite and non-negative
            return value
        raise ValueError(f"timestamp: must be finite and non-negative, got {value!r}")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp: a datetime needs a timezone (e.g. datetime.now(timezone.utc))")
        return value.timestamp()
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise ValueError(f"timestamp: {exc}") from None


class EventBuilder:
    """Validates arguments, applies :class:`Privacy`, and returns ``(kind, group, row)``."""

    def __init__(self, privacy: Privacy | None = None, stats: Stats | None = None):
        self.privacy = privacy or Privacy()
        self.stats = stats or Stats()
        self._names: set[str] = set()

    @property
    def non_finite(self) -> int:
        """Feature values sent as null because they were NaN or infinite."""
        return self.stats.get("non_finite")

    # -- field checks -------------------------------------------------------------
    def _name(self, value: Any, where: str) -> str:
        if value in self._names:
            return value
        if not isinstance(value, str) or not NAME.match(value):
            raise ValueError(f"{where}: must be 1-128 characters of letters, digits and _.:- , got {value!r}")
        if len(self._names) < _NAME_CACHE_LIMIT:
            self._names.add(value)
        return value

    def _features(self, features: Mapping[str, Any]) -> dict:
        if type(features) is not dict and not isinstance(features, Mapping):
            raise TypeError(f"features: must be a mapping of name to value, got {type(features).__name__}")
        out = self.privacy.features(features)
        if len(out) > MAX_FEATURES:
            raise ValueError(f"features: at most {MAX_FEATURES} features per event, got {len(out)}")
        for key, value in out.items():
            t = type(value)
            if t is float:
                if value - value != 0:  # NaN or infinity: JSON cannot carry it, so "missing"
                    out[key] = None
                    self.stats.add("non_finite")
            elif t is str or t is int or t is bool or value is None:
                pass
            else:
                out[key] = self._feature_value(key, value)
            if type(key) is not str:
                raise TypeError(f"features: names must be strings, got {key!r}")
        return out

    def _feature_value(self, key: str, value: Any) -> Any:
        plain = _plain(value)
        if plain is _NOT_SCALAR:
            raise TypeError(f"features.{key}: must be a number, string, boolean or None, "
                            f"got {type(value).__name__}")
        if type(plain) is float and plain - plain != 0:
            self.stats.add("non_finite")
            return None
        return plain

    def _segment(self, segment: Mapping[str, Any]) -> dict | None:
        if segment is None:
            return None
        if type(segment) is not dict and not isinstance(segment, Mapping):
            raise TypeError(f"segment: must be a mapping of attribute to value, got {type(segment).__name__}")
        out = self.privacy.segment(segment)
        if len(out) > MAX_SEGMENT_KEYS:
            raise ValueError(f"segment: at most {MAX_SEGMENT_KEYS} attributes, got {len(out)}")
        for key, value in out.items():
            t = type(value)
            if t is str or t is int or t is bool or value is None:
                continue
            plain = _plain(value)
            if type(plain) is float and plain.is_integer():
                plain = int(plain)
            if plain is _NOT_SCALAR or type(plain) is float:
                raise TypeError(f"segment.{key}: must be a string, integer, boolean or None, "
                                f"got {type(value).__name__}")
            out[key] = plain
        return out or None

    @staticmethod
    def _output(output: Mapping[str, Any] | None, label: Any, score: Any, probabilities: Any,
                value: Any) -> dict:
        out: dict[str, Any] = {}
        if output is not None:
            if not isinstance(output, Mapping):
                raise TypeError(f"output: must be a mapping, got {type(output).__name__}")
            unknown = set(output) - {"label", "score", "probabilities", "value"}
            if unknown:
                raise ValueError(f"output: unknown field(s) {sorted(unknown)}; allowed are "
                                 "label, score, probabilities, value")
            label = output.get("label", label)
            score = output.get("score", score)
            probabilities = output.get("probabilities", probabilities)
            value = output.get("value", value)
        if label is not None:
            plain = _plain(label)
            if plain is _NOT_SCALAR or type(plain) is float:
                raise TypeError(f"output.label: must be a string, integer or boolean, got {type(label).__name__}")
            out["label"] = plain
        if score is not None:
            score = _number(score, "output.score")
            if not 0 <= score <= 1:
                raise ValueError(f"output.score: must be between 0 and 1, got {score!r}")
            out["score"] = score
        if probabilities is not None:
            if not isinstance(probabilities, Mapping) or len(probabilities) < 2:
                raise ValueError("output.probabilities: must map at least two classes to probabilities")
            probs = {}
            for cls, p in probabilities.items():
                p = _number(p, f"output.probabilities.{cls}")
                if not 0 <= p <= 1:
                    raise ValueError(f"output.probabilities.{cls}: must be between 0 and 1, got {p!r}")
                probs[str(cls)] = p
            out["probabilities"] = probs
        if value is not None:
            out["value"] = _number(value, "output.value")
        if not out:
            raise ValueError("output: give at least one of label, score, probabilities or value")
        return out

    # -- the three event kinds ---------------------------------------------------------
    def prediction(self, model: str, version: str, output: Mapping[str, Any] | None = None, *,
                   label: Any = None, score: Any = None, probabilities: Mapping[str, Any] | None = None,
                   value: Any = None, features: Mapping[str, Any] | None = None,
                   segment: Mapping[str, Any] | None = None, latency_ms: Any = None,
                   unit_id: Any = None, prediction_id: str | None = None, event_id: str | None = None,
                   timestamp: Any = None, role: str = "primary", experiment: str | None = None,
                   variant: str | None = None) -> tuple[str, tuple, tuple]:
        model = self._name(model, "model")
        version = self._name(version, "version")
        if role not in ROLES:
            raise ValueError(f"role: must be one of {sorted(ROLES)}, got {role!r}")
        if experiment is not None or variant is not None:
            for where, text in (("experiment", experiment), ("variant", variant)):
                if text is not None and (not isinstance(text, str) or len(text) > 128):
                    raise ValueError(f"{where}: must be a string of at most 128 characters, got {text!r}")
        if latency_ms is not None:
            latency_ms = _number(latency_ms, "latency_ms")
            if latency_ms < 0:
                raise ValueError(f"latency_ms: must not be negative, got {latency_ms!r}")
        row = (
            _event_id(event_id, "event_id"),
            _event_id(prediction_id, "prediction_id"),
            _timestamp(timestamp),
            role, experiment, variant,
            self.privacy.hash_unit(unit_id),
            self._segment(segment),
            self._features(features) if features is not None else None,
            self._output(output, label, score, probabilities, value),
            latency_ms,
        )
        return "prediction", (model, version), row

    def feedback(self, prediction_id: str, kind: str, value: Any = None, *, model: str | None = None,
                 size: Any = None, corrected: Any = None, event_id: str | None = None,
                 timestamp: Any = None) -> tuple[str, Any, tuple]:
        if not isinstance(prediction_id, str) or not 1 <= len(prediction_id) <= 128:
            raise ValueError(f"prediction_id: must be a string of 1 to 128 characters, got {prediction_id!r}")
        if kind not in FEEDBACK_KINDS:
            raise ValueError(f"kind: must be one of {sorted(FEEDBACK_KINDS)}, got {kind!r}")
        if model is not None:
            model = self._name(model, "model")
        if value is not None and type(value) is not str:
            plain = _plain(value)
            if plain is _NOT_SCALAR:
                raise TypeError(f"value: must be a string, number, boolean or None, got {type(value).__name__}")
            value = plain if type(plain) is not float else _number(plain, "value")
        for where, amount in (("size", size), ("corrected", corrected)):
            if amount is not None and _number(amount, where) < 0:
                raise ValueError(f"{where}: must not be negative, got {amount!r}")
        row = (_event_id(event_id, "event_id"), prediction_id, _timestamp(timestamp), kind, value,
               None if size is None else _number(size, "size"),
               None if corrected is None else _number(corrected, "corrected"))
        return "feedback", model, row

    def outcome(self, unit_id: Any, metric: str, value: Any, *, model: str | None = None,
                experiment: str | None = None, segment: Mapping[str, Any] | None = None,
                event_id: str | None = None, timestamp: Any = None) -> tuple[str, None, tuple]:
        if unit_id is None:
            raise ValueError("unit_id: an outcome needs the unit (user or session) it belongs to")
        metric = self._name(metric, "metric")
        if model is not None:
            model = self._name(model, "model")
        if experiment is not None and (not isinstance(experiment, str) or len(experiment) > 128):
            raise ValueError(f"experiment: must be a string of at most 128 characters, got {experiment!r}")
        row = (_event_id(event_id, "event_id"), self.privacy.hash_unit(unit_id), _timestamp(timestamp),
               metric, _number(value, "value"), model, experiment, self._segment(segment))
        return "outcome", None, row
