"""Event building: validation names the field, NaN features become null, privacy applies."""

import hashlib
import hmac
import math
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from prodlens.sdk.events import FIELDS, EventBuilder, new_id
from prodlens.sdk.privacy import Privacy

F = {name: i for i, name in enumerate(FIELDS["prediction"])}


def builder(**kw):
    return EventBuilder(Privacy(salt=kw.pop("salt", "s"), **kw))


def test_ids_are_uuid4_hex_and_unique():
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in list(ids)[:50]:
        assert len(i) == 32 and uuid.UUID(hex=i).version == 4 and uuid.UUID(hex=i).hex == i


def test_prediction_defaults_and_given_ids():
    b = builder()
    kind, group, row = b.prediction("churn", "v7", label="stay")
    assert kind == "prediction" and group == ("churn", "v7")
    assert row[F["role"]] == "primary" and row[F["output"]] == {"label": "stay"}
    assert row[F["event_id"]] != row[F["prediction_id"]]
    _, _, row = b.prediction("churn", "v7", label="stay", prediction_id="p-1", event_id="e-1", timestamp=5)
    assert (row[F["prediction_id"]], row[F["event_id"]], row[F["timestamp"]]) == ("p-1", "e-1", 5)


def test_non_finite_features_become_missing_and_are_counted():
    b = builder()
    _, _, row = b.prediction("m", "v", score=0.5, features={
        "a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5, "e": np.float64("nan"),
        "f": np.float32(2.5), "g": np.int64(7), "h": np.bool_(True), "i": None, "j": "x"})
    feats = row[F["features"]]
    assert feats == {"a": None, "b": None, "c": None, "d": 1.5, "e": None, "f": 2.5, "g": 7, "h": True,
                     "i": None, "j": "x"}
    assert [type(feats[k]) for k in "fgh"] == [float, int, bool]
    assert b.non_finite == 4


def test_caller_dict_is_copied():
    b = builder()
    features = {"a": 1}
    _, _, row = b.prediction("m", "v", label="x", features=features)
    features["a"] = 2
    assert row[F["features"]] == {"a": 1}


@pytest.mark.parametrize("kwargs, field", [
    (dict(model="bad model"), "model"),
    (dict(model=""), "model"),
    (dict(version=None), "version"),
    (dict(role="boss"), "role"),
    (dict(score=1.5), "output.score"),
    (dict(score=math.nan), "output.score"),
    (dict(score="high"), "output.score"),
    (dict(probabilities={"a": 1.0}), "output.probabilities"),
    (dict(probabilities={"a": 0.5, "b": 2}), "output.probabilities.b"),
    (dict(value=math.inf), "output.value"),
    (dict(label=[1]), "output.label"),
    (dict(latency_ms=-1), "latency_ms"),
    (dict(latency_ms=math.nan), "latency_ms"),
    (dict(features={"a": [1, 2]}), "features.a"),
    (dict(features={"a": {"b": 1}}), "features.a"),
    (dict(features=[1, 2]), "features"),
    (dict(segment={"country": 1.5}), "segment.country"),
    (dict(segment={f"k{i}": "x" for i in range(17)}), "segment"),
    (dict(timestamp=-1), "timestamp"),
    (dict(timestamp="yesterday"), "timestamp"),
    (dict(timestamp=datetime(2026, 1, 1)), "timestamp"),
    (dict(prediction_id=""), "prediction_id"),
    (dict(event_id="x" * 129), "event_id"),
    (dict(experiment=5), "experiment"),
    (dict(unit_id=1.5), "unit_id"),
])
def test_bad_prediction_arguments_name_the_field(kwargs, field):
    args = dict(model="m", version="v", label="a")
    if any(k in kwargs for k in ("score", "probabilities", "value", "label")):
        args.pop("label")
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        builder().prediction(args.pop("model"), args.pop("version"), **args)
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_output_needs_something():
    with pytest.raises(ValueError, match="^output: give at least one"):
        builder().prediction("m", "v")
    with pytest.raises(ValueError, match="unknown field"):
        builder().prediction("m", "v", {"class": "a"})


def test_output_mapping_and_numpy_values():
    _, _, row = builder().prediction("m", "v", {"label": np.int64(1), "probabilities": {0: np.float32(0.25), 1: 0.75}})
    assert row[F["output"]] == {"label": 1, "probabilities": {"0": 0.25, "1": 0.75}}
    assert type(row[F["output"]]["label"]) is int


