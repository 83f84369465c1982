"""InvariantAnalyser: partials of several partitions merged exactly, counted once, restart-safe."""

from __future__ import annotations

import json
import logging
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prodlens.analysis.invariants import InvariantAnalyser
from prodlens.config import load_config
from prodlens.invariants import InvariantEvaluator, parse_invariants_section

W = 60.0
INVARIANTS = {"m": [
    {"name": "flag_bool", "kind": "type", "field": "features.flag", "type": "boolean"},
    {"name": "age_range", "kind": "range", "field": "features.age", "min": 0, "max": 120},
    {"name": "few_big", "kind": "rare", "when": "output.score > 0.95", "max_count": 5},
    {"name": "score_mass", "kind": "business", "field": "output.score", "aggregate": "sum", "upper": 60},
    {"name": "shadow_agrees", "kind": "agreement", "reference": {"role": "primary"},
     "candidate": {"role": "shadow"}, "field": "output.label", "min_agreement": 0.9, "min_pairs": 30,
     "pair_timeout": "10s"},
]}


def config(**extra):
    data = {"models": {"m": {"output": "binary", "features": {"flag": "boolean", "age": "numeric"}}},
            "window": {"length": W, "allowed_lateness": 0}, "invariants": INVARIANTS, **extra}
    return load_config(data=data)


def events(n_windows=4, per_window=50, seed=0):
    """Primary + shadow predictions with injected violations of every kind."""
    rng = random.Random(seed)
    out = []
    for w in range(n_windows):
        for i in range(per_window):
            t = w * W + i * (W / per_window)
            pid = f"w{w}p{i}"
            score = rng.random()
            bad = w == 2
            flag = "true" if bad and i % 7 == 0 else bool(i % 2)
            age = 150 if bad and i % 11 == 0 else rng.randint(0, 99)
            label = "yes" if score > 0.5 else "no"
            seg = {"country": rng.choice(["US", "DE"])}
            out.append({"event_id": f"{pid}a", "prediction_id": pid, "timestamp": t, "model": "m", "version": "v1",
                        "role": "primary", "segment": seg, "features": {"flag": flag, "age": age},
                        "output": {"label": label, "score": score}})
            flip = bad and i % 4 == 0
            out.append({"event_id": f"{pid}b", "prediction_id": pid, "timestamp": t + 0.5, "model": "m",
                        "version": "v2", "role": "shadow", "segment": seg, "features": {"flag": True, "age": 5},
                        "output": {"label": ("no" if label == "yes" else "yes") if flip else label,
                                   "score": score}})
    return out


def records_of(results, source, seq):
    return [{"type": "invariant_window", "source": source, "seq": seq, **r.to_dict()} for r in results]


def partitioned_records(evts, partitions=3, watermark=10_000.0):
    """What ingest (per version) and join (per prediction_id) partitions publish for these events."""
    specs = parse_invariants_section(INVARIANTS, ["m"])
    records = []
    for p in range(partitions):
        by_version = InvariantEvaluator(specs, window_seconds=W, partitioning="version")
        by_pid = InvariantEvaluator(specs, window_seconds=W, partitioning="prediction_id")
        mine_v = [e for i, e in enumerate(evts) if i % partitions == p]            # round-robin producers
        mine_p = [e for e in evts if zlib.crc32(e["prediction_id"].encode()) % partitions == p]
        by_version.update_many(mine_v)
        by_pid.update_many(mine_p)
        records += records_of(by_version.close_windows(watermark), f"prodlens.predictions:{p}", 100 + p)
        records += records_of(by_pid.close_windows(watermark), f"prodlens.joins:{p}", 200 + p)
    return records


def reference_results(evts, watermark=10_000.0):
    ev = InvariantEvaluator(parse_invariants_section(INVARIANTS, ["m"]), window_seconds=W)
    ev.update_many(evts)
    return ev.close_windows(watermark)


def feed(analyser, records, now=100.0):
    for r in records:
        analyser.update(b"m", r, now)


def totals_of(results):
    out = {}
    for r in results:
        t = out.setdefault((r.model, r.version, r.segment, r.invariant), [0, 0])
        t[0] += r.checked
        t[1] += r.violations
    return out


def sample_values(families):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


