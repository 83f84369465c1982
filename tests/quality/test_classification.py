import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from prodlens.quality.classification import (OTHER, ClassificationAccumulator, confusion_from_counts,
                                             label_key)


def _round_trip(acc):
    return ClassificationAccumulator.from_dict(json.loads(json.dumps(acc.to_dict())))


def test_worked_example_rows_predicted():
    acc = confusion_from_counts("ABC", [[10, 6, 2], [3, 24, 10], [5, 22, 82]], rows_are="predicted")
    r = acc.result()
    assert acc.n == 164
    assert r.metrics["accuracy"].value == 116 / 164
    assert round(r.metrics["accuracy"].value, 3) == 0.707
    # rows predicted: precision of A = 10 / 18, recall of A = 10 / (10 + 3 + 5)
    assert r.per_class["precision"]["A"].value == 10 / 18
    assert r.per_class["recall"]["A"].value == 10 / 18
    assert r.per_class["recall"]["C"].value == 82 / 94
    # the same pairs expanded, against scikit-learn
    y_true, y_pred = [], []
    for i, p in enumerate("ABC"):
        for j, t in enumerate("ABC"):
            n = [[10, 6, 2], [3, 24, 10], [5, 22, 82]][i][j]
            y_true += [t] * n
            y_pred += [p] * n
    assert skm.accuracy_score(y_true, y_pred) == r.metrics["accuracy"].value
    assert skm.f1_score(y_true, y_pred, average="macro") == pytest.approx(r.metrics["macro_f1"].value, abs=1e-15)


def _random_multiclass(rng, n, k):
    classes = [f"c{i}" for i in range(k)]
    logits = rng.normal(size=(n, k))
    y_idx = np.array([rng.choice(k, p=np.exp(l) / np.exp(l).sum()) for l in logits])
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba[rng.random(n) < 0.05, 0] = 0.0  # some exact zeros: exercises clipping
    proba /= proba.sum(axis=1, keepdims=True)
    pred_idx = proba.argmax(axis=1)
    y_true = [classes[i] for i in y_idx]
    y_pred = [classes[i] for i in pred_idx]
    return classes, y_true, y_pred, proba


@pytest.mark.parametrize("seed,k", [(0, 3), (1, 5), (2, 2)])
def test_multiclass_equals_sklearn(seed, k):
    rng = np.random.default_rng(seed)
    classes, y_true, y_pred, proba = _random_multiclass(rng, 700, k)
    acc = ClassificationAccumulator()
    for lo in range(0, 700, 130):  # several batches
        hi = lo + 130
        acc.update_many(y_true[lo:hi], y_pred[lo:hi],
                        probabilities=[dict(zip(classes, row)) for row in proba[lo:hi]])
    r = acc.result()
    assert r.metrics["accuracy"].value == skm.accuracy_score(y_true, y_pred)
    labels = sorted(set(y_true) | set(y_pred))
    for kind, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        per = fn(y_true, y_pred, labels=labels, average=None, zero_division=0)
        for cls, v in zip(labels, per):
            if not math.isnan(r.per_class[kind][cls].value):
                assert r.per_class[kind][cls].value == pytest.approx(v, abs=1e-15)
        assert r.metrics[f"macro_{kind}"].value == pytest.approx(
            fn(y_true, y_pred, average="macro", zero_division=0), abs=1e-15)
    sk_labels = classes
    assert r.metrics["log_loss"].value == pytest.approx(skm.log_loss(y_true, proba, labels=sk_labels), rel=1e-12)
    sk_brier = skm.brier_score_loss(y_true, proba, labels=sk_labels) if k > 2 else \
        skm.brier_score_loss(np.array(y_true) == classes[1], proba[:, 1])
    if k > 2:
        assert r.metrics["brier"].value == pytest.approx(sk_brier, rel=1e-12)
    assert r.metrics["log_loss"].n == 700
    assert np.array_equal(np.array(r.extra["confusion"]),
                          skm.confusion_matrix(y_true, y_pred, labels=acc.classes))


