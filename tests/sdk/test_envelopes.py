"""Columnar envelopes: what the SDK writes must decode, through prodlens.contract, to
exactly the events that were logged."""

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.columnar import fast_columns
from prodlens.contract import Decoder, check_event, load_schema, row_of
from prodlens.sdk.batching import Batcher, build_columns, encode, message_key
from prodlens.sdk.events import FIELDS, EventBuilder
from prodlens.sdk.privacy import Privacy

DECODER = Decoder()


def expected_event(kind, group, row):
    """The row as the schema's event object, the way a decoder should give it back."""
    event = {name: value for name, value in zip(FIELDS[kind], row) if value is not None}
    if kind == "prediction":
        event["model"], event["version"] = group
    elif kind == "feedback" and group is not None:
        event["model"] = group
    return event


def decoded_events(payload, kind):
    d = DECODER.decode(payload, kind)
    assert d.rejections == [], d.rejections
    return d


def without_nulls(event):
    """How contract.row_of gives an event back: no null fields, no null nested members."""
    out = {}
    for name, value in event.items():
        if isinstance(value, dict) and name != "probabilities":
            value = {k: v for k, v in value.items() if v is not None}
            if not value:
                continue
        if value is not None:
            out[name] = value
    return out


def assert_roundtrip(kind, group, rows):
    """Seal rows as the sender does; every envelope must decode back to exactly its rows."""
    envelopes = Batcher(max_events=len(rows) + 1).seal(kind, group, rows)
    assert sum(e.count for e in envelopes) == len(rows)
    start = 0
    for env in envelopes:
        doc = orjson.loads(env.payload)
        # ingest's fast columnar path vouches for SDK envelopes (no row-by-row fallback)
        assert fast_columns(kind, doc["count"], doc["columns"]) is not None
        d = decoded_events(env.payload, kind)
        assert d.count == env.count
        for i, row in enumerate(rows[start:start + env.count]):
            assert row_of(d.columns, i) == without_nulls(expected_event(kind, group, row))
        start += env.count
    return envelopes[0].payload


def test_the_documented_columnar_example_shape():
    b = EventBuilder(Privacy(salt="s"))
    rows = [b.prediction("churn", "v7", label="stay", score=0.2, features={"tenure_months": 14, "plan": "pro"},
                         segment={"country": "US"}, latency_ms=12.0, timestamp=1795588200.0)[2],
            b.prediction("churn", "v7", label="churn", score=0.7, features={"tenure_months": None, "plan": "basic"},
                         segment={"country": "DE"}, latency_ms=15.5, timestamp=1795588200.5)[2]]
    doc = orjson.loads(encode("prediction", ("churn", "v7"), rows))
    assert doc["type"] == "batch" and doc["schema_version"] == 1 and doc["kind"] == "prediction"
    assert doc["count"] == 2
    cols = doc["columns"]
    assert cols["model"] == "churn" and cols["version"] == "v7" and cols["role"] == "primary"
    assert cols["features"] == {"tenure_months": [14, None], "plan": ["pro", "basic"]}
    assert cols["segment"] == {"country": ["US", "DE"]}
    assert cols["output"] == {"label": ["stay", "churn"], "score": [0.2, 0.7]}
    assert cols["latency_ms"] == [12.0, 15.5]
    assert "unit_id" not in cols and "experiment" not in cols  # nobody set them
    assert_roundtrip("prediction", ("churn", "v7"), rows)


def test_mixed_outputs_roles_and_sparse_fields_roundtrip():
    b = EventBuilder(Privacy(salt="s"))
    rows = [
        b.prediction("intent", "2024-05", probabilities={"billing": 0.7, "tech": 0.3}, label="billing",
                     features={"len": 3}, unit_id="u1", timestamp=10)[2],
        b.prediction("intent", "2024-05", probabilities={"billing": 0.1, "other": 0.9}, role="shadow",
                     experiment="exp", variant="b", timestamp="2026-11-25T06:30:00Z")[2],
        b.prediction("intent", "2024-05", value=3.5, segment={"locale": "de", "tier": 2}, latency_ms=0,
                     features={"len": None, "lang": "de", "flag": True}, timestamp=11.5)[2],
        b.prediction("intent", "2024-05", score=1, features={}, segment={}, timestamp=12)[2],
    ]
    payload = assert_roundtrip("prediction", ("intent", "2024-05"), rows)
    cols = orjson.loads(payload)["columns"]
    assert cols["role"] == ["primary", "shadow", "primary", "primary"]
    assert cols["experiment"] == [None, "exp", None, None]


