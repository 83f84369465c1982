import json

import fastjsonschema
import numpy as np
import orjson
import pytest

from prodlens.analysis.drift import METRICS, DriftAnalyser, DriftSettings
from prodlens.config import load_config
from prodlens.contract import load_schema
from prodlens.reference import Reference, save_reference
from prodlens.sketches.summary import ALL, SegmentSummary

VALIDATE = fastjsonschema.compile(load_schema("drift.v1.json"))
SEGMENTS = ("country=DE", "country=US")
PLANS = np.array(["basic", "pro", "team"], dtype=object)


def segment_summary(rng, n, shift=0.0, score_shift=0.0):
    seg = SegmentSummary()
    seg.count = n
    seg.update_field("features.x", "numeric", rng.normal(shift, 1.0, n))
    seg.update_field("features.y", "numeric", rng.normal(5.0, 2.0, n))
    seg.update_field("features.plan", "categorical", rng.choice(PLANS, n, p=[0.5, 0.3, 0.2]).tolist())
    seg.update_field("features.unlisted", "numeric", rng.normal(0, 1, n))   # not configured: ignored
    seg.update_field("output.score", "numeric", np.clip(rng.normal(0.3 + score_shift, 0.05, n), 0, 1))
    return seg


def record(seg, start, version="v1", segment="country=US", source="prodlens.predictions:0", seq=0,
           model="churn", length=60.0):
    return {"type": "window_summary", "schema_version": 1, "source": source, "seq": seq, "model": model,
            "version": version, "segment": segment, "window_start": start, "window_end": start + length,
            "summary": {}, "fields": seg.to_dict()}


def config(drift=None, reference=None):
    model = {"output": "binary", "classes": ["stay", "churn"], "features": {"x": "numeric", "y": "numeric",
             "plan": "categorical"}, "segments": ["country"]}
    if reference:
        model["reference"] = str(reference)
    return load_config(data={"models": {"churn": model}, "window": {"length": 60, "allowed_lateness": 0},
                             "drift": drift or {}})


def reference_file(tmp_path, n=4000, seed=1):
    rng = np.random.default_rng(seed)
    ref = Reference(model="churn", segments={s: segment_summary(rng, n) for s in SEGMENTS})
    path = tmp_path / "churn.reference.json"
    save_reference(ref, path)
    return path


def feed(analyser, records, now):
    for r in records:
        analyser.update(r["model"].encode(), json.loads(orjson.dumps(r)), now)


def run_window(analyser, records, now, settle=10.0):
    """Feed a window's partials at ``now`` and tick once they are due; returns the emits."""
    feed(analyser, records, now)
    assert analyser.tick(now) == []   # not settled yet
    return analyser.tick(now + settle)


def drift_flags(emits):
    return {(r["version"], r["segment"], r["field"], r["verdict"]) for _, _, r in emits if r["type"] == "drift"}


def samples(analyser, name):
    for fam in analyser.collect():
        for s in fam.samples:
            if s.name == name:
                yield s.labels, s.value


def check_schema(emits, topic="prodlens.drift"):
    for t, key, rec in emits:
        assert t == topic and key == rec["model"].encode()
        VALIDATE(json.loads(orjson.dumps(rec)))


