"""Drift configuration: thresholds, minimum sample size, multiple-testing level, per field.

Defaults (all configurable globally and per field):

==================  =======  =======  ================================================
statistic           warn     alert    meaning of the default
==================  =======  =======  ================================================
psi                 0.10     0.25     the usual PSI rule of thumb; a normal feature
                                      whose mean moves by d standard deviations has
                                      PSI ~ d^2 (0.1 ~ 0.32 sd, 0.25 ~ 0.5 sd)
js                  0.10     0.20     JS distance, base 2 (0.2 ~ a 0.5 sd mean shift)
ks                  0.10     0.20     KS statistic (0.2 ~ a 0.5 sd mean shift)
wasserstein_norm    0.25     0.50     W1 / reference std (= the mean shift in sd for
                                      a pure location shift)
==================  =======  =======  ================================================

A verdict needs both (the design note: at production sample sizes p-values flag trivial
shifts, so alert on effect sizes, and use the test only to rule out noise):

1. the field's test (KS for numeric fields, chi-square for categorical ones) is significant
   after Benjamini-Hochberg across all fields x segments of the window at ``alpha``
   (default 0.01): with no drift at all, a window raises any warning or alert with
   probability at most ``alpha``;
2. an effect statistic listed in ``numeric_statistics`` / ``categorical_statistics``
   (default PSI) reaches its warn / alert threshold, raised to the statistic's noise floor
   at the current sample size when that is higher (the value identical distributions exceed
   with probability ``noise_alpha``, default 0.001; see ``prodlens.drift.stats``), so small
   windows need larger effects.

Below ``min_samples`` non-missing values (default 100) on either side no verdict is given.

YAML form (``DriftConfig.from_dict``)::

    drift:
      alpha: 0.01
      min_samples: 200
      thresholds: {psi: {warn: 0.1, alert: 0.25}}
      fields:
        tenure_months: {statistics: [psi, wasserstein_norm], thresholds: {psi: [0.2, 0.4]}}
        output.score: {min_samples: 500}
        features.user_agent: {enabled: false}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields as dc_fields, replace
from typing import Any, Mapping

EFFECT_STATISTICS = ("psi", "js", "ks", "wasserstein_norm")


@dataclass(frozen=True)
class Thresholds:
    warn: float
    alert: float

    def __post_init__(self) -> None:
        if not 0 <= self.warn <= self.alert:
            raise ValueError(f"thresholds: need 0 <= warn <= alert, got warn={self.warn}, alert={self.alert}")

    @classmethod
    def parse(cls, value: Any, where: str) -> "Thresholds":
        try:
            if isinstance(value, Thresholds):
                return value
            if isinstance(value, Mapping):
                return cls(float(value["warn"]), float(value["alert"]))
            warn, alert = value
            return cls(float(warn), float(alert))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: expected {{warn, alert}} or [warn, alert], got {value!r} ({exc})") from None


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "psi": Thresholds(0.10, 0.25),
    "js": Thresholds(0.10, 0.20),
    "ks": Thresholds(0.10, 0.20),
    "wasserstein_norm": Thresholds(0.25, 0.50),
}


def _statistics(value: Any, where: str) -> tuple[str, ...]:
    stats = (value,) if isinstance(value, str) else tuple(value)
    for s in stats:
        if s not in EFFECT_STATISTICS:
            raise ValueError(f"{where}: unknown statistic {s!r}; choose from {EFFECT_STATISTICS}")
    return stats


def _thresholds(value: Any, where: str) -> dict[str, Thresholds]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping statistic -> thresholds, got {value!r}")
    out = {}
    for name, th in value.items():
        if name not in EFFECT_STATISTICS:
            raise ValueError(f"{where}.{name}: unknown statistic; choose from {EFFECT_STATISTICS}")
        out[name] = Thresholds.parse(th, f"{where}.{name}")
    return out


@dataclass(frozen=True)
class FieldConfig:
    """Overrides for one field (None = use the global setting)."""

    enabled: bool = True
    statistics: tuple[str, ...] | None = None
    thresholds: Mapping[str, Thresholds] = field(default_factory=dict)
    min_samples: int | None = None
    bins: int | None = None
    top_k: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "FieldConfig":
        unknown = set(d) - {f.name for f in dc_fields(cls)}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
        return cls(enabled=bool(d.get("enabled", True)),
                   statistics=_statistics(d["statistics"], f"{where}.statistics") if "statistics" in d else None,
                   thresholds=_thresholds(d.get("thresholds", {}), f"{where}.thresholds"),
                   min_samples=_positive_int(d.get("min_samples"), f"{where}.min_samples"),
                   bins=_positive_int(d.get("bins"), f"{where}.bins", minimum=2),
                   top_k=_positive_int(d.get("top_k"), f"{where}.top_k"))


def _positive_int(value: Any, where: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ResolvedField:
    """The settings that apply to one field after overrides."""

    statistics: tuple[str, ...]
    thresholds: Mapping[str, Thresholds]
    min_samples: int
    bins: int
    top_k: int


@dataclass(frozen=True)
class DriftConfig:
    """Global drift settings plus per-field overrides keyed by path (``features.age``,
    ``output.score``, ``label``) or by bare feature name (``age``)."""

    alpha: float = 0.01
    noise_alpha: float = 0.001
    min_samples: int = 100
    bins: int = 10
    top_k: int = 20
    eps: float = 1e-4
    numeric_statistics: tuple[str, ...] = ("psi",)
    categorical_statistics: tuple[str, ...] = ("psi",)
    thresholds: Mapping[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    fields: Mapping[str, FieldConfig] = field(default_factory=dict)
    fallback_to_all: bool = True

    def __post_init__(self) -> None:
        for name in ("alpha", "noise_alpha"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"{name}: must be in (0, 1), got {v}")
        if self.eps <= 0 or self.eps >= 0.1:
            raise ValueError(f"eps: must be in (0, 0.1), got {self.eps}")
        _positive_int(self.min_samples, "min_samples")
        _positive_int(self.bins, "bins", minimum=2)
        _positive_int(self.top_k, "top_k")
        _statistics(self.numeric_statistics, "numeric_statistics")
        _statistics(self.categorical_statistics, "categorical_statistics")
        for s in ("ks", "wasserstein_norm"):
            if s in self.categorical_statistics:
                raise ValueError(f"categorical_statistics: {s!r} applies to numeric fields only")

    def field_config(self, path: str) -> FieldConfig:
        fc = self.fields.get(path)
        if fc is None and path.startswith("features."):
            fc = self.fields.get(path[len("features."):])
        return fc or FieldConfig()

    def resolve(self, path: str, kind: str) -> ResolvedField | None:
        """Settings for ``path`` of ``kind`` ('numeric'/'categorical'); None if disabled."""
        fc = self.field_config(path)
        if not fc.enabled:
            return None
        stats = fc.statistics or (self.numeric_statistics if kind == "numeric" else self.categorical_statistics)
        if kind == "categorical":
            stats = tuple(s for s in stats if s in ("psi", "js")) or ("psi",)
        th = dict(DEFAULT_THRESHOLDS)
        th.update(self.thresholds)
        th.update(fc.thresholds)
        return ResolvedField(stats, th, fc.min_samples or self.min_samples, fc.bins or self.bins,
                             fc.top_k or self.top_k)

    def with_overrides(self, **changes: Any) -> "DriftConfig":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DriftConfig":
        """Parse the ``drift:`` section of prodlens.yaml (errors name the offending key)."""
        d = dict(d or {})
        allowed = {f.name for f in dc_fields(cls)}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"drift: unknown key(s) {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for name in ("alpha", "noise_alpha", "eps"):
            if name in d:
                kw[name] = float(d[name])
        for name in ("min_samples", "bins", "top_k"):
            if name in d:
                kw[name] = _positive_int(d[name], f"drift.{name}", 2 if name == "bins" else 1)
        for name in ("numeric_statistics", "categorical_statistics"):
            if name in d:
                kw[name] = _statistics(d[name], f"drift.{name}")
        if "thresholds" in d:
            th = dict(DEFAULT_THRESHOLDS)
            th.update(_thresholds(d["thresholds"], "drift.thresholds"))
            kw["thresholds"] = th
        if "fields" in d:
            if not isinstance(d["fields"], Mapping):
                raise ValueError("drift.fields: expected a mapping field -> settings")
            kw["fields"] = {str(k): FieldConfig.from_dict(v or {}, f"drift.fields.{k}") for k, v in d["fields"].items()}
        if "fallback_to_all" in d:
            kw["fallback_to_all"] = bool(d["fallback_to_all"])
        try:
            return cls(**kw)
        except ValueError as exc:
            raise ValueError(f"drift.{exc}") from None

    def to_dict(self) -> dict:
        def th(m):
            return {k: {"warn": v.warn, "alert": v.alert} for k, v in m.items()}
        return {"alpha": self.alpha, "noise_alpha": self.noise_alpha, "min_samples": self.min_samples,
                "bins": self.bins, "top_k": self.top_k, "eps": self.eps,
                "numeric_statistics": list(self.numeric_statistics),
                "categorical_statistics": list(self.categorical_statistics),
                "thresholds": th(self.thresholds), "fallback_to_all": self.fallback_to_all,
                "fields": {k: {"enabled": v.enabled, **({"statistics": list(v.statistics)} if v.statistics else {}),
                               **({"thresholds": th(v.thresholds)} if v.thresholds else {}),
                               **{n: getattr(v, n) for n in ("min_samples", "bins", "top_k") if getattr(v, n)}}
                           for k, v in self.fields.items()}}
