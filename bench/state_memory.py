"""Memory of prodlens' own state as events grow: the pure processor fed in-process (no Kafka
client, no faust), so only the state's growth shows. It should not grow with events, only with
keys: the dedupe horizon (100k ids per partition) fills once, windows come and go.

    python bench/state_memory.py 250000 1000000
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import BENCH_CONFIG, messages  # noqa: E402

from prodlens.config import load_config  # noqa: E402
from prodlens.pipeline import PartitionProcessor  # noqa: E402


def state_bytes(events: int) -> tuple[int, int, int]:
    config = load_config(BENCH_CONFIG)
    processor = PartitionProcessor(config, "bench", 0, "prediction")
    tracemalloc.start()
    for offset, raw in enumerate(messages(config, events, 500)):
        processor.process(raw, offset, now=0.0)
        del raw
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current, peak, len(processor.windows)


if __name__ == "__main__":
    counts = [int(a) for a in sys.argv[1:]] or [250_000, 1_000_000]
    print(f"{'events':>10} {'state now MiB':>14} {'peak MiB':>9} {'open windows':>13}")
    for n in counts:
        current, peak, windows = state_bytes(n)
        print(f"{n:>10,} {current / 2**20:>14.1f} {peak / 2**20:>9.1f} {windows:>13}")