# ----------------------------------------------------------------------------- exact merge
def test_merged_partitions_equal_one_evaluator_fed_everything():
    evts = events(per_window=80)
    ref = reference_results(evts)
    a = InvariantAnalyser(config())
    feed(a, partitioned_records(evts))
    a.tick(200.0)
    assert {k: v[:2] for k, v in a.totals.items()} == totals_of(ref)
    assert {r.invariant for r in ref if r.violations} >= {"flag_bool", "age_range", "shadow_agrees"}
    # the agreement bound is judged on the merged window: each join partition has < min_pairs
    per_partition = partitioned_records(evts)
    assert all(r["status"] == "insufficient" for r in per_partition if r["invariant"] == "shadow_agrees")
    for segment in ("country=US", "country=DE"):
        merged = a.latest[("m", "v2", segment, "shadow_agrees")]
        assert merged["status"] == "ok" and merged["checked"] >= 30      # the last window is fine again


def test_window_level_bound_breached_only_by_the_merged_window():
    cfg = config()
    base = {"type": "invariant_window", "model": "m", "version": "v1", "segment": "__all__",
            "invariant": "few_big", "kind": "rare", "window_start": 0.0, "window_end": 60.0, "errors": 0,
            "unpaired": 0, "violations": 0, "status": "ok", "bound": {"max_count": 5}, "samples": []}
    a = InvariantAnalyser(cfg, settle=1.0)
    a.update(b"m", {**base, "source": "s:0", "seq": 1, "checked": 50, "failed": 3, "value": 3.0}, 10.0)
    a.update(b"m", {**base, "source": "s:1", "seq": 1, "checked": 40, "failed": 3, "value": 3.0}, 10.0)
    assert a.tick(10.5) == [] and a.totals == {}                 # not settled yet
    a.tick(11.0)
    assert a.totals[("m", "v1", "__all__", "few_big")][:2] == [90, 1]
    fams = sample_values(a.collect())
    labels = (("invariant", "few_big"), ("model", "m"), ("segment", "__all__"), ("version", "v1"))
    assert fams[("prodlens_invariant_violations_total", labels)] == 1
    assert fams[("prodlens_invariant_checked_total", labels)] == 90
    assert fams[("prodlens_invariant_violation_ratio", labels)] == pytest.approx(6 / 90)
    assert fams[("prodlens_invariant_violation_ratio_n", labels)] == 90
    assert fams[("prodlens_invariant_value", labels)] == 6.0


# ----------------------------------------------------------------------------- counted once
def test_redelivered_and_updated_partials_are_not_double_counted():
    evts = events()
    records = partitioned_records(evts)
    expected = totals_of(reference_results(evts))
    a = InvariantAnalyser(config())
    feed(a, records, now=100.0)
    a.tick(103.0)
    feed(a, records, now=104.0)                                    # at-least-once: the same partials again
    feed(a, [{**r, "seq": r["seq"] + 50} for r in records], now=105.0)   # re-emitted after a producer restart
    a.tick(110.0)
    assert {k: v[:2] for k, v in a.totals.items()} == expected
    assert a.counters["redelivered"] == len(records)


def test_a_straggling_partial_adds_only_its_own_counts():
    base = {"type": "invariant_window", "model": "m", "version": "v1", "segment": "__all__",
            "invariant": "age_range", "kind": "range", "window_start": 0.0, "window_end": 60.0, "errors": 0,
            "unpaired": 0, "status": "violated", "value": 0.1, "bound": {}, "samples": []}
    a = InvariantAnalyser(config(), settle=1.0)
    a.update(b"m", {**base, "source": "s:0", "seq": 5, "checked": 10, "failed": 1, "violations": 1}, 0.0)
    a.tick(2.0)
    a.update(b"m", {**base, "source": "s:1", "seq": 9, "checked": 30, "failed": 2, "violations": 2}, 3.0)
    a.tick(5.0)
    # s:0 publishes an updated (cumulative) partial of the same window
    a.update(b"m", {**base, "source": "s:0", "seq": 7, "checked": 12, "failed": 2, "violations": 2}, 6.0)
    a.update(b"m", {**base, "source": "s:0", "seq": 6, "checked": 99, "failed": 99, "violations": 99}, 6.0)  # older
    a.tick(8.0)
    assert a.totals[("m", "v1", "__all__", "age_range")][:2] == [42, 4]
    assert a.counters["stale"] == 1