# -- the brief's scenarios ------------------------------------------------------------------------
def test_shift_in_one_feature_of_one_segment_flags_only_it(tmp_path):
    a = DriftAnalyser(config(reference=reference_file(tmp_path)))
    rng = np.random.default_rng(2)
    first = run_window(a, [record(segment_summary(rng, 3000), 0.0, segment=s, seq=i)
                           for i, s in enumerate(SEGMENTS)], now=100.0)
    assert drift_flags(first) == set()
    second = run_window(a, [record(segment_summary(rng, 3000, shift=0.8 if s == "country=US" else 0.0), 60.0,
                                   segment=s, seq=10 + i) for i, s in enumerate(SEGMENTS)], now=200.0)
    flags = drift_flags(second)
    assert {f for f in flags if f[1] != ALL} == {("v1", "country=US", "features.x", "alert")}
    assert {f[2] for f in flags if f[1] == ALL} <= {"features.x"}   # the merged view may see it too
    check_schema(second)
    event = next(r for _, _, r in second if r["segment"] == "country=US")
    assert event["reference"] == {"kind": "file", "version": None, "path": str(tmp_path / "churn.reference.json"),
                                  "segment": "country=US"}
    assert event["qvalue"] <= 0.01 and event["statistics"]["psi"] >= 0.25
    verdicts = {(l["segment"], l["feature"]): v for l, v in samples(a, "prodlens_drift_verdict")}
    assert verdicts[("country=US", "features.x")] == 2
    assert verdicts[("country=DE", "features.x")] == 0 and verdicts[("country=US", "features.y")] == 0
    assert not any(f == "features.unlisted" for _, f in verdicts)            # only configured features
    assert {f for _, f in verdicts} == {"features.x", "features.y", "features.plan", "output.score"}
    flagged = {l["segment"]: v for l, v in samples(a, "prodlens_drift_flagged")}
    assert flagged["country=US"] == 1 and flagged["country=DE"] == 0
    events = {l["verdict"]: v for l, v in samples(a, "prodlens_drift_events_total")}
    assert events["alert"] == len([f for f in flags if f[3] == "alert"])
    ends = list(samples(a, "prodlens_drift_window_end_timestamp_seconds"))
    assert ends == [({"model": "churn", "version": "v1"}, 120.0)]
    psi = {(l["segment"], l["feature"], l["statistic"]): v for l, v in samples(a, "prodlens_drift")}
    assert psi[("country=US", "features.x", "psi")] >= 0.25 > psi[("country=DE", "features.x", "psi")]
    # the same window evaluated again (a straggling duplicate) announces nothing new
    feed(a, [record(segment_summary(rng, 3000), 60.0, segment="country=DE", seq=11)], 300.0)
    assert drift_flags(a.tick(320.0)) == set()


def test_stationary_windows_false_alarm_rate_is_at_most_alpha(tmp_path):
    alpha = 0.05
    a = DriftAnalyser(config({"alpha": alpha, "min_samples": 50, "detectors": False},
                             reference=reference_file(tmp_path, n=2000)))
    rng = np.random.default_rng(3)
    windows, alarmed, q_rejected = 200, 0, 0
    for w in range(windows):
        emits = run_window(a, [record(segment_summary(rng, 120), 60.0 * w, segment=s, seq=w)
                               for s in SEGMENTS], now=100.0 * w)
        alarmed += bool(drift_flags(emits))
        results = a.latest[("churn", "v1")]["results"]
        assert a.latest[("churn", "v1")]["window_start"] == 60.0 * w
        assert len(results) == 3 * 4 and all(v in ("ok", "warn", "alert") for _, _, v, _ in results)
        q_rejected += any(stats.get("qvalue", 1.0) <= alpha for _, _, _, stats in results)
    assert alarmed / windows <= alpha
    # the BH step alone (without the effect-size gate): a family-wise rate near alpha, 2 standard errors
    assert q_rejected / windows <= alpha + 2 * (alpha * (1 - alpha) / windows) ** 0.5
    assert len(a.store) <= 4   # retention: memory does not grow with the windows seen


def test_two_sources_merge_to_the_same_verdicts_as_one(tmp_path):
    ref = reference_file(tmp_path, n=150)   # window sketches below k=200 values (ALL: 180) are exact, so merges are exact
    cfg = config({"min_samples": 50, "detectors": {"warmup": 2}}, reference=ref)
    one, two = DriftAnalyser(cfg), DriftAnalyser(cfg)
    rng = np.random.default_rng(4)
    for w, shift in enumerate([0.0, 0.0, 1.5, 0.0]):
        start, now = 60.0 * w, 100.0 * w
        single, split = [], []
        for s in SEGMENTS:
            halves = [segment_summary(rng, 45, shift if s == "country=US" else 0.0) for _ in range(2)]
            merged = SegmentSummary().merge(halves[0]).merge(halves[1])
            single.append(record(merged, start, segment=s, seq=w))
            split += [record(h, start, segment=s, seq=w, source=f"prodlens.predictions:{i}")
                      for i, h in enumerate(halves)]
        e1 = run_window(one, single, now)
        feed(two, split[:2], now)
        feed(two, split[:1], now + 1)              # at-least-once: a duplicate replaces itself
        e2 = run_window(two, split[2:], now + 1)
        strip = lambda es: sorted((json.dumps({k: v for k, v in r.items() if k not in ("statistics", "emitted_at")},
                                              sort_keys=True) for _, _, r in es))
        assert strip(e1) == strip(e2)
        for (_, _, r1), (_, _, r2) in zip(sorted(e1, key=lambda e: e[2]["event_id"]),
                                          sorted(e2, key=lambda e: e[2]["event_id"])):
            if r1["type"] == "drift":
                assert r1["statistics"] == pytest.approx(r2["statistics"], rel=1e-9, abs=1e-12)
        if w == 2:
            assert ("v1", "country=US", "features.x", "alert") in drift_flags(e1)
    r1, r2 = one.latest[("churn", "v1")]["results"], two.latest[("churn", "v1")]["results"]
    assert [x[:3] for x in r1] == [x[:3] for x in r2]
    for x, y in zip(r1, r2):
        assert x[3] == pytest.approx(y[3], rel=1e-9, abs=1e-12)
    assert one.partials_total["accepted"] == 4 * 2 and two.partials_total["accepted"] == 4 * (4 + 1)