def test_binary_equals_sklearn_and_auc_within_bound():
    rng = np.random.default_rng(7)
    n = 3000
    y = rng.random(n) < 0.3
    score = np.clip(rng.beta(2, 5, n) + 0.35 * y, 0, 1)
    score[:50] = np.round(score[:50], 1)  # ties across classes
    y_true = np.where(y, "churn", "stay")
    y_pred = np.where(score >= 0.5, "churn", "stay")
    acc = ClassificationAccumulator(positive_label="churn", auc_bins=20)
    acc.update_many(list(y_true[:1000]), list(y_pred[:1000]), score[:1000])
    acc.update_many(list(y_true[1000:]), list(y_pred[1000:]), score[1000:])
    r = acc.result()
    assert r.metrics["accuracy"].value == skm.accuracy_score(y_true, y_pred)
    assert r.per_class["precision"]["churn"].value == skm.precision_score(y_true, y_pred, pos_label="churn")
    assert r.per_class["recall"]["churn"].value == skm.recall_score(y_true, y_pred, pos_label="churn")
    assert r.per_class["f1"]["churn"].value == pytest.approx(skm.f1_score(y_true, y_pred, pos_label="churn"), abs=1e-15)
    assert r.metrics["log_loss"].value == pytest.approx(skm.log_loss(y, score), rel=1e-12)
    assert r.metrics["brier"].value == pytest.approx(skm.brier_score_loss(y, score), rel=1e-12)
    auc = r.metrics["roc_auc"]
    exact = skm.roc_auc_score(y, score)
    assert abs(auc.value - exact) <= auc.error_bound + 1e-12
    assert auc.error_bound <= r.extra["auc_same_bin_fraction"] / 2 + 1e-15
    assert auc.error_bound > 0 and auc.lower <= exact <= auc.upper


scores_strategy = st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=2, max_size=200)


@given(scores_strategy, st.integers(1, 50))
@settings(max_examples=200, deadline=None)
def test_auc_bound_property(pairs, bins):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    if y.all() or not y.any():
        return
    acc = ClassificationAccumulator(positive_label=True, auc_bins=bins)
    acc.update_many(list(y), None, s)
    est = acc.result().metrics["roc_auc"]
    exact = skm.roc_auc_score(y, s)
    assert abs(est.value - exact) <= est.error_bound + 1e-12
    assert est.error_bound <= acc.result().extra["auc_same_bin_fraction"]


labels_strategy = st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), max_size=60)


@given(st.lists(labels_strategy, min_size=1, max_size=5))
@settings(max_examples=100, deadline=None)
def test_merge_equals_single_pass_and_round_trips(parts):
    whole = ClassificationAccumulator()
    merged = ClassificationAccumulator()
    for part in parts:
        t, p = [x for x, _ in part], [y for _, y in part]
        whole.update_many(t, p)
        a = ClassificationAccumulator()
        a.update_many(t, p)
        merged.merge(_round_trip(a))
    order = [whole.classes.index(c) for c in merged.classes]
    assert np.array_equal(merged.confusion, whole.confusion[np.ix_(order, order)])
    assert merged.result().metrics["accuracy"] == whole.result().metrics["accuracy"]
    assert _round_trip(merged) == merged


def test_class_cap_folds_into_other():
    acc = ClassificationAccumulator(max_classes=4)
    labels = [f"l{i}" for i in range(10)]
    acc.update_many(labels, labels)
    assert acc.classes == ["l0", "l1", "l2", OTHER]
    assert acc.folded == 14  # 7 labels folded, as truth and as prediction
    assert acc.confusion.shape == (4, 4) and acc.confusion[3, 3] == 7
    other = ClassificationAccumulator(max_classes=4)
    other.update_many(["z1", "z2"], ["z1", "l0"])
    acc.merge(other)
    assert len(acc.classes) == 4 and acc.folded == 14 + 3 and acc.n == 12


