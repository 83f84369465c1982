"""Invariant specs and their windowed evaluation."""

from __future__ import annotations

import json
import random

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import prodlens.invariants as inv_pkg
from prodlens.contract import decode_message
from prodlens.invariants import (BottomK, InvariantConfigError, InvariantEvaluator, parse_invariants,
                                 parse_invariants_section)

W = 60.0


def pred(i, t, *, model="m", version="v1", segment=None, features=None, output=None, unit=None,
         pid=None, role=None):
    e = {"event_id": f"e{i}", "prediction_id": pid or f"p{i}", "timestamp": t, "model": model,
         "version": version, "features": features or {}, "output": output or {"label": "a"}}
    if segment is not None:
        e["segment"] = segment
    if unit is not None:
        e["unit_id"] = unit
    if role is not None:
        e["role"] = role
    return e


def evaluator(items, model="m", **kw):
    kw.setdefault("window_seconds", W)
    return InvariantEvaluator(parse_invariants(model, items), **kw)


def by(results, **want):
    return [r for r in results if all(getattr(r, k) == v for k, v in want.items())]


# ----------------------------------------------------------------------------- spec
def test_documented_example_parses():
    text = inv_pkg.__doc__.split(".. code-block:: yaml")[1].split("Kinds are")[0]
    import textwrap
    specs = parse_invariants_section(yaml.safe_load(textwrap.dedent(text))["invariants"], ["churn"])
    kinds = [i.kind for i in specs["churn"].invariants]
    assert sorted(set(kinds)) == sorted(inv_pkg.KINDS)


@pytest.mark.parametrize("item, needle", [
    ({"name": "x", "kind": "typo"}, "[0] ('x').kind: unknown kind 'typo'"),
    ({"name": "bad name!", "kind": "type"}, "[0].name"),
    ({"name": "x", "kind": "type", "field": "features.a"}, "('x').type: required"),
    ({"name": "x", "kind": "type", "field": "features.a", "type": "bool"}, "('x').type: unknown type 'bool'"),
    ({"name": "x", "kind": "type", "field": "features.a + 1", "type": "boolean"}, "('x').field: "),
    ({"name": "x", "kind": "range", "field": "features.a", "min": 5, "max": 1}, "('x').max: the range [5.0, 1.0] is empty"),
    ({"name": "x", "kind": "range", "field": "features.a"}, "('x'): a range needs min, max or both"),
    ({"name": "x", "kind": "range", "field": "features.a", "min": "0"}, "('x').min: must be a finite number"),
    ({"name": "x", "kind": "enum", "field": "features.a", "values": []}, "('x').values"),
    ({"name": "x", "kind": "rule", "rule": "len(features.a) > 1"}, "('x').rule: expression"),
    ({"name": "x", "kind": "rule", "rule": "features.a > 1", "on_missing": "drop"}, "('x').on_missing"),
    ({"name": "x", "kind": "rule", "rule": "features.a > 1", "where": "eval('1')"}, "('x').where"),
    ({"name": "x", "kind": "rule", "rule": "features.a > 1", "colour": 1}, "('x'): unknown field(s) ['colour']"),
    ({"name": "x", "kind": "agreement", "reference": {"version": "a"}, "candidate": {"version": "a"}},
     "('x').candidate: must select different"),
    ({"name": "x", "kind": "agreement", "reference": {"version": "a"}, "candidate": {"role": "shadow"},
      "min_agreement": 95}, "('x').min_agreement: must be a share"),
    ({"name": "x", "kind": "agreement", "reference": {"version": "a"}, "candidate": {"colour": "x"}},
     "('x').candidate: unknown key"),
    ({"name": "x", "kind": "stability", "max_flips": 2, "within": "-5s"}, "('x').within: must not be negative"),
    ({"name": "x", "kind": "stability", "max_flips": -1, "within": "5s"}, "('x').max_flips"),
    ({"name": "x", "kind": "rare", "when": "features.a > 1"}, "('x'): a rare bound needs"),
    ({"name": "x", "kind": "business", "metric": "revenue", "lower": 10, "upper": 1}, "('x').upper: must be >= lower"),
    ({"name": "x", "kind": "business", "metric": "revenue", "field": "output.value", "lower": 1},
     "exactly one of metric"),
    ({"name": "x", "kind": "business", "metric": "revenue", "aggregate": "median", "lower": 1}, "('x').aggregate"),
])
def test_bad_specs_name_model_invariant_and_field(item, needle):
    with pytest.raises(InvariantConfigError) as info:
        parse_invariants("churn", [item])
    assert str(info.value).startswith("invariants.churn[0]")
    assert needle in str(info.value)


