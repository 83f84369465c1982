import math

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.config import load_config
from prodlens.metrics import PipelineCollector
from prodlens.pipeline import PartitionProcessor
from prodlens.simulate import Scenario, SimulatedApp

CONFIG = load_config(data={
    "window": {"length": 10, "allowed_lateness": 5},
    "ingest": {"dedupe_horizon": 50},
    "models": {"m": {"output": "binary", "classes": ["n", "y"], "features": {"x": "numeric"},
                     "segments": {"country": {"top_k": 2}}}}})


def prediction(i, ts, country="US", model="m", event_id=None, **extra):
    return {"event_id": event_id or f"e{i}", "prediction_id": f"p{i}", "timestamp": ts, "model": model,
            "version": "v1", "segment": {"country": country}, "features": {"x": i if i % 3 else None},
            "output": {"label": "y" if i % 2 else "n", "score": (i % 10) / 10}, "latency_ms": 10 + i, **extra}


def run(processor, events, start_offset=0):
    closed, letters = [], []
    for offset, event in enumerate(events, start_offset):
        out = processor.process(orjson.dumps(event), offset, now=1000.0)
        closed += out.closed
        letters += out.deadletters
    return closed, letters


def test_windows_lateness_and_dead_letters():
    p = PartitionProcessor(CONFIG, "preds", 0, "prediction")
    events = [prediction(i, 100 + i) for i in range(20)]            # windows [100,110) [110,120)
    events += [prediction(20, 121)]                                  # watermark 121 - lateness 5 >= 110: [100,110) closes
    events += [prediction(21, 103)]                                  # its window closed: late
    events += [prediction(22, 112)]                                  # [110,120) still open (closes at watermark 125)
    events += [prediction(3, 113, event_id="e3")]                    # duplicate event_id
    closed, letters = run(p, events)
    assert [(w.start, w.summary.count) for w in closed] == [(100.0, 10)]
    assert p.counters["late"] == 1 and p.counters["duplicate"] == 1 and p.counters["valid"] == 23
    assert sorted(r["reason"] for _, r in letters) == ["duplicate_event", "late_event"]
    assert p.windows[("m", "v1", "country=US", 110.0)].count == 11
    assert sum(p.totals.values()) == 22  # late and duplicate events are not counted as predictions
    summary = closed[0].summary
    assert summary.classes == {"n": 5, "y": 5} and summary.feature_missing == {"x": 4}
    assert summary.latency.count == 10 and abs(summary.latency.quantile(0.5) - 14) <= 0.14


def test_segments_fold_beyond_top_k_and_versions_are_capped():
    p = PartitionProcessor(CONFIG, "preds", 0, "prediction")
    run(p, [prediction(i, 100, country=c) for i, c in enumerate(["US", "DE", "FR", None, "US"])])
    assert {k[2]: n for k, n in p.totals.items()} == {
        "country=US": 2, "country=DE": 1, "country=__other__": 1, "country=__missing__": 1}


def test_idle_partition_closes_windows():
    p = PartitionProcessor(CONFIG, "preds", 0, "prediction")
    p.process(orjson.dumps(prediction(1, 100)), 0, now=1000.0)
    assert p.advance_idle(now=1001.0, idle_after=3) == []
    closed = []
    for t in range(1004, 1030):
        closed += p.advance_idle(now=float(t), idle_after=3)
    assert [w.start for w in closed] == [100.0]


def _state(p):
    """The snapshot, with field sketches reduced to their exact parts: KLL compaction is
    randomised (within its rank-error bound, never bit for bit), so quantile state may differ
    between two runs over the same data while counts, moments, min and max may not."""
    d = p.to_dict()
    d.pop("dedupe_from")
    d["sketches"] = [[m, v, start, _exact_parts(s)] for m, v, start, s in d["sketches"]]
    return d


def _exact_parts(sketches: dict) -> dict:
    out = {}
    for segment, seg in sketches["segments"].items():
        for group in ("features", "output"):
            for path, f in (seg.get(group) or {}).items():
                out[(segment, group, path)] = {k: (round(v, 9) if isinstance(v, float) else v) for k, v in f.items()
                                               if k in ("count", "missing", "invalid", "mean", "min", "max", "counts")}
    return out


@given(st.integers(0, 119), st.integers(1, 30))
@settings(max_examples=25, deadline=None)
def test_snapshot_restore_replay_equals_uninterrupted(cut, replay_extra):
    """A worker that snapshots at any offset, dies later and is replaced ends in the same state."""
    app = SimulatedApp(load_config("prodlens.yaml"), seed=4,
                       scenario=Scenario(batch=3, malformed_share=0.1, duplicate_share=0.2))
    config = load_config("prodlens.yaml")
    messages = [m.value for m in app.messages(300, start=1000.0, rate=5) if m.topic_kind == "prediction"][:120]
    whole = PartitionProcessor(config, "preds", 0, "prediction")
    for offset, raw in enumerate(messages):
        whole.process(raw, offset, now=0.0)

    first = PartitionProcessor(config, "preds", 0, "prediction")
    for offset, raw in enumerate(messages[:cut]):
        first.process(raw, offset, now=0.0)
    snapshot = orjson.loads(orjson.dumps(first.to_dict()))
    for offset in range(cut, min(cut + replay_extra, len(messages))):  # work lost with the crash
        first.process(messages[offset], offset, now=0.0)

    second = PartitionProcessor(config, "preds", 0, "prediction")
    second.restore(snapshot)
    for offset in range(second.replay_from, len(messages)):
        second.process(messages[offset], offset, now=0.0)
    assert _state(second) == _state(whole)


def test_collector_merges_partitions_without_duplicate_series():
    from prometheus_client import CollectorRegistry, generate_latest

    parts = []
    for partition in (0, 1):
        p = PartitionProcessor(CONFIG, "preds", partition, "prediction")
        run(p, [prediction(i + 100 * partition, 100 + i % 10, event_id=f"{partition}-{i}") for i in range(10)]
            + [prediction(99 + partition, 200, event_id=f"late{partition}")])
        parts.append(p)
    registry = CollectorRegistry()
    registry.register(PipelineCollector(lambda: parts))
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("prodlens_window_predictions{")]
    assert lines == ['prodlens_window_predictions{model="m",segment="country=US",version="v1"} 20.0']
    assert 'prodlens_predictions_total{model="m",segment="country=US",version="v1"} 22.0' in text
    assert not math.isnan(float([l for l in text.splitlines() if 'quantile="0.99"' in l][0].split()[-1]))
