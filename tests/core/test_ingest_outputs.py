"""What the ingest stage hands the later stages: join records, field sketches, samples."""

from __future__ import annotations

import math

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from prodlens.config import load_config
from prodlens.fanout import partition_of
from prodlens.metrics import StageCollector
from prodlens.pipeline import PartitionProcessor
from prodlens.simulate import columnar_envelope

CONFIG = load_config(data={
    "models": {"churn": {"output": "binary", "classes": ["stay", "churn"], "positive_class": "churn",
                         "features": {"age": "numeric", "plan": "categorical"},
                         "segments": {"country": {"top_k": 5}}}},
    "broker": {"partitions": 3},
    "sampling": {"per_window": 4, "min_per_segment": 1, "interesting": 2}})


def prediction(i: int, ts: float, country: str, experiment: str | None = None) -> dict:
    return {"event_id": f"e{i}", "prediction_id": f"p{i}", "timestamp": ts, "model": "churn",
            "version": "v1", "unit_id": f"u{i % 7}", "experiment": experiment,
            "variant": "b" if experiment else None, "segment": {"country": country},
            "features": {"age": 20 + i, "plan": "pro" if i % 2 else "basic"},
            "output": {"label": "churn" if i % 3 == 0 else "stay", "score": (i % 10) / 10}}


def envelope(events: list[dict]) -> bytes:
    return orjson.dumps(columnar_envelope("prediction", events))


def test_predictions_are_rekeyed_by_prediction_id_and_unit_with_folded_labels():
    p = PartitionProcessor(CONFIG, "prodlens.predictions", 0, "prediction")
    events = [prediction(i, 100.0 + i, "US" if i % 4 else "DE", "exp1" if i < 4 else None) for i in range(12)]
    out = p.process(envelope(events), offset=0, now=200.0)
    assert not [m for m in out.messages if m[0] == CONFIG.topics.joins]   # buffered ...
    joins = [m for m in p.tick(201.0).messages if m[0] == CONFIG.topics.joins]  # ... until the tick
    assert joins
    seen = {}
    for topic, key, record, partition in joins:
        cols = record["columns"]
        if record["kind"] == "prediction":
            for pid, segment, version in zip(cols["prediction_id"], cols["segment"], cols["version"]):
                assert partition == partition_of(pid, 3)
                seen[pid] = segment
                assert version == "v1"
            assert "features" not in cols  # slim: only what the join needs
        else:
            assert record["kind"] == "exposure"
            assert all(partition == partition_of(u, 3) for u in cols["unit_id"])
            assert set(cols["experiment"]) == {"exp1"}
    assert seen == {f"p{i}": "country=" + ("US" if i % 4 else "DE") for i in range(12)}


def test_feedback_is_rekeyed_by_prediction_id():
    p = PartitionProcessor(CONFIG, "prodlens.feedback", 1, "feedback")
    raw = orjson.dumps({"event_id": "f1", "prediction_id": "p42", "timestamp": 5, "kind": "label", "value": "churn"})
    p.process(raw, offset=0, now=6.0)
    [(topic, key, record, partition)] = p.tick(6.5).messages
    assert (topic, partition, record["kind"]) == (CONFIG.topics.joins, partition_of("p42", 3), "feedback")
    assert record["columns"]["value"] == ["churn"] and record["source"] == "prodlens.feedback:1"
    assert record["columns"]["offset"] == [0]


def test_join_batches_are_cut_by_size_and_survive_a_snapshot():
    p = PartitionProcessor(CONFIG, "prodlens.feedback", 0, "feedback")
    p.router.flush_rows = 3
    emitted = []
    for i in range(4):
        raw = orjson.dumps({"event_id": f"f{i}", "prediction_id": "p42", "timestamp": 5 + i, "kind": "label",
                            "value": "churn"})
        emitted += p.process(raw, offset=i, now=10.0).messages
    assert [r["columns"]["offset"] for _, _, r, _ in emitted] == [[0, 1, 2]]
    restored = PartitionProcessor(CONFIG, "prodlens.feedback", 0, "feedback")
    restored.restore(orjson.loads(orjson.dumps(p.to_dict())))
    assert [r["columns"]["offset"] for _, _, r, _ in restored.tick(11.0).messages] == [[3]]


