import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.quality.bloom import RotatingBloom
from prodlens.quality.join import EarlyFeedback, FeedbackJoin, Matches, OrphanLog, PendingPredictions, segment_key

DAY = 86400.0


def preds(ids, times, model="m", version="v1", segment=None, outputs=None):
    n = len(ids)
    return {"prediction_id": list(ids), "timestamp": [float(t) for t in times], "model": [model] * n,
            "version": [version] * n, "segment": [segment] * n,
            "output": outputs or [{"label": "a", "score": 0.7} for _ in range(n)]}


def fb(ids, times, kinds="label", values="a", sizes=None, corrected=None):
    n = len(ids)
    cols = {"prediction_id": list(ids), "timestamp": [float(t) for t in times],
            "kind": kinds if isinstance(kinds, list) else [kinds] * n,
            "value": values if isinstance(values, list) else [values] * n}
    if sizes is not None:
        cols["size"], cols["corrected"] = sizes, corrected
    return cols


def test_join_fields_and_first_flags():
    j = FeedbackJoin(horizon_seconds=7 * DAY, grace_seconds=60, window_seconds=300)
    j.add_predictions(preds(["p1", "p2"], [1000, 1010], segment={"device": "ios", "country": "US"},
                            outputs=[{"label": "a", "score": 0.7}, {"probabilities": {"a": 0.4, "b": 0.6}}]))
    m = j.add_feedback(fb(["p1", "p1", "p1", "p2"], [2000, 3000, 4000, 5000],
                          ["complaint", "label", "label", "rating"], [None, "b", "a", 4]))
    assert m.segment == ["country=US,device=ios"] * 4
    assert m.window_start == [900.0] * 4 and m.delay == [1000.0, 2000.0, 3000.0, 3990.0]
    assert m.first_any == [True, False, False, True]
    assert m.first_of_kind == [True, True, False, True]
    assert m.first_truth == [False, True, False, False]
    assert m.score[0] == 0.7 and m.probabilities[3] == {"a": 0.4, "b": 0.6} and m.label[3] is None
    assert j.stats["matched"] == 4 and j.orphans.total == 0


def test_early_feedback_is_held_then_joined_or_orphaned():
    j = FeedbackJoin(horizon_seconds=DAY, grace_seconds=120)
    j.add_predictions(preds(["p0"], [100]))
    assert len(j.add_feedback(fb(["p1", "p2"], [150, 160]))) == 0
    assert len(j.early) == 2 and j.stats["early_held"] == 2
    m = j.add_predictions(preds(["p1"], [140]))  # prediction arrives after its feedback
    assert m.prediction_id == ["p1"] and m.delay == [10.0] and m.first_truth == [True]
    j.add_predictions(preds(["p9"], [279]))
    assert j.advance() == {"expired_predictions": 0, "grace_expired": 0}  # 160 + 120 > 279
    j.add_predictions(preds(["p10"], [281]))
    assert j.advance()["grace_expired"] == 1
    assert j.orphans.counts["grace_expired"] == 1 and j.orphans.sample[0]["prediction_id"] == "p2"
    # feedback whose grace is already over when it arrives is unknown at once
    j.add_feedback(fb(["zz"], [100]))
    assert j.orphans.counts["unknown_prediction"] == 1 and len(j.early) == 0


def test_horizon_expiry_and_expired_orphans():
    j = FeedbackJoin(horizon_seconds=DAY, grace_seconds=60, bucket_seconds=3600)
    j.add_predictions(preds([f"p{i}" for i in range(10)], [i * 600 for i in range(10)]))
    j.advance(DAY + 3599)  # bucket [0, 3600) ends at 3600: not yet past the horizon
    assert len(j.pending) == 10
    assert j.advance(DAY + 3600)["expired_predictions"] == 6  # p0..p5 (times < 3600)
    assert "p5" not in j.pending and "p6" in j.pending
    j.add_feedback(fb(["p3", "p7"], [DAY + 4000, DAY + 4000]))
    assert j.orphans.counts["expired_prediction"] == 1 and j.stats["matched"] == 1
    # a prediction already older than the horizon is not stored
    j.add_predictions(preds(["old"], [10]))
    assert "old" not in j.pending and j.pending.stats["too_old"] == 1


