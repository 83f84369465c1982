import json

import numpy as np
import pytest
from sklearn import metrics as skm

from prodlens.quality.cbpe import CBPEReference
from prodlens.quality.classification import ClassificationAccumulator
from prodlens.quality.join import FeedbackJoin, Matches
from prodlens.quality.windows import ModelSpec, QualityWindows, WindowQuality, merge_all

HOUR, DAY = 3600.0, 86400.0
SPECS = {"churn": ModelSpec(positive_label="churn", negative_label="stay"), "price": ModelSpec(task="regression")}


def _simulate(rng, n, degraded=("v2", "country=DE"), start=0.0):
    """Binary churn predictions over 24 h; labels for 30 % arrive 1-3 days later."""
    ids, times, versions, segs, outs, truth = [], [], [], [], [], []
    for i in range(n):
        v = "v1" if rng.random() < 0.5 else "v2"
        country = "DE" if rng.random() < 0.5 else "US"
        y = rng.random() < 0.3
        good = rng.random() < (0.6 if (v, f"country={country}") == degraded else 0.9)
        score = rng.uniform(0.55, 1.0) if (y == good) else rng.uniform(0.0, 0.45)
        ids.append(f"{i}")
        times.append(start + i * DAY / n)
        versions.append(v)
        segs.append({"country": country})
        outs.append({"score": score})
        truth.append("churn" if y else "stay")
    return ids, times, versions, segs, outs, truth


def _run(q, j, rng, n=6000):
    ids, times, versions, segs, outs, truth = _simulate(rng, n)
    for lo in range(0, n, 500):
        sl = slice(lo, lo + 500)
        cols = {"prediction_id": ids[sl], "timestamp": times[sl], "model": ["churn"] * len(ids[sl]),
                "version": versions[sl], "segment": segs[sl], "output": outs[sl]}
        q.record_matches(j.add_predictions(cols))
        q.record_predictions(cols)
    labelled = [i for i in range(n) if rng.random() < 0.3]
    delays = rng.uniform(DAY, 3 * DAY, len(labelled))
    order = np.argsort(np.array(times)[labelled] + delays)
    fb = {"prediction_id": [ids[labelled[k]] for k in order],
          "timestamp": [times[labelled[k]] + delays[k] for k in order],
          "kind": ["label"] * len(order), "value": [truth[labelled[k]] for k in order]}
    for lo in range(0, len(order), 400):
        q.record_matches(j.add_feedback({k: v[lo:lo + 400] for k, v in fb.items()}))
        j.advance()
    return ids, times, versions, segs, outs, truth, labelled


def test_late_labels_land_in_prediction_window_and_degradation_is_isolated():
    rng = np.random.default_rng(0)
    q = QualityWindows(HOUR, SPECS)
    j = FeedbackJoin(horizon_seconds=4 * DAY, grace_seconds=300, window_seconds=HOUR)
    _run(q, j, rng)
    assert j.orphans.total == 0 and j.stats["matched"] > 1500
    assert {k[0] for k in q.windows} == {h * HOUR for h in range(24)}  # prediction-time windows only
    views = {(v, s): q.view("churn", v, s, 0, DAY).result()["classification"]
             for v in ("v1", "v2") for s in ("country=DE", "country=US")}
    healthy = q.view("churn", "v1", "country=US", 0, DAY).result()["classification"].metrics["accuracy"]
    for key, r in views.items():
        acc = r.metrics["accuracy"]
        assert acc.sufficient
        if key == ("v2", "country=DE"):
            assert acc.upper < 0.75 and not acc.contains(0.9)
        else:
            assert acc.contains(0.9)
    assert healthy.lower > views[("v2", "country=DE")].metrics["accuracy"].upper


def test_day_view_equals_accumulator_fed_directly():
    rng = np.random.default_rng(1)
    q = QualityWindows(HOUR, SPECS)
    j = FeedbackJoin(horizon_seconds=4 * DAY, window_seconds=HOUR)
    ids, times, versions, segs, outs, truth, labelled = _run(q, j, rng, n=3000)
    day = q.view("churn", "v1", None, 0, DAY)  # all segments, 24 windows merged
    direct = ClassificationAccumulator(positive_label="churn")
    sel = [i for i in labelled if versions[i] == "v1"]
    y_pred = ["churn" if outs[i]["score"] >= 0.5 else "stay" for i in sel]
    direct.update_many([truth[i] for i in sel], y_pred, np.array([outs[i]["score"] for i in sel]))
    got, want = day.classification.result(), direct.result()
    assert np.array_equal(day.classification.confusion, direct.confusion)
    assert got.metrics["accuracy"] == want.metrics["accuracy"]
    assert got.metrics["roc_auc"] == want.metrics["roc_auc"]
    assert got.metrics["log_loss"].value == pytest.approx(want.metrics["log_loss"].value, rel=1e-12)
    y = np.array([truth[i] == "churn" for i in sel])
    assert got.metrics["brier"].value == pytest.approx(skm.brier_score_loss(y, [outs[i]["score"] for i in sel]))
    fb = day.result()["feedback"]
    assert fb.extra["predictions"] == sum(v == "v1" for v in versions)
    assert fb.metrics["label_coverage"].value == len(sel) / fb.extra["predictions"]
    assert fb.metrics["label_delay_p50"].lower >= DAY * 0.98


