import json
import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from prodlens.drift import DriftConfig, FieldConfig, Thresholds, compare, flagged
from prodlens.drift.stats import psi_noise_floor
from prodlens.sketches.summary import ALL, SegmentSummary, SummarySpec, WindowSummary

SPEC = SummarySpec(fields={"features.x": "numeric", "features.y": "numeric", "features.plan": "categorical"})


def window(rng, sizes, shift=None, plan_p=(0.5, 0.3, 0.2), spec=SPEC, model="m", version="v"):
    """sizes: segment -> events; shift: {(segment, feature): mean shift in sd}."""
    shift = shift or {}
    w = WindowSummary(model, version, 0, 60, spec)
    for seg, n in sizes.items():
        feats = {"x": rng.normal(10 + shift.get((seg, "x"), 0) * 2, 2, n),
                 "y": rng.lognormal(0 + shift.get((seg, "y"), 0), 0.5, n),
                 "plan": rng.choice(["a", "b", "c", "d"][: len(plan_p)], n, p=plan_p).tolist()}
        w.update_columns({"features": feats}, [seg] * n)
    return w


def reference(rng, sizes):
    return window(rng, {s: 20 * n for s, n in sizes.items()})


SIZES = {"country=US": 1500, "country=DE": 600, "country=IS": 120}


def test_stationary_window_is_ok_and_shift_alerts_only_there():
    rng = np.random.default_rng(0)
    ref = reference(rng, SIZES)
    results = compare(window(rng, SIZES), ref)
    assert len(results) == 9 and not flagged(results)
    assert all(r.verdict == "ok" for r in results)
    assert all(0 <= r.qvalue <= 1 for r in results)
    shifted = compare(window(rng, SIZES, shift={("country=DE", "x"): 1.0}), ref)
    flags = flagged(shifted)
    assert [(r.segment, r.field, r.verdict) for r in flags] == [("country=DE", "features.x", "alert")]
    r = flags[0]
    assert r.statistics["psi"] > 0.25 and r.statistics["mean_shift"] == pytest.approx(1.0, abs=0.15)
    assert r.statistics["wasserstein_norm"] == pytest.approx(1.0, abs=0.15)
    assert r.test == "ks" and r.qvalue <= 0.01 and r.reference_segment == "country=DE"
    assert any("psi" in reason for reason in r.reasons)
    # the q-values are BH over every (segment, field) with a verdict
    family = [x for x in shifted if not math.isnan(x.pvalue)]
    _, q, _, _ = multipletests([x.pvalue for x in family], method="fdr_bh")
    assert np.allclose([x.qvalue for x in family], q)


def test_categorical_shift_and_new_category():
    rng = np.random.default_rng(1)
    ref = reference(rng, SIZES)
    w = window(rng, SIZES)
    extra = WindowSummary("m", "v", 0, 60, SPEC)
    extra.update_columns({"features": {"plan": ["zzz"] * 400, "x": rng.normal(10, 2, 400),
                                       "y": rng.lognormal(0, 0.5, 400)}}, ["country=US"] * 400)
    w.merge(extra)
    res = {(r.segment, r.field): r for r in compare(w, ref)}
    plan = res[("country=US", "features.plan")]
    assert plan.verdict == "alert" and plan.test == "chi2"
    assert plan.statistics["chi2_pvalue"] < 1e-10 and plan.statistics["psi"] > 0.25
    assert [k for k, r in res.items() if r.flagged] == [("country=US", "features.plan")]


def test_small_samples_get_no_verdict_and_thresholds_grow():
    rng = np.random.default_rng(2)
    ref = reference(rng, SIZES)
    w = window(rng, {"country=IS": 60}, shift={("country=IS", "x"): 3.0})
    res = compare(w, ref)
    assert {r.verdict for r in res} == {"insufficient_data"}
    assert all(math.isnan(r.pvalue) and math.isnan(r.qvalue) for r in res)
    assert res[0].statistics  # statistics are still reported for dashboards
    # at 120 values the PSI thresholds are raised to the noise floor
    res = compare(window(rng, {"country=IS": 120}), ref)
    x = next(r for r in res if r.field == "features.x")
    floor = psi_noise_floor(120 * 2400 / 2520, 10, 0.001)
    assert x.thresholds["psi"] == (pytest.approx(max(0.1, floor)), pytest.approx(max(0.25, floor)))
    assert floor > 0.1


