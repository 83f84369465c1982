"""Snapshots against the real broker: what is written is the state at the moment it was taken."""

from __future__ import annotations

import asyncio

import pytest

from prodlens.streams.checkpoint import SnapshotWriter, read_latest_snapshots, snapshot_key
from prodlens.streams.kafka import ensure_topics
from harness import load, make_config

pytestmark = pytest.mark.broker


def test_a_snapshot_is_the_state_when_taken_not_when_its_outputs_were_delivered(kafka_bootstrap, unique_name,
                                                                                  tmp_path):
    """The writer waits for the outputs a snapshot covers; the agent goes on meanwhile, changing
    the live lists the state dict shares. Rows appended then must not be in the snapshot (they
    are past its next_offset: a restart would apply them twice)."""
    config = load(make_config(tmp_path, unique_name))
    asyncio.run(ensure_topics(kafka_bootstrap, config))

    async def scenario() -> dict:
        writer = SnapshotWriter(kafka_bootstrap, config.topics.state)
        await writer.start()
        try:
            rows = [1, 2, 3]  # e.g. join rows buffered for the next record
            state = {"topic": "t", "partition": 0, "next_offset": 4, "rows": rows}
            delivered = asyncio.get_running_loop().create_future()
            write = asyncio.create_task(writer.write(state, [delivered]))
            await asyncio.sleep(0.05)   # the writer is waiting for the covered outputs ...
            rows.append(4)              # ... while the agent processes offset 4
            delivered.set_result(None)
            await write
        finally:
            await writer.stop()
        key = snapshot_key("t", 0)
        return (await read_latest_snapshots(kafka_bootstrap, config.topics.state, [0], {key}))[key]

    assert asyncio.run(scenario())["rows"] == [1, 2, 3]