def test_older_seq_is_ignored_and_unknown_models_are_counted(tmp_path):
    a = DriftAnalyser(config(reference=reference_file(tmp_path, n=500)))
    rng = np.random.default_rng(5)
    feed(a, [record(segment_summary(rng, 200), 0.0, seq=7)], 1.0)
    feed(a, [record(segment_summary(rng, 200, shift=3.0), 0.0, seq=6)], 1.0)   # older: ignored
    feed(a, [record(segment_summary(rng, 200), 0.0, model="other")], 1.0)
    assert drift_flags(a.tick(20.0)) == set()
    assert a.partials_total["stale"] == 1 and a.partials_total["unknown_model"] == 1
    outcomes = {l["outcome"]: v for l, v in samples(a, "prodlens_drift_partials_total")}
    assert outcomes["accepted"] == 1


def test_restore_round_trip_is_exact_and_continues_identically(tmp_path):
    cfg = config({"min_samples": 50, "detectors": {"warmup": 3}, "retention": 120},
                 reference=reference_file(tmp_path, n=150))
    a = DriftAnalyser(cfg)
    rng = np.random.default_rng(6)
    batches = [[record(segment_summary(rng, 80, shift=2.0 * (w >= 5 and s == "country=US"),
                                       score_shift=0.3 * (w >= 6)), 60.0 * w, segment=s, seq=w)
                for s in SEGMENTS] for w in range(9)]
    for w in range(5):
        run_window(a, batches[w], 100.0 * w)
    feed(a, batches[5], 500.0)          # pending: not yet due at the snapshot
    state = json.loads(orjson.dumps(a.to_dict()))
    b = DriftAnalyser(cfg)
    b.restore(state)
    assert json.loads(orjson.dumps(b.to_dict())) == state
    out_a, out_b = [], []
    for x, out in ((a, out_a), (b, out_b)):
        out += x.tick(510.0)
        for w in range(6, 9):
            out += run_window(x, batches[w], 100.0 * w)
    assert len(out_a) > 0 and out_a == out_b
    assert json.loads(orjson.dumps(a.to_dict())) == json.loads(orjson.dumps(b.to_dict()))
    assert [(f.name, f.samples) for f in a.collect()] == [(f.name, f.samples) for f in b.collect()]


def test_champion_version_is_the_reference_of_other_versions():
    a = DriftAnalyser(config({"min_samples": 50, "detectors": False, "models": {"churn": {"reference": {"version": "v1"}}}}))
    rng = np.random.default_rng(7)
    # window 0: the canary's window is due before the champion's arrives -> it waits
    canary0 = [record(segment_summary(rng, 400, shift=1.0), 0.0, version="v2", segment=s, seq=1) for s in SEGMENTS]
    assert run_window(a, canary0, 10.0) == []
    assert ("churn", "v2") not in a.latest and a.partials_total["no_reference"] == 1
    emits = run_window(a, [record(segment_summary(rng, 400), 0.0, version="v1", segment=s, seq=2)
                           for s in SEGMENTS], 30.0)
    flags = drift_flags(emits)
    assert {f for f in flags if f[1] != ALL} == {("v2", s, "features.x", "alert") for s in SEGMENTS}
    check_schema(emits)
    assert all(r["reference"]["kind"] == "version" and r["reference"]["version"] == "v1" for _, _, r in emits)
    assert ("churn", "v1") not in a.latest     # the champion itself has no reference configured
    # window 1: same distribution in both versions -> nothing; the canary's metrics follow it
    emits = run_window(a, [record(segment_summary(rng, 400), 60.0, version=v, segment=s, seq=3)
                           for v in ("v1", "v2") for s in SEGMENTS], 100.0)
    assert drift_flags(emits) == set()
    verdicts = {(l["version"], l["segment"], l["feature"]): v for l, v in samples(a, "prodlens_drift_verdict")}
    assert verdicts[("v2", "country=US", "features.x")] == 0 and not any(k[0] == "v1" for k in verdicts)