def test_redelivery_after_the_window_was_evicted_is_recognised():
    base = {"type": "invariant_window", "model": "m", "version": "v1", "segment": "__all__",
            "invariant": "age_range", "kind": "range", "errors": 0, "unpaired": 0, "status": "violated",
            "value": 0.1, "bound": {}, "samples": [], "checked": 10, "failed": 1, "violations": 1}
    a = InvariantAnalyser(config(), settle=0.0, retention=120.0)
    first = {**base, "source": "s:0", "seq": 1, "window_start": 0.0, "window_end": 60.0}
    a.update(b"m", first, 0.0)
    a.tick(1.0)
    for w in range(1, 6):                                            # newer windows push it out
        a.update(b"m", {**base, "source": "s:0", "seq": 1 + w, "window_start": w * W,
                        "window_end": (w + 1) * W}, 1.0 + w)
        a.tick(1.5 + w)
    assert (("m", "age_range", "v1", "__all__", 0.0)) not in a.store.partials
    a.update(b"m", first, 20.0)                                      # the old partial again
    a.tick(21.0)
    assert a.totals[("m", "v1", "__all__", "age_range")][:2] == [60, 6]
    assert a.counters["redelivered"] == 1
    # a lagging source's first partial of the evicted window still counts (per-event counts add)
    a.update(b"m", {**first, "source": "s:1"}, 22.0)
    a.tick(22.0)
    assert a.totals[("m", "v1", "__all__", "age_range")][:2] == [70, 7]
    assert len(a.store) <= 4                                          # bounded by retention, not by windows


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 40), st.integers(0, 40)),
                min_size=1, max_size=25),
       st.randoms(use_true_random=False), st.integers(0, 3))
def test_property_any_order_and_duplication_counts_each_window_once(parts, rnd, extra_copies):
    """Per-event counts: totals equal the sum over (window, source) whatever the delivery order."""
    latest = {}
    for w, src, checked, failed in parts:                            # a source's last word per window
        latest[(w, src)] = (checked, min(failed, checked))
    deliveries = []
    for (w, src), (checked, failed) in latest.items():
        rec = {"type": "invariant_window", "source": f"s:{src}", "seq": 10 * w, "model": "m", "version": "v1",
               "segment": "__all__", "invariant": "flag_bool", "kind": "type", "window_start": w * W,
               "window_end": (w + 1) * W, "checked": checked, "failed": failed, "errors": 0, "unpaired": 0,
               "violations": failed, "status": "violated" if failed else "ok", "value": None, "bound": {},
               "samples": []}
        deliveries += [rec] * (1 + rnd.randint(0, extra_copies))
    rnd.shuffle(deliveries)
    a = InvariantAnalyser(config(), settle=0.5)
    now = 0.0
    for rec in deliveries:
        a.update(b"m", rec, now)
        now += rnd.choice([0.1, 1.0])
        a.tick(now)
        if rnd.random() < 0.3:                                       # restart from a snapshot
            state = json.loads(json.dumps(a.to_dict()))
            a = InvariantAnalyser(config(), settle=0.5)
            a.restore(state)
    a.tick(now + 10)
    want = [sum(c for c, _ in latest.values()), sum(f for _, f in latest.values())]
    assert a.totals.get(("m", "v1", "__all__", "flag_bool"), [0, 0])[:2] == want


# ----------------------------------------------------------------------------- samples
def test_violating_events_are_emitted_once_to_the_samples_topic():
    evts = events()
    a = InvariantAnalyser(config(), sample_size=10)
    records = partitioned_records(evts)
    feed(a, records)
    emits = a.tick(200.0)
    assert emits and all(topic == "prodlens.samples" and key == b"m" for topic, key, _ in emits)
    by_key = {}
    for _, _, rec in emits:
        assert rec["type"] == "invariant_violation"
        by_key.setdefault((rec["invariant"], rec["version"], rec["segment"], rec["window_start"]), []).append(rec)
    assert max(len(v) for v in by_key.values()) <= 10
    flag = [r for r in emits if r[2]["invariant"] == "flag_bool"]
    assert flag and all("features.flag" in r[2]["event"]["reason"] for r in flag)
    assert all(r[2]["event"]["values"]["features.flag"] == "true" for r in flag)
    # the same partials again, and a re-evaluation: nothing new
    feed(a, [{**r, "seq": r["seq"] + 1} for r in records], now=300.0)
    assert a.tick(400.0) == []
    assert len(a.recent_violations("m")) == min(len(emits), a.max_recent)


def test_samples_merge_exactly_across_partitions():
    evts = events(n_windows=3, per_window=200)
    ref = [r for r in reference_results(evts) if r.invariant == "flag_bool" and r.violations]
    a = InvariantAnalyser(config(), sample_size=10)
    feed(a, partitioned_records(evts))
    emits = a.tick(200.0)
    got = {}
    for _, _, rec in emits:
        if rec["invariant"] == "flag_bool":
            got.setdefault((rec["segment"], rec["window_start"]), set()).add(rec["event"]["event_id"])
    assert got == {(r.segment, r.window_start): {s["event_id"] for s in r.samples} for r in ref}


