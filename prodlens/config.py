"""prodlens.yaml: what to watch, validated at start with errors that name the field.

>>> cfg = Config.model_validate({"models": {"churn": {"output": "binary",
...     "features": {"age": "numeric"}, "segments": {"country": {"top_k": 5}}}}})
>>> cfg.window.length_s, cfg.models["churn"].segments["country"].top_k
(60.0, 5)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .yamlfile import read_mapping

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"5m"``, ``"2h"``, ``"7d"`` or ``"250ms"``.

    >>> parse_duration("5m"), parse_duration(2.5)
    (300.0, 2.5)
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (examples: 30s, 5m, 2h, 7d)")
        seconds = float(match.group(1)) * UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentKey(Strict):
    """One segment attribute. Values beyond the first ``top_k`` seen (or outside ``values``)
    fold into ``__other__`` so metric cardinality stays bounded."""

    top_k: int = Field(10, ge=1, le=1000)
    values: list[str] | None = None  # a fixed list, instead of the first top_k values seen


FeatureType = Literal["numeric", "categorical", "boolean"]
OutputKind = Literal["binary", "multiclass", "regression"]


class ModelConfig(Strict):
    output: OutputKind
    classes: list[str] | None = None   # label vocabulary (binary: [negative, positive])
    positive_class: str | None = None  # binary: which label the score is the probability of
    features: dict[str, FeatureType] = Field(default_factory=dict)
    segments: dict[str, SegmentKey] = Field(default_factory=dict)
    reference: str | None = None        # path of a reference summary (drift issue)

    @field_validator("segments", mode="before")
    @classmethod
    def _segments_shorthand(cls, value: Any) -> Any:
        # `segments: [country, device]` is accepted as shorthand for default top_k.
        if isinstance(value, list):
            return {name: {} for name in value}
        return {k: ({} if v is None else {"top_k": v} if isinstance(v, int) else v)
                for k, v in (value or {}).items()}

    @model_validator(mode="after")
    def _check_classes(self) -> "ModelConfig":
        if self.output == "binary" and self.classes is not None and len(self.classes) != 2:
            raise ValueError("a binary model has exactly two classes")
        if self.positive_class is not None and self.classes is not None \
                and self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of classes {self.classes}")
        if len(self.segments) > 8:
            raise ValueError("at most 8 segment keys per model (each multiplies metric cardinality)")
        return self


class WindowConfig(Strict):
    length: float = Field(60.0, description="tumbling window length in event time")
    allowed_lateness: float = Field(30.0, description="how long after its end a window still accepts events")
    idle_close: float | None = Field(None, description="close windows of a partition silent this long "
                                     "(processing time); default: length + allowed_lateness")

    _durations = field_validator("length", "allowed_lateness", "idle_close", mode="before")(
        lambda cls, v: None if v is None else parse_duration(v))

    @property
    def length_s(self) -> float:
        return self.length

    @model_validator(mode="after")
    def _positive(self) -> "WindowConfig":
        if self.length <= 0:
            raise ValueError("window.length must be positive")
        return self


class Topics(Strict):
    predictions: str = "prodlens.predictions"
    feedback: str = "prodlens.feedback"
    outcomes: str = "prodlens.outcomes"
    deadletter: str = "prodlens.deadletter"
    summaries: str = "prodlens.summaries"
    samples: str = "prodlens.samples"
    alerts: str = "prodlens.alerts"
    decisions: str = "prodlens.decisions"
    drift: str = "prodlens.drift"
    joins: str = "prodlens.joins"      # internal: predictions and feedback re-keyed by prediction_id
    state: str = "prodlens.state"

    def inputs(self) -> dict[str, str]:
        """Input topic name -> the event kind it carries."""
        return {self.predictions: "prediction", self.feedback: "feedback", self.outcomes: "outcome"}


class BrokerConfig(Strict):
    """``bootstrap: embedded`` starts tansu; otherwise ``host:port[,host:port]`` of a Kafka cluster."""

    bootstrap: str = "embedded"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    partitions: int = Field(4, ge=1, le=1024, description="partitions of topics prodlens creates")
    replication_factor: int = Field(1, ge=1)


class IngestConfig(Strict):
    max_message_bytes: int = Field(8 << 20, ge=1024)
    dedupe_horizon: int = Field(100_000, ge=0, description="event ids remembered per partition")
    deadletter_duplicates: bool = True
    checkpoint_interval: float = Field(5.0, description="seconds between state snapshots")
    group_id: str = "prodlens"

    _durations = field_validator("checkpoint_interval", mode="before")(
        lambda cls, v: parse_duration(v))


class SamplingConfig(Strict):
    """Raw events kept per (model, version, window) on each ingest partition (samples topic)."""
    per_window: int = Field(100, ge=0, description="reservoir size; 0 turns sampling off")
    min_per_segment: int = Field(5, ge=0, description="quota per segment so rare segments are represented")
    interesting: int = Field(20, ge=0, description="priority sample of the most uncertain predictions")


class MetricsConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class Config(Strict):
    models: dict[str, ModelConfig]
    window: WindowConfig = WindowConfig()
    topics: Topics = Topics()
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestConfig = IngestConfig()
    metrics: MetricsConfig = MetricsConfig()
    sampling: SamplingConfig = SamplingConfig()
    # Sections owned by later stages are kept as plain data and validated by their stage.
    alerts: list[dict[str, Any]] | dict[str, Any] = Field(default_factory=list)
    invariants: dict[str, Any] = Field(default_factory=dict)
    experiments: dict[str, Any] = Field(default_factory=dict)
    quality: dict[str, Any] = Field(default_factory=dict)
    drift: dict[str, Any] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not value:
            raise ValueError("declare at least one model")
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", name)]
        if bad:
            raise ValueError(f"model names may use letters, digits and _.:- only: {bad}")
        return value


class ConfigError(ValueError):
    """prodlens.yaml is missing or invalid; the message lists each field and what is wrong."""


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see prodlens/prodlens.example.yaml)"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, data: dict | None = None) -> Config:
    """Load and validate prodlens.yaml (or ``data``); raise ConfigError naming every bad field."""
    source = str(path) if path else "configuration"
    if data is None:
        if path is None:
            raise ConfigError("no configuration given (use --config prodlens.yaml)")
        data = read_mapping(path, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def default_config_path() -> Path | None:
    """``./prodlens.yaml`` if present, else the example shipped with the package."""
    here = Path("prodlens.yaml")
    if here.exists():
        return here
    from importlib import resources

    shipped = resources.files("prodlens").joinpath("prodlens.example.yaml")
    return Path(str(shipped)) if shipped.is_file() else None
