"""End to end through a real broker and real worker processes.

The expected state is computed independently: the simulator's tally of what it
sent, and a reference PartitionProcessor run over each partition's log as the
broker stored it. The worker (killed or not) must match both exactly.
"""

from __future__ import annotations

import asyncio
import base64
import math
import threading
import time

import orjson
import pytest

from harness import Worker, load, make_config, metric, read_topic_sync, wait_for
from prodlens.contract import validator
from prodlens.pipeline import PartitionProcessor
from prodlens.simulate import Scenario
from prodlens.streams.kafka import ensure_topics
from prodlens.streams.producer import simulate_burst

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def segment_label(segment: tuple) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(segment))


def reference_state(bootstrap: str, config) -> tuple[list[PartitionProcessor], dict[tuple, dict]]:
    """Process each partition's log, in offset order, with a fresh pure processor; return the
    processors and every window they publish, keyed (model, version, segment, start)."""
    messages = read_topic_sync(bootstrap, config.topics.predictions)
    processors: dict[int, PartitionProcessor] = {}
    closed = []
    for partition, offset, key, value in sorted(messages, key=lambda m: (m[0], m[1])):
        p = processors.setdefault(partition, PartitionProcessor(config, config.topics.predictions,
                                                                partition, "prediction"))
        closed += p.process(value, offset, now=0.0).closed
    for p in processors.values():  # the rest close when the partitions go idle
        p.watermark = math.inf
        closed += p.close_windows()
    windows = {(w.model, w.version, w.segment, w.start): w.summary.to_dict() for w in closed}
    return list(processors.values()), windows


def published_windows(bootstrap: str, config) -> dict[tuple, dict]:
    windows = {}
    for _, _, _, value in read_topic_sync(bootstrap, config.topics.summaries):
        r = orjson.loads(value)
        if r["type"] != "window_summary":
            continue  # the join stage's partials share the topic
        r = validator("summary")(r)
        windows[(r["model"], r["version"], r["segment"], r["window_start"])] = r["summary"]
    return windows


def check_against_truth(worker: Worker, bootstrap: str, config, tally, dlq_unique: bool):
    samples = worker.metrics()
    reference, reference_windows = reference_state(bootstrap, config)
    # 1. accepted predictions per (model, version, segment): worker == reference == simulator
    expected = {}
    for (model, version, segment), n in tally.predictions.items():
        key = (model, version, segment_label(segment))
        expected[key] = expected.get(key, 0) + n
    ref_totals = {}
    for p in reference:
        for key, n in p.totals.items():
            ref_totals[key] = ref_totals.get(key, 0) + n
    got = {}
    for (name, labels), value in samples.items():
        if name == "prodlens_predictions_total":
            d = dict(labels)
            got[(d["model"], d["version"], d["segment"])] = int(value)
    assert got == ref_totals == expected
    # 2. rejections by reason, and the dead-letter topic holds each one with its reason
    topic = config.topics.predictions
    for reason, n in tally.malformed.items():
        assert metric(samples, "prodlens_events_rejected_total", topic=topic, reason=reason) == n, reason
    duplicates = tally.duplicates.get("prediction", 0)
    assert metric(samples, "prodlens_events_duplicate_total", topic=topic) == duplicates
    assert metric(samples, "prodlens_events_late_total", topic=topic) == 0
    letters = {}
    for _, _, key, value in read_topic_sync(bootstrap, config.topics.deadletter):
        letters[key] = validator("deadletter")(orjson.loads(value))  # the published schema holds
    by_reason = {}
    for record in letters.values():
        by_reason[record["reason"]] = by_reason.get(record["reason"], 0) + 1
        assert record["error"] and record["source"]["topic"] == topic
        if record["source"]["index"] is None:  # a whole message: its original bytes are kept
            assert base64.b64decode(record["original_b64"])
        else:                                  # one event of an envelope: that event is kept
            assert record["event"]["event_id"]
    assert by_reason == {**tally.malformed, "duplicate_event": duplicates}
    # 3. every window published, and each equals the reference's summary exactly
    published = wait_for(lambda: (w := published_windows(bootstrap, config)) and
                         len(w) >= len(reference_windows) and w, timeout=60, what="all windows")
    assert published == reference_windows
    return samples


