import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from prodlens.broker import BrokerError, EmbeddedBroker, tansu_binary, wait_for_kafka


def test_embedded_broker_starts_answers_and_stops():
    with EmbeddedBroker() as broker:
        wait_for_kafka(broker.bootstrap, timeout=2)
        assert broker.running
    assert not broker.running


def test_missing_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PRODLENS_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(BrokerError, match="PRODLENS_TANSU_BIN"):
        tansu_binary()


def test_port_in_use_is_reported():
    with EmbeddedBroker() as first:
        with pytest.raises(BrokerError):
            EmbeddedBroker(port=first.port).start(timeout=3)


@pytest.mark.broker
def test_produce_and_consume_roundtrip(kafka_bootstrap, unique_name):
    async def roundtrip():
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(unique_name, f"m{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(unique_name, bootstrap_servers=kafka_bootstrap,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            got = []
            while len(got) < 5:
                batch = await consumer.getmany(timeout_ms=2000)
                got += [m.value for msgs in batch.values() for m in msgs]
            return got
        finally:
            await consumer.stop()

    assert sorted(asyncio.run(roundtrip())) == [f"m{i}".encode() for i in range(5)]