# ----------------------------------------------------------------------------- metrics, state
def test_ratio_is_of_the_latest_window_and_absent_without_verdict():
    base = {"type": "invariant_window", "model": "m", "version": "v2", "segment": "__all__",
            "invariant": "shadow_agrees", "kind": "agreement", "errors": 0, "unpaired": 0, "bound": {},
            "samples": [], "source": "prodlens.joins:0"}
    a = InvariantAnalyser(config(), settle=0.0)
    a.update(b"m", {**base, "seq": 1, "window_start": 60.0, "window_end": 120.0, "checked": 100, "failed": 20,
                    "violations": 1, "status": "violated", "value": 0.8}, 0.0)
    a.update(b"m", {**base, "seq": 2, "window_start": 0.0, "window_end": 60.0, "checked": 100, "failed": 0,
                    "violations": 0, "status": "ok", "value": 1.0}, 0.0)           # an older window, later
    a.tick(1.0)
    labels = (("invariant", "shadow_agrees"), ("model", "m"), ("segment", "__all__"), ("version", "v2"))
    fams = sample_values(a.collect())
    assert fams[("prodlens_invariant_violation_ratio", labels)] == pytest.approx(0.2)
    assert fams[("prodlens_invariant_value", labels)] == pytest.approx(0.8)
    a.update(b"m", {**base, "seq": 3, "window_start": 120.0, "window_end": 180.0, "checked": 10, "failed": 0,
                    "violations": 0, "status": "insufficient", "value": 1.0}, 2.0)
    a.tick(3.0)
    fams = sample_values(a.collect())
    assert ("prodlens_invariant_violation_ratio", labels) not in fams          # 10 pairs < min_pairs 30
    assert fams[("prodlens_invariant_violations_total", labels)] == 1
    assert fams[("prodlens_invariant_checked_total", labels)] == 210


def test_snapshot_round_trip_and_counters_survive_a_restart():
    evts = events()
    records = partitioned_records(evts)
    straight = InvariantAnalyser(config())
    feed(straight, records)
    straight.tick(200.0)
    half = len(records) // 2
    a = InvariantAnalyser(config())
    feed(a, records[:half])
    a.tick(103.0)
    state = json.loads(json.dumps(a.to_dict()))
    b = InvariantAnalyser(config())
    b.restore(state)
    assert b.to_dict() == state                                       # exact round trip
    feed(b, records[:half], now=150.0)                                # replay after the restart
    feed(b, records[half:], now=150.0)
    b.tick(200.0)
    assert b.totals == {k: [v[0], v[1], b.totals[k][2]] for k, v in straight.totals.items()}
    def metrics(a):
        return {k: v for k, v in sample_values(a.collect()).items() if "partials" not in k[0]}
    assert metrics(b) == metrics(straight)
    assert b.counters["redelivered"] == half


def test_bad_records_are_counted_and_name_the_field(caplog):
    a = InvariantAnalyser(config())
    good = partitioned_records(events(n_windows=1))[0]
    with caplog.at_level(logging.WARNING, logger="prodlens.analysis.invariants"):
        a.update(b"m", {k: v for k, v in good.items() if k != "checked"}, 0.0)
        a.update(b"m", {**good, "seq": "7"}, 0.0)
        a.update(b"m", {**good, "window_end": good["window_start"]}, 0.0)
    assert a.counters["rejected"] == 3 and len(a.store) == 0
    text = caplog.text
    assert "invariant_window.checked: missing" in text
    assert "invariant_window.seq: must be an integer" in text
    assert "invariant_window.window_end: must be after window_start" in text


def test_no_invariants_configured_still_merges_records_by_kind():
    cfg = load_config(data={"models": {"m": {"output": "binary"}}})
    a = InvariantAnalyser(cfg, settle=0.0)
    for r in partitioned_records(events(n_windows=3)):
        a.update(b"m", r, 0.0)
    a.tick(1.0)
    ref = totals_of(reference_results(events(n_windows=3)))
    per_event = {k: v for k, v in ref.items() if k[3] in ("flag_bool", "age_range")}
    assert {k: v[:2] for k, v in a.totals.items() if k[3] in ("flag_bool", "age_range")} == per_event
