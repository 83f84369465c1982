"""Kafka connection details shared by the faust app, aiokafka clients and the admin client."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from prodlens.config import BrokerConfig, Config


def faust_broker_url(bootstrap: str) -> str:
    """``h1:9092,h2:9092`` -> ``kafka://h1:9092;kafka://h2:9092`` (faust's URL list form)."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def client_options(broker: BrokerConfig) -> dict[str, Any]:
    """aiokafka keyword arguments for SASL / TLS, passed through from prodlens.yaml."""
    options: dict[str, Any] = {}
    if broker.security_protocol != "PLAINTEXT":
        options["security_protocol"] = broker.security_protocol
    if broker.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=broker.ssl_cafile)
    if broker.sasl_mechanism:
        options.update(sasl_mechanism=broker.sasl_mechanism, sasl_plain_username=broker.sasl_username,
                       sasl_plain_password=broker.sasl_password)
    return options


def faust_credentials(broker: BrokerConfig):
    """faust's credentials object for the same SASL / TLS settings (None for PLAINTEXT)."""
    import faust

    context = ssl.create_default_context(cafile=broker.ssl_cafile) \
        if broker.security_protocol in ("SSL", "SASL_SSL") else None
    if broker.sasl_mechanism:
        return faust.SASLCredentials(username=broker.sasl_username, password=broker.sasl_password,
                                     ssl_context=context, mechanism=broker.sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def all_topics(config: Config) -> dict[str, dict[str, str]]:
    """Every topic prodlens uses, with the configs it wants where the broker honours them."""
    t = config.topics
    compact = {"cleanup.policy": "compact"}
    return {t.predictions: {}, t.feedback: {}, t.outcomes: {}, t.deadletter: {}, t.summaries: {},
            t.samples: {}, t.alerts: {}, t.decisions: {}, t.drift: {}, t.joins: {},
            t.state: {**compact, "max.message.bytes": str(64 << 20)}}


async def ensure_topics(bootstrap: str, config: Config) -> list[str]:
    """Create missing topics with ``broker.partitions`` partitions; return the ones created.

    Topic configs are best effort: the embedded broker ignores them (no compaction there).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options(config.broker))
    await admin.start()
    created = []
    try:
        existing = set(await admin.list_topics())
        for name, topic_config in all_topics(config).items():
            if name in existing:
                continue
            try:
                await admin.create_topics([NewTopic(name, config.broker.partitions,
                                                    config.broker.replication_factor, topic_configs=topic_config)])
            except TopicAlreadyExistsError:
                continue
            created.append(name)
    finally:
        await admin.close()
    return created


async def read_topic(bootstrap: str, topic: str, client_options_: dict | None = None,
                     timeout: float = 30.0) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every message of ``topic`` as (partition, offset, key, value), read to its end.

    The end is the high watermark that Fetch responses carry (right on tansu too; its
    ListOffsets under-reports, see DESIGN.md)."""
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", **(client_options_ or {}))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out, pending = [], set(tps)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=300)
            for tp, messages in batches.items():
                out += [(m.partition, m.offset, m.key, m.value) for m in messages]
            for tp in list(pending):
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()
