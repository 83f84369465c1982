"""The simulator's scenarios: its truth (Tally) against the messages it produced, decoded with the
contract's Decoder; exact injected shares; calibration; concept drift and recovery; canary routing;
GrowthBook assignment and lifts; invariant violations; stationary windows; determinism."""

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve

from prodlens.config import load_config
from prodlens.contract import Decoder, row_of
from prodlens.experiments.assignment import Assigner, Experiment, canary_experiment
from prodlens.simulate import (BoolAsString, CanarySpec, ExperimentSpec, FeedbackSpec, Flicker, Scenario,
                               ScenarioError, ShadowSpec, SimulatedApp, Tally, generate)

T0 = 1_800_000_000.0   # window-aligned for 60 s

CONFIG = load_config(data={"models": {
    "churn": {"output": "binary", "classes": ["stay", "churn"], "positive_class": "churn",
              "features": {"tenure": "numeric", "spend": "numeric", "plan": "categorical", "autopay": "boolean"},
              "segments": {"country": {"top_k": 5}, "device": {"values": ["ios", "android", "web"]}}},
    "churn2": {"output": "binary", "classes": ["stay", "churn"], "positive_class": "churn",
               "features": {"tenure": "numeric"}},
    "intent": {"output": "multiclass", "classes": ["billing", "tech", "sales", "other"],
               "features": {"length": "numeric", "has_attachment": "boolean"}, "segments": {"locale": {"top_k": 4}}},
    "eta": {"output": "regression", "features": {"distance_km": "numeric", "traffic": "categorical"},
            "segments": {"city": {"top_k": 5}}},
}})


def decode_all(records):
    """Every event in the messages, as rows, by kind; fails on any rejection."""
    decoder = Decoder(CONFIG.models)
    out = defaultdict(list)
    for kind, key, value in records:
        decoded = decoder.decode(value, kind)
        assert not decoded.rejections, decoded.rejections[0]
        if decoded.single is not None:
            out[kind].append((key, decoded.single))
        else:
            out[kind] += [(key, row_of(decoded.columns, i)) for i in range(decoded.count)]
    return out


def seg_key(row):
    return tuple(sorted((row.get("segment") or {}).items()))


FULL = Scenario(
    batch=25, outcome_share=0.02,
    feedback={"churn": FeedbackSpec(kinds=("label", "correction", "complaint", "rating", "implicit")),
              "eta": FeedbackSpec(kinds=("label", "correction", "rating"), label_share=0.2)},
    shadows=[ShadowSpec("churn", primary="v1", shadow="v3", disagreement=0.05),
             ShadowSpec("eta", primary="v1", shadow="v9", disagreement=0.1, tolerance=0.5)],
    canaries={"intent": CanarySpec(baseline="v1", canary="v2", share=0.2, accuracy=0.6)},
    experiments=[ExperimentSpec("checkout", "churn", lift={"treatment": 0.3}, versions={"treatment": "v4"})],
    violations=[BoolAsString("churn", "autopay", share=0.02), Flicker("intent", "v1", every=60, flips=3, within=5)],
    degrade={"model": "churn", "version": "v1", "segment": {"device": "ios"}, "accuracy": 0.5,
             "after": T0 + 300, "recover_after": T0 + 600},
)


@pytest.fixture(scope="module")
def full():
    records, tally = generate(CONFIG, 8000, start=T0, rate=10, scenario=FULL, seed=11)
    return records, tally, decode_all(records)


def test_every_message_validates_and_is_keyed_as_documented(full):
    records, tally, events = full
    assert {k for k, _, _ in records} == {"prediction", "feedback", "outcome"}
    for key, row in events["prediction"]:
        assert key == f"{row['model']}/{row['version']}".encode()
    for key, row in events["feedback"]:
        assert key == row["prediction_id"].encode()
    for key, row in events["outcome"]:
        assert key == row["unit_id"].encode()
    decoder = Decoder(CONFIG.models)
    last = []   # event time of each message (its newest event): records are in event-time order
    for kind, _, value in records:
        d = decoder.decode(value, kind)
        last.append(d.single["timestamp"] if d.single is not None else max(d.columns["timestamp"]))
    assert last == sorted(last)


