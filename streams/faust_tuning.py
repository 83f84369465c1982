"""Adjustments to faust-streaming that prodlens needs, in one place.

fetch_max_wait_ms: faust's aiokafka driver hard-codes 1500 ms. The embedded
broker (tansu 0.6.0) sometimes holds a Fetch for that whole time although
records are available, which stalled a worker for ~1.4 s several times per
400k events (bench/ingest.py: 92k events/s with 1500 ms, 184k with 100 ms,
same run, same topic). 100 ms costs an idle consumer ten empty fetches a second.
"""

from __future__ import annotations

import faust.transport.drivers.aiokafka as _driver

FETCH_MAX_WAIT_MS = 100
_original_create = _driver.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self, transport):
    consumer = _original_create(self, transport)
    # Read by AIOKafkaConsumer.start() when it builds its Fetcher: the consumer is not started yet.
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    return consumer


def apply() -> None:
    """Idempotent: install the adjusted consumer factory."""
    _driver.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
