"""What summarizing every feature costs the ingest stage, and whether its memory stays flat.

    python bench/summarize.py --events 400000     # ~1 minute

Runs, in one process and on the same pre-encoded 500-event envelopes (10 numeric
+ 3 categorical features, ``bench/bench.yaml``):

* baseline: decoding alone (orjson) — the floor any consumer pays;
* ingest without field summaries: validation, dedupe, windows, join re-keying;
* ingest with field summaries: the same plus KLL / top-K sketches of every
  feature and the output per (model, version, segment, window), and samples.

Each contender runs on the first quarter and on all events; a fresh subprocess
per run so peak RSS (VmHWM) is its own. Target (issue 4): with summaries, at
least half the events/s of ingest without them; RSS of the full run within ~10%
of the quarter run (state bounded by keys, not events).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _run(mode: str, events: int) -> dict:
    import orjson

    from common import peak_rss_mib  # noqa: F401  (same helper as the other benchmarks)
    from ingest import BENCH_CONFIG, messages
    from prodlens.config import load_config
    from prodlens.pipeline import PartitionProcessor

    config = load_config(BENCH_CONFIG)
    if mode == "ingest_without_summaries":
        config = config.model_copy(update={"sampling": config.sampling.model_copy(update={"per_window": 0})})
    batch = list(messages(config, events, 500))
    processor = PartitionProcessor(config, "bench", 0, "prediction")
    if mode == "ingest_without_summaries":
        processor._flush_sketches = lambda key=None: processor._sketch_buffers.clear()
    started = time.perf_counter()
    for offset, raw in enumerate(batch):
        if mode == "decode_only":
            orjson.loads(raw)
        else:
            processor.process(raw, offset, now=0.0)
    elapsed = time.perf_counter() - started
    return {"events_per_s": events / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, events = args.child[0], int(args.child[1])
        result = _run(mode, events)
        from common import peak_rss_mib
        import os

        result["peak_rss_mib"] = peak_rss_mib(os.getpid())
        print(json.dumps(result))
        return
    results = {}
    for mode in ("decode_only", "ingest_without_summaries", "ingest_with_summaries"):
        for events in (args.events // 4, args.events):
            print(f"  {mode}, {events:,} events ...", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(events)],
                                 capture_output=True, text=True, check=True)
            results[(mode, events)] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'contender':<28} {'events':>9} {'events/s':>10} {'peak RSS MiB':>13}")
    for (mode, events), r in results.items():
        print(f"{mode:<28} {events:>9,} {r['events_per_s']:>10,.0f} {r['peak_rss_mib']:>13.1f}")
    n = args.events
    full = results[("ingest_with_summaries", n)]["events_per_s"]
    bare = results[("ingest_without_summaries", n)]["events_per_s"]
    print(f"with summaries / without = {full / bare:.2f} (target >= 0.5)")
    # RSS holds the pre-encoded input too; compare the growth of state, not of the input list
    grow = {m: results[(m, n)]["peak_rss_mib"] - results[(m, n // 4)]["peak_rss_mib"]
            for m in ("decode_only", "ingest_with_summaries")}
    print(f"RSS growth quarter -> full: decode only {grow['decode_only']:.1f} MiB (the input itself), "
          f"with summaries {grow['ingest_with_summaries']:.1f} MiB; state growth "
          f"{grow['ingest_with_summaries'] - grow['decode_only']:.1f} MiB")


if __name__ == "__main__":
    main()
