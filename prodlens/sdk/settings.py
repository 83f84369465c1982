"""SDK settings: where to send, how to batch, how much to keep when the broker is away."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prodlens.yamlfile import read_mapping

DEFAULT_TOPICS = {"prediction": "prodlens.predictions", "feedback": "prodlens.feedback",
                  "outcome": "prodlens.outcomes"}
_TOPIC_ALIASES = {"prediction": "prediction", "predictions": "prediction", "feedback": "feedback",
                  "feedbacks": "feedback", "outcome": "outcome", "outcomes": "outcome"}
BOOTSTRAP_ENV = "PRODLENS_BOOTSTRAP"


@dataclass
class Settings:
    """Everything :class:`~prodlens.sdk.Telemetry` and ``AsyncTelemetry`` are configured with.

    Sizes are bytes, times seconds. ``batch_size``: events per envelope;
    ``linger``: how long a group of events may wait for more before it is sent (an
    event waits at most about twice this); ``max_queue``: events held in memory
    before the oldest spill to the spool; ``max_message_bytes``: largest envelope
    (bigger ones are split); ``max_in_flight``: envelopes awaiting the broker's
    acknowledgement; ``request_timeout``: how long one send may take before it
    counts as failed (and is spooled); ``connect_timeout``, ``reconnect_backoff``
    (doubling up to ``reconnect_backoff_max``): how the broker is retried;
    ``spool_*``: see :class:`~prodlens.sdk.spool.Spool`; ``producer_options``:
    passed to ``AIOKafkaProducer`` (SASL / TLS settings, compression).
    """

    bootstrap_servers: str = "localhost:9092"
    topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    client_id: str = "prodlens-sdk"
    batch_size: int = 500
    linger: float = 0.1
    max_queue: int = 100_000
    max_message_bytes: int = 900_000
    max_in_flight: int = 16
    acks: int | str = "all"
    request_timeout: float = 10.0
    connect_timeout: float = 5.0
    reconnect_backoff: float = 0.5
    reconnect_backoff_max: float = 10.0
    spool_dir: str | os.PathLike | None = None
    spool_max_bytes: int = 256 << 20
    spool_segment_bytes: int = 16 << 20
    spool_fsync: bool = False
    producer_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = (("batch_size", self.batch_size >= 1), ("linger", self.linger >= 0),
                  ("max_queue", self.max_queue >= 1), ("max_in_flight", self.max_in_flight >= 1),
                  ("max_message_bytes", self.max_message_bytes >= 1024),
                  ("request_timeout", self.request_timeout > 0),
                  ("connect_timeout", self.connect_timeout > 0),
                  ("reconnect_backoff", 0 < self.reconnect_backoff <= self.reconnect_backoff_max),
                  ("spool_max_bytes", self.spool_max_bytes >= 0))
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise ValueError(f"bootstrap_servers: must be 'host:port[,host:port]', got {self.bootstrap_servers!r}")
        self.topics = normalise_topics(self.topics)


def normalise_topics(topics: Mapping[str, str] | None) -> dict[str, str]:
    """``{"prediction"|"predictions": name, ...}`` over the defaults, keyed by event kind."""
    out = dict(DEFAULT_TOPICS)
    for key, name in (topics or {}).items():
        kind = _TOPIC_ALIASES.get(key)
        if kind is None:
            continue  # the pipeline's other topics (deadletter, summaries...) are not the SDK's
        if not isinstance(name, str) or not name:
            raise ValueError(f"topics.{key}: must be a topic name, got {name!r}")
        out[kind] = name
    return out


def from_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The SDK-relevant parts of ``prodlens.yaml``: ``topics`` and ``broker``.

    Only these sections are read (the models and the rest belong to the workers),
    so an app can share the pipeline's file. ``broker.bootstrap: embedded`` is
    ignored: an app cannot reach a broker another process embeds by name.
    """
    data = read_mapping(path, ValueError, prefix="config: ")
    out: dict[str, Any] = {}
    topics = data.get("topics")
    if topics is not None:
        if not isinstance(topics, dict):
            raise ValueError(f"config: {path}: topics must be a mapping of kind to topic name")
        out["topics"] = normalise_topics(topics)
    broker = data.get("broker")
    if isinstance(broker, str):
        broker = {"bootstrap": broker}
    if broker is not None:
        if not isinstance(broker, dict):
            raise ValueError(f"config: {path}: broker must be a mapping")
        bootstrap = broker.get("bootstrap")
        if bootstrap and bootstrap != "embedded":
            out["bootstrap_servers"] = str(bootstrap)
        options: dict[str, Any] = {}
        if broker.get("security_protocol"):
            options["security_protocol"] = broker["security_protocol"]
        if broker.get("sasl_mechanism"):
            options["sasl_mechanism"] = broker["sasl_mechanism"]
        if broker.get("sasl_username") is not None:
            options["sasl_plain_username"] = broker["sasl_username"]
        if broker.get("sasl_password") is not None:
            options["sasl_plain_password"] = broker["sasl_password"]
        if broker.get("ssl_cafile"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(cafile=broker["ssl_cafile"])
        if options:
            out["producer_options"] = options
    return out


def default_bootstrap() -> str:
    return os.environ.get(BOOTSTRAP_ENV, "localhost:9092")