def test_tally_counts_match_the_messages(full):
    records, tally, events = full
    preds = Counter((r["model"], r["version"], seg_key(r)) for _, r in events["prediction"])
    assert preds == Counter(tally.predictions)
    assert len(events["feedback"]) == tally.feedback and len(events["outcome"]) == tally.outcomes
    assert Counter(k for k, _, _ in records) == Counter(tally.messages)

    by_id = defaultdict(list)
    for _, r in events["prediction"]:
        by_id[r["prediction_id"]].append(r)
    fb = Counter()
    for _, f in events["feedback"]:
        for p in by_id[f["prediction_id"]]:
            fb[(p["model"], p["version"], seg_key(p), f["kind"])] += 1
    assert fb == Counter(tally.feedback_by)
    assert {k[3] for k in fb} == {"label", "correction", "complaint", "rating", "implicit"}


def test_labelled_truth_matches_the_label_messages(full):
    """Tally.quality's labelled counts are what a join of the sent messages finds (first truth wins)."""
    _, tally, events = full
    by_id = defaultdict(list)
    for _, r in events["prediction"]:
        by_id[r["prediction_id"]].append(r)
    seen, labelled, right, abs_err = set(), Counter(), Counter(), defaultdict(float)
    for _, f in events["feedback"]:
        if f["kind"] not in ("label", "correction") or f["prediction_id"] in seen:
            continue
        seen.add(f["prediction_id"])
        for p in by_id[f["prediction_id"]]:
            key = (p["model"], p["version"], seg_key(p), math.floor(p["timestamp"] / 60) * 60)
            labelled[key] += 1
            if "value" in p["output"]:   # regression: "right" = within FeedbackSpec.tolerance (2.0)
                abs_err[key] += abs(f["value"] - p["output"]["value"])
                right[key] += abs(f["value"] - p["output"]["value"]) <= 2.0
            else:
                right[key] += p["output"]["label"] == f["value"]
    assert labelled == Counter({k: q.labelled for k, q in tally.quality.items() if q.labelled})
    assert right == Counter({k: q.labelled_correct for k, q in tally.quality.items() if q.labelled_correct})
    for k, q in tally.quality.items():
        assert abs_err.get(k, 0.0) == pytest.approx(q.abs_error, abs=1e-6)


def test_shadow_disagreement_share_is_exact(full):
    _, tally, events = full
    for model, shadow, share, tol in (("churn", "v3", 0.05, 0.0), ("eta", "v9", 0.1, 0.5)):
        pairs = defaultdict(dict)
        for _, r in events["prediction"]:
            if r["model"] == model and r["version"] in ("v1", shadow):
                pairs[r["prediction_id"]][r["role"]] = r
        both = [p for p in pairs.values() if len(p) == 2]
        assert all(p["shadow"]["version"] == shadow for p in both)
        if model == "eta":
            disagree = sum(abs(p["primary"]["output"]["value"] - p["shadow"]["output"]["value"]) > tol
                           for p in both)
        else:
            disagree = sum(p["primary"]["output"]["label"] != p["shadow"]["output"]["label"] for p in both)
            assert all((p["shadow"]["output"]["score"] >= 0.5) == (p["shadow"]["output"]["label"] == "churn")
                       for p in both)
        assert len(both) > 500
        assert disagree == math.floor(len(both) * share)
        assert tally.shadow_pairs(model) == (len(both), disagree)


def test_feedback_kinds_follow_correctness(full):
    _, tally, events = full
    preds = {r["prediction_id"]: r for _, r in events["prediction"] if r["role"] != "shadow"}
    truth = {f["prediction_id"]: f["value"] for _, f in events["feedback"] if f["kind"] == "label"}
    ratings = {True: [], False: []}
    for _, f in events["feedback"]:
        p = preds[f["prediction_id"]]
        if p["model"] != "churn":
            if f["kind"] == "correction":   # regression corrections: size = |prediction|, corrected = |error|
                assert f["size"] == pytest.approx(abs(p["output"]["value"]), abs=1e-3)
                assert f["corrected"] == pytest.approx(abs(f["value"] - p["output"]["value"]), abs=2e-3)
            continue
        if f["kind"] == "correction":
            assert f["value"] != p["output"]["label"]
        if f["kind"] == "complaint" and f["prediction_id"] in truth:
            assert truth[f["prediction_id"]] != p["output"]["label"]
        if f["kind"] == "rating" and f["prediction_id"] in truth:
            ratings[p["output"]["label"] == truth[f["prediction_id"]]].append(f["value"])
    assert np.mean(ratings[True]) > 3.8 and np.mean(ratings[False]) < 2.8