def test_hard_cap_evicts_oldest_and_counts():
    p = PendingPredictions(horizon_seconds=DAY, max_entries=100, bucket_seconds=60)
    j = FeedbackJoin(DAY)
    j.pending = p
    j.add_predictions(preds([f"p{i}" for i in range(150)], [i * 10 for i in range(150)]))
    assert len(p) == 100 and p.stats["evicted"] == 50
    assert "p49" not in p and "p50" in p
    j.add_feedback(fb(["p10", "p120"], [2000, 2000]))
    assert j.orphans.counts["expired_prediction"] == 1 and j.stats["matched"] == 1


def test_shadow_chain_and_duplicates():
    j = FeedbackJoin(DAY)
    j.add_predictions(preds(["p1"], [10], version="v1"))
    j.add_predictions(preds(["p1"], [10], version="v2-shadow"))
    j.add_predictions(preds(["p1"], [10], version="v1"))  # redelivery
    assert j.pending.stats["duplicate"] == 1 and len(j.pending) == 1
    m = j.add_feedback(fb(["p1"], [20]))
    assert m.version == ["v1", "v2-shadow"] and m.first_truth == [True, True]



def test_shadow_prediction_after_its_feedback_still_joins_within_grace():
    j = FeedbackJoin(DAY, grace_seconds=60)
    j.add_predictions(preds(["p1", "p2"], [10, 10], version="v1"))
    assert j.add_feedback(fb(["p1", "p2"], [12, 12], values="b")).version == ["v1", "v1"]
    m = j.add_predictions(preds(["p1"], [11], version="v2-shadow"))  # scored after the click
    assert m.version == ["v2-shadow"] and m.value == ["b"] and m.first_truth == [True]
    assert j.stats["late_version_matched"] == 1
    assert not j.add_predictions(preds(["p1"], [11], version="v2-shadow")).version  # redelivery: nothing twice
    j = FeedbackJoin.from_dict(json.loads(json.dumps(j.to_dict())))  # survives a checkpoint
    j.add_predictions(preds(["p9"], [200], version="v1"))  # the prediction watermark passes 12 + 60
    j.advance()
    assert not j.add_predictions(preds(["p2"], [11], version="v2-shadow")).version  # past the grace
    assert j.orphans.total == 0 and len(j.recent) == 0


def _stream(seed, n=400):
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        t = i * 30.0
        events.append(("p", f"p{i}", t, "v1" if i % 3 else "v2"))
        for _ in range(rng.integers(0, 3)):
            delay = float(rng.choice([-20.0, 5.0, 600.0, 4 * 3600.0, 3 * DAY]))
            events.append(("f", f"p{i}" if rng.random() < 0.9 else f"x{i}", t + delay,
                           str(rng.choice(["label", "complaint", "rating"]))))
    events.sort(key=lambda e: (e[2] if e[0] == "f" else e[2], e[0]))
    return events


def _apply(j, batch):
    m = Matches()
    ps = [e for e in batch if e[0] == "p"]
    fs = [e for e in batch if e[0] == "f"]
    if ps:
        m.extend(j.add_predictions(preds([e[1] for e in ps], [e[2] for e in ps])))
    if fs:
        m.extend(j.add_feedback(fb([e[1] for e in fs], [e[2] for e in fs], [e[3] for e in fs], "a")))
    j.advance()
    return m


@given(st.integers(0, 10_000), st.floats(0.05, 0.95))
@settings(max_examples=15, deadline=None)
def test_restart_from_checkpoint_loses_nothing(seed, cut):
    events = _stream(seed)
    batches = [events[i:i + 37] for i in range(0, len(events), 37)]
    k = int(len(batches) * cut)
    make = lambda: FeedbackJoin(horizon_seconds=2 * DAY, grace_seconds=300, window_seconds=600,
                                bucket_seconds=1800, max_pending=300)
    straight, restarted = make(), make()
    out_a, out_b = Matches(), Matches()
    for b in batches:
        out_a.extend(_apply(straight, b))
    for b in batches[:k]:
        out_b.extend(_apply(restarted, b))
    restarted = FeedbackJoin.from_dict(json.loads(json.dumps(restarted.to_dict())))
    for b in batches[k:]:
        out_b.extend(_apply(restarted, b))
    assert out_a == out_b
    assert straight.to_dict() == restarted.to_dict()
    assert straight.orphans.counts == restarted.orphans.counts


