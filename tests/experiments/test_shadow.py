"""Shadow comparison: pairing in any order, injected disagreement, labels, buffers, state."""

import json

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from prodlens.experiments.shadow import (
    ShadowMonitor, ShadowStats, extract_output, normalize_class, shadow_key)


def _feed_classification(monitor, n, disagree, seed, labels=False, key_fn=lambda i: "churn"):
    """Primary and shadow outputs for n predictions; the shadow differs on a `disagree` share.
    Arrival order is random (shadow first about half the time)."""
    rng = np.random.default_rng(seed)
    classes = ["stay", "leave", "maybe"]
    truth = {}
    for i in range(n):
        pid = f"p{i}"
        p_cls = classes[rng.integers(3)]
        s_cls = classes[(classes.index(p_cls) + 1) % 3] if rng.random() < disagree else p_cls
        events = [("primary", {"label": p_cls}, float(rng.exponential(10))),
                  ("shadow", {"label": s_cls}, float(rng.exponential(14)))]
        if rng.random() < 0.5:
            events.reverse()
        for side, out, lat in events:
            add = monitor.add_primary if side == "primary" else monitor.add_shadow
            add(pid, key_fn(i), out, float(i), latency_ms=lat)
        if labels:
            label = p_cls if rng.random() < 0.9 else classes[rng.integers(3)]
            truth[pid] = (p_cls, s_cls, label)
    return truth


def test_injected_5_percent_disagreement_is_reported_within_ci():
    m = ShadowMonitor("classification")
    _feed_classification(m, 20_000, 0.05, seed=1)
    r = m.results()["churn"]
    assert r.pairs == 20_000 and m.pending == 0
    d = r.disagreement
    assert d.ci_low <= 0.05 <= d.ci_high
    assert abs(d.value - 0.05) < 0.006 and d.ci_high - d.ci_low < 0.007
    # latency quantiles per side, within the sketch's 1 % relative error of exponential quantiles
    assert r.latency["primary"]["p50"] == pytest.approx(10 * np.log(2), rel=0.06)
    assert r.latency["shadow"]["p95"] == pytest.approx(14 * np.log(20), rel=0.06)
    assert r.latency["p95_ratio"] == pytest.approx(1.4, rel=0.08)


def test_no_injection_reports_zero_and_segments_are_separate():
    m = ShadowMonitor("classification")
    _feed_classification(m, 4000, 0.0, seed=2, key_fn=lambda i: shadow_key("churn", {"country": "US" if i % 2 else "DE"}))
    res = m.results()
    assert set(res) == {"churn|country=US", "churn|country=DE"}
    assert all(r.disagreement.value == 0 and r.pairs == 2000 for r in res.values())
    assert m.overall().pairs == 4000


def test_accuracy_once_labels_arrive():
    m = ShadowMonitor("classification", label_horizon_s=1e6)
    truth = _feed_classification(m, 5000, 0.08, seed=3, labels=True)
    ids = list(truth)
    for pid in ids[:4000]:  # 1000 labels never arrive
        m.add_label(pid, truth[pid][2])
    r = m.results()["churn"]
    assert r.labelled == 4000
    p_ok = sum(truth[p][0] == truth[p][2] for p in ids[:4000])
    s_ok = sum(truth[p][1] == truth[p][2] for p in ids[:4000])
    assert r.accuracy_primary.value == p_ok / 4000 and r.accuracy_shadow.value == s_ok / 4000
    b = sum(truth[p][1] == truth[p][2] != truth[p][0] for p in ids[:4000])
    c = sum(truth[p][0] == truth[p][2] != truth[p][1] for p in ids[:4000])
    assert r.accuracy_diff.value == pytest.approx((s_ok - p_ok) / 4000)
    assert r.accuracy_diff.p_value == pytest.approx(mcnemar([[0, c], [b, 0]], exact=True).pvalue, rel=1e-9)
    assert m.pending == 1000
    m.expire(now=2e6)
    assert m.pending == 0 and m.counters["expired_awaiting_label"] == 1000
    assert not m.add_label("p0", "stay") and m.counters["labels_without_pair"] == 1


def test_label_before_pair_completes():
    m = ShadowMonitor("classification", label_horizon_s=100)
    m.add_primary("x", "k", {"score": 0.9}, 0.0)
    m.add_label("x", True)
    m.add_shadow("x", "k", {"probabilities": {"0": 0.3, "1": 0.7}}, 1.0)
    r = m.results()["k"]
    assert (r.pairs, r.labelled, r.disagreement.value, r.accuracy_shadow.value) == (1, 1, 0.0, 1.0)