def test_frozen_window_range_reference():
    a = DriftAnalyser(config({"min_samples": 50, "detectors": False, "retention": 60,
                              "models": {"churn": {"reference": {"window": {"start": 0, "end": "1970-01-01T00:04:00Z"}}}}}))
    rng = np.random.default_rng(8)
    for w in range(4):   # the range [0, 240): no verdict yet; old ones are folded into the reference
        assert run_window(a, [record(segment_summary(rng, 300), 60.0 * w, segment=s, seq=w) for s in SEGMENTS],
                          100.0 * w) == []
    assert "churn" in a.building and "churn" not in a.frozen
    emits = run_window(a, [record(segment_summary(rng, 300, shift=1.0 if s == "country=US" else 0.0), 240.0,
                                  segment=s, seq=4) for s in SEGMENTS], 400.0)
    ref = a.frozen["churn"]
    assert ref.all.count == 4 * 2 * 300 and ref.source["windows"] == 4
    assert ref.segments["country=US"].fields["features.x"].count == 4 * 300
    assert {f for f in drift_flags(emits) if f[1] != ALL} == {("v1", "country=US", "features.x", "alert")}
    assert all(r["reference"]["kind"] == "window" and r["reference"]["end"] == 240.0 for _, _, r in emits)
    check_schema(emits)
    assert "churn" not in a.building
    emits = run_window(a, [record(segment_summary(rng, 300), 300.0, segment=s, seq=5) for s in SEGMENTS], 500.0)
    assert drift_flags(emits) == set()
    # a replay delivering the range and the next window at once: only the window after the range is judged
    b = DriftAnalyser(a.config)
    rng = np.random.default_rng(8)
    feed(b, [record(segment_summary(rng, 300, shift=1.0 if (w == 4 and s == "country=US") else 0.0), 60.0 * w,
                    segment=s, seq=w) for w in range(5) for s in SEGMENTS], 0.0)
    emits = b.tick(100.0)
    assert {f for f in drift_flags(emits) if f[1] != ALL} == {("v1", "country=US", "features.x", "alert")}
    assert b.partials_total["no_reference"] == 4 and b.frozen["churn"].all.count == 4 * 2 * 300


def test_change_points_become_events_and_metrics(tmp_path):
    a = DriftAnalyser(config({"min_samples": 50, "detectors": {"warmup": 8}}))
    rng = np.random.default_rng(9)
    emits = []
    for w in range(14):
        shift = 0.2 if w >= 11 else 0.0   # the score mean jumps by 0.2 (= 4 sd of a single score, ~40 of the mean)
        emits += run_window(a, [record(segment_summary(rng, 100, score_shift=shift), 60.0 * w, seq=w,
                                       segment="country=US")], 100.0 * w)
    points = [r for _, _, r in emits if r["type"] == "change_point"]
    assert points and {p["series"] for p in points} == {"output.score/mean"}
    first = points[0]
    assert first["window_start"] in (660.0, 720.0) and first["direction"] == "up" and first["field"] == "output.score"
    assert first["magnitude"] == pytest.approx(0.2, abs=0.05)
    check_schema(emits)
    total = {(l["segment"], l["series"], l["detector"]): v for l, v in samples(a, "prodlens_change_points_total")}
    assert sum(total.values()) == sum(len(p["detectors"]) for p in points)
    assert all(k[:2] == ("country=US", "output.score/mean") for k in total)
    assert not any(r["type"] == "drift" for _, _, r in emits)   # no reference: detection only


