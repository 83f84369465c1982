"""The join stage's throughput and memory, pure processor in-process (no Kafka, no faust).

1. Loads ``--predictions`` predictions (columnar joins records of ``--batch`` rows, a binary
   model, 3 segments, 1 h quality windows, 7 d horizon) into one JoinProcessor, so they all
   wait for feedback; memory per waiting prediction from tracemalloc (Python allocations
   retained by the processor, divided by the count).
2. Feeds ``--feedback`` label events for random waiting predictions (same batch size),
   ticking every ``--tick-every`` messages (emitting the changed quality partials), and
   reports feedback events/s.
Baseline in the same run: a plain dict of the same ids holding (time, label, score) —
its memory per id, and the rate of decoding the same feedback messages + one dict lookup
per event (the floor any join must pay).

    .venv/bin/python bench/join.py                      # 1M predictions (about 1 GiB peak RSS)
    .venv/bin/python bench/join.py --predictions 200000 --feedback 100000
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
import tracemalloc

import numpy as np
import orjson

from prodlens.config import load_config
from prodlens.joins import JoinProcessor

SEGMENTS = ["country=US", "country=DE", "country=FR"]


def config(predictions: int):
    return load_config(data={"models": {"churn": {"output": "binary", "classes": ["stay", "churn"]}},
                             "quality": {"window": "1h", "horizon": "7d", "grace": "10m",
                                         "max_pending": max(predictions, 1)}})


def prediction_messages(n: int, batch: int, seed: int = 1):
    """Columnar prediction records spread over one day of event time."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        k = min(batch, n - start)
        scores = rng.random(k)
        yield orjson.dumps({"kind": "prediction", "source": "bench:0", "seq": start, "columns": {
            "prediction_id": [f"pred-{i:09d}" for i in range(start, start + k)],
            "timestamp": (1_700_000_000.0 + np.arange(start, start + k) * (86400.0 / n)).tolist(),
            "model": ["churn"] * k, "version": ["v1"] * k,
            "segment": [SEGMENTS[i % 3] for i in range(start, start + k)], "role": ["primary"] * k,
            "latency_ms": [12.0] * k,
            "output": {"label": np.where(scores >= 0.5, "churn", "stay").tolist(), "score": scores.tolist()}}})


def feedback_messages(n_pred: int, n: int, batch: int, seed: int = 2) -> list[bytes]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_pred, n)
    labels = np.where(rng.random(n) < 0.3, "churn", "stay")
    out = []
    for start in range(0, n, batch):
        k = min(batch, n - start)
        out.append(orjson.dumps({"kind": "feedback", "source": "bench:1", "seq": start, "columns": {
            "prediction_id": [f"pred-{i:09d}" for i in ids[start:start + k]],
            "timestamp": [1_700_000_000.0 + 86400.0 + 60.0] * k, "kind": ["label"] * k,
            "value": labels[start:start + k].tolist()}}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", type=int, default=1_000_000)
    ap.add_argument("--feedback", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--tick-every", type=int, default=20, help="messages between ticks")
    args = ap.parse_args()
    n = args.predictions

    # -- prodlens: load the waiting predictions ------------------------------------------------
    proc = JoinProcessor(config(n), "prodlens.joins", 0)
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    offset = 0
    t0 = time.perf_counter()
    for raw in prediction_messages(n, args.batch):
        proc.process(raw, offset, now=0.0)
        offset += 1
    load_s = time.perf_counter() - t0
    proc.tick(0.0)
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_prediction = (held - base) / n
    assert len(proc.join.pending) == n, (len(proc.join.pending), n)

    # -- baseline: a plain dict of the same ids ---------------------------------------------------
    gc.collect()
    tracemalloc.start()
    base2, _ = tracemalloc.get_traced_memory()
    plain: dict[str, tuple] = {}
    for raw in prediction_messages(n, args.batch):
        c = orjson.loads(raw)["columns"]
        for pid, t, label, score in zip(c["prediction_id"], c["timestamp"], c["output"]["label"],
                                        c["output"]["score"]):
            plain[pid] = (t, label, score)
    gc.collect()
    held2, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_plain = (held2 - base2) / n

    # -- feedback throughput ------------------------------------------------------------------------
    msgs = feedback_messages(n, args.feedback, args.batch)
    events = args.feedback
    t0 = time.perf_counter()
    for i, raw in enumerate(msgs):
        proc.process(raw, offset, now=0.0)
        offset += 1
        if i % args.tick_every == args.tick_every - 1:
            proc.tick(0.0)
    proc.tick(0.0)
    join_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = 0
    for raw in msgs:
        for pid in orjson.loads(raw)["columns"]["prediction_id"]:
            found += plain.get(pid) is not None
    plain_s = time.perf_counter() - t0
    assert found == events
    joined = sum(proc.counters["joined"].values())
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"predictions waiting: {n:,} (loaded in {load_s:.1f}s, {n / load_s:,.0f}/s); "
          f"feedback events: {events:,} in batches of {args.batch}, joined {joined:,}")
    print(f"{'':34}{'feedback events/s':>18}{'bytes per waiting id':>22}")
    print(f"{'prodlens JoinProcessor':34}{events / join_s:>18,.0f}{per_prediction:>22,.0f}")
    print(f"{'baseline: orjson + plain dict':34}{events / plain_s:>18,.0f}{per_plain:>22,.0f}")
    print(f"estimate from the processor (prodlens_join_state_bytes / n): {proc.state_bytes() / n:,.0f} B")
    print(f"peak RSS of this process: {peak_rss:,.0f} MiB")


if __name__ == "__main__":
    main()