def test_round_trip_with_cbpe_and_regression():
    rng = np.random.default_rng(2)
    s = rng.random(4000)
    refs = {("churn", "v1"): CBPEReference.fit(s, rng.random(4000) < s)}
    q = QualityWindows(HOUR, SPECS, references=refs)
    q.record_predictions({"timestamp": [10.0, 20.0, 30.0], "model": ["churn", "churn", "price"],
                          "version": ["v1", "v1", "p1"], "segment": [None, None, {"a": 1}],
                          "output": [{"score": 0.9}, {"label": "churn", "score": 0.2}, {"value": 10.0}]})
    m = Matches(prediction_id=["x"], model=["price"], version=["p1"], segment=["a=1"], window_start=[0.0],
                prediction_time=[30.0], feedback_time=[90.0], delay=[60.0], kind=["label"], value=["12.5"],
                size=[None], corrected=[None], label=[None], score=[None], probabilities=[None],
                pred_value=[10.0], first_any=[True], first_of_kind=[True], first_truth=[True])
    q.record_matches(m)
    reg = q.windows[(0.0, "price", "p1", "a=1")].result()["regression"]
    assert reg.metrics["mean_error"].value == -2.5
    cb = q.windows[(0.0, "churn", "v1", "__all__")]
    assert cb.cbpe.n == 2 and cb.cbpe.m == 2  # the model said "churn" for the 0.2 score
    back = QualityWindows.from_dict(json.loads(json.dumps(q.to_dict())), SPECS, references=refs)
    assert back.to_dict() == q.to_dict()
    assert back.windows[(0.0, "churn", "v1", "__all__")].result()["cbpe"].to_dict() == cb.result()["cbpe"].to_dict()
    gone = back.pop_before(HOUR)
    assert len(gone) == 2 and not back.windows


def test_merge_all_leaves_inputs_untouched_and_checks_spec():
    a = WindowQuality(SPECS["churn"])
    a.feedback.add_predictions(3)
    b = WindowQuality(SPECS["churn"])
    b.feedback.add_predictions(4)
    merged = merge_all([a, b])
    assert merged.feedback.predictions == 7 and a.feedback.predictions == 3
    assert merge_all([]) is None
    with pytest.raises(ValueError, match="spec"):
        a.merge(WindowQuality(SPECS["price"]))
    with pytest.raises(ValueError, match="task"):
        ModelSpec(task="ranking")


def test_buffered_rows_survive_a_checkpoint_and_do_not_change_results():
    rng = np.random.default_rng(3)
    j1 = FeedbackJoin(horizon_seconds=4 * DAY, window_seconds=HOUR)
    j2 = FeedbackJoin(horizon_seconds=4 * DAY, window_seconds=HOUR)
    straight, restarted = QualityWindows(HOUR, SPECS), QualityWindows(HOUR, SPECS)
    ids, times, versions, segs, outs, truth = _simulate(rng, 1200)
    cols = {"prediction_id": ids, "timestamp": times, "model": ["churn"] * 1200, "version": versions,
            "segment": segs, "output": outs}
    for q, j in ((straight, j1), (restarted, j2)):
        j.add_predictions(cols)
        q.record_predictions(cols)
    fb = {"prediction_id": ids, "timestamp": [t + DAY for t in times], "kind": ["label"] * 1200, "value": truth}
    for lo in range(0, 1200, 100):
        part = {k: v[lo:lo + 100] for k, v in fb.items()}
        straight.record_matches(j1.add_feedback(part))
        restarted.record_matches(j2.add_feedback(part))
        if lo == 500:
            assert any(w._rows for w in restarted.windows.values())  # rows waiting in buffers
            restarted = QualityWindows.from_dict(json.loads(json.dumps(restarted.to_dict())), SPECS)
    assert restarted.to_dict() == straight.to_dict()
    unbuffered = QualityWindows(HOUR, SPECS)
    for key, w in straight.windows.items():
        u = unbuffered.state(key)
        u.flush_rows = 1
    j3 = FeedbackJoin(horizon_seconds=4 * DAY, window_seconds=HOUR)
    j3.add_predictions(cols)
    unbuffered.record_predictions(cols)
    unbuffered.record_matches(j3.add_feedback(fb))
    for key, w in straight.windows.items():
        a, b = w.result()["classification"], unbuffered.windows[key].result()["classification"]
        assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.metrics["roc_auc"] == b.metrics["roc_auc"]
        assert a.metrics["brier"].value == pytest.approx(b.metrics["brier"].value, rel=1e-12)
