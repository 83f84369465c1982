"""One benchmark contender per process, so each has its own peak RSS.

    python bench/contenders.py raw|faust|prodlens TOPIC EVENTS BOOTSTRAP

Each reads TOPIC until it has seen EVENTS events (an envelope counts its
``count`` events) and prints one JSON line: events, seconds (first message to
last, so group-join time is excluded), events_per_s, peak_rss_mib.

- raw: aiokafka getmany + orjson decoding of every message (the ceiling)
- faust: a bare faust agent that decodes nothing and only counts (faust's floor)
- prodlens: the real prodlens worker (validate, dedupe, window summaries, metrics), all stages
- prodlens-ingest: the same worker with the ingest stage only (``prodlens run --stages ingest``;
  the join and analysis stages run in other processes)
- faust-process: diagnostic, the bare faust agent calling prodlens' pure processor
- pure: raw aiokafka feeding prodlens' pure processor (no faust): the state's own memory
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid

import orjson

sys.path.insert(0, os.path.dirname(__file__))
from common import self_peak_rss_mib  # noqa: E402


def _events_in(value: bytes) -> int:
    """Events in a message: an envelope's count (its JSON is parsed), else 1."""
    if value.startswith(b'{"type":"batch"'):
        doc = orjson.loads(value)
        return doc.get("count") or len(doc.get("events", ()))
    return 1


def _report(events: int, first: float, last: float) -> None:
    seconds = max(last - first, 1e-9)
    print(json.dumps({"events": events, "seconds": seconds, "events_per_s": events / seconds,
                      "peak_rss_mib": self_peak_rss_mib()}), flush=True)


async def raw(topic: str, target: int, bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_bytes=64 << 20,
                                max_partition_fetch_bytes=64 << 20, max_poll_records=5000)
    await consumer.start()
    events, first = 0, None
    try:
        while events < target:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                if first is None and messages:
                    first = time.perf_counter()
                for m in messages:
                    doc = orjson.loads(m.value)
                    events += doc["count"] if isinstance(doc, dict) and doc.get("type") == "batch" else 1
    finally:
        await consumer.stop()
    _report(events, first, time.perf_counter())


async def pure(topic: str, target: int, bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer

    from prodlens.config import load_config
    from prodlens.pipeline import PartitionProcessor

    processor = PartitionProcessor(load_config(os.path.join(os.path.dirname(__file__), "bench.yaml")),
                                   topic, 0, "prediction")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_bytes=64 << 20,
                                max_partition_fetch_bytes=16 << 20, max_poll_records=500)
    await consumer.start()
    first = None
    try:
        while processor.counters["events"] < target:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                first = first or time.perf_counter()
                for m in messages:
                    processor.process(m.value, m.offset)
    finally:
        await consumer.stop()
    _report(processor.counters["events"], first, time.perf_counter())


def faust_count(topic: str, target: int, bootstrap: str) -> None:
    import faust

    app = faust.App(f"bench-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", web_enabled=False,
                    broker_session_timeout=10, broker_heartbeat_interval=1, store="memory://",
                    consumer_auto_offset_reset="earliest", datadir=tempfile.mkdtemp(),
                    consumer_max_fetch_size=16 << 20)
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")
    state = {"events": 0, "first": None}

    @app.agent(source)
    async def count(stream):
        async for value in stream:
            if state["first"] is None:
                state["first"] = time.perf_counter()
            state["events"] += _events_in(value)
            if state["events"] >= target:
                _report(state["events"], state["first"], time.perf_counter())
                os._exit(0)

    faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()


def faust_process(topic: str, target: int, bootstrap: str) -> None:
    """Diagnostic: the bare faust agent of ``faust`` calling prodlens' pure processor."""
    import faust

    from prodlens.config import load_config
    from prodlens.pipeline import PartitionProcessor

    config = load_config(os.path.join(os.path.dirname(__file__), "bench.yaml"))
    processor = PartitionProcessor(config, topic, 0, "prediction")
    app = faust.App(f"bench-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}", web_enabled=False,
                    broker_session_timeout=10, broker_heartbeat_interval=1, store="memory://",
                    consumer_auto_offset_reset="earliest", datadir=tempfile.mkdtemp(),
                    consumer_max_fetch_size=16 << 20)
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")
    state = {"first": None}

    @app.agent(source)
    async def process(stream):
        async for event in stream.events():
            if state["first"] is None:
                state["first"] = time.perf_counter()
            processor.process(event.message.value, event.message.offset)
            if processor.counters["events"] >= target:
                _report(processor.counters["events"], state["first"], time.perf_counter())
                os._exit(0)

    faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()


def prodlens_worker(topic: str, target: int, bootstrap: str, stages: tuple[str, ...] | None = None) -> None:
    import faust

    from prodlens.config import load_config
    from prodlens.streams.app import Pipeline

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    config = load_config(os.path.join(os.path.dirname(__file__), "bench.yaml"))
    data = config.model_dump()
    data["topics"] = {k: f"{prefix}.{k}" for k in data["topics"]}
    data["topics"]["predictions"] = topic
    data["ingest"]["group_id"] = prefix
    data["ingest"]["checkpoint_interval"] = 5.0
    data["broker"]["partitions"] = 1
    config = load_config(data=data)
    pipeline = Pipeline(config, bootstrap, metrics_port=0, **({"stages": stages} if stages else {}))
    state = {"first": None}

    async def watch():
        while True:
            processors = [rt.processor for rt in pipeline.partitions.values() if rt.processor.topic == topic]
            events = sum(p.counters["events"] for p in processors)
            if events and state["first"] is None:
                state["first"] = time.perf_counter()
            if events >= target:
                _report(events, state["first"], time.perf_counter())
                os._exit(0)
            await asyncio.sleep(0.05)

    pipeline.app.task(watch)
    faust.Worker(pipeline.app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    mode, topic, target, bootstrap = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sys.argv = sys.argv[:1] + ["worker"]  # faust's Worker parses argv
    if mode == "raw":
        asyncio.run(raw(topic, target, bootstrap))
    elif mode == "pure":
        asyncio.run(pure(topic, target, bootstrap))
    elif mode == "faust":
        faust_count(topic, target, bootstrap)
    elif mode == "faust-process":
        faust_process(topic, target, bootstrap)
    elif mode == "prodlens":
        prodlens_worker(topic, target, bootstrap)
    elif mode == "prodlens-ingest":
        prodlens_worker(topic, target, bootstrap, stages=("ingest",))
    else:
        raise SystemExit(f"unknown mode {mode}")
