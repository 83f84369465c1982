import copy
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.columnar import fast_columns, fast_rows
from prodlens.contract import (Decoder, check_event, columns_to_rows, parse_timestamp, row_of,
                               rows_to_columns)

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def kind_of(path: Path) -> str:
    return "feedback" if "feedback" in path.name else "outcome" if "outcome" in path.name else "prediction"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "valid").glob("*.json")), ids=lambda p: p.name)
def test_valid_examples_decode(path):
    decoded = Decoder().decode(path.read_bytes(), kind_of(path))
    assert decoded.rejections == [] and decoded.count >= 1


EXPECTED = {"batch_both_forms": "invalid_envelope", "feedback_bad_kind": "schema_violation",
            "malformed": "malformed_json", "outcome_missing_value": "schema_violation",
            "prediction_bad_score": "schema_violation", "prediction_bad_timestamp": "schema_violation",
            "prediction_missing_model": "schema_violation", "prediction_non_finite": "non_finite_value"}


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").glob("*.json")), ids=lambda p: p.name)
def test_invalid_examples_are_rejected_with_reason(path):
    decoded = Decoder().decode(path.read_bytes(), kind_of(path))
    assert decoded.count == 0
    assert [r.reason for r in decoded.rejections] == [EXPECTED[path.stem]]
    assert decoded.rejections[0].error


GOOD = {"event_id": "e1", "prediction_id": "p1", "timestamp": 100, "model": "churn", "version": "v1",
        "output": {"label": "stay", "score": 0.2}, "features": {"x": 1.5, "plan": "pro", "gone": None},
        "segment": {"country": "US"}, "latency_ms": 3.0}


def test_messages_name_the_field():
    bad = dict(GOOD, output={"score": 2})
    assert Decoder().decode(orjson.dumps(bad), "prediction").rejections[0].error == \
        "output.score: must be smaller than or equal to 1"
    missing = {k: v for k, v in GOOD.items() if k != "version"}
    assert "'version'" in Decoder().decode(orjson.dumps(missing), "prediction").rejections[0].error


def test_nan_from_pythons_json_is_non_finite_not_malformed():
    raw = json.dumps(dict(GOOD, features={"x": float("nan")})).encode()
    rejection = Decoder().decode(raw, "prediction").rejections[0]
    assert (rejection.reason, rejection.error.split(":")[0]) == ("non_finite_value", "features.x")


def test_unknown_model_oversized_and_tombstone():
    decoder = Decoder(["eta"], max_message_bytes=2000)
    assert decoder.decode(orjson.dumps(GOOD), "prediction").rejections[0].reason == "unknown_model"
    assert decoder.decode(b"{" + b" " * 3000 + b"}", "prediction").rejections[0].reason == "oversized_message"
    assert decoder.decode(None, "prediction").rejections[0].reason == "malformed_json"


def test_one_bad_event_in_an_envelope_rejects_only_that_event():
    bad = dict(GOOD, event_id="e2", output={"score": 7})
    raw = orjson.dumps({"type": "batch", "events": [GOOD, bad, dict(GOOD, event_id="e3")]})
    decoded = Decoder().decode(raw, "prediction")
    assert decoded.count == 2 and decoded.columns["event_id"] == ["e1", "e3"]
    (rejection,) = decoded.rejections
    assert rejection.index == 1 and rejection.event["event_id"] == "e2"


def test_timestamps():
    assert parse_timestamp("2026-11-25T06:30:00Z") == parse_timestamp("2026-11-25T07:30:00+01:00")
    assert parse_timestamp(1_795_588_200_000) == 1_795_588_200.0  # milliseconds
    for bad in ("2026-11-25T06:30:00", "yesterday", True, -1):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_row_of_rebuilds_the_event():
    columns = rows_to_columns("prediction", [GOOD])
    rebuilt = row_of(columns, 0)
    assert rebuilt["features"] == {"x": 1.5, "plan": "pro"} and rebuilt["output"] == GOOD["output"]


# The fast columnar check must accept exactly what per-row JSON Schema validation accepts,
# and produce the same canonical columns.
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2, allow_nan=False),
                   st.sampled_from(["", "a", "churn", "v1", "bad name", "x" * 130]))