def test_exact_counts_dead_letters_and_windows(kafka_bootstrap, unique_name, tmp_path):
    path = make_config(tmp_path, unique_name)
    config = load(path)
    asyncio.run(ensure_topics(kafka_bootstrap, config))
    worker = Worker(path, kafka_bootstrap, tmp_path / "worker.log").start()
    try:
        start = time.time() - 60
        single = asyncio.run(simulate_burst(kafka_bootstrap, config, 1500, start=start, rate=50,
                                            scenario=Scenario(batch=1, malformed_share=0.03,
                                                              duplicate_share=0.03), seed=1))
        sent = sum(single.messages.values())
        wait_for(lambda: metric(worker.metrics(), "prodlens_messages_consumed_total") >= sent,
                 what="all messages consumed")
        check_against_truth(worker, kafka_bootstrap, config, single, dlq_unique=True)
        assert metric(worker.metrics(), "prodlens_window_latency_ms", quantile="0.99") > 0
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-2000:]


def test_worker_killed_mid_stream_recovers_state_exactly(kafka_bootstrap, unique_name, tmp_path):
    path = make_config(tmp_path, unique_name)
    config = load(path)
    asyncio.run(ensure_topics(kafka_bootstrap, config))
    log = tmp_path / "worker.log"
    worker = Worker(path, kafka_bootstrap, log).start()
    start = time.time() - 120
    scenario = Scenario(batch=20, malformed_share=0.02, duplicate_share=0.05)
    first = asyncio.run(simulate_burst(kafka_bootstrap, config, 2000, start=start, rate=40,
                                       scenario=scenario, seed=2, drain_feedback=False))
    topic = config.topics.predictions
    n_first = first.messages["prediction"]
    wait_for(lambda: metric(worker.metrics(), "prodlens_messages_consumed_total", topic=topic) >= n_first)
    time.sleep(1.5)  # at least one checkpoint covers the first half
    # The second half is produced while the worker consumes it, as single-event messages (the
    # slow path), so the kill lands mid-stream however fast the worker has become.
    produced: dict = {}
    producer = threading.Thread(target=lambda: produced.update(second=asyncio.run(simulate_burst(
        kafka_bootstrap, config, 6000, start=start + 50, rate=40,
        scenario=Scenario(batch=1, malformed_share=0.02, duplicate_share=0.05), seed=3,
        drain_feedback=False))))
    producer.start()
    at_kill = wait_for(lambda: (c := metric(worker.metrics(), "prodlens_messages_consumed_total",
                                            topic=topic)) > n_first and c, interval=0.02)
    worker.kill()  # SIGKILL: no final checkpoint, whatever was in flight is lost from memory
    producer.join()
    second = produced["second"]
    total = n_first + second.messages["prediction"]
    assert at_kill < total, "the worker finished before it was killed: not a mid-stream kill"
    restarted = Worker(path, kafka_bootstrap, log).start()
    try:
        wait_for(lambda: metric(restarted.metrics(), "prodlens_messages_consumed_total", topic=topic)
                 >= total, timeout=90, what="restarted worker caught up")
        tally = first
        for (k, n) in second.predictions.items():
            tally.predictions[k] = tally.predictions.get(k, 0) + n
        for reason, n in second.malformed.items():
            tally.malformed[reason] = tally.malformed.get(reason, 0) + n
        tally.duplicates["prediction"] = first.duplicates.get("prediction", 0) + \
            second.duplicates.get("prediction", 0)
        samples = check_against_truth(restarted, kafka_bootstrap, config, tally, dlq_unique=False)
        assert metric(samples, "prodlens_messages_consumed_total", topic=topic) == total
        assert "restored" in log.read_text()  # the state came back from a snapshot
    finally:
        restarted.stop()