def test_regression_difference_distribution():
    rng = np.random.default_rng(4)
    m = ShadowMonitor("regression", label_horizon_s=1e6)
    diffs = []
    for i in range(6000):
        y = float(rng.normal(100, 10))
        p = y + float(rng.normal(0, 2))
        s = p + 0.5 + float(rng.normal(0, 1))
        diffs.append(s - p)
        m.add_shadow(f"p{i}", "price", {"value": s}, float(i))
        m.add_primary(f"p{i}", "price", {"value": p}, float(i))
        m.add_label(f"p{i}", y)
    r = m.results()["price"]
    assert r.diff.ci_low <= 0.5 <= r.diff.ci_high and r.diff.value == pytest.approx(np.mean(diffs))
    for q in ("p50", "p99"):
        ref = np.quantile(np.abs(diffs), int(q[1:]) / 100, method="lower")
        assert r.abs_diff[q] == pytest.approx(ref, rel=0.03)
    assert r.mae_primary.value < r.mae_shadow.value and r.mae_diff.p_value < 1e-6
    assert r.rmse_primary == pytest.approx(2.0, rel=0.05)


def test_buffers_expire_evict_and_dedupe():
    m = ShadowMonitor("classification", pair_horizon_s=10, max_pending=5)
    for i in range(8):
        m.add_primary(f"p{i}", "k", {"label": 1}, float(i))
    assert m.counters["evicted_unpaired"] == 3 and m.pending == 5
    m.add_primary("p7", "k", {"label": 1}, 8.0)
    assert m.counters["duplicates"] == 1
    m.add_shadow("p7", "k", {"label": 0}, 9.0)
    assert m.stats["k"].disagreements == 1
    assert m.expire(now=16.0) == 3  # p3, p4, p5 arrived more than 10 s before
    assert m.counters["expired_unpaired"] == 3 and m.pending == 1
    m.add_shadow("p9", "k", {}, 1.0, latency_ms=5.0)  # nothing usable, but the latency counts
    assert m.counters["unusable_outputs"] == 1 and m.stats["k"].result().latency["shadow"]["n"] == 1


def test_merge_and_round_trip():
    whole = ShadowMonitor("classification", label_horizon_s=1e6)
    halves = [ShadowMonitor("classification", label_horizon_s=1e6) for _ in range(2)]
    truth = _feed_classification(whole, 3000, 0.1, seed=5, labels=True)
    # the same pairs split across two workers by prediction id; one is checkpointed and restored
    for i, (pid, (p_cls, s_cls, label)) in enumerate(truth.items()):
        half = halves[i % 2]
        half.add_primary(pid, "churn", {"label": p_cls}, float(i))
        half.add_shadow(pid, "churn", {"label": s_cls}, float(i))
        half.add_label(pid, label)
        whole.add_label(pid, label)
    halves[1] = ShadowMonitor.from_dict(json.loads(json.dumps(halves[1].to_dict())))
    merged = ShadowStats("classification").merge(halves[0].stats["churn"]).merge(halves[1].stats["churn"])
    w = whole.stats["churn"]
    assert (merged.pairs, merged.disagreements, merged.labelled, merged.correct_primary, merged.correct_shadow) == \
        (w.pairs, w.disagreements, w.labelled, w.correct_primary, w.correct_shadow)
    restored = ShadowMonitor.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert restored.to_dict() == whole.to_dict()
    with pytest.raises(ValueError, match="same task"):
        ShadowStats("regression").merge(ShadowStats("classification"))


def test_output_helpers():
    assert extract_output({"label": True}, "classification") == "1"
    assert extract_output({"probabilities": {"a": 0.2, "b": 0.8}}, "classification") == "b"
    assert extract_output({"score": 0.3}, "classification") == "0"
    assert extract_output({"value": 3}, "regression") == 3.0
    assert extract_output({}, "regression") is None
    assert normalize_class(1.0) == normalize_class("1") == normalize_class(True) == "1"
    assert shadow_key("m", {"b": 1, "a": "x"}) == "m|a=x,b=1" and shadow_key("m") == "m"
    with pytest.raises(ValueError, match="task"):
        ShadowMonitor("ranking")
