"""Invariant specifications: the ``invariants:`` list of one model in prodlens.yaml.

See the package docstring (:mod:`prodlens.invariants`) for the YAML shape with a
commented example. :func:`parse_invariants` validates a list of dicts and raises
:class:`InvariantConfigError` naming the model, the invariant and the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping

from prodlens.alerts.durations import parse_duration

from .expr import Expression, ExpressionError, Path

NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
TYPES = ("boolean", "number", "integer", "string")
AGGREGATES = ("sum", "mean", "count")
PER_EVENT = ("type", "range", "enum", "not_null", "rule")
KINDS = PER_EVENT + ("agreement", "stability", "rare", "business")
SELECTOR_KEYS = ("model", "version", "role")


class InvariantConfigError(ValueError):
    """A bad invariant specification; the message names model, invariant and field."""


def path_text(path: Path) -> str:
    return ".".join(path)


def _parse_field(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise InvariantConfigError(f"{where}: must be a field path like features.age or output.label")
    try:
        tree = Expression.parse(value).tree
    except ExpressionError as exc:
        raise InvariantConfigError(f"{where}: {exc}") from None
    if tree[0] != "field":
        raise InvariantConfigError(f"{where}: {value!r} is not a field path (like features.age, "
                                   "output.label or features[\"is-new\"])")
    return tree[1]


def _expr(value: Any, where: str) -> Expression:
    try:
        return Expression.parse(value)
    except ExpressionError as exc:
        raise InvariantConfigError(f"{where}: {exc}") from None


def _number(value: Any, where: str, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvariantConfigError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def _count(value: Any, where: str, default: int | None = None, minimum: int = 0) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvariantConfigError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value


def _duration(value: Any, where: str, default: float) -> float:
    if value is None:
        return default
    try:
        return parse_duration(value, where)
    except ValueError as exc:
        raise InvariantConfigError(str(exc)) from None


@dataclass(frozen=True)
class Invariant:
    """Fields every kind shares. ``where`` restricts the events checked (the expression must be TRUE)."""

    name: str
    kind: ClassVar[str] = ""
    description: str = ""
    where: Expression | None = None
    # The topic kind the invariant reads: prediction (default) or outcome (business bounds).
    source: ClassVar[str] = "prediction"
    # How events must be co-partitioned for this invariant: by (model, version) or by prediction_id.
    partitioning: ClassVar[str] = "version"
    window_level: ClassVar[bool] = False

    def referenced_fields(self) -> tuple[Path, ...]:
        return tuple(self.where.fields) if self.where else ()


@dataclass(frozen=True)
class TypeCheck(Invariant):
    """``field`` must have a JSON type; booleans must be real booleans, not the string ``"true"``."""

    kind: ClassVar[str] = "type"
    field: Path = ()
    type: str = "boolean"
    allow_null: bool = True


@dataclass(frozen=True)
class RangeCheck(Invariant):
    """``min <= field <= max`` (bounds optional, exclusive on request); non-numbers violate."""

    kind: ClassVar[str] = "range"
    field: Path = ()
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    allow_null: bool = True


@dataclass(frozen=True)
class EnumCheck(Invariant):
    """``field`` is one of ``values`` (type-strict: ``True`` is not ``1``, ``"1"`` is not ``1``)."""

    kind: ClassVar[str] = "enum"
    field: Path = ()
    values: tuple = ()
    allow_null: bool = True


@dataclass(frozen=True)
class NotNullCheck(Invariant):
    """Every one of ``fields`` is present and not null."""

    kind: ClassVar[str] = "not_null"
    fields: tuple[Path, ...] = ()


@dataclass(frozen=True)
class RuleCheck(Invariant):
    """A cross-field rule in the safe expression language that must be TRUE.

    ``on_missing``: ``skip`` (default) ignores events where a referenced field is
    null; ``violate`` counts them as violations.
    """

    kind: ClassVar[str] = "rule"
    rule: Expression | None = None
    on_missing: str = "skip"


@dataclass(frozen=True)
class Selector:
    """Which predictions form one side of an agreement (unset keys match anything)."""

    model: str | None = None
    version: str | None = None
    role: str | None = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in SELECTOR_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class AgreementCheck(Invariant):
    """Two models or versions agree on the same prediction_id in at least ``min_agreement`` of pairs.

    Labels of results are the candidate's (model, version, segment). Pairs are
    attributed to the candidate event's window. The two sides must be at most
    ``pair_timeout`` apart in event time; a side that waits longer (behind the
    watermark) or is pushed out of the ``max_pending`` buffer (oldest first) is
    counted as unpaired. Feed this invariant predictions keyed by prediction_id.
    """

    kind: ClassVar[str] = "agreement"
    partitioning: ClassVar[str] = "prediction_id"
    window_level: ClassVar[bool] = True
    reference: Selector = Selector()
    candidate: Selector = Selector()
    field: Path = ("output", "label")
    tolerance: float = 0.0
    min_agreement: float = 0.95
    min_pairs: int = 1
    pair_timeout: float = 300.0
    max_pending: int = 100_000


@dataclass(frozen=True)
class StabilityCheck(Invariant):
    """The prediction for one unit must not flip more than ``max_flips`` times within ``within`` seconds.

    A flip is a change of ``field`` (or of ``field >= threshold`` when a threshold is
    set) between consecutive predictions of one unit, per (model, version). Unit
    state expires ``within`` seconds after its last prediction, so a change after a
    longer pause is not a flip; at most ``max_units`` units are tracked (least
    recently seen evicted). Each prediction that brings the count of flips in the
    last ``within`` seconds above ``max_flips`` is one violation.
    """

    kind: ClassVar[str] = "stability"
    field: Path = ("output", "label")
    unit: Path = ("unit_id",)
    max_flips: int = 0
    within: float = 60.0
    threshold: float | None = None
    max_units: int = 100_000


@dataclass(frozen=True)
class RareBound(Invariant):
    """No more than ``max_count`` events (and/or a share ``max_rate`` of checked events) match ``when`` per window."""

    kind: ClassVar[str] = "rare"
    window_level: ClassVar[bool] = True
    when: Expression | None = None
    max_count: int | None = None
    max_rate: float | None = None


@dataclass(frozen=True)
class BusinessBound(Invariant):
    """A per-window sum / mean / count of an outcome metric (or a prediction field) within [lower, upper].

    With ``metric`` the source is the outcomes topic (outcomes carrying another
    model are ignored; outcomes without a model count for this one; the version
    label is ``__all__`` because outcomes carry none). With ``field`` the source is
    predictions. Windows with fewer than ``min_count`` values (default 1 for a
    mean, 0 otherwise) give no verdict. A sum or count with a positive lower
    bound and ``min_count`` 0 is also checked on empty windows of keys seen in
    the last ``key_ttl`` (zero revenue is the alarm).
    """

    kind: ClassVar[str] = "business"
    window_level: ClassVar[bool] = True
    metric: str | None = None
    field: Path | None = None
    aggregate: str = "sum"
    lower: float | None = None
    upper: float | None = None
    min_count: int = 1

    @property
    def source(self) -> str:  # type: ignore[override]
        return "outcome" if self.metric is not None else "prediction"

    @property
    def checks_empty_windows(self) -> bool:
        return (self.lower is not None and self.lower > 0 and self.aggregate in ("sum", "count")
                and self.min_count == 0)


# ----------------------------------------------------------------------------------- parsing
_COMMON = {"name", "kind", "description", "where"}
_ALLOWED: dict[str, set[str]] = {
    "type": {"field", "type", "allow_null"},
    "range": {"field", "min", "max", "exclusive_min", "exclusive_max", "allow_null"},
    "enum": {"field", "values", "allow_null"},
    "not_null": {"field", "fields"},
    "rule": {"rule", "on_missing"},
    "agreement": {"reference", "candidate", "field", "tolerance", "min_agreement", "min_pairs",
                  "pair_timeout", "max_pending"},
    "stability": {"field", "unit", "max_flips", "within", "threshold", "max_units"},
    "rare": {"when", "max_count", "max_rate"},
    "business": {"metric", "field", "aggregate", "lower", "upper", "min_count"},
}


def _bool(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvariantConfigError(f"{where}: must be true or false, got {value!r}")
    return value


def _selector(value: Any, where: str, model: str) -> Selector:
    if not isinstance(value, Mapping) or not value:
        raise InvariantConfigError(f"{where}: must be a mapping with some of {', '.join(SELECTOR_KEYS)}")
    unknown = set(value) - set(SELECTOR_KEYS)
    if unknown:
        raise InvariantConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed are {list(SELECTOR_KEYS)}")
    for k, v in value.items():
        if not isinstance(v, str) or not NAME.match(v):
            raise InvariantConfigError(f"{where}.{k}: must be a name like v7, got {v!r}")
    return Selector(model=value.get("model", model), version=value.get("version"), role=value.get("role"))


def parse_invariant(item: Any, model: str, index: int = 0) -> Invariant:
    """One invariant from its dict; errors read ``invariants.<model>[i] ('name').field: ...``."""
    base = f"invariants.{model}[{index}]"
    if not isinstance(item, Mapping):
        raise InvariantConfigError(f"{base}: must be a mapping with name and kind, got {type(item).__name__}")
    name = item.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvariantConfigError(f"{base}.name: must be a name of letters, digits and _.:- "
                                   f"(at most 128), got {name!r}")
    at = f"{base} ({name!r})"
    kind = item.get("kind")
    if kind not in KINDS:
        raise InvariantConfigError(f"{at}.kind: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    unknown = set(item) - _COMMON - _ALLOWED[kind]
    if unknown:
        raise InvariantConfigError(f"{at}: unknown field(s) {sorted(unknown)} for kind {kind}; "
                                   f"allowed are {sorted(_COMMON | _ALLOWED[kind])}")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise InvariantConfigError(f"{at}.description: must be a string")
    where = _expr(item["where"], f"{at}.where") if item.get("where") is not None else None
    common = dict(name=name, description=description, where=where)

    def req(key: str) -> Any:
        if item.get(key) is None:
            raise InvariantConfigError(f"{at}.{key}: required for kind {kind}")
        return item[key]

    if kind == "type":
        t = req("type")
        if t not in TYPES:
            raise InvariantConfigError(f"{at}.type: unknown type {t!r}; choose one of {', '.join(TYPES)}")
        return TypeCheck(**common, field=_parse_field(req("field"), f"{at}.field"), type=t,
                         allow_null=_bool(item.get("allow_null"), f"{at}.allow_null", True))
    if kind == "range":
        lo, hi = _number(item.get("min"), f"{at}.min"), _number(item.get("max"), f"{at}.max")
        if lo is None and hi is None:
            raise InvariantConfigError(f"{at}: a range needs min, max or both")
        ex_lo = _bool(item.get("exclusive_min"), f"{at}.exclusive_min", False)
        ex_hi = _bool(item.get("exclusive_max"), f"{at}.exclusive_max", False)
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (ex_lo or ex_hi))):
            raise InvariantConfigError(f"{at}.max: the range [{lo}, {hi}] is empty (min must be below max)")
        return RangeCheck(**common, field=_parse_field(req("field"), f"{at}.field"), min=lo, max=hi,
                          exclusive_min=ex_lo, exclusive_max=ex_hi,
                          allow_null=_bool(item.get("allow_null"), f"{at}.allow_null", True))
    if kind == "enum":
        values = req("values")
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (str, int, float, bool)) for v in values):
            raise InvariantConfigError(f"{at}.values: must be a non-empty list of strings, numbers or booleans")
        return EnumCheck(**common, field=_parse_field(req("field"), f"{at}.field"), values=tuple(values),
                         allow_null=_bool(item.get("allow_null"), f"{at}.allow_null", True))
    if kind == "not_null":
        raw = item.get("fields", item.get("field"))
        if raw is None:
            raise InvariantConfigError(f"{at}.fields: required for kind not_null (a field or a list of fields)")
        raw = raw if isinstance(raw, list) else [raw]
        if not raw:
            raise InvariantConfigError(f"{at}.fields: must not be empty")
        return NotNullCheck(**common, fields=tuple(_parse_field(f, f"{at}.fields[{i}]") for i, f in enumerate(raw)))
    if kind == "rule":
        on_missing = item.get("on_missing", "skip")
        if on_missing not in ("skip", "violate"):
            raise InvariantConfigError(f"{at}.on_missing: must be skip or violate, got {on_missing!r}")
        return RuleCheck(**common, rule=_expr(req("rule"), f"{at}.rule"), on_missing=on_missing)
    if kind == "agreement":
        ref = _selector(req("reference"), f"{at}.reference", model)
        cand = _selector(req("candidate"), f"{at}.candidate", model)
        if ref == cand:
            raise InvariantConfigError(f"{at}.candidate: must select different predictions than reference")
        min_agreement = _number(item.get("min_agreement", 0.95), f"{at}.min_agreement", allow_none=False)
        if not 0 <= min_agreement <= 1:
            raise InvariantConfigError(f"{at}.min_agreement: must be a share between 0 and 1, got {min_agreement}")
        tolerance = _number(item.get("tolerance", 0.0), f"{at}.tolerance", allow_none=False)
        if tolerance < 0:
            raise InvariantConfigError(f"{at}.tolerance: must not be negative, got {tolerance}")
        timeout = _duration(item.get("pair_timeout"), f"{at}.pair_timeout", 300.0)
        if timeout <= 0:
            raise InvariantConfigError(f"{at}.pair_timeout: must be positive")
        return AgreementCheck(
            **common, reference=ref, candidate=cand,
            field=_parse_field(item.get("field", "output.label"), f"{at}.field"),
            tolerance=tolerance, min_agreement=min_agreement,
            min_pairs=_count(item.get("min_pairs"), f"{at}.min_pairs", 1, minimum=1),
            pair_timeout=timeout,
            max_pending=_count(item.get("max_pending"), f"{at}.max_pending", 100_000, minimum=1))
    if kind == "stability":
        within = _duration(req("within"), f"{at}.within", 60.0)
        if within <= 0:
            raise InvariantConfigError(f"{at}.within: must be positive")
        return StabilityCheck(
            **common, field=_parse_field(item.get("field", "output.label"), f"{at}.field"),
            unit=_parse_field(item.get("unit", "unit_id"), f"{at}.unit"),
            max_flips=_count(req("max_flips"), f"{at}.max_flips"), within=within,
            threshold=_number(item.get("threshold"), f"{at}.threshold"),
            max_units=_count(item.get("max_units"), f"{at}.max_units", 100_000, minimum=1))
    if kind == "rare":
        max_count = _count(item.get("max_count"), f"{at}.max_count")
        max_rate = _number(item.get("max_rate"), f"{at}.max_rate")
        if max_count is None and max_rate is None:
            raise InvariantConfigError(f"{at}: a rare bound needs max_count, max_rate or both")
        if max_rate is not None and not 0 <= max_rate <= 1:
            raise InvariantConfigError(f"{at}.max_rate: must be a share between 0 and 1, got {max_rate}")
        return RareBound(**common, when=_expr(req("when"), f"{at}.when"), max_count=max_count, max_rate=max_rate)
    # business
    metric, fld = item.get("metric"), item.get("field")
    if (metric is None) == (fld is None):
        raise InvariantConfigError(f"{at}: a business bound needs exactly one of metric (an outcome "
                                   "metric name) or field (a prediction field)")
    if metric is not None and (not isinstance(metric, str) or not NAME.match(metric)):
        raise InvariantConfigError(f"{at}.metric: must be an outcome metric name like revenue, got {metric!r}")
    aggregate = item.get("aggregate", "sum")
    if aggregate not in AGGREGATES:
        raise InvariantConfigError(f"{at}.aggregate: must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    lower, upper = _number(item.get("lower"), f"{at}.lower"), _number(item.get("upper"), f"{at}.upper")
    if lower is None and upper is None:
        raise InvariantConfigError(f"{at}: a business bound needs lower, upper or both")
    if lower is not None and upper is not None and lower > upper:
        raise InvariantConfigError(f"{at}.upper: must be >= lower (got lower {lower}, upper {upper})")
    if aggregate == "count" and ((lower is not None and lower < 0) or (upper is not None and upper < 0)):
        raise InvariantConfigError(f"{at}: count bounds must not be negative")
    return BusinessBound(**common, metric=metric,
                         field=_parse_field(fld, f"{at}.field") if fld is not None else None,
                         aggregate=aggregate, lower=lower, upper=upper,
                         min_count=_count(item.get("min_count"), f"{at}.min_count",
                                          1 if aggregate == "mean" else 0))


@dataclass(frozen=True)
class ModelInvariants:
    """All invariants declared for one model."""

    model: str
    invariants: tuple[Invariant, ...] = field(default_factory=tuple)

    def by_name(self, name: str) -> Invariant:
        for inv in self.invariants:
            if inv.name == name:
                return inv
        raise KeyError(name)


def parse_invariants(model: str, items: Any) -> ModelInvariants:
    """The invariants of one model: the list under ``invariants.<model>`` (``None`` means none)."""
    if items is None:
        return ModelInvariants(model, ())
    if not isinstance(items, list):
        raise InvariantConfigError(f"invariants.{model}: must be a list, got {type(items).__name__}")
    parsed: list[Invariant] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        inv = parse_invariant(item, model, i)
        if inv.name in seen:
            raise InvariantConfigError(f"invariants.{model}[{i}] ({inv.name!r}).name: duplicate name")
        seen.add(inv.name)
        parsed.append(inv)
    return ModelInvariants(model, tuple(parsed))


def parse_invariants_section(section: Mapping[str, Any] | None,
                             known_models: Iterable[str] | None = None) -> dict[str, ModelInvariants]:
    """The top-level ``invariants:`` section of prodlens.yaml: ``{model: [invariant, ...]}``.

    ``known_models`` (the configured models) makes an invariant for an unknown model an error.
    """
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise InvariantConfigError(f"invariants: must be a mapping of model name to a list of "
                                   f"invariants, got {type(section).__name__}")
    known = set(known_models) if known_models is not None else None
    out = {}
    for model, items in section.items():
        if known is not None and model not in known:
            raise InvariantConfigError(f"invariants.{model}: {model!r} is not a configured model "
                                       f"(models: {', '.join(sorted(known)) or 'none'})")
        out[model] = parse_invariants(model, items)
    return out