def test_complaints_only_for_wrong_predictions_and_delays_are_lognormal():
    spec = FeedbackSpec(kinds=("label", "complaint", "implicit"), label_share=1.0, delay_median=1800.0,
                        delay_sigma=1.2, complaint_prob=0.5)
    sc = Scenario(models=("churn",), batch=50, outcome_share=0, feedback={"churn": spec})
    records, tally = generate(CONFIG, 8000, start=T0, rate=50, scenario=sc, seed=3)
    ev = decode_all(records)
    preds = {r["prediction_id"]: r for _, r in ev["prediction"]}
    label = {f["prediction_id"]: f for _, f in ev["feedback"] if f["kind"] == "label"}
    assert len(label) == len(preds)                     # label_share 1: every prediction labelled once
    wrong = {i for i, f in label.items() if f["value"] != preds[i]["output"]["label"]}
    complaints = [f["prediction_id"] for _, f in ev["feedback"] if f["kind"] == "complaint"]
    assert set(complaints) <= wrong and len(set(complaints)) == len(complaints)
    assert abs(len(complaints) / len(wrong) - 0.5) < 4 * math.sqrt(0.25 / len(wrong))
    clicks = {f["prediction_id"] for _, f in ev["feedback"] if f["kind"] == "implicit"}
    right = set(preds) - wrong
    assert abs(len(clicks & right) / len(right) - spec.implicit_prob) < 0.03
    assert abs(len(clicks & wrong) / len(wrong) - spec.implicit_false_prob) < 0.03
    delays = np.array([f["timestamp"] - preds[i]["timestamp"] for i, f in label.items()])
    assert (delays > 0).all()
    shape, loc, scale = stats.lognorm.fit(delays, floc=0)
    assert scale == pytest.approx(1800.0, rel=0.05) and shape == pytest.approx(1.2, rel=0.05)


def test_binary_scores_are_calibrated_and_accuracy_is_the_configured_one():
    sc = Scenario(models=("churn",), batch=200, outcome_share=0, label_share=1.0, accuracy={"churn": 0.8},
                  versions=(("v1", "primary", 1.0),))
    records, tally = generate(CONFIG, 20000, start=T0, rate=200, scenario=sc, seed=5)
    ev = decode_all(records)
    score = {r["prediction_id"]: r["output"]["score"] for _, r in ev["prediction"]}
    ids = [f["prediction_id"] for _, f in ev["feedback"]]
    y = np.array([f["value"] == "churn" for _, f in ev["feedback"]], dtype=float)
    s = np.array([score[i] for i in ids])
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="quantile")
    counts = len(y) / 10
    se = np.sqrt(prob_pred * (1 - prob_pred) / counts)
    assert np.all(np.abs(prob_true - prob_pred) < 4 * se + 1e-3), (prob_true, prob_pred)
    acc = np.mean((s >= 0.5) == (y == 1))
    assert abs(acc - 0.8) < 4 * math.sqrt(0.16 / len(y))
    t = tally.truth("churn")
    assert t.n == len(y) and t.correct == t.labelled_correct == round(acc * len(y))
    assert abs(t.confidence / t.n - acc) < 4 * math.sqrt(0.16 / len(y))   # what CBPE estimates


def test_multiclass_probabilities_are_calibrated():
    sc = Scenario(models=("intent",), batch=200, outcome_share=0, label_share=1.0,
                  accuracy={"intent/v1": 0.7, "intent/v2": 0.7})
    records, _ = generate(CONFIG, 15000, start=T0, rate=200, scenario=sc, seed=6)
    ev = decode_all(records)
    probs = {r["prediction_id"]: r["output"] for _, r in ev["prediction"]}
    top, hit, per_class = [], [], []
    for _, f in ev["feedback"]:
        out = probs[f["prediction_id"]]
        assert out["label"] == max(out["probabilities"], key=out["probabilities"].get)
        top.append(out["probabilities"][out["label"]])
        hit.append(out["label"] == f["value"])
        per_class.append((out["probabilities"]["tech"], f["value"] == "tech"))
    top, hit = np.array(top), np.array(hit, dtype=float)
    assert abs(hit.mean() - 0.7) < 4 * math.sqrt(0.21 / len(hit))
    prob_true, prob_pred = calibration_curve(hit, top, n_bins=8, strategy="quantile")
    assert np.all(np.abs(prob_true - prob_pred) < 4 * np.sqrt(prob_pred * (1 - prob_pred) / (len(hit) / 8)) + 1e-3)
    p, yk = np.array(per_class).T
    prob_true, prob_pred = calibration_curve(yk, p, n_bins=5, strategy="quantile")
    assert np.all(np.abs(prob_true - prob_pred) < 4 * np.sqrt(prob_pred * (1 - prob_pred) / (len(p) / 5)) + 1e-3)


