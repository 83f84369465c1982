"""Sends the simulated app's messages to Kafka: paced in real time (``prodlens demo``,
``prodlens simulate``) or as fast as the broker takes them (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Iterable

from aiokafka import AIOKafkaProducer

from prodlens.config import Config
from prodlens.simulate import Message, Scenario, SimulatedApp, Tally

from .kafka import client_options


def _topic(config: Config, kind: str) -> str:
    return {"prediction": config.topics.predictions, "feedback": config.topics.feedback,
            "outcome": config.topics.outcomes}[kind]


async def send_messages(bootstrap: str, config: Config, messages: Iterable[Message]) -> int:
    """Produce every message, wait for all acknowledgements, return how many were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, max_request_size=16 << 20,
                                **client_options(config.broker))
    await producer.start()
    sent = 0
    try:
        futures = []
        for message in messages:
            futures.append(await producer.send(_topic(config, message.topic_kind), message.value,
                                               key=message.key))
            sent += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def simulate_burst(bootstrap: str, config: Config, count: int, start: float, rate: float,
                         scenario: Scenario | None = None, seed: int = 0,
                         drain_feedback: bool = True) -> Tally:
    """Produce ``count`` simulated predictions (and what comes with them) at once."""
    app = SimulatedApp(config, seed=seed, scenario=scenario)
    messages = list(app.messages(count, start=start, rate=rate))
    if drain_feedback:
        messages += list(app.drain_feedback())
    await send_messages(bootstrap, config, messages)
    return app.tally


class SimulatorRunner:
    """The simulated app of ``prodlens demo``: event time is wall-clock time."""

    def __init__(self, config: Config, bootstrap: str, rate: float = 200.0, batch: int = 50,
                 malformed_share: float = 0.01, duplicate_share: float = 0.01, seed: int = 0,
                 duration: float | None = None):
        self.config = config
        self.bootstrap = bootstrap
        self.rate = rate
        self.duration = duration
        self.app = SimulatedApp(config, seed=seed, scenario=Scenario(
            batch=batch, malformed_share=malformed_share, duplicate_share=duplicate_share))
        self.sent = 0
        self.stopped = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to finish its current tick and close the producer."""
        self.stopped.set()

    def run_forever(self) -> None:
        asyncio.run(self.run())

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=20,
                                    **client_options(self.config.broker))
        await producer.start()
        try:
            started = time.time()
            tick = 0.25
            while not self.stopped.is_set() and (self.duration is None or time.time() - started < self.duration):
                now = time.time()
                count = max(1, int(self.rate * tick))
                for message in self.app.messages(count, start=now, rate=self.rate):
                    await producer.send(_topic(self.config, message.topic_kind), message.value,
                                        key=message.key)
                    self.sent += 1
                await asyncio.sleep(max(0.0, tick - (time.time() - now)))
        finally:
            await producer.stop()