# -- settings, bad input, metric names ------------------------------------------------------------
@pytest.mark.parametrize("drift, message", [
    ({"models": {"nope": {}}}, "drift.models.nope"),
    ({"models": {"churn": {"reference": {"window": {"start": 10, "end": 5}}}}}, "drift.models.churn.reference.window"),
    ({"models": {"churn": {"reference": {"window": {"start": "yesterday", "end": 5}}}}}, "reference.window.start"),
    ({"models": {"churn": {"reference": {"champion": "v1"}}}}, "drift.models.churn.reference"),
    ({"models": {"churn": {"alpha": 2}}}, "drift.models.churn: drift.alpha"),
    ({"alphaa": 0.1}, "drift: unknown key"),
    ({"settle": "soon"}, "drift.settle"),
    ({"detectors": {"warmup": 1}}, "drift.detectors"),
    ({"detectors": {"wamup": 3}}, "drift.detectors"),
    ({"all_segments": "yes"}, "drift.all_segments"),
])
def test_bad_settings_name_the_field(drift, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        DriftAnalyser(config(drift))


def test_settings_per_model_overrides_merge_with_the_global_ones():
    s = DriftSettings.from_config(config({"alpha": 0.02, "fields": {"x": {"min_samples": 7}},
                                          "models": {"churn": {"fields": {"y": {"enabled": False}}}}}))
    md = s.models["churn"]
    assert md.config.alpha == 0.02 and md.config.resolve("features.x", "numeric").min_samples == 7
    assert md.config.resolve("features.y", "numeric") is None
    assert md.detector_fields == ("features.x", "features.y", "output.score", "output.value")
    assert "output.probabilities.churn" in md.fields and "features.unlisted" not in md.fields
    assert s.retention == 3 * 60 and s.settle == 5.0


def test_missing_reference_file_and_bad_records_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"models\.churn\.reference"):
        DriftAnalyser(config(reference=tmp_path / "missing.json"))
    a = DriftAnalyser(config())
    rec = record(segment_summary(np.random.default_rng(0), 10), 0.0)
    for field, value, message in [("fields", None, "window_summary.fields: missing"),
                                  ("seq", "3", "window_summary.seq: expected int"),
                                  ("window_end", -1.0, "window_summary.window_end"),
                                  ("fields", {"features": {"x": {"type": "weird"}}}, "window_summary.fields")]:
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            a.update(b"churn", {**rec, field: value}, 0.0)
    with pytest.raises(ValueError, match="type"):
        a.update(b"churn", {**rec, "type": "quality_partial"}, 0.0)


def test_metric_names_and_labels_match_METRICS(tmp_path):
    a = DriftAnalyser(config({"min_samples": 50, "detectors": {"warmup": 2, "jump_z": 0.01, "jump_windows": 1}},
                             reference=reference_file(tmp_path, n=500)))
    rng = np.random.default_rng(10)
    for w in range(4):
        run_window(a, [record(segment_summary(rng, 200, shift=2.0 * (w == 3)), 60.0 * w, segment=s, seq=w)
                       for s in SEGMENTS], 100.0 * w)
    seen = {}
    for fam in a.collect():
        for s in fam.samples:
            seen.setdefault(s.name, set(s.labels))
    assert set(seen) == set(METRICS)
    for name, labels in METRICS.items():
        assert seen[name] == set(labels), name
    stats = {l["statistic"] for l, _ in samples(a, "prodlens_drift")}
    assert {"psi", "js", "ks", "wasserstein_norm", "mean_shift", "chi2", "qvalue"} <= stats


def test_a_verdict_cleared_by_a_later_partial_is_announced_as_ok(tmp_path):
    a = DriftAnalyser(config({"detectors": False}, reference=reference_file(tmp_path, n=2000)))
    rng = np.random.default_rng(11)
    emits = run_window(a, [record(segment_summary(rng, 1500, shift=1.0), 0.0, seq=1)], 10.0)
    assert ("v1", "country=US", "features.x", "alert") in drift_flags(emits)
    # the source re-publishes the window (a later seq) without the shift: the alert is retracted once
    emits = run_window(a, [record(segment_summary(rng, 1500), 0.0, seq=2)], 30.0)
    assert drift_flags(emits) == {("v1", "country=US", "features.x", "ok")}
    assert emits[0][2]["previous_verdict"] == "alert"
    check_schema(emits)
    feed(a, [record(segment_summary(rng, 1500), 0.0, seq=3)], 50.0)
    assert a.tick(60.0) == []
    assert {l["verdict"]: v for l, v in samples(a, "prodlens_drift_events_total")} == {"alert": 1}