def test_pending_round_trip_is_exact():
    p = PendingPredictions(DAY)
    j = FeedbackJoin(DAY)
    j.pending = p
    j.add_predictions(preds(["a", "b", "c"], [1, 2, 3], outputs=[{"label": True}, {"value": 3.5},
                                                                {"probabilities": {"x": 0.25, "y": 0.75}}]))
    j.add_predictions(preds(["a"], [1], version="v9"))
    j.add_feedback(fb(["a"], [5], "complaint", None))
    d = json.loads(json.dumps(p.to_dict()))
    back = PendingPredictions.from_dict(d)
    assert back.to_dict() == p.to_dict()
    assert [e.key[1] for e in back.get("a").chain()] == ["v1", "v9"] and back.get("a").seen == 4


def test_memory_per_entry_estimate_is_close_to_measured():
    p = PendingPredictions(7 * DAY, max_entries=10**6)
    j = FeedbackJoin(7 * DAY)
    j.pending = p
    n = 20_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    # decoded columns are dropped after the batch: what stays is what the join keeps
    cols = preds([f"prediction-{i:08d}" for i in range(n)], np.arange(n) * 0.5,
                 outputs=[{"label": "churn" if i % 2 else "stay", "score": (i % 997) / 997} for i in range(n)])
    j.add_predictions(cols)
    del cols
    measured = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    est = p.bytes_per_entry()
    assert 0.7 * measured <= est <= 1.3 * measured, (est, measured)
    assert est < 500


def test_orphan_sample_is_mergeable_and_bounded():
    a, b, whole = OrphanLog(5), OrphanLog(5), OrphanLog(5)
    for i in range(100):
        (a if i % 2 else b).record("unknown_prediction", f"p{i}", float(i), "label", "x" * 500)
        whole.record("unknown_prediction", f"p{i}", float(i), "label", "x" * 500)
    a.merge(OrphanLog.from_dict(json.loads(json.dumps(b.to_dict()))))
    assert a.sample == whole.sample and len(a.sample) == 5 and a.counts == whole.counts
    assert len(a.sample[0]["value"]) == 200
    with pytest.raises(ValueError, match="reason"):
        a.record("bogus", "p", 0.0, "label")


def test_rotating_bloom_no_false_negatives_and_bounded_fp():
    bloom = RotatingBloom(capacity=2000, fp_rate=0.01)
    bloom.add_many(f"id{i}" for i in range(3000))  # rotates once
    assert bloom.contains_many([f"id{i}" for i in range(1000, 3000)]).all()
    fp = bloom.contains_many([f"other{i}" for i in range(20000)]).mean()
    assert fp <= 0.025
    back = RotatingBloom.from_dict(json.loads(json.dumps(bloom.to_dict())))
    assert np.array_equal(back.current, bloom.current) and "id2999" in back


def test_early_buffer_cap_counts_orphans():
    j = FeedbackJoin(DAY, grace_seconds=100, max_early=2)
    j.add_feedback(fb(["a", "b", "c"], [10, 11, 12]))
    assert len(j.early) == 2 and j.orphans.counts["buffer_full"] == 1
    e = EarlyFeedback.from_dict(json.loads(json.dumps(j.early.to_dict())))
    assert e.to_dict() == j.early.to_dict()


def test_segment_key_and_validation():
    assert segment_key({"b": True, "a": 1}) == "a=1,b=true" and segment_key(None) == "__all__"
    with pytest.raises(ValueError, match="kind"):
        FeedbackJoin(DAY).add_feedback(fb(["a"], [1], "praise"))
    with pytest.raises(ValueError, match="horizon_seconds"):
        PendingPredictions(0)


def test_caller_supplied_segment_labels_win():
    j = FeedbackJoin(DAY)
    cols = preds(["a"], [1], segment={"country": "FR"})
    cols["segment_label"] = ["country=__other__"]
    j.add_predictions(cols)
    assert j.add_feedback(fb(["a"], [2])).segment == ["country=__other__"]
