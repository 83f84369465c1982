"""Shared fixtures. The broker is always real: PRODLENS_TEST_BOOTSTRAP if set, else a
testcontainers Kafka where a Docker engine answers, else the embedded tansu broker."""

from __future__ import annotations

import os
import uuid

import pytest


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """Bootstrap address of a real Kafka-protocol broker for the whole test session."""
    env = os.environ.get("PRODLENS_TEST_BOOTSTRAP")
    if env:
        yield env
        return
    if os.environ.get("PRODLENS_TEST_DOCKER", "1") != "0" and _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from prodlens.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def unique_name():
    """A fresh prefix so tests sharing the session broker never see each other's topics."""
    return f"t{uuid.uuid4().hex[:10]}"