def test_timestamps():
    b = builder()
    aware = datetime(2026, 11, 25, 6, 30, tzinfo=timezone(timedelta(hours=1)))
    assert b.prediction("m", "v", label="a", timestamp=aware)[2][F["timestamp"]] == aware.timestamp()
    assert b.prediction("m", "v", label="a", timestamp="2026-11-25T05:30:00Z")[2][F["timestamp"]] == aware.timestamp()
    assert b.prediction("m", "v", label="a", timestamp=1.5e12)[2][F["timestamp"]] == 1.5e12  # the decoder reads ms


def test_feedback_and_outcome_checks():
    b = builder()
    kind, group, row = b.feedback("p1", "rating", np.float64(4.0), model="churn", size=3)
    assert (kind, group, row[4], row[5]) == ("feedback", "churn", 4.0, 3)
    assert b.feedback("p1", "label", "x")[1] is None
    for call, field in [(lambda: b.feedback("", "label"), "prediction_id"),
                        (lambda: b.feedback("p", "vote"), "kind"),
                        (lambda: b.feedback("p", "rating", math.nan), "value"),
                        (lambda: b.feedback("p", "label", [1]), "value"),
                        (lambda: b.feedback("p", "label", size=-1), "size"),
                        (lambda: b.outcome(None, "revenue", 1), "unit_id"),
                        (lambda: b.outcome("u", "bad metric", 1), "metric"),
                        (lambda: b.outcome("u", "revenue", "1"), "value"),
                        (lambda: b.outcome("u", "revenue", math.inf), "value")]:
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        assert str(info.value).startswith(field + ":"), str(info.value)


def test_unit_ids_are_hmac_sha256_of_the_salt():
    p = Privacy(salt="pepper")
    want = hmac.new(b"pepper", b"user-42", hashlib.sha256).hexdigest()[:32]
    assert p.hash_unit("user-42") == want
    assert p.hash_unit("user-42") == Privacy(salt=b"pepper").hash_unit("user-42")  # deterministic
    assert p.hash_unit("user-43") != want
    assert Privacy(salt="other").hash_unit("user-42") != want
    assert Privacy(salt=None).hash_unit("user-42") != want  # unsalted differs
    assert Privacy(salt="pepper", hash_length=12).hash_unit("user-42") == want[:12]
    assert p.hash_unit(42) == p.hash_unit("42")
    u = uuid.uuid4()
    assert p.hash_unit(u) == p.hash_unit(str(u))
    assert Privacy(hash_unit_ids=False).hash_unit("raw-id") == "raw-id"
    with pytest.raises(ValueError, match="hash_length"):
        Privacy(hash_length=4)


def test_salt_from_environment(monkeypatch):
    monkeypatch.setenv("PRODLENS_UNIT_SALT", "pepper")
    assert Privacy().hash_unit("u") == Privacy(salt="pepper").hash_unit("u")


def test_unit_id_is_hashed_in_predictions_and_outcomes_alike():
    b = builder(salt="pepper")
    pred = b.prediction("m", "v", label="a", unit_id="user-7")[2][F["unit_id"]]
    out = b.outcome("user-7", "revenue", 1.0)[2][1]
    assert pred == out == Privacy(salt="pepper").hash_unit("user-7")
    assert "user-7" not in pred


def test_allowlist_and_redaction():
    b = builder(allow_features=["age", "plan", "email"], redact_features=["email"],
                redact_segment=["zip"])
    _, _, row = b.prediction("m", "v", label="a", features={"age": 3, "plan": "pro", "email": "a@b", "ssn": "1"},
                             segment={"country": "US", "zip": "10001"})
    assert row[F["features"]] == {"age": 3, "plan": "pro"}
    assert row[F["segment"]] == {"country": "US"}
    b2 = builder(allow_segment=["country"])
    _, _, row = b2.outcome("u", "revenue", 1, segment={"country": "US", "city": "NYC"})
    assert row[-1] == {"country": "US"}
    _, _, row = b2.prediction("m", "v", label="a", segment={"city": "NYC"})
    assert row[F["segment"]] is None  # nothing allowed is left
    with pytest.raises(TypeError, match="redact_features"):
        Privacy(redact_features="email")