def test_closed_windows_carry_sketches_and_samples_with_a_rare_segment_represented():
    p = PartitionProcessor(CONFIG, "prodlens.predictions", 0, "prediction")
    events = [prediction(i, 100.0 + i * 0.5, "US" if i else "IS") for i in range(40)]
    p.process(envelope(events), offset=0, now=200.0)
    closed, samples = [], []
    out = p.process(envelope([prediction(99, 1000.0, "US")]), offset=1, now=300.0)
    closed += out.closed
    samples += [m[2] for m in out.messages if m[0] == CONFIG.topics.samples]
    by_segment = {w.segment: w for w in closed}
    assert by_segment["country=US"].fields.fields["features.age"].count == 39
    assert by_segment["country=IS"].fields.count == 1
    record = by_segment["country=US"].to_record("prodlens.predictions:0", 2)
    assert record["fields"]["count"] == 39 and record["source"] == "prodlens.predictions:0"
    reservoir = [s for s in samples if s["sampler"] == "reservoir"]
    assert len(reservoir) == 4 and "country=IS" in {s["segment"] for s in reservoir}
    us = [s for s in reservoir if s["segment"] == "country=US"]
    assert all(math.isclose(s["weight"], 1 / s["inclusion_probability"]) for s in us)
    assert us[0]["inclusion_probability"] < 1  # 3 of 39 kept
    assert len([s for s in samples if s["sampler"] == "priority"]) == 2
    assert p.sample_rates[("churn", "v1", "country=IS")] == 1.0


def test_snapshot_restore_keeps_sketches_and_samplers():
    a = PartitionProcessor(CONFIG, "prodlens.predictions", 0, "prediction")
    a.process(envelope([prediction(i, 100.0 + i, "US") for i in range(10)]), offset=0, now=200.0)
    b = PartitionProcessor(CONFIG, "prodlens.predictions", 0, "prediction")
    b.restore(orjson.loads(orjson.dumps(a.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)))
    tail = envelope([prediction(50, 1000.0, "US")])
    out_a, out_b = a.process(tail, offset=1, now=300.0), b.process(tail, offset=1, now=300.0)
    assert [w.to_record() for w in out_a.closed] == [w.to_record() for w in out_b.closed]
    assert [m[2] for m in out_a.messages] == [m[2] for m in out_b.messages]


def test_stage_collector_sums_identical_series_across_partitions():
    class Fake:
        def __init__(self, n):
            self.n = n

        def collect(self):
            c = CounterMetricFamily("prodlens_feedback_orphaned", "x", labels=["reason"])
            c.add_metric(["unknown_prediction"], self.n)
            g = GaugeMetricFamily("prodlens_join_pending_predictions", "y")
            g.add_metric([], self.n * 10)
            return [c, g]

    families = {f.name: f for f in StageCollector(lambda: [Fake(1), Fake(2)]).collect()}
    assert [s.value for s in families["prodlens_feedback_orphaned"].samples] == [3]
    assert [s.value for s in families["prodlens_join_pending_predictions"].samples] == [30]