def test_binary_positive_label_never_folds_and_probabilities_fallback():
    acc = ClassificationAccumulator(positive_label=1, max_classes=2)
    acc.update_many([1, 0, 1], [1, 0, 0], probabilities=[{0: 0.2, 1: 0.8}, {"0": 0.9, "1": 0.1}, {0: 0.6, 1: 0.4}])
    assert acc.classes[0] == "1"
    r = acc.result()
    assert r.metrics["brier"].value == pytest.approx(skm.brier_score_loss([1, 0, 1], [0.8, 0.1, 0.4]))


def test_ece_value_and_interval():
    rng = np.random.default_rng(3)
    s = rng.random(5000)
    y = rng.random(5000) < s ** 2  # over-confident scores
    acc = ClassificationAccumulator(positive_label=True, ece_bins=10)
    acc.update_many(list(y), None, s)
    e = acc.result().metrics["ece"]
    b = np.minimum((s * 10).astype(int), 9)
    direct = sum(abs(y[b == i].sum() - s[b == i].sum()) for i in range(10)) / s.size
    assert e.value == pytest.approx(direct, rel=1e-12)
    true_ece = np.mean([abs(np.mean(s[b == i] ** 2) - np.mean(s[b == i])) * (b == i).mean() * 10
                        for i in range(10)])
    assert e.lower <= true_ece <= e.upper and e.lower > 0.1


def test_intervals_cover_in_simulation():
    rng = np.random.default_rng(11)
    hits = {"accuracy": 0, "macro_f1": 0, "f1_b": 0}
    reps = 200
    # population truth: 3 classes, fixed confusion probabilities
    probs = np.array([[.2, .05, .05], [.03, .25, .07], [.02, .08, .25]])
    t = np.diag(probs)
    f1 = 2 * t / (probs.sum(0) + probs.sum(1))
    truth = {"accuracy": t.sum(), "macro_f1": f1.mean(), "f1_b": f1[1]}
    for _ in range(reps):
        counts = rng.multinomial(300, probs.ravel()).reshape(3, 3)
        r = confusion_from_counts("abc", counts).result()
        hits["accuracy"] += r.metrics["accuracy"].contains(truth["accuracy"])
        hits["macro_f1"] += r.metrics["macro_f1"].contains(truth["macro_f1"])
        hits["f1_b"] += r.per_class["f1"]["b"].contains(truth["f1_b"])
    for name, h in hits.items():
        assert h / reps >= 0.9, name


def test_bad_input_names_the_field():
    acc = ClassificationAccumulator(positive_label="x")
    with pytest.raises(ValueError, match="scores"):
        acc.update_many(["x"], None, [1.5])
    with pytest.raises(ValueError, match="y_pred"):
        acc.update_many(["x", "y"], ["x"])
    with pytest.raises(ValueError, match="label"):
        label_key([1])
    with pytest.raises(ValueError, match="same configuration"):
        acc.merge(ClassificationAccumulator())


def test_label_keys():
    assert [label_key(v) for v in (True, 1, 1.0, 2.5, "a", np.int64(3))] == ["true", "1", "1", "2.5", "a", "3"]


def test_tiny_and_empty_results_say_so():
    acc = ClassificationAccumulator(positive_label="y")
    r = acc.result()
    assert math.isnan(r.metrics["accuracy"].value) and not r.metrics["accuracy"].sufficient
    assert math.isnan(r.metrics["roc_auc"].value) and not r.metrics["log_loss"].sufficient
    acc.update_many(["y", "n"], ["y", "y"], [0.9, 0.6])
    r = acc.result()
    assert r.metrics["accuracy"].value == 0.5 and not r.metrics["accuracy"].sufficient
    assert not r.metrics["roc_auc"].sufficient