def test_degrade_hits_exactly_one_version_segment_and_recovers(full):
    _, tally, _ = full
    ios = {"device": "ios"}
    during = tally.truth("churn", "v1", ios, since=T0 + 300, until=T0 + 600)
    before = tally.truth("churn", "v1", ios, until=T0 + 300)
    after = tally.truth("churn", "v1", ios, since=T0 + 600)
    other = tally.truth("churn", "v1", {"device": "android"}, since=T0 + 300, until=T0 + 600)
    assert during.n > 80 and other.n > 80
    assert abs(during.correct / during.n - 0.5) < 4 * math.sqrt(0.25 / during.n)
    for q in (before, after, other):
        assert abs(q.correct / q.n - 0.85) < 4 * math.sqrt(0.13 / q.n)
    # concept drift: the scores (and so CBPE) do not see it
    assert abs(during.confidence / during.n - 0.85) < 0.03


def test_feature_drift_in_one_segment_after_a_time():
    sc = Scenario(models=("churn",), batch=100, outcome_share=0, label_share=0,
                  drift={"model": "churn", "feature": "tenure", "segment": {"device": "web"}, "shift": 6.0,
                         "after": T0 + 200, "until": T0 + 400})
    records, _ = generate(CONFIG, 6000, start=T0, rate=10, scenario=sc, seed=8)
    groups = defaultdict(list)
    for _, r in decode_all(records)["prediction"]:
        if r["features"].get("tenure") is not None:
            phase = 0 if r["timestamp"] < T0 + 200 else 1 if r["timestamp"] < T0 + 400 else 2
            groups[(r["segment"]["device"] == "web", phase)].append(r["features"]["tenure"])
    base = np.mean(groups[(False, 0)] + groups[(False, 1)] + groups[(False, 2)] + groups[(True, 0)])
    assert np.mean(groups[(True, 1)]) - base == pytest.approx(6.0, abs=1.0)
    assert np.mean(groups[(True, 2)]) == pytest.approx(base, abs=1.0)
    assert stats.ks_2samp(groups[(False, 0)], groups[(False, 1)]).pvalue > 1e-3


def test_canary_share_is_mutable_and_by_unit():
    canary = CanarySpec(baseline="v1", canary="v2", share=0.1, accuracy=0.65)
    sc = Scenario(models=("churn",), batch=100, outcome_share=0, label_share=0, canaries={"churn": canary},
                  accuracy={"churn": 0.85})
    app = SimulatedApp(CONFIG, seed=9, scenario=sc)
    first = decode_all([(m.topic_kind, m.key, m.value) for m in app.messages(6000, T0, rate=50)])
    canary.share = 0.5                                   # e.g. a test follows the decisions topic
    second = decode_all([(m.topic_kind, m.key, m.value) for m in app.messages(6000, T0 + 120, rate=50)])
    for rows, share in ((first, 0.1), (second, 0.5)):
        preds = [r for _, r in rows["prediction"]]
        on = np.mean([r["version"] == "v2" for r in preds])
        assert abs(on - share) < 4 * math.sqrt(share * (1 - share) / len(preds))
        exp = canary_experiment("churn-canary", "v1", "v2", share)
        assigner = Assigner([exp])
        for r in preds[:500]:
            assert r["version"] == assigner.assign("churn-canary", r["unit_id"]).variant
            assert r["role"] == ("canary" if r["version"] == "v2" else "primary")
    can, base = app.tally.truth("churn", "v2"), app.tally.truth("churn", "v1")
    assert abs(can.correct / can.n - 0.65) < 4 * math.sqrt(0.23 / can.n)
    assert abs(base.correct / base.n - 0.85) < 4 * math.sqrt(0.13 / base.n)


