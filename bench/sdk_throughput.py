"""How fast the SDK takes and delivers events, against raw aiokafka in the same run.

    .venv/bin/python bench/sdk_throughput.py                  # embedded tansu broker, 100k events
    .venv/bin/python bench/sdk_throughput.py --events 1000000 --broker HOST:PORT

Modes (each in its own subprocess, so peak RSS is per mode):
  sdk    Telemetry.log_prediction for every event (validation, hashing, NaN check,
         queue), then flush(): "enqueue" is the rate of the logging loop alone,
         "delivered" includes batching, encoding and the broker's acknowledgements.
  async  the same through AsyncTelemetry.
  raw    AIOKafkaProducer sending the same events pre-built into 500-event
         columnar envelopes (encoding not timed): the ceiling the SDK is compared to.
  single AIOKafkaProducer sending the same events pre-built as one JSON event per
         message (encoding not timed): what an app without the SDK would do.
Events: 10 numeric + 3 categorical features, 2 segment attributes, label + score,
latency, unit id - the shape of DESIGN.md's performance facts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid

MODEL_VERSIONS = [("churn", "v7"), ("churn", "v8"), ("fraud", "v3")]


def make_events(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    plans, countries, devices = ["basic", "pro", "team"], ["US", "DE", "FR", "IN", "BR"], ["ios", "android", "web"]
    events = []
    for i in range(n):
        model, version = MODEL_VERSIONS[i % len(MODEL_VERSIONS)]
        features = {f"x{j}": rng.random() * 100 for j in range(10)}
        features.update(plan=rng.choice(plans), channel=rng.choice(["web", "app"]), tier=str(rng.randint(1, 4)))
        score = rng.random()
        events.append(dict(model=model, version=version, label="churn" if score > 0.5 else "stay", score=score,
                           features=features, segment={"country": rng.choice(countries), "device": rng.choice(devices)},
                           unit_id=f"user-{rng.randint(1, 50_000)}", latency_ms=rng.expovariate(1 / 12)))
    return events


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sdk(bootstrap: str, events: list[dict], topic: str) -> dict:
    from prodlens.sdk import Telemetry

    with tempfile.TemporaryDirectory() as spool:
        tel = Telemetry(bootstrap, topics={"predictions": topic}, salt="bench", spool_dir=spool,
                        max_queue=len(events) + 1)
        log = tel.log_prediction
        t0 = time.perf_counter()
        for e in events:
            log(**e)
        t1 = time.perf_counter()
        ok = tel.flush(600)
        t2 = time.perf_counter()
        stats = tel.stats()
        tel.close()
    assert ok and stats["sent"] == len(events), stats
    return {"enqueue_per_s": len(events) / (t1 - t0), "delivered_per_s": len(events) / (t2 - t0),
            "envelopes": stats["envelopes"]}


def run_async(bootstrap: str, events: list[dict], topic: str) -> dict:
    from prodlens.sdk import AsyncTelemetry

    async def main() -> dict:
        with tempfile.TemporaryDirectory() as spool:
            tel = AsyncTelemetry(bootstrap, topics={"predictions": topic}, salt="bench", spool_dir=spool,
                                 max_queue=len(events) + 1)
            await tel.start()
            log = tel.log_prediction
            t0 = time.perf_counter()
            for e in events:
                await log(**e)
            t1 = time.perf_counter()
            ok = await tel.flush()
            t2 = time.perf_counter()
            stats = tel.stats()
            await tel.close()
        assert ok and stats["sent"] == len(events), stats
        return {"enqueue_per_s": len(events) / (t1 - t0), "delivered_per_s": len(events) / (t2 - t0),
                "envelopes": stats["envelopes"]}

    return asyncio.run(main())


def run_raw(bootstrap: str, events: list[dict], topic: str) -> dict:
    from aiokafka import AIOKafkaProducer

    from prodlens.sdk.batching import Batcher
    from prodlens.sdk.events import EventBuilder
    from prodlens.sdk.privacy import Privacy

    builder = EventBuilder(Privacy(salt="bench"))
    batcher = Batcher(max_events=500, linger=1e9)
    envelopes = batcher.add_many((builder.prediction(**e) for e in events), now=0.0) + batcher.seal_all()
    del events[:]

    async def main() -> float:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                    max_request_size=2 << 20)
        await producer.start()
        try:
            t0 = time.perf_counter()
            futures = [await producer.send(topic, env.payload, key=env.key) for env in envelopes]
            await asyncio.gather(*futures)
            return time.perf_counter() - t0
        finally:
            await producer.stop()

    elapsed = asyncio.run(main())
    n = sum(env.count for env in envelopes)
    return {"enqueue_per_s": float("nan"), "delivered_per_s": n / elapsed, "envelopes": len(envelopes)}


def run_raw_single(bootstrap: str, events: list[dict], topic: str) -> dict:
    """What an app without the SDK might do: one JSON event per Kafka message (built untimed)."""
    import orjson
    from aiokafka import AIOKafkaProducer

    from prodlens.sdk.events import FIELDS, EventBuilder
    from prodlens.sdk.privacy import Privacy

    builder = EventBuilder(Privacy(salt="bench"))
    messages = []
    for e in events:
        _, (model, version), row = builder.prediction(**e)
        event = {k: v for k, v in zip(FIELDS["prediction"], row) if v is not None}
        event.update(model=model, version=version)
        messages.append((f"{model}/{version}".encode(), orjson.dumps(event)))
    n = len(messages)
    del events[:]

    async def main() -> float:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            t0 = time.perf_counter()
            futures = [await producer.send(topic, value, key=key) for key, value in messages]
            await asyncio.gather(*futures)
            return time.perf_counter() - t0
        finally:
            await producer.stop()

    elapsed = asyncio.run(main())
    return {"enqueue_per_s": float("nan"), "delivered_per_s": n / elapsed, "envelopes": n}


def child(args: argparse.Namespace) -> None:
    events = make_events(args.events)
    topic = f"bench.sdk.{uuid.uuid4().hex[:8]}"
    rss_before = peak_rss_mb()
    result = {"sdk": run_sdk, "async": run_async, "raw": run_raw,
              "single": run_raw_single}[args.mode](args.broker, events, topic)
    result.update(mode=args.mode, events=args.events, peak_rss_mb=peak_rss_mb(),
                  rss_events_mb=rss_before)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--broker", help="HOST:PORT of a Kafka cluster (default: an embedded tansu broker)")
    parser.add_argument("--modes", default="raw,single,sdk,async")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    broker = None
    if not args.broker:
        from prodlens.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        args.broker = broker.bootstrap
    try:
        results = {}
        for mode in args.modes.split(","):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--events", str(args.events),
                                  "--broker", args.broker], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"mode {mode} failed")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if broker is not None:
            broker.stop()
    print(f"{args.events:,} prediction events, broker {args.broker}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus")
    print(f"{'mode':<8}{'enqueue ev/s':>14}{'delivered ev/s':>16}{'messages':>11}"
          f"{'peak RSS MB':>13}{'(events built)':>16}")
    for mode, r in results.items():
        enqueue = "-" if r["enqueue_per_s"] != r["enqueue_per_s"] else f"{r['enqueue_per_s']:,.0f}"
        print(f"{mode:<8}{enqueue:>14}{r['delivered_per_s']:>16,.0f}{r['envelopes']:>11}"
              f"{r['peak_rss_mb']:>13.0f}{r['rss_events_mb']:>16.0f}")
    if "raw" in results:
        for mode in results:
            if mode not in ("raw", "single"):
                print(f"{mode} delivered / raw aiokafka: "
                      f"{results[mode]['delivered_per_s'] / results['raw']['delivered_per_s']:.2f}")


if __name__ == "__main__":
    main()