def test_reference_fallback_and_missing_fields():
    rng = np.random.default_rng(3)
    ref_all = window(rng, {ALL: 10_000})
    w = window(rng, {"country=FR": 500}, shift={("country=FR", "y"): 1.0})
    res = compare(w, ref_all)
    assert {r.reference_segment for r in res} == {ALL}
    assert [r.field for r in flagged(res)] == ["features.y"]
    no_fallback = compare(w, ref_all, DriftConfig(fallback_to_all=False))
    assert {r.verdict for r in no_fallback} == {"no_reference"}
    # with fallback, a reference holding one segment (whatever its name) serves every segment
    lone = {"country=US": ref_all.segments[ALL]}
    assert {r.reference_segment for r in compare(w, lone)} == {"country=US"}
    two = {"country=US": ref_all.segments[ALL], "country=DE": ref_all.segments[ALL]}
    assert {r.verdict for r in compare(w, two)} == {"no_reference"}
    # a field the reference never saw
    seg = SegmentSummary(SPEC)
    seg.update_columns({"features": {"x": rng.normal(10, 2, 300).tolist(), "new": rng.normal(size=300).tolist()}})
    res = {r.field: r for r in compare(seg, ref_all)}
    assert res["features.new"].verdict == "no_reference" and res["features.x"].verdict == "ok"


def test_kind_mismatch_is_reported_not_raised():
    rng = np.random.default_rng(4)
    ref = SegmentSummary(SummarySpec(fields={"features.x": "categorical"}))
    ref.update_columns({"features": {"x": rng.choice(["1", "2"], 500).tolist()}})
    cur = SegmentSummary(SummarySpec(fields={"features.x": "numeric"}))
    cur.update_columns({"features": {"x": rng.normal(size=500)}})
    (r,) = compare(cur, ref)
    assert r.verdict == "no_reference" and "categorical" in r.reasons[0]


def test_per_field_config_and_parsing():
    rng = np.random.default_rng(5)
    ref = reference(rng, SIZES)
    w = window(rng, SIZES, shift={("country=US", "x"): 0.45, ("country=US", "y"): 0.5})
    default = {(r.segment, r.field): r for r in compare(w, ref)}
    x = default[("country=US", "features.x")]
    assert x.verdict == "warn" and 0.1 < x.statistics["psi"] < 0.25  # 0.45 sd: warn, not alert
    cfg = DriftConfig.from_dict({
        "alpha": 0.01, "min_samples": 150,
        "fields": {"x": {"thresholds": {"psi": [0.05, 0.1]}},
                   "features.y": {"enabled": False},
                   "plan": {"statistics": ["js"], "top_k": 2}},
    })
    res = {(r.segment, r.field): r for r in compare(w, ref, cfg)}
    assert res[("country=US", "features.x")].verdict == "alert"
    assert not any(f == "features.y" for _, f in res)
    assert res[("country=IS", "features.x")].verdict == "insufficient_data"  # 120 < 150
    assert set(res[("country=US", "features.plan")].thresholds) == {"js"}
    assert cfg.to_dict()["fields"]["x"]["thresholds"]["psi"] == {"warn": 0.05, "alert": 0.1}
    assert DriftConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, message", [
    ({"alpha": 2}, "alpha: must be in"),
    ({"thresholds": {"psi": {"warn": 0.3, "alert": 0.2}}}, "need 0 <= warn <= alert"),
    ({"thresholds": {"foo": [1, 2]}}, "drift.thresholds.foo: unknown statistic"),
    ({"fields": {"x": {"bins": 1}}}, "drift.fields.x.bins"),
    ({"fields": {"x": {"colour": 1}}}, r"drift.fields.x: unknown key\(s\) \['colour'\]"),
    ({"numeric_statistics": ["pvalue"]}, "drift.numeric_statistics: unknown statistic"),
    ({"categorical_statistics": ["ks"]}, "applies to numeric fields only"),
    ({"min_samples": 0}, "drift.min_samples"),
    ({"speed": 1}, r"drift: unknown key"),
])
def test_config_errors_name_the_key(bad, message):
    with pytest.raises(ValueError, match=message):
        DriftConfig.from_dict(bad)


def test_results_serialise_and_compare_versions():
    rng = np.random.default_rng(6)
    primary = window(rng, SIZES, version="v7")
    canary = window(rng, SIZES, shift={("country=US", "y"): 1.0}, version="v8")
    res = compare(canary, primary)  # another live version as the reference
    assert [(r.segment, r.field) for r in flagged(res)] == [("country=US", "features.y")]
    d = res[0].to_dict()
    json.dumps(d, allow_nan=False)
    assert d["model"] == "m" and d["version"] == "v8" and d["window_start"] == 0
    assert FieldConfig(thresholds={"psi": Thresholds(0.1, 0.2)}).enabled