def test_feedback_and_outcome_roundtrip():
    b = EventBuilder(Privacy(salt="s"))
    fb = [b.feedback("p1", "label", "churn", timestamp=5)[2],
          b.feedback("p2", "rating", 4.5, size=10, corrected=2, timestamp=6)[2],
          b.feedback("p3", "complaint", timestamp=7)[2],
          b.feedback("p4", "implicit", True, timestamp=8)[2]]
    assert_roundtrip("feedback", "churn", fb)
    assert_roundtrip("feedback", None, fb)
    oc = [b.outcome("u1", "revenue", 19.99, experiment="pricing", timestamp=1)[2],
          b.outcome("u2", "revenue", 0, model="churn", segment={"country": "US"}, timestamp=2)[2]]
    payload = assert_roundtrip("outcome", None, oc)
    assert orjson.loads(payload)["columns"]["metric"] == "revenue"  # constant: written once


names = st.text(st.characters(min_codepoint=97, max_codepoint=102), min_size=1, max_size=3)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True, width=64), st.text(max_size=5))


@st.composite
def prediction_rows(draw):
    b = EventBuilder(Privacy(salt="hyp"))
    n = draw(st.integers(1, 12))
    rows = []
    for _ in range(n):
        out = draw(st.sampled_from(["label", "score", "probs", "value", "label+score"]))
        kw = {}
        if "label" in out:
            kw["label"] = draw(st.one_of(st.text(min_size=1, max_size=4), st.integers(0, 5), st.booleans()))
        if "score" in out:
            kw["score"] = draw(st.floats(0, 1))
        if out == "probs":
            classes = draw(st.lists(names, min_size=2, max_size=4, unique=True))
            kw["probabilities"] = {c: draw(st.floats(0, 1)) for c in classes}
        if out == "value":
            kw["value"] = draw(st.floats(-1e9, 1e9))
        rows.append(b.prediction(
            "m", "v1", features=draw(st.none() | st.dictionaries(names, scalars, max_size=4)),
            segment=draw(st.none() | st.dictionaries(names, st.none() | st.text(max_size=3) | st.integers(0, 9),
                                                     max_size=3)),
            latency_ms=draw(st.none() | st.floats(0, 1e4)),
            unit_id=draw(st.none() | st.text(max_size=6)),
            role=draw(st.sampled_from(["primary", "shadow"])),
            experiment=draw(st.none() | st.just("exp")),
            timestamp=draw(st.floats(0, 2e9)), **kw)[2])
    return rows


@settings(max_examples=60, deadline=None)
@given(prediction_rows())
def test_any_logged_predictions_decode_back_exactly(rows):
    assert_roundtrip("prediction", ("m", "v1"), rows)


def test_every_decoded_event_passes_the_json_schema():
    b = EventBuilder(Privacy(salt="s"))
    rows = [b.prediction("m", "v", label="a", features={"x": math.nan}, timestamp=1)[2],
            b.prediction("m", "v", score=0.5, segment={"k": None}, timestamp=2)[2]]
    d = decoded_events(encode("prediction", ("m", "v"), rows), "prediction")
    for i in range(d.count):
        assert check_event(row_of(d.columns, i), "prediction") is None
    # the envelope itself follows batch.v1.json's required fields
    doc = orjson.loads(encode("prediction", ("m", "v"), rows))
    assert set(load_schema("batch")["required"]) <= set(doc)


def test_message_keys():
    assert message_key("prediction", ("churn", "v7")) == b"churn/v7"
    assert message_key("feedback", "churn") == b"churn"
    assert message_key("feedback", None) is None
    assert message_key("outcome", None) is None


