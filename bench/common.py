"""Shared benchmark plumbing: broker, topic loading, subprocess contenders, RSS."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def load_topic(bootstrap: str, topic: str, messages, key=None, progress: str = "") -> int:
    """Produce every message of an iterable of bytes; returns the count."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=32 << 20)
    await producer.start()
    n = 0
    started = time.time()
    try:
        pending = []
        for value in messages:
            pending.append(await producer.send(topic, value, key=key))
            n += 1
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
                if progress and n % 200_000 == 0:
                    print(f"  loading {progress}: {n:,} messages ({time.time() - started:.0f}s)",
                          file=sys.stderr, flush=True)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    if progress:
        print(f"  loaded {progress}: {n:,} messages in {time.time() - started:.1f}s", file=sys.stderr)
    return n


def run_contender(args: list[str], timeout: float = 1800) -> dict:
    """Run a contender script that prints one JSON line {"events", "seconds", ...} at the end;
    add its peak RSS (measured by the contender itself, from /proc/self/status)."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    # faust may draw terminal escape codes before the line: take it from its first brace
    lines = [line[line.index("{"):] for line in proc.stdout.splitlines() if '{"events"' in line]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def self_peak_rss_mib() -> float:
    return peak_rss_mib(os.getpid())