def test_canary_share_callable_of_event_time():
    sc = Scenario(models=("churn",), batch=1, outcome_share=0, label_share=0,
                  canaries={"churn": CanarySpec(share=lambda t: 0.0 if t < T0 + 100 else 1.0)})
    records, tally = generate(CONFIG, 400, start=T0, rate=2, scenario=sc, seed=1)
    for _, r in decode_all(records)["prediction"]:
        assert r["version"] == ("v1" if r["timestamp"] < T0 + 100 else "v2")


@pytest.mark.parametrize("lift", [{"treatment": 0.25}, {}])
def test_ab_assignment_and_true_lift(lift):
    spec = ExperimentSpec("checkout", "churn", lift=lift, revenue_lift={"treatment": 0.2} if lift else {},
                          conversion_rate=0.2)
    sc = Scenario(models=("churn",), batch=100, outcome_share=0, label_share=0, units=10**9, experiments=[spec])
    records, tally = generate(CONFIG, 15000, start=T0, rate=100, scenario=sc, seed=12)
    ev = decode_all(records)
    assigner = Assigner([Experiment("checkout", ("control", "treatment"))])
    variant_of = {}
    for _, r in ev["prediction"]:
        assert r["experiment"] == "checkout" and r["variant"] == assigner.assign("checkout", r["unit_id"]).variant
        variant_of[r["unit_id"]] = r["variant"]
    conv, rev = Counter(), defaultdict(list)
    for _, o in ev["outcome"]:
        v = variant_of[o["unit_id"]]
        if o["metric"] == "conversion":
            conv[v] += 1
        else:
            rev[v].append(o["value"])
    units = Counter(variant_of.values())
    for v in ("control", "treatment"):
        arm = tally.experiments[("checkout", v)]
        assert (arm.units, arm.conversions) == (units[v], conv[v])
        assert arm.revenue == pytest.approx(sum(rev[v]))
        p = 0.2 * (1 + lift.get(v, 0.0))
        assert abs(conv[v] / units[v] - p) < 4 * math.sqrt(p * (1 - p) / units[v])
    assert abs(units["control"] / sum(units.values()) - 0.5) < 0.02   # no sample-ratio mismatch
    ratio = np.median(rev["treatment"]) / np.median(rev["control"])
    assert ratio == pytest.approx(1.2 if lift else 1.0, abs=0.12)


def test_invariant_violations_on_demand(full):
    _, tally, events = full
    preds = [r for _, r in events["prediction"]]
    strings = Counter((r["model"], r["version"], seg_key(r)) for r in preds
                      if isinstance(r.get("features", {}).get("autopay"), str))
    assert strings and all(r["features"]["autopay"] in ("true", "false") for r in preds
                           if isinstance(r.get("features", {}).get("autopay"), str))
    assert strings == Counter({k[1:]: n for k, n in tally.injected.items() if k[0] == "boolean_as_string"})
    eligible = sum(1 for r in preds if r["model"] == "churn" and r["role"] != "shadow"
                   and r.get("features", {}).get("autopay") is not None)
    organic = sum(isinstance(r.get("features", {}).get("autopay"), str) for r in preds if r["role"] != "shadow")
    assert organic == math.floor(eligible * 0.02) < sum(strings.values())   # shadows carry the same features
    bursts = defaultdict(list)
    for r in preds:
        if r["unit_id"].startswith("flicker-"):
            bursts[r["unit_id"]].append(r)
    assert len(bursts) == len(tally.flickers) == 14       # every 60 s over 800 s
    for rows in bursts.values():
        rows.sort(key=lambda r: r["timestamp"])
        labels = [r["output"]["label"] for r in rows]
        assert sum(a != b for a, b in zip(labels, labels[1:])) == 3
        assert rows[-1]["timestamp"] - rows[0]["timestamp"] < 5
        assert {(r["model"], r["version"]) for r in rows} == {("intent", "v1")}


