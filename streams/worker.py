"""Start everything one command needs: broker (embedded unless given), topics, the
worker, the metrics endpoint and, for the demo, a simulated app; stop it all on Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from dataclasses import dataclass

import faust

from prodlens.broker import EmbeddedBroker
from prodlens.config import Config

from .app import STAGES, Pipeline
from .kafka import ensure_topics
from .producer import SimulatorRunner

log = logging.getLogger("prodlens")


@dataclass
class RunOptions:
    bootstrap: str | None = None          # None: the config's broker ("embedded" starts tansu)
    metrics_port: int | None = None
    metrics_host: str | None = None
    simulate: bool = False
    rate: float = 200.0                   # simulated predictions per second
    batch: int = 50                       # simulated events per envelope
    malformed_share: float = 0.01
    duplicate_share: float = 0.01
    seed: int = 0
    broker_port: int = 0
    status_every: float = 10.0
    loglevel: str = "warn"
    stages: tuple[str, ...] = STAGES      # which stages this worker runs (prodlens run --stages)


def _say(text: str) -> None:
    print(text, flush=True)


def serve(config: Config, options: RunOptions) -> int:
    """Run until Ctrl-C / SIGTERM; returns the process exit code."""
    broker = simulator = None
    bootstrap = options.bootstrap or config.broker.bootstrap
    if bootstrap == "embedded":
        broker = EmbeddedBroker(port=options.broker_port).start()
        bootstrap = broker.bootstrap
        _say(f"broker     embedded tansu (memory only) at {bootstrap}")
    else:
        _say(f"broker     {bootstrap}")
    try:
        created = asyncio.run(ensure_topics(bootstrap, config))
        if created:
            _say(f"topics     created {', '.join(created)}")
        pipeline = Pipeline(config, bootstrap, metrics_port=options.metrics_port,
                            metrics_host=options.metrics_host, loglevel=options.loglevel,
                            stages=options.stages)
        t = config.topics
        _say(f"metrics    {pipeline.metrics_url}   (health: /healthz)")
        _say(f"inputs     {t.predictions}, {t.feedback}, {t.outcomes}")
        _say(f"outputs    dead letters: {t.deadletter}   window summaries: {t.summaries}   state: {t.state}")
        _say(f"models     {', '.join(config.models)}   window {config.window.length:g}s, "
             f"allowed lateness {config.window.allowed_lateness:g}s")
        if pipeline.stages != STAGES:
            _say(f"stages     {', '.join(pipeline.stages)} only (consumer group {pipeline.app.conf.id}); "
                 f"run the other stages in other workers")
        if options.simulate:
            runner = SimulatorRunner(config, bootstrap, rate=options.rate, batch=options.batch,
                                     malformed_share=options.malformed_share,
                                     duplicate_share=options.duplicate_share, seed=options.seed)
            simulator = (runner, threading.Thread(target=runner.run_forever, name="simulator", daemon=True))
            simulator[1].start()
            _say(f"simulator  {options.rate:g} predictions/s in envelopes of {options.batch}, "
                 f"{options.malformed_share:.0%} malformed, {options.duplicate_share:.0%} duplicates")
        _add_status_line(pipeline, options.status_every)
        _say("Ctrl-C to stop.")
        worker = faust.Worker(pipeline.app, loglevel=options.loglevel, quiet=True,
                              redirect_stdouts=False)
        worker.execute_from_commandline()  # returns on SIGINT / SIGTERM after a clean stop
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if simulator is not None:  # stop producing before the broker goes away
            simulator[0].stop()
            simulator[1].join(timeout=5)
        if broker is not None:
            broker.stop()
            _say("broker stopped")


def _add_status_line(pipeline: Pipeline, every: float) -> None:
    state = {"events": 0, "at": time.monotonic()}

    async def status() -> None:
        owned = [rt.processor for rt in pipeline.partitions.values()]
        processors = [p for p in owned if p.topic in pipeline.kinds]
        events = sum(p.counters["events"] for p in processors)
        rejected = sum(sum(p.rejected.values()) for p in processors)
        windows = sum(p.counters["windows_closed"] for p in processors)
        now = time.monotonic()
        rate = (events - state["events"]) / max(now - state["at"], 1e-9)
        state.update(events=events, at=now)
        print(f"[prodlens] {events:,} events ({rate:,.0f}/s), {rejected:,} rejected, "
              f"{windows:,} windows closed, {len(owned)} partitions owned "
              f"({len(processors)} ingest, {len(owned) - len(processors)} join/analysis)",
              file=sys.stderr, flush=True)

    pipeline.app.timer(every)(status)
