"""The prodlens worker: faust wiring around the pure stage processors.

Three stages, one pure processor per partition of the topic each consumes:

* ingest (``prodlens.pipeline.PartitionProcessor``) on the predictions, feedback
  and outcomes topics: validation, dead letters, windows, field sketches,
  event-level invariants, and re-keying to the internal joins topic;
* join (``prodlens.joins.JoinProcessor``) on the joins topic: prediction ⨝
  feedback, shadow pairs, agreement invariants, exposure ⨝ outcome;
* analysis (``prodlens.analysis.processor.AnalysisProcessor``) on the summaries
  topic: merged partials, quality, drift, experiments, invariants, alerts.

One faust agent per topic hands each raw message, in offset order, to the
processor of its partition and publishes what it returns; a one-second timer
ticks every processor (idle windows, join partials, due evaluations, alert
rules). Timers checkpoint state (``streams/checkpoint.py``); the rebalance hooks
restore state exactly before faust seeks. ``/metrics`` is served from the event
loop itself, so a scrape always sees consistent state.

Several workers with the same ``ingest.group_id`` share the partitions: scaling
out is Kafka's consumer-group job. A worker may also run only some stages
(``stages=("ingest",)``, ``prodlens run --stages ingest``): each set of stages is
its own consumer group (``<group_id>.<stages>``), so the ingest and the join /
analysis stages scale, and use CPU, in separate processes. Run either workers with
every stage or split workers on one set of topics, never both: the two groups
would each own every partition.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable

import faust
import orjson
import river.drift  # noqa: F401  imported here, once: its first use in a timer tick would stall it ~1 s
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from prodlens.analysis.alerting import sinks_from_config
from prodlens.analysis.processor import AnalysisProcessor
from prodlens.alerts.sinks import Dispatcher
from prodlens.config import Config, parse_duration
from prodlens.joins import JoinProcessor
from prodlens.metrics import DELAY_BUCKETS, BulkHistogram, DispatcherCollector, PipelineCollector, StageCollector
from prodlens.pipeline import Outputs, PartitionProcessor

from . import faust_tuning
from .checkpoint import SnapshotWriter, read_latest_snapshots, snapshot_key
from .kafka import client_options, faust_broker_url, faust_credentials

log = logging.getLogger("prodlens.worker")


@dataclass
class PartitionRuntime:
    """A processor plus the delivery futures of outputs not yet covered by a snapshot."""

    processor: PartitionProcessor | JoinProcessor | AnalysisProcessor
    unsnapshotted: list[asyncio.Future] = field(default_factory=list)
    dirty: bool = False
    last_snapshot: float = 0.0   # monotonic time of the last snapshot
    snapshot_every: float = 0.0  # seconds between snapshots of this partition
    # Set while the outputs of a processed message are being queued: a snapshot taken then
    # would cover a message whose outputs it does not wait for, so snapshots wait it out.
    # (A counter, not an asyncio.Lock: the per-message path must not touch the event loop.)
    publishing: int = 0

    async def quiesce(self) -> None:
        while self.publishing:
            await asyncio.sleep(0.005)


STAGES = ("ingest", "join", "analysis")


def parse_stages(stages: Iterable[str]) -> tuple[str, ...]:
    """The stages a worker runs, in pipeline order; ValueError naming an unknown one.

    >>> parse_stages(["analysis", "join"])
    ('join', 'analysis')
    """
    chosen = {s.strip() for s in stages if s.strip()}
    unknown = sorted(chosen - set(STAGES))
    if unknown or not chosen:
        problem = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none given"
        raise ValueError(f"stages: {problem}; choose from {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in chosen)


def group_id(base: str, stages: tuple[str, ...]) -> str:
    """The consumer group of a worker: ``base`` with every stage, else one group per stage set."""
    return base if stages == STAGES else f"{base}.{'+'.join(stages)}"


class Pipeline:
    """One prodlens worker process."""

    def __init__(self, config: Config, bootstrap: str, *, metrics_port: int | None = None,
                 metrics_host: str | None = None, idle_close: float | None = None,
                 datadir: str | None = None, loglevel: str = "warn", stages: Iterable[str] = STAGES):
        # The join keeps hundreds of thousands of small objects alive (waiting predictions): with
        # the default thresholds the cyclic GC rescans them constantly (measured 1.6x slower joins).
        gc.set_threshold(50_000, 20, 100)
        self.config = config
        self.bootstrap = bootstrap
        self.metrics_host = metrics_host or config.metrics.host
        self.metrics_port = config.metrics.port if metrics_port is None else metrics_port
        self.idle_close = idle_close or config.window.idle_close \
            or config.window.length + config.window.allowed_lateness
        self.loglevel = loglevel
        self.stages = parse_stages(stages)
        self.kinds = config.topics.inputs() if "ingest" in self.stages else {}
        # every topic a stage of this worker consumes -> its processor kind
        self.stage_kinds = {**self.kinds,
                            **({config.topics.joins: "join"} if "join" in self.stages else {}),
                            **({config.topics.summaries: "analysis"} if "analysis" in self.stages else {})}
        self.dispatcher = Dispatcher(sinks_from_config(config))
        self._last_refresh = 0.0
        # A join partition's snapshot holds every waiting prediction (O(pending), not O(keys)):
        # write it less often than the others; a restart replays at most this much of the joins topic.
        self.join_checkpoint_interval = parse_duration(config.quality.get("checkpoint_interval", "30s"))
        self.partitions: dict[tuple[str, int], PartitionRuntime] = {}
        self.delays = {topic: BulkHistogram(DELAY_BUCKETS) for topic in self.kinds}
        self.ready = asyncio.Event()
        self.snapshots_restored = 0
        self._producer: AIOKafkaProducer | None = None
        self.dispatcher_started = False
        self._snapshots: SnapshotWriter | None = None
        self._start_lock: asyncio.Lock | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.registry = CollectorRegistry()
        self.registry.register(PipelineCollector(
            lambda: [rt.processor for rt in self.partitions.values() if rt.processor.topic in self.kinds],
            self._lag, lambda: self.delays))
        self.registry.register(StageCollector(
            lambda: [rt.processor for rt in self.partitions.values() if rt.processor.topic not in self.kinds]))
        self.registry.register(DispatcherCollector(self.dispatcher.stats))
        self.app = self._build_app(datadir)

    # -- faust app -------------------------------------------------------------------------------
    def _build_app(self, datadir: str | None) -> faust.App:
        faust_tuning.apply()
        cfg = self.config
        app = faust.App(
            group_id(cfg.ingest.group_id, self.stages),
            broker=faust_broker_url(self.bootstrap),
            broker_credentials=faust_credentials(cfg.broker),
            # tansu holds a group join for half the session timeout: 10 s keeps joins near 5 s.
            broker_session_timeout=10,
            broker_heartbeat_interval=1,
            broker_request_timeout=40,
            consumer_auto_offset_reset="earliest",
            topic_partitions=cfg.broker.partitions,
            topic_replication_factor=cfg.broker.replication_factor,
            web_enabled=False,
            store="memory://",
            datadir=datadir or tempfile.mkdtemp(prefix="prodlens-faust-"),
            stream_wait_empty=True,
            # faust's default (no cap) hands the agent huge polls of single-event messages;
            # 500 measured 8.9k vs 7.2k single events/s (bench/contenders.py, same topic).
            broker_max_poll_records=500,
            consumer_max_fetch_size=16 << 20,
            producer_max_request_size=16 << 20,
            loghandlers=[],
        )
        for topic_name, kind in self.stage_kinds.items():
            topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=cfg.broker.partitions)
            app.agent(topic, name=f"{kind}-{topic_name}")(self._consume)
        app.timer(cfg.ingest.checkpoint_interval)(self.checkpoint_all)
        app.timer(1.0)(self._tick)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)
        app.on_partitions_revoked.connect(self._on_partitions_revoked)
        app.on_before_shutdown.connect(self._on_shutdown)
        app.task(self._start_metrics_server)
        return app

    async def _ensure_started(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._producer is None:
                options = client_options(self.config.broker)
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=20,
                                            max_request_size=16 << 20, **options)
                await producer.start()
                snapshots = SnapshotWriter(self.bootstrap, self.config.topics.state, options)
                await snapshots.start()
                await self.dispatcher.start()
                self.dispatcher_started = True
                self._producer, self._snapshots = producer, snapshots

    # -- the agent ------------------------------------------------------------------------------------
    async def _consume(self, stream):
        async for event in stream.events():
            message = event.message
            runtime = self.partitions.get((message.topic, message.partition))
            if runtime is None:
                # A message of a partition revoked a moment ago (faust may still hand out what it
                # had buffered). Skipping it is right: the new owner replays from our snapshot,
                # which does not cover it. (Before restore the partition is paused: no messages.)
                continue
            outputs = runtime.processor.process(message.value, message.offset, key=message.key)
            runtime.dirty = True
            if outputs:
                if runtime.publishing:
                    # the tick's outputs of this partition are still being queued: they hold
                    # earlier rows (the join skips rows at or below the last offset it saw per
                    # source), so ours must not overtake them
                    await runtime.quiesce()
                await self._publish(runtime, outputs)
            if outputs.delays:
                self.delays[message.topic].observe_many(outputs.delays)

    async def _publish(self, runtime: PartitionRuntime, outputs: Outputs) -> None:
        runtime.publishing += 1
        try:
            await self._ensure_started()
            topics = self.config.topics
            for key, record in outputs.deadletters:
                runtime.unsnapshotted.append(
                    await self._producer.send(topics.deadletter, orjson.dumps(record), key=key))
            source = f"{runtime.processor.topic}:{runtime.processor.partition}"
            for window in outputs.closed:
                # keyed by model: every partial of a model meets in one analysis partition
                record = window.to_record(source, runtime.processor.next_offset)
                runtime.unsnapshotted.append(await self._producer.send(
                    topics.summaries, orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY),
                    key=window.model.encode()))
            for message in outputs.messages:
                topic, key, record = message[0], message[1], message[2]
                partition = message[3] if len(message) > 3 else None
                runtime.unsnapshotted.append(await self._producer.send(
                    topic, orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY), key=key,
                    partition=partition))
            if outputs.alert_events:
                self.dispatcher.submit(outputs.alert_events)
            if len(runtime.unsnapshotted) > 10_000:  # a flood of dead letters: keep only the open ones
                runtime.unsnapshotted = [f for f in runtime.unsnapshotted
                                         if not f.done() or f.cancelled() or f.exception() is not None]
        finally:
            runtime.publishing -= 1

    # -- checkpoints and recovery ----------------------------------------------------------------------
    async def checkpoint(self, runtime: PartitionRuntime) -> None:
        """Snapshot one partition once the outputs of every message it covers are delivered."""
        await self._ensure_started()
        await runtime.quiesce()
        # No await from here to the swap: state, next_offset and the covered outputs agree.
        state = runtime.processor.to_dict()
        covers, runtime.unsnapshotted = runtime.unsnapshotted, []
        runtime.dirty = False
        runtime.last_snapshot = time.monotonic()
        await self._snapshots.write(state, covers)

    async def checkpoint_all(self, force: bool = False) -> None:
        now = time.monotonic()
        for runtime in list(self.partitions.values()):
            if runtime.dirty and (force or now - runtime.last_snapshot >= runtime.snapshot_every):
                try:
                    await self.checkpoint(runtime)
                except Exception as exc:
                    # Dead letters or summaries that the broker refused after aiokafka's retries
                    # would be lost if state moved on without them. Stop instead: the restarted
                    # worker replays from the last good snapshot and produces them again.
                    log.error("could not deliver outputs or the snapshot of %s:%s (%r); stopping so "
                              "a restart replays from the last snapshot", runtime.processor.topic,
                              runtime.processor.partition, exc)
                    await self.app.crash(exc)
                    return

    async def _on_rebalance_complete(self, sender, **kwargs) -> None:
        """Runs after assignment and before faust seeks to committed offsets: restore state
        and rewind the committed offset to where the snapshot's replay must start."""
        consumer = self.app.consumer
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment() if tp.topic in self.stage_kinds}
        new = sorted(assigned - set(self.partitions))
        if not new:
            self.ready.set()
            return
        await self._ensure_started()
        wanted = {snapshot_key(topic, p): (topic, p) for topic, p in new}
        snapshots = await read_latest_snapshots(
            self.bootstrap, self.config.topics.state, sorted({p for _, p in new}), set(wanted),
            client_options(self.config.broker))
        rewind = {}
        for key, (topic, partition) in wanted.items():
            processor = self._new_processor(topic, partition)
            state = snapshots.get(key)
            if state is not None:
                processor.restore(state)
                self.snapshots_restored += 1
                rewind[_tp(topic, partition)] = processor.replay_from
            runtime = self.partitions[(topic, partition)] = PartitionRuntime(processor)
            runtime.snapshot_every = self.join_checkpoint_interval if isinstance(processor, JoinProcessor) else 0.0
        if rewind:
            # faust's perform_seek (right after this signal) seeks to the committed offsets.
            await consumer._commit(rewind)
            replay = ", ".join(f"{tp.topic}:{tp.partition}@{o}" for tp, o in sorted(rewind.items()))
            print(f"[prodlens] restored {len(rewind)} partition snapshot(s); replaying from {replay}",
                  file=sys.stderr, flush=True)
        self.ready.set()

    def _new_processor(self, topic: str, partition: int):
        kind = self.stage_kinds[topic]
        if kind == "join":
            return JoinProcessor(self.config, topic, partition)
        if kind == "analysis":
            return AnalysisProcessor(self.config, topic, partition)
        processor = PartitionProcessor(self.config, topic, partition, kind)
        processor.idle_after = self.idle_close
        return processor

    async def _on_partitions_revoked(self, sender, revoked, **kwargs) -> None:
        for tp in revoked:
            runtime = self.partitions.pop((tp.topic, tp.partition), None)
            if runtime is not None and runtime.dirty:
                try:
                    await self.checkpoint(runtime)
                except Exception:
                    log.exception("final checkpoint of %s:%s failed; the next owner replays more",
                                  tp.topic, tp.partition)

    async def _on_shutdown(self, sender, **kwargs) -> None:
        await self.checkpoint_all(force=True)
        if self._producer is not None:
            await self._producer.stop()
            await self._snapshots.stop()
            await self.dispatcher.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()

    async def _tick(self) -> None:
        """Each processor's timers: idle windows, join partials, due evaluations, alert rules."""
        now = time.time()
        for runtime in list(self.partitions.values()):
            if runtime.publishing:
                continue  # a message's outputs are being queued; tick this partition next second
            outputs = runtime.processor.tick(now)
            if outputs:
                runtime.dirty = True
                await self._publish(runtime, outputs)
        if self.dispatcher_started and now - self._last_refresh >= 60.0:
            # Alertmanager resolves an alert it has not heard of for a while: re-send firing ones.
            self._last_refresh = now
            firing = [event for rt in list(self.partitions.values()) if isinstance(rt.processor, AnalysisProcessor)
                      for event in rt.processor.alerting.firing()]
            if firing:
                self.dispatcher.refresh(firing)

    # -- metrics ---------------------------------------------------------------------------------------------
    def _lag(self) -> dict[tuple[str, int], int]:
        lags = {}
        try:
            consumer = self.app.consumer
        except Exception:
            return lags
        for (topic, partition), runtime in list(self.partitions.items()):
            try:
                highwater = consumer.highwater(_tp(topic, partition))
            except Exception:
                highwater = None
            if highwater is not None:
                lags[(topic, partition)] = max(0, highwater - runtime.processor.next_offset)
        return lags

    async def _start_metrics_server(self) -> None:
        async def metrics(request: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"ready": self.ready.is_set(),
                                      "partitions": [f"{t}:{p}" for t, p in sorted(self.partitions)]})

        web_app = web.Application()
        web_app.router.add_get("/metrics", metrics)
        web_app.router.add_get("/healthz", health)
        self._metrics_runner = web.AppRunner(web_app, access_log=None)
        await self._metrics_runner.setup()
        site = web.TCPSite(self._metrics_runner, self.metrics_host, self.metrics_port)
        await site.start()
        if not self.metrics_port:  # port 0: record the one the OS chose
            self.metrics_port = self._metrics_runner.addresses[0][1]

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_host}:{self.metrics_port}/metrics"


def _tp(topic: str, partition: int):
    from faust.types import TP

    return TP(topic, partition)