def test_duplicate_names_are_rejected():
    item = {"name": "x", "kind": "not_null", "field": "features.a"}
    with pytest.raises(InvariantConfigError, match=r"invariants.m\[1\] \(.x.\).name: duplicate"):
        parse_invariants("m", [item, item])


# ----------------------------------------------------------------------------- per-event checks
def test_boolean_must_be_a_real_boolean_and_sample_names_the_problem():
    ev = evaluator([{"name": "flag_bool", "kind": "type", "field": "features.is_new", "type": "boolean"}])
    events = [pred(i, 10 + i, features={"is_new": v}) for i, v in
              enumerate([True, False, "true", "false", 1, None, "True"])]
    ev.update_many(events)
    (r,) = ev.close_windows(2 * W)
    assert (r.model, r.version, r.segment, r.invariant) == ("m", "v1", "__all__", "flag_bool")
    assert (r.checked, r.failed, r.violations, r.status) == (7, 4, 4, "violated")
    reasons = {s["event_id"]: s["reason"] for s in r.samples}
    assert set(reasons) == {"e2", "e3", "e4", "e6"}
    assert reasons["e2"] == "features.is_new: must be a boolean (true/false, not a string), got string 'true'"
    assert r.samples[0]["values"].keys() == {"features.is_new"}