def test_join_applies_each_rebatched_row_once():
    """A restarted ingest re-sends rows in other batches: the join counts each row once."""
    from prodlens.joins import JoinProcessor

    ingest = PartitionProcessor(CONFIG, "prodlens.predictions", 0, "prediction")
    ingest.process(envelope([prediction(i, 100.0 + i, "US") for i in range(6)]), offset=0, now=200.0)
    messages = [m for m in ingest.tick(201.0).messages if m[2].get("kind") == "prediction"]
    owned = messages[0][3]
    join = JoinProcessor(CONFIG, CONFIG.topics.joins, owned)
    offset = 0
    pids = []
    for _, _, record, partition in messages:
        if partition == owned:   # a join processor sees only its own partition
            join.process(orjson.dumps(record), offset, now=201.0)
            pids += record["columns"]["prediction_id"]
            offset += 1
    assert pids

    def feedback(offsets):
        cols = {"prediction_id": [pids[o % len(pids)] for o in offsets], "timestamp": [300.0] * len(offsets),
                "kind": ["label"] * len(offsets), "value": ["churn"] * len(offsets),
                "size": [None] * len(offsets), "corrected": [None] * len(offsets),
                "model": [None] * len(offsets), "offset": list(offsets)}
        return orjson.dumps({"kind": "feedback", "source": "prodlens.feedback:0", "seq": offsets[-1],
                             "columns": cols})

    for batch in ([0, 1, 2], [1, 2, 3, 4], [4, 5]):   # the 2nd and 3rd overlap what came before
        join.process(feedback(batch), offset, now=301.0)
        offset += 1
    joined = {f.name: f for f in join.collect()}["prodlens_feedback_joined"]
    assert sum(s.value for s in joined.samples) == 6


def _same(a, b) -> bool:
    """Equal, floats up to 1e-12 relative."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _run_singles(events, cut=None, tick_every=7):
    """Single-event messages through one processor (restored from its own snapshot at ``cut``):
    every closed-window record and message it emits, in order."""
    p = PartitionProcessor(CONFIG, "prodlens.predictions", 0, "prediction")
    emitted = []
    for offset, event in enumerate(events):
        if offset == cut:
            state = orjson.loads(orjson.dumps(p.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
            p = PartitionProcessor(CONFIG, "prodlens.predictions", 0, "prediction")
            p.restore(state)
        out = p.process(orjson.dumps(event), offset, now=1000.0 + offset)
        emitted += [w.to_record() for w in out.closed] + [m[2] for m in out.messages]
        if offset % tick_every == 0:
            tick = p.tick(1000.0 + offset)
            emitted += [w.to_record() for w in tick.closed] + [m[2] for m in tick.messages]
    tick = p.tick(10_000.0)  # idle: everything closes and is sent
    return emitted + [w.to_record() for w in tick.closed] + [m[2] for m in tick.messages]


def test_single_events_downstream_in_batches_is_exact_across_a_snapshot():
    """Single events run their downstream steps (sketches, samples, join rows) in batches of
    PENDING_ROWS; the rows waiting for them are state: a snapshot anywhere changes nothing, each
    prediction reaches the join once, and per-row offsets rise within each (kind, partition)."""
    from prodlens import pipeline

    events = [prediction(i, 100.0 + i * 0.7, ("US", "DE", "IS")[i % 3], "exp1" if i % 5 == 0 else None)
              for i in range(400)]
    original = pipeline.PENDING_ROWS
    pipeline.PENDING_ROWS = 16
    try:
        whole = _run_singles(events)
        for cut in (3, 16, 17, 150, 399):
            # equal up to float rounding: a snapshot flushes the sketch buffers (moments merge)
            assert _same(_run_singles(events, cut=cut), whole), cut
    finally:
        pipeline.PENDING_ROWS = original
    joins = [r for r in whole if r.get("kind") == "prediction"]
    routed = [pid for r in joins for pid in r["columns"]["prediction_id"]]
    assert sorted(routed) == sorted(e["prediction_id"] for e in events)
    last: dict = {}
    for r in whole:
        if r.get("kind") in ("prediction", "exposure"):
            offsets = r["columns"]["offset"]
            partition = partition_of((r["columns"].get("prediction_id") or r["columns"]["unit_id"])[0], 3)
            assert offsets == sorted(offsets) and r["seq"] == offsets[-1]
            assert offsets[0] > last.get((r["kind"], partition), -1)
            last[(r["kind"], partition)] = offsets[-1]
    windows = [r for r in whole if r.get("type") == "window_summary"]
    assert sum(w["summary"]["count"] for w in windows) == len(events)
    assert sum(w["fields"]["count"] for w in windows if w.get("fields")) == len(events)
    samples = [r for r in whole if r.get("type") == "sample"]
    assert samples and {s["event"]["event_id"] for s in samples} <= {e["event_id"] for e in events}