def outcome_row(i):
    return (f"e{i}", f"u{i}", float(i), "revenue", 1.0, None, None, None)


def test_batcher_seals_by_size_and_keeps_groups_apart():
    b = Batcher(max_events=3, linger=10)
    out = []
    for i in range(7):
        out += b.add("prediction", ("m", "v1" if i % 2 else "v2"), (f"e{i}", f"p{i}", 1.0, "primary", None,
                     None, None, None, None, {"label": "a"}, None), now=0)
    assert [(e.key, e.count) for e in out] == [(b"m/v2", 3), (b"m/v1", 3)]
    assert b.pending == 1
    rest = b.seal_all()
    assert [(e.key, e.count) for e in rest] == [(b"m/v2", 1)] and b.pending == 0


def test_batcher_linger():
    b = Batcher(max_events=100, linger=0.5)
    b.add("outcome", None, outcome_row(1), now=10.0)
    b.add("feedback", "m", ("e", "p", 1.0, "label", "a", None, None), now=10.2)
    assert b.next_due() == pytest.approx(10.5)
    assert b.due(10.4) == []
    due = b.due(10.5)
    assert [(e.kind, e.count) for e in due] == [("outcome", 1)]
    assert b.next_due() == pytest.approx(10.7)
    assert [e.kind for e in b.due(11)] == ["feedback"] and b.next_due() is None


def test_batcher_splits_envelopes_larger_than_max_bytes():
    b = Batcher(max_events=1000, linger=1, max_bytes=4096)
    rows = [outcome_row(i) for i in range(300)]
    envs = b.add_many([("outcome", None, r) for r in rows], now=0) + b.seal_all()
    assert sum(e.count for e in envs) == 300 and len(envs) > 1
    assert all(len(e.payload) <= 4096 for e in envs)
    seen = [eid for e in envs for eid in DECODER.decode(e.payload, "outcome").columns["event_id"]]
    assert seen == [r[0] for r in rows]  # order kept, nothing lost or repeated


def test_single_event_too_large_is_reported_not_sent():
    b = Batcher(max_events=10, linger=1, max_bytes=2048)
    big = ("e", "p", 1.0, "primary", None, None, None, None, {"blob": "x" * 5000}, {"label": "a"}, None)
    small = ("e2", "p2", 1.0, "primary", None, None, None, None, None, {"label": "a"}, None)
    b.add("prediction", ("m", "v"), big, now=0)
    b.add("prediction", ("m", "v"), small, now=0)
    envs = b.seal_all()
    assert [e.count for e in envs] == [1]
    assert len(b.oversized) == 1 and b.oversized[0][2] is big


def test_union_of_segment_keys_over_the_limit_is_split():
    # each row has 10 segment attributes, but together 20: one envelope would give every
    # decoded event 20 attributes, more than the schema's 16
    row = lambda i, keys: (f"e{i}", f"p{i}", 1.0, "primary", None, None, None,
                           {k: "x" for k in keys}, None, {"label": "a"}, None)
    a = [f"a{i}" for i in range(10)]
    z = [f"z{i}" for i in range(10)]
    b = Batcher(max_events=10, linger=1)
    b.add("prediction", ("m", "v"), row(1, a), now=0)
    b.add("prediction", ("m", "v"), row(2, z), now=0)
    envs = b.seal_all()
    assert [e.count for e in envs] == [1, 1]
    for e in envs:
        assert decoded_events(e.payload, "prediction").count == 1


def test_build_columns_omits_unset_optional_fields():
    cols = build_columns("feedback", None, [("e", "p", 1.0, "label", None, None, None)])
    assert set(cols) == {"event_id", "prediction_id", "timestamp", "kind"}
    assert cols["kind"] == "label"


def test_batcher_rejects_bad_settings():
    with pytest.raises(ValueError, match="batch_size"):
        Batcher(max_events=0)
    with pytest.raises(ValueError, match="linger"):
        Batcher(linger=-1)