event = st.fixed_dictionaries(
    {"event_id": st.sampled_from(["e1", "e2", "", None, 3]), "prediction_id": st.sampled_from(["p", None]),
     "timestamp": st.one_of(st.integers(-1, 10**12), st.floats(0, 1e10), st.sampled_from(["2026-01-01T00:00:00Z", "x"])),
     "model": st.sampled_from(["churn", "bad name", None]), "version": st.sampled_from(["v1", "v2"])},
    optional={"role": st.sampled_from(["primary", "canary", "nope", None]),
              "segment": st.dictionaries(st.sampled_from(["country", "device"]), scalar, max_size=2),
              "features": st.dictionaries(st.sampled_from(["x", "y", "plan"]), scalar, max_size=3),
              "output": st.dictionaries(st.sampled_from(["label", "score", "value", "oops"]), scalar, max_size=2),
              "latency_ms": st.one_of(st.none(), st.floats(-1, 100), st.just("fast")),
              "unit_id": st.sampled_from(["u1", None, 5])})


def _drop_none_top(e):
    return {k: v for k, v in e.items() if v is not None}


@given(st.lists(event, min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_fast_path_agrees_with_schema_validation(events):
    events = [_drop_none_top(e) for e in events]
    all_valid = all(check_event(e, "prediction") is None for e in events)
    fast = fast_rows("prediction", events)
    if fast is not None:
        assert all_valid, "the fast path accepted an event the schema rejects"
        assert fast == rows_to_columns("prediction", events)


def test_columnar_envelope_equals_rows():
    envelope = {"type": "batch", "count": 2, "columns": {
        "event_id": ["e1", "e2"], "prediction_id": "p1", "timestamp": 100, "model": "churn", "version": "v1",
        "output": {"label": "stay", "score": 0.2}, "features": {"x": [1.5, None], "plan": ["pro", "basic"]},
        "segment": {"country": "US"}, "latency_ms": [3.0, None]}}
    fast = fast_columns("prediction", 2, envelope["columns"])
    assert fast is not None
    assert columns_to_rows("prediction", 2, envelope["columns"])[1]["features"] == {"x": None, "plan": "basic"}
    assert fast["features"] == {"x": [1.5, None], "plan": ["pro", "basic"]}
    decoded = Decoder().decode(orjson.dumps(envelope), "prediction")
    assert decoded.count == 2 and decoded.columns["latency_ms"] == [3.0, None]


valid_event = st.builds(
    lambda i, ts, seg, feats, out, lat: {
        "event_id": f"e{i}", "prediction_id": f"p{i}", "timestamp": ts, "model": "churn", "version": "v1",
        "segment": seg, "features": feats, "output": out, **({"latency_ms": lat} if lat is not None else {})},
    st.integers(0, 10**6), st.one_of(st.integers(0, 10**10), st.floats(0, 1e13)),
    st.dictionaries(st.sampled_from(["country", "device"]), st.one_of(st.none(), st.text(max_size=5), st.booleans()), max_size=2),
    st.dictionaries(st.sampled_from(["x", "y", "plan"]), st.one_of(st.none(), st.floats(-1e6, 1e6), st.text(max_size=4), st.booleans()), max_size=3),
    st.one_of(st.fixed_dictionaries({"label": st.sampled_from(["a", "b"])}, optional={"score": st.floats(0, 1)}),
              st.fixed_dictionaries({"value": st.floats(-1e3, 1e3)})),
    st.one_of(st.none(), st.floats(0, 1e4)))


@given(st.lists(valid_event, min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_fast_path_takes_every_valid_batch(events):
    assert all(check_event(e, "prediction") is None for e in events)
    fast = fast_rows("prediction", events)
    assert fast is not None and fast == rows_to_columns("prediction", events)


@given(event)
@settings(max_examples=400, deadline=None)
def test_single_event_fast_path_agrees_with_schema(e):
    from prodlens.columnar import fast_event

    fast = fast_event("prediction", e)
    if fast is not None:
        expected = rows_to_columns("prediction", [copy.deepcopy(e)])  # before validation fills defaults in e
        assert check_event(e, "prediction") is None
        assert fast == expected


@given(valid_event)
@settings(max_examples=200, deadline=None)
def test_single_event_fast_path_takes_valid_events(e):
    from prodlens.columnar import fast_event

    assert fast_event("prediction", e) == rows_to_columns("prediction", [e])
