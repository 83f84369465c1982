"""Helpers for SDK tests against the real broker: create topics, read envelopes back.

Consumers use assign() (no consumer group): group joins on the embedded broker are slow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from prodlens.contract import Decoded, Decoder


@dataclass
class Message:
    topic: str
    partition: int
    key: bytes | None
    decoded: Decoded
    size: int


async def _create(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, kind: str, events: int, timeout: float) -> list[Message]:
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # a consumer's topic metadata is fixed at start: start it once the topic exists
        while topic not in await admin.list_topics() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    partitions = consumer.partitions_for_topic(topic)
    decoder = Decoder()
    out: list[Message] = []
    try:
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        got = 0
        while got < events and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                for m in msgs:
                    d = decoder.decode(m.value, kind)
                    out.append(Message(tp.topic, tp.partition, m.key, d, len(m.value)))
                    got += d.count + len(d.rejections)
    finally:
        await consumer.stop()
    return out


@pytest.fixture
def create_topics():
    def create(bootstrap: str, names: list[str], partitions: int = 3) -> None:
        asyncio.run(_create(bootstrap, names, partitions))
    return create


@pytest.fixture
def consume():
    """consume(bootstrap, topic, kind, events) -> messages read until ``events`` events arrived."""
    def read(bootstrap: str, topic: str, kind: str, events: int, timeout: float = 15.0) -> list[Message]:
        return asyncio.run(_consume(bootstrap, topic, kind, events, timeout))
    return read
