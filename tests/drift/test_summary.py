import json

import numpy as np
import pytest

from prodlens.contract import decode_message
from prodlens.sketches.summary import ALL, SegmentSummary, SummarySpec, WindowSummary, infer_kind


def rows_batch(n, rng, shift=0.0):
    feats = [{"age": float(a), "plan": p, "flag": bool(f)} for a, p, f in
             zip(rng.normal(40 + shift, 5, n), rng.choice(["basic", "pro"], n), rng.random(n) < 0.3)]
    feats[0]["age"] = None
    feats[1] = None
    outputs = [{"score": float(s), "label": "churn" if s > 0.5 else "stay",
                "probabilities": {"churn": float(s), "stay": float(1 - s)}} for s in rng.random(n)]
    return {"features": feats, "output": outputs}


def test_rows_and_columns_give_the_same_summary():
    rng = np.random.default_rng(0)
    batch = rows_batch(300, rng)
    cols = {"features": {name: [f.get(name) if f else None for f in batch["features"]] for name in ("age", "plan", "flag")},
            "output": {"score": [o["score"] for o in batch["output"]], "label": [o["label"] for o in batch["output"]],
                       "probabilities": [o["probabilities"] for o in batch["output"]]}}
    keys = rng.choice(["country=US", "country=DE"], 300).tolist()
    a = WindowSummary("churn", "v7", 0, 60)
    a.update_columns(batch, keys)
    b = WindowSummary("churn", "v7", 0, 60)
    b.update_columns(cols, keys)
    assert a == b
    us = a.segments["country=US"]
    assert us.count == keys.count("country=US")
    assert set(us.fields) == {"features.age", "features.plan", "features.flag", "output.score", "output.label",
                              "output.probabilities.churn", "output.probabilities.stay"}
    assert us.fields["features.age"].kind == "numeric" and us.fields["features.flag"].kind == "categorical"
    assert us.fields["output.label"].kind == "categorical"
    total_missing = sum(s.fields["features.age"].missing for s in a.segments.values())
    assert total_missing == 2  # one None value, one event without features
    combined = a.combined()
    ages = [f["age"] for f in batch["features"] if f and f["age"] is not None]
    assert combined.fields["features.age"].count == len(ages)
    assert combined.fields["features.age"].mean == pytest.approx(np.mean(ages))


def test_decoded_contract_columns_feed_the_summary():
    raw = open("schemas/examples/valid/batch_columns.json", "rb").read()
    decoded = decode_message(raw, "prediction")
    assert decoded.count == 2 and not decoded.rejections
    w = WindowSummary("churn", "v7")
    w.update_columns(decoded.columns, ["country=" + c for c in decoded.columns["segment"]["country"]])
    us = w.segments["country=US"]
    assert us.fields["features.tenure_months"].count == 1
    assert w.segments["country=DE"].fields["features.tenure_months"].missing == 1
    assert us.fields["features.plan"].counts() == {"pro": 1}


def test_spec_kinds_win_over_inference_and_invalid_values_are_counted():
    spec = SummarySpec(fields={"features.zip": "categorical", "features.x": "numeric"}, infer=False)
    seg = SegmentSummary(spec)
    seg.update_columns({"features": [{"zip": 12345, "x": "oops", "other": 1}, {"zip": "02139", "x": 2}]})
    assert set(seg.fields) == {"features.zip", "features.x"}
    assert seg.fields["features.zip"].counts() == {"12345": 1, "02139": 1}
    x = seg.fields["features.x"]
    assert (x.count, x.missing, x.invalid) == (1, 1, 1)
    w = WindowSummary("m", "v", spec=spec)
    w.update_columns({"features": [{"x": "bad"}, {"x": 3.0}]}, ["a", "b"])
    assert w.segments["a"].fields["features.x"].invalid == 1
    assert w.segments["b"].fields["features.x"].invalid == 0


def test_labels_merge_and_roundtrip():
    rng = np.random.default_rng(1)
    w1 = WindowSummary("churn", "v7", 0, 60)
    w1.update_columns(rows_batch(200, rng), ["s1"] * 100 + ["s2"] * 100)
    w1.update_labels(["churn", "stay", "stay"], ["s1", "s1", "s2"])
    w2 = WindowSummary("churn", "v7", 60, 120)
    w2.update_columns(rows_batch(150, rng), None)
    w2.update_labels([1, 0, 1])
    merged = w1.copy().merge(w2)
    assert (merged.start, merged.end) == (0, 120)
    assert sorted(merged.segments) == [ALL, "s1", "s2"]
    assert merged.count == 350
    assert merged.segments["s1"].fields["label"].counts() == {"churn": 1, "stay": 1}
    d = merged.to_dict()
    assert d["format"] == "prodlens.summary.v1"
    back = WindowSummary.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    assert back == merged and back.to_dict() == d
    # restored windows keep accepting events
    back.update_columns(rows_batch(10, rng), None)
    assert back.segments[ALL].count == 160
    with pytest.raises(ValueError, match="model/version"):
        merged.merge(WindowSummary("churn", "v8"))


def test_merge_shards_equals_whole_window():
    rng = np.random.default_rng(2)
    batches = [rows_batch(100, rng) for _ in range(6)]
    keys = [rng.choice(["a", "b", "c"], 100).tolist() for _ in range(6)]
    whole = WindowSummary("m", "v")
    for b, k in zip(batches, keys):
        whole.update_columns(b, k)
    shards = [WindowSummary("m", "v") for _ in range(3)]
    for i, (b, k) in enumerate(zip(batches, keys)):
        shards[i % 3].update_columns(b, k)
    merged = shards[2].merge(shards[0]).merge(shards[1])
    for key, seg in whole.segments.items():
        other = merged.segments[key]
        assert other.count == seg.count
        for path, s in seg.fields.items():
            o = other.fields[path]
            assert (o.count, o.missing) == (s.count, s.missing)
            if s.kind == "numeric":
                assert o.mean == pytest.approx(s.mean, rel=1e-12) and o.min == s.min and o.max == s.max
            else:
                assert o.counts() == s.counts()


def test_bad_input_names_the_field():
    w = WindowSummary("m", "v")
    with pytest.raises(ValueError, match="segment_keys: has 1 values, the batch has 2"):
        w.update_columns({"features": [{"a": 1}, {"a": 2}]}, ["x"])
    with pytest.raises(ValueError, match="columns.a: has 1 values, expected 2"):
        w.update_columns({"event_id": ["e1", "e2"], "features": {"a": [1]}})
    with pytest.raises(ValueError, match="columns: no per-event column"):
        w.update_columns({})
    with pytest.raises(ValueError, match="features.a: kind must be one of"):
        SummarySpec(fields={"features.a": "text"})
    with pytest.raises(ValueError, match=r"features\[0\]"):
        SummarySpec.from_model_config({"features": [3]})
    spec = SummarySpec.from_model_config({"features": [{"name": "age", "type": "numeric"}, "plan"],
                                          "output": {"score": "numeric"}, "label": "categorical"})
    assert spec.fields == {"features.age": "numeric", "output.score": "numeric", "label": "categorical"}
    assert infer_kind([None, True]) == "categorical" and infer_kind([None, 2]) == "numeric"
    assert infer_kind([None]) is None


def test_field_cap_bounds_memory():
    spec = SummarySpec(max_fields=5)
    seg = SegmentSummary(spec)
    seg.update_columns({"features": [{f"f{i}": i for i in range(50)}]})
    assert len(seg.fields) == 5