def test_types_ranges_enums_not_null_against_a_reference_loop():
    rng = random.Random(7)
    pool = [None, True, False, 0, 1, 2.5, -3, 120, 121, "x", "pro", "free", "1", 1.0]
    events = [pred(i, rng.uniform(0, 3 * W), segment={"country": rng.choice(["US", "DE"])},
                   features={"a": rng.choice(pool), "b": rng.choice(pool)}) for i in range(400)]
    items = [
        {"name": "num", "kind": "type", "field": "features.a", "type": "number"},
        {"name": "int", "kind": "type", "field": "features.a", "type": "integer", "allow_null": False},
        {"name": "str", "kind": "type", "field": "features.b", "type": "string"},
        {"name": "rng", "kind": "range", "field": "features.a", "min": 0, "max": 120, "exclusive_max": True},
        {"name": "enum", "kind": "enum", "field": "features.b", "values": ["pro", "free", 1]},
        {"name": "nn", "kind": "not_null", "fields": ["features.a", "features.b"]},
    ]
    ev = evaluator(items)
    for start in range(0, 400, 57):  # uneven batches
        ev.update_many(events[start:start + 57])
    results = ev.close_windows(10 * W)

    def jtype(v):
        return "null" if v is None else "bool" if isinstance(v, bool) else "num" if isinstance(v, (int, float)) else "str"

    checks = {
        "num": lambda f: f["a"] is not None and jtype(f["a"]) != "num",
        "int": lambda f: f["a"] is None or not (jtype(f["a"]) == "num" and float(f["a"]).is_integer()),
        "str": lambda f: f["b"] is not None and jtype(f["b"]) != "str",
        "rng": lambda f: f["a"] is not None and not (jtype(f["a"]) == "num" and 0 <= f["a"] < 120),
        "enum": lambda f: f["b"] is not None and not (f["b"] in ("pro", "free") or (jtype(f["b"]) == "num" and f["b"] == 1)),
        "nn": lambda f: f["a"] is None or f["b"] is None,
    }
    expected = {}
    for e in events:
        key = (int(e["timestamp"] // W) * W, f"country={e['segment']['country']}")
        for name, bad in checks.items():
            c = expected.setdefault((name, *key), [0, 0])
            c[0] += 1
            c[1] += bad(e["features"])
    got = {(r.invariant, r.window_start, r.segment): [r.checked, r.failed] for r in results}
    assert got == expected
    for r in results:
        assert len(r.samples) == min(10, r.failed)


def test_rule_with_where_and_on_missing():
    items = [{"name": "refund", "kind": "rule", "rule": "features.refund <= features.amount",
              "where": "features.refund > 0"},
             {"name": "refund_strict", "kind": "rule", "rule": "features.refund <= features.amount",
              "on_missing": "violate"}]
    ev = evaluator(items)
    ev.update_many([
        pred(1, 1, features={"refund": 5, "amount": 10}),
        pred(2, 2, features={"refund": 50, "amount": 10}),
        pred(3, 3, features={"refund": 0, "amount": 10}),      # filtered out by where
        pred(4, 4, features={"refund": 5}),                     # amount missing
    ])
    res = {r.invariant: r for r in ev.close_windows(W * 2)}
    assert (res["refund"].checked, res["refund"].failed) == (2, 1)  # e3 filtered by where, e4 skipped
    assert (res["refund_strict"].checked, res["refund_strict"].failed) == (4, 2)
    assert {s["event_id"] for s in res["refund_strict"].samples} == {"e2", "e4"}
    assert "null or missing" in [s for s in res["refund_strict"].samples if s["event_id"] == "e4"][0]["reason"]


def test_columnar_envelope_from_the_contract_matches_rows():
    items = [{"name": "flag", "kind": "type", "field": "features.flag", "type": "boolean"},
             {"name": "score", "kind": "range", "field": "output.score", "min": 0.1, "max": 0.9}]
    n = 300
    cols = {"event_id": [f"e{i}" for i in range(n)], "prediction_id": [f"p{i}" for i in range(n)],
            "timestamp": [float(i) for i in range(n)], "model": "m", "version": "v1",
            "features": {"flag": [True if i % 7 else "true" for i in range(n)]},
            "output": {"score": [(i % 100) / 100 for i in range(n)]}}
    raw = orjson.dumps({"type": "batch", "kind": "prediction", "count": n, "columns": cols})
    decoded = decode_message(raw, "prediction")
    assert decoded.count == n and not decoded.rejections
    a, b = evaluator(items), evaluator(items)
    a.update_columns(decoded.columns)
    rows = [pred(i, float(i), features={"flag": cols["features"]["flag"][i]},
                 output={"score": cols["output"]["score"][i]}) for i in range(n)]
    b.update_many(rows)
    ra, rb = a.close_windows(10 * W), b.close_windows(10 * W)
    assert [r.to_dict() for r in ra] == [r.to_dict() for r in rb]
    assert sum(r.failed for r in ra if r.invariant == "flag") == len([i for i in range(n) if i % 7 == 0])


# ----------------------------------------------------------------------------- windows
def test_windows_close_by_watermark_with_lateness_and_late_events_are_counted():
    ev = evaluator([{"name": "nn", "kind": "not_null", "field": "features.a"}], allowed_lateness=30)
    ev.update_many([pred(1, 10), pred(2, 70)])           # windows [0,60) and [60,120)
    assert ev.close_windows() == []                      # watermark 70 < 60 + 30
    ev.update_many([pred(3, 95)])
    (r,) = ev.close_windows()                            # watermark 95 >= 90: the first window closes
    assert (r.window_start, r.window_end, r.checked, r.failed) == (0.0, 60.0, 1, 1)
    ev.update_many([pred(4, 20)])                        # its window is closed: late
    assert ev.counters["late_events"] == 1
    assert ev.open_windows() == [60.0]
    (r,) = ev.close_windows(200)
    assert (r.window_start, r.checked) == (60.0, 2)


def test_segments_passed_by_the_stream_layer_are_used():
    ev = evaluator([{"name": "nn", "kind": "not_null", "field": "features.a"}])
    ev.update_many([pred(1, 1, segment={"country": "US"}), pred(2, 2, segment={"country": "FJ"})],
                   segments=["country=US", "country=__other__"])
    assert sorted(r.segment for r in ev.close_windows(W * 2)) == ["country=US", "country=__other__"]


def test_other_models_events_are_ignored():
    ev = evaluator([{"name": "nn", "kind": "not_null", "field": "features.a"}])
    ev.update_many([pred(1, 1, model="other"), pred(2, 2)])
    (r,) = ev.close_windows(W * 2)
    assert (r.model, r.checked) == ("m", 1)


# ----------------------------------------------------------------------------- agreement
AGREE = {"name": "shadow_agrees", "kind": "agreement", "reference": {"role": "primary"},
         "candidate": {"role": "shadow"}, "min_agreement": 0.9, "min_pairs": 5, "pair_timeout": "30s",
         "max_pending": 1000}


def test_agreement_pairs_by_prediction_id_and_breaches_below_the_share():
    ev = evaluator([AGREE], partitioning="prediction_id")
    events = []
    for i in range(20):
        label_b = "a" if i % 4 else "b"                    # 25 % disagreement in the shadow
        events.append(pred(2 * i, i, version="v1", pid=f"q{i}", output={"label": "a"}))
        events.append(pred(2 * i + 1, i + 0.5, version="v2", role="shadow", pid=f"q{i}", output={"label": label_b}))
    random.Random(3).shuffle(events)                       # order of arrival does not matter
    ev.update_many(events[:17])
    ev.update_many(events[17:])
    (r,) = ev.close_windows(W * 2)
    assert (r.model, r.version, r.invariant) == ("m", "v2", "shadow_agrees")  # the candidate's labels
    assert (r.checked, r.failed, r.unpaired) == (20, 5, 0)
    assert r.value == pytest.approx(0.75) and r.status == "violated" and r.violations == 1
    assert r.samples[0]["reference"]["value"] == "a" and r.samples[0]["candidate"]["value"] == "b"


def test_agreement_normal_disagreement_is_not_a_violation_and_few_pairs_no_verdict():
    ev = evaluator([AGREE])
    ev.update_many([pred(i, i, pid=f"q{i}") for i in range(3)] +
                   [pred(10 + i, i, version="v2", role="shadow", pid=f"q{i}") for i in range(3)])
    (r,) = ev.close_windows(W * 2)
    assert (r.checked, r.status, r.violations) == (3, "insufficient", 0)


def test_agreement_buffer_is_bounded_and_times_out():
    spec = dict(AGREE, max_pending=10)                                 # pair_timeout 30s
    ev = evaluator([spec])
    ev.update_many([pred(i, 1, pid=f"q{i}") for i in range(25)])       # 25 primaries, no shadow yet
    pending = ev._pending[("m", "shadow_agrees")]
    assert len(pending) == 10                                          # 15 pushed out, oldest first
    ev.update_many([pred(100, 20, version="v2", role="shadow", pid="q24")])  # pairs with a kept one
    assert len(pending) == 9
    ev.update_many([pred(101, 45, pid="never-paired")])                # watermark 45: the 9 time out
    assert list(pending) == ["never-paired"]
    ev.update_many([pred(102, 46, version="v2", role="shadow", pid="q0")])  # its primary was pushed out
    ev.update_many([pred(103, 47, version="v2", role="shadow", pid="q0")])   # same side again: a duplicate
    ev.update_many([pred(104, 48, version="v2", role="shadow", pid="q24")])  # paired ids are not remembered
    results = ev.close_windows(W * 3)                                  # the last three time out at close
    assert sum(r.unpaired for r in results) == 15 + 9 + 3
    assert sum(r.checked for r in results) == 1
    assert len(pending) == 0


def test_agreement_numeric_tolerance():
    spec = dict(AGREE, field="output.value", tolerance=0.5, min_pairs=1, min_agreement=0.5)
    ev = evaluator([spec])
    ev.update_many([pred(1, 1, pid="a", output={"value": 1.0}), pred(2, 1, pid="a", role="shadow", output={"value": 1.4}),
                    pred(3, 1, pid="b", output={"value": 1.0}), pred(4, 1, pid="b", role="shadow", output={"value": 2.0})])
    (r,) = ev.close_windows(W * 2)
    assert (r.checked, r.failed, r.status) == (2, 1, "ok")


# ----------------------------------------------------------------------------- stability
def reference_flicker(events, max_flips, within):
    """A direct transcription of the rule: a flip counts if within `within` of the previous prediction."""
    last = {}
    flips = {}
    bad = set()
    for e in sorted(events, key=lambda e: e["timestamp"]):
        u, v, t = e["unit_id"], e["output"]["label"], e["timestamp"]
        if u in last and t - last[u][1] <= within:
            if v != last[u][0]:
                flips.setdefault(u, []).append(t)
                recent = [f for f in flips[u] if f > t - within]
                if len(recent) > max_flips:
                    bad.add(e["event_id"])
        else:
            flips[u] = []
        last[u] = (v, t)
    return bad


def test_stability_flicker_matches_reference():
    rng = random.Random(11)
    events = []
    for i in range(600):
        unit = f"car{rng.randrange(12)}"
        events.append(pred(i, round(rng.uniform(0, 300), 3), unit=unit, output={"label": rng.choice("aab")}))
    spec = {"name": "no_flicker", "kind": "stability", "max_flips": 2, "within": "10s"}
    ev = evaluator([spec])
    ordered = sorted(events, key=lambda e: e["timestamp"])
    for k in range(0, 600, 100):
        ev.update_many(ordered[k:k + 100])
    results = ev.close_windows(1000)
    got = {s["event_id"] for r in results for s in r.samples}
    bad = reference_flicker(events, 2, 10)
    assert sum(r.failed for r in results) == len(bad)
    assert got <= bad
    assert sum(r.checked for r in results) == 600


def test_stability_threshold_on_scores_and_bounded_units():
    spec = {"name": "stable", "kind": "stability", "field": "output.score", "threshold": 0.5,
            "max_flips": 0, "within": 5, "max_units": 3}
    ev = evaluator([spec])
    ev.update_many([pred(1, 1, unit="u", output={"score": 0.6}), pred(2, 2, unit="u", output={"score": 0.7}),
                    pred(3, 3, unit="u", output={"score": 0.4})])    # one flip of the thresholded value
    ev.update_many([pred(10 + i, 4, unit=f"w{i}", output={"score": 0.1}) for i in range(5)])
    assert len(ev._units[("m", "stable")]) == 3
    assert ev.counters["evicted_units"] == 3
    (r,) = ev.close_windows(W * 2)
    assert (r.failed, r.checked) == (1, 8)


# ----------------------------------------------------------------------------- rare and business
def test_rare_bound_counts_windows_not_events():
    ev = evaluator([{"name": "huge_refunds", "kind": "rare", "when": "features.refund > 1000", "max_count": 2}])
    ev.update_many([pred(i, 1 + i, features={"refund": 5000 if i < 3 else 1}) for i in range(10)] +
                   [pred(100 + i, 61 + i, features={"refund": 5000 if i < 2 else 1}) for i in range(10)])
    r0, r1 = ev.close_windows(W * 3)
    assert (r0.value, r0.status, r0.violations) == (3.0, "violated", 1)
    assert (r1.value, r1.status, r1.violations) == (2.0, "ok", 0)
    assert len(r1.samples) == 2  # the matching events are still sampled as evidence


def outcome(i, t, value, metric="revenue", model=None, segment=None):
    e = {"event_id": f"o{i}", "unit_id": f"u{i}", "timestamp": t, "metric": metric, "value": value}
    if model:
        e["model"] = model
    if segment:
        e["segment"] = segment
    return e


def test_business_bounds_upper_lower_and_empty_windows():
    items = [{"name": "revenue_plausible", "kind": "business", "metric": "revenue", "aggregate": "sum",
              "lower": 100, "upper": 10000},
             {"name": "basket_mean", "kind": "business", "metric": "revenue", "aggregate": "mean",
              "upper": 500, "min_count": 3}]
    ev = evaluator(items)
    ev.update_many([outcome(1, 1, 60), outcome(2, 2, 70), outcome(3, 3, 80, model="m"),
                    outcome(4, 4, 1e6, model="other"),       # another model's outcome: ignored
                    outcome(5, 5, 3, metric="clicks")], kind="outcome")
    ev.update_many([outcome(6, 61, 20000)], kind="outcome")   # double billing?
    ev.update_many([outcome(7, 250, 500)], kind="outcome")    # windows 120 and 180 have no revenue at all
    res = ev.close_windows(300)
    sums = {r.window_start: r for r in res if r.invariant == "revenue_plausible"}
    assert sums[0.0].value == 210 and sums[0.0].status == "ok" and sums[0.0].version == "__all__"
    assert sums[60.0].value == 20000 and sums[60.0].status == "violated"
    assert sums[120.0].value == 0 and sums[120.0].status == "violated" and sums[120.0].checked == 0
    assert sums[180.0].status == "violated"
    assert sums[240.0].value == 500 and sums[240.0].status == "ok"
    means = {r.window_start: r for r in res if r.invariant == "basket_mean"}
    assert means[0.0].value == pytest.approx(70) and means[0.0].status == "ok"
    assert means[60.0].status == "insufficient" and means[60.0].value is None
    assert 120.0 not in means  # a mean has no verdict on empty windows


def test_business_bound_on_a_prediction_field():
    ev = evaluator([{"name": "mean_price", "kind": "business", "field": "output.value", "aggregate": "mean",
                     "lower": 10, "upper": 20}])
    ev.update_many([pred(i, i, output={"value": v}) for i, v in enumerate([100, 110, 90])])
    (r,) = ev.close_windows(W * 2)
    assert r.value == pytest.approx(100) and r.status == "violated" and r.version == "v1"


# ----------------------------------------------------------------------------- state
ALL_KINDS = [
    {"name": "flag", "kind": "type", "field": "features.flag", "type": "boolean"},
    {"name": "rule", "kind": "rule", "rule": "features.a <= features.b"},
    dict(AGREE, min_pairs=1),
    {"name": "flicker", "kind": "stability", "max_flips": 1, "within": 30},
    {"name": "rare", "kind": "rare", "when": "features.a > 5", "max_count": 1},
    {"name": "rev", "kind": "business", "metric": "revenue", "lower": 10},
]


def random_stream(seed, n=300):
    rng = random.Random(seed)
    preds, outs = [], []
    for i in range(n):
        t = round(rng.uniform(0, 400), 2)
        shadow = rng.random() < 0.3
        preds.append(pred(i, t, version="v2" if shadow else "v1", role="shadow" if shadow else None,
                          pid=f"q{rng.randrange(n // 2)}", unit=f"u{rng.randrange(8)}",
                          segment={"country": rng.choice(["US", "DE"])},
                          features={"flag": rng.choice([True, "true", None]), "a": rng.randrange(10),
                                    "b": rng.randrange(10)},
                          output={"label": rng.choice("ab")}))
        if rng.random() < 0.2:
            outs.append(outcome(i, t, rng.uniform(0, 20), model="m"))
    return sorted(preds, key=lambda e: e["timestamp"]), sorted(outs, key=lambda e: e["timestamp"])


def feed(ev, preds, outs, lo, hi):
    ev.update_many([e for e in preds if lo <= e["timestamp"] < hi])
    ev.update_many([e for e in outs if lo <= e["timestamp"] < hi], kind="outcome")


def test_restart_mid_stream_gives_the_same_results_and_state_round_trips_exactly():
    preds, outs = random_stream(5)
    spec = parse_invariants("m", ALL_KINDS)
    straight = InvariantEvaluator(spec, window_seconds=W, allowed_lateness=10)
    feed(straight, preds, outs, 0, 1000)
    expected = straight.close_windows(1000)

    first = InvariantEvaluator(spec, window_seconds=W, allowed_lateness=10)
    feed(first, preds, outs, 0, 150)
    early = first.close_windows()
    state = first.to_dict()
    text = json.dumps(state)
    restored = InvariantEvaluator.from_dict(json.loads(text), spec)
    assert restored.to_dict() == state                       # exact round trip through JSON
    assert orjson.loads(orjson.dumps(state)) == state
    feed(restored, preds, outs, 150, 1000)
    later = restored.close_windows(1000)
    assert [r.to_dict() for r in early + later] == [r.to_dict() for r in expected]
    assert {r.invariant for r in expected} == {i["name"] for i in ALL_KINDS}


def test_merge_of_two_workers_equals_one_worker_for_additive_kinds():
    preds, outs = random_stream(9)
    items = [ALL_KINDS[0], ALL_KINDS[1], ALL_KINDS[4], ALL_KINDS[5]]
    spec = parse_invariants("m", items)
    one = InvariantEvaluator(spec, window_seconds=W)
    feed(one, preds, outs, 0, 1000)
    a, b = InvariantEvaluator(spec, window_seconds=W), InvariantEvaluator(spec, window_seconds=W)
    for e in preds:
        (a if e["segment"]["country"] == "US" else b).update_many([e])
    a.update_many(outs[: len(outs) // 2], kind="outcome")
    b.update_many(outs[len(outs) // 2:], kind="outcome")
    merged = a.merge(b)
    got = {(r.window_start, r.segment, r.invariant): (r.checked, r.failed, r.value, r.status)
           for r in merged.close_windows(1000)}
    want = {(r.window_start, r.segment, r.invariant): (r.checked, r.failed, r.value, r.status)
            for r in one.close_windows(1000)}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][:2] == want[k][:2] and got[k][3] == want[k][3]
        assert got[k][2] == pytest.approx(want[k][2])


def test_state_does_not_grow_with_events():
    spec = parse_invariants("m", ALL_KINDS)
    ev = InvariantEvaluator(spec, window_seconds=W)
    sizes = []
    for block in range(6):
        preds, outs = random_stream(block, n=400)
        shift = block * 1000
        for e in preds + outs:
            e["timestamp"] += shift
        feed(ev, preds, outs, shift, shift + 1000)
        ev.close_windows(shift + 1000)
        sizes.append(len(json.dumps(ev.to_dict())))
    assert max(sizes[2:]) < 2 * min(sizes[2:])


# ----------------------------------------------------------------------------- the violation sample
def sample_of(ids, k):
    s = BottomK(k)
    for i in ids:
        s.offer(i, lambda i=i: {"id": i})
    return s


@settings(max_examples=200, deadline=None)
@given(a=st.lists(st.text(min_size=1, max_size=6), max_size=40),
       b=st.lists(st.text(min_size=1, max_size=6), max_size=40), k=st.integers(0, 8))
def test_bottom_k_merge_equals_the_sample_of_the_union_in_any_order(a, b, k):
    whole = sample_of(a + b, k)
    merged = sample_of(a, k).merge(sample_of(b, k))
    other_way = sample_of(b, k).merge(sample_of(a, k))
    assert merged.records() == whole.records() == other_way.records()
    assert {r["id"] for r in whole.records()} <= set(a + b)
    assert len(whole.items) == min(k, len(set(a + b)))
    assert BottomK.from_dict(json.loads(json.dumps(whole.to_dict()))).to_dict() == whole.to_dict()


def test_bottom_k_is_uniform_over_distinct_candidates():
    hits = {}
    for trial in range(300):
        s = sample_of([f"t{trial}-{i}" for i in range(20)], 5)
        for r in s.records():
            pos = int(r["id"].split("-")[1])
            hits[pos] = hits.get(pos, 0) + 1
    # each of 20 positions is kept with probability 5/20: 75 expected of 300 (binomial sd 7.5)
    assert all(40 < hits.get(i, 0) < 110 for i in range(20))


def test_window_result_carries_its_tally_for_downstream_merges():
    """Two partitions' results, rebuilt as tallies and merged, judge like one evaluator fed everything."""
    from prodlens.invariants import Tally, WindowResult
    from prodlens.invariants.evaluator import window_result

    items = [{"name": "big", "kind": "rare", "when": "features.x > 10", "max_count": 12},
             {"name": "x_int", "kind": "type", "field": "features.x", "type": "integer"},
             {"name": "mass", "kind": "business", "field": "features.x", "aggregate": "mean", "upper": 9}]
    events = [pred(i, float(i), features={"x": (i % 17) + (0.5 if i % 5 == 0 else 0)}) for i in range(50)]
    whole, parts = evaluator(items, sample_size=4), [evaluator(items, sample_size=4) for _ in range(2)]
    whole.update_many(events)
    for k, p in enumerate(parts):
        p.update_many(events[k::2])
    expected = {r.invariant: r for r in whole.close_windows(1000)}
    halves = [json.loads(json.dumps([r.to_dict() for r in p.close_windows(1000)])) for p in parts]
    spec = parse_invariants("m", items)
    for name, want in expected.items():
        tallies = [WindowResult.from_dict({**d, "type": "invariant_window", "source": "s", "seq": 1}).tally(4)
                   for half in halves for d in half if d["invariant"] == name]
        merged = Tally(sample=BottomK(4))
        for t in tallies:
            merged.merge(t)
        got = window_result(spec.by_name(name), 0.0, W, "m", "v1", "__all__", merged)
        assert got.to_dict() == {**want.to_dict(), "value": pytest.approx(want.value)}
    assert expected["big"].violations == 1 and all(h_r["violations"] == 0 for h in halves for h_r in h
                                                   if h_r["invariant"] == "big")
    legacy = {k: v for k, v in expected["mass"].to_dict().items() if k not in ("total", "priorities")}
    assert WindowResult.from_dict(legacy).tally().total == pytest.approx(expected["mass"].total)
    with pytest.raises(ValueError, match="missing field.*checked"):
        WindowResult.from_dict({k: v for k, v in legacy.items() if k != "checked"})