def test_two_models_disagree_on_the_same_prediction_id():
    sc = Scenario(models=("churn",), batch=1, outcome_share=0, label_share=0,
                  shadows=[ShadowSpec("churn", primary="v1", shadow="v1", shadow_model="churn2",
                                      disagreement=0.3, role="primary")])
    records, tally = generate(CONFIG, 1000, start=T0, rate=20, scenario=sc, seed=2)
    by_id = defaultdict(dict)
    for _, r in decode_all(records)["prediction"]:
        by_id[r["prediction_id"]][r["model"]] = r["output"]["label"]
    pairs = [d for d in by_id.values() if len(d) == 2]
    assert sum(d["churn"] != d["churn2"] for d in pairs) == math.floor(len(pairs) * 0.3)
    assert tally.shadow_pairs("churn")[0] == len(pairs)


def test_stationary_windows():
    app = SimulatedApp(CONFIG, seed=4, scenario=Scenario.stationary(models=("churn", "eta")))
    records = [(m.topic_kind, m.key, m.value) for m in app.windows(20, per_window=300, start=T0)]
    preds = [r for _, r in decode_all(records)["prediction"]]
    per_window = Counter(int((r["timestamp"] - T0) // 60) for r in preds)
    assert sorted(per_window) == list(range(20)) and set(per_window.values()) == {300}
    assert len({r["unit_id"] for r in preds}) == len(preds)     # no accidental flicker
    first = [r["features"]["tenure"] for r in preds if r["model"] == "churn" and r["timestamp"] < T0 + 600]
    last = [r["features"]["tenure"] for r in preds if r["model"] == "churn" and r["timestamp"] >= T0 + 600]
    assert stats.ks_2samp(first, last).pvalue > 1e-3
    assert not app.tally.injected and not app.tally.malformed and not app.tally.duplicates


def test_deterministic_for_a_seed_and_single_events_when_asked():
    a, ta = generate(CONFIG, 800, start=T0, scenario=FULL, seed=21)
    b, tb = generate(CONFIG, 800, start=T0, scenario=FULL, seed=21)
    c, _ = generate(CONFIG, 800, start=T0, scenario=FULL, seed=22)
    assert a == b and ta == tb and a != c
    single = Scenario(batch=1, shadows=[ShadowSpec("churn", disagreement=0.5)])
    records, tally = generate(CONFIG, 300, start=T0, scenario=single, seed=1)
    preds = [v for k, _, v in records if k == "prediction"]
    assert len(preds) == sum(tally.predictions.values())        # one event per message
    assert all(b'"type":"batch"' not in v for v in preds)


def test_original_api_still_works():
    app = SimulatedApp(CONFIG, seed=4, scenario=Scenario(batch=3, malformed_share=0.1, duplicate_share=0.2))
    msgs = list(app.messages(300, start=1000.0, rate=5)) + list(app.drain_feedback())
    assert isinstance(app.tally, Tally) and sum(app.tally.malformed.values()) > 0
    assert app.tally.duplicates["prediction"] > 0
    decoder = Decoder(CONFIG.models)
    reasons = Counter(r.reason for m in msgs for r in decoder.decode(m.value, m.topic_kind).rejections)
    assert reasons == Counter(app.tally.malformed)
    assert app.tally.predictions_by("churn", "v1") > 0


@pytest.mark.parametrize("scenario, field", [
    (Scenario(shadows=[ShadowSpec("nope")]), "shadows[0].model"),
    (Scenario(shadows=[ShadowSpec("churn", disagreement=1.5)]), "shadows[0].disagreement"),
    (Scenario(accuracy={"eta": 0.9}), "accuracy['eta']"),
    (Scenario(accuracy={"churn": 0.3}), "accuracy['churn']"),
    (Scenario(violations=[BoolAsString("churn", "tenure")]), "violations[0].feature"),
    (Scenario(violations=[Flicker("eta")]), "violations[0].model"),
    (Scenario(experiments=[ExperimentSpec("x", "churn", lift={"nope": 0.1})]), "experiments[0].lift"),
    (Scenario(feedback={"churn": FeedbackSpec(kinds=("stars",))}), "feedback['churn'].kinds"),
    (Scenario(degrade={"model": "churn", "version": "v1", "accuracy": 2}), "degrade.accuracy"),
    (Scenario(canaries={"churn": CanarySpec(share=-1)}), "canaries['churn'].share"),
])
def test_bad_scenarios_name_the_field(scenario, field):
    with pytest.raises(ScenarioError, match=f"Scenario.{field}".replace("[", r"\[").replace("]", r"\]")):
        SimulatedApp(CONFIG, scenario=scenario)
