import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from prodlens.drift import compare, flagged
from prodlens.reference import (REFERENCE_FORMAT, Reference, build_reference, load_reference,
                                reference_from_windows, save_reference, segment_key)
from prodlens.sketches.summary import ALL, SummarySpec, WindowSummary


def training_table(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    country = rng.choice(["US", "DE", "FR", "IS", "NO"], n, p=[0.5, 0.3, 0.15, 0.03, 0.02])
    age = rng.normal(40, 10, n)
    age[:50] = np.nan
    return pa.table({
        "country": country,
        "age": pa.array(age, from_pandas=True),
        "visits": rng.poisson(4, n),
        "plan": rng.choice(["basic", "pro"], n),
        "is_member": rng.random(n) < 0.2,
        "output.score": rng.random(n),
        "churned": rng.choice(["yes", "no"], n, p=[0.1, 0.9]),
    })


@pytest.fixture
def parquet(tmp_path):
    path = tmp_path / "train.parquet"
    table = training_table()
    pq.write_table(table, path)
    return path, table


def test_build_from_parquet_infers_kinds_and_segments(parquet):
    path, table = parquet
    cfg = {"name": "churn", "segments": {"country": {"top_k": 3}}, "label": {"column": "churned", "type": "categorical"}}
    ref = build_reference(path, cfg)
    assert ref.model == "churn"
    assert sorted(ref.segments) == [ALL, "country=DE", "country=FR", "country=US", "country=__other__"]
    assert ref.all.count == table.num_rows
    assert ref.source["kind"] == "file" and ref.source["rows"] == table.num_rows and len(ref.source["sha256"]) == 64
    fields = ref.all.fields
    assert {p: s.kind for p, s in fields.items()} == {
        "features.age": "numeric", "features.visits": "numeric", "features.plan": "categorical",
        "features.is_member": "categorical", "output.score": "numeric", "label": "categorical"}
    age = np.asarray(table["age"].to_numpy(zero_copy_only=False), dtype=float)
    assert fields["features.age"].missing == 50
    assert fields["features.age"].mean == pytest.approx(np.nanmean(age), rel=1e-12)
    assert fields["features.age"].k == 800 and fields["features.age"].rank_error < 0.004
    assert fields["features.is_member"].counts().keys() == {"true", "false"}
    assert fields["label"].counts()["yes"] == int(np.sum(np.asarray(table["churned"]) == "yes"))
    other = ref.segments["country=__other__"]
    assert other.count == int(np.isin(np.asarray(table["country"]), ["IS", "NO"]).sum())
    assert sum(s.count for k, s in ref.segments.items() if k != ALL) == table.num_rows


def test_csv_and_parquet_give_the_same_reference(parquet, tmp_path):
    path, table = parquet
    csv = tmp_path / "train.csv"
    pacsv.write_csv(table, csv)
    cfg = {"name": "churn", "features": {"age": "numeric", "visits": "numeric", "plan": "categorical"},
           "segments": ["country"]}
    a, b = build_reference(path, cfg), build_reference(csv, cfg)
    assert sorted(a.segments) == sorted(b.segments)
    for key in a.segments:
        for p, s in a.segments[key].fields.items():
            o = b.segments[key].fields[p]
            assert (o.count, o.missing) == (s.count, s.missing)
            if s.kind == "numeric":
                assert o.mean == pytest.approx(s.mean, rel=1e-12) and (o.min, o.max) == (s.min, s.max)
            else:
                assert o.counts() == s.counts()


def test_save_load_roundtrip_and_format(parquet, tmp_path):
    path, _ = parquet
    ref = build_reference(path, {"name": "churn", "segments": ["country"]}, created_at="2026-11-25T06:30:00+00:00")
    out = tmp_path / "churn.reference.json"
    save_reference(ref, out)
    doc = json.loads(out.read_text())
    assert doc["format"] == REFERENCE_FORMAT and doc["model"] == "churn"
    assert doc["created_at"] == "2026-11-25T06:30:00+00:00" and doc["source"]["format"] == "parquet"
    assert set(doc["features"]) == {"age", "visits", "plan", "is_member", "churned"}
    assert set(doc["output"]) == {"score"} and "country=US" in doc["segments"] and ALL not in doc["segments"]
    back = load_reference(out)
    assert back == ref and back.to_dict() == ref.to_dict()
    assert Reference.load(out) == ref


def test_reference_detects_drift_against_windows(parquet):
    path, _ = parquet
    ref = build_reference(path, {"name": "churn", "segments": ["country"]})
    rng = np.random.default_rng(9)
    w = WindowSummary("churn", "v7", 0, 60, SummarySpec())
    n = 2000
    feats = {"age": rng.normal(40, 10, n), "visits": rng.poisson(4, n).astype(float),
             "plan": rng.choice(["basic", "pro"], n).tolist(), "is_member": (rng.random(n) < 0.2).tolist()}
    feats["age"][:1000] += 10  # the first 1000 events are US
    w.update_columns({"features": feats, "output": {"score": rng.random(n)}},
                     ["country=US"] * 1000 + ["country=DE"] * 1000)
    res = compare(w, ref)
    assert [(r.segment, r.field) for r in flagged(res)] == [("country=US", "features.age")]


def test_reference_from_frozen_windows():
    rng = np.random.default_rng(3)
    windows = []
    for t in range(5):
        w = WindowSummary("churn", "v7", 60 * t, 60 * (t + 1))
        w.update_columns({"features": {"x": rng.normal(size=300)}}, rng.choice(["a", "b"], 300).tolist())
        windows.append(w)
    ref = reference_from_windows(windows, created_at="2026-01-01T00:00:00+00:00")
    assert ref.source == {"kind": "windows", "version": "v7", "start": 0, "end": 300, "windows": 5}
    assert ref.all.count == 1500 and ref.segments["a"].count + ref.segments["b"].count == 1500
    assert ref.all.fields["features.x"].count == 1500
    assert Reference.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    other = WindowSummary("churn", "v8", 0, 60)
    other.update_columns({"features": {"x": [1.0]}})
    assert reference_from_windows(windows + [other]).version is None
    with pytest.raises(ValueError, match="model: window of 'fraud'"):
        reference_from_windows(windows + [WindowSummary("fraud", "v1")])
    with pytest.raises(ValueError, match="windows: need at least one"):
        reference_from_windows([])


def test_errors_name_the_problem(parquet, tmp_path):
    path, _ = parquet
    with pytest.raises(ValueError, match="name: the model config needs a model name"):
        build_reference(path, {})
    with pytest.raises(ValueError, match="features.height: column 'height' not in the file"):
        build_reference(path, {"name": "m", "features": {"height": "numeric"}})
    with pytest.raises(ValueError, match=r"segments\[0\]: column 'region'"):
        build_reference(path, {"name": "m", "segments": ["region"]})
    with pytest.raises(ValueError, match="features.age: kind must be one of"):
        build_reference(path, {"name": "m", "features": {"age": "text"}})
    bad = tmp_path / "train.xlsx"
    bad.write_text("x")
    with pytest.raises(ValueError, match="neither CSV"):
        build_reference(bad, {"name": "m"})
    with pytest.raises(ValueError, match="is not a file"):
        build_reference(tmp_path / "missing.csv", {"name": "m"})
    with pytest.raises(ValueError, match="format: expected 'prodlens.reference.v1'"):
        Reference.from_dict({"format": "v0"})
    junk = tmp_path / "junk.json"
    junk.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_reference(junk)


def test_segment_key():
    assert segment_key({"device": "ios", "country": "US"}) == "country=US,device=ios"
    assert segment_key({"member": True}) == "member=true"
    assert segment_key({}) == ALL
