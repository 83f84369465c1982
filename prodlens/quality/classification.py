"""Classification quality for one window × (model, version, segment): a mergeable accumulator.

State (memory independent of the number of events): a confusion matrix over a class
vocabulary that grows as labels appear, capped at ``max_classes`` (labels beyond the
cap fold into ``"__other__"`` and are counted in ``folded``); running moments of the
per-event log loss and Brier score; for binary models a fixed-bin score histogram
per true class (ROC AUC); fixed-bin calibration sums (ECE).

Metrics (each an :class:`~prodlens.quality.intervals.Estimate`):

* accuracy, per-class precision and recall — Wilson intervals (precision's n is the
  number predicted as the class, recall's the number truly of it; with n = 0 the
  per-class value is NaN, not scikit-learn's zero_division 0);
* per-class F1 — F1 = 2J/(1+J) is increasing in the Jaccard index J = TP/(TP+FP+FN),
  and given m = TP+FP+FN, TP ~ Binomial(m, J); so the Wilson interval for J mapped
  through 2J/(1+J) is an interval for F1 (n = m);
* macro precision / recall / F1 — delta method on the multinomial confusion-matrix
  cells (normal approximation, n = all pairs), averaging over the classes present
  in truth or predictions, a class with an empty denominator scoring 0 (scikit-learn's
  ``average="macro", zero_division=0``);
* log loss, Brier — mean of per-event losses with a t interval. Binary: from the
  positive-class score (``positive_label`` set); multiclass: from the class
  probabilities (Brier summed over classes, not halved, as scikit-learn does for
  three or more classes). Probabilities are clipped to [eps, 1-eps], eps = float64
  machine epsilon, exactly as scikit-learn clips;
* ROC AUC (binary) — from a histogram of scores in ``auc_bins`` equal-width bins per
  true class, trapezoid rule over bins (ties inside a bin count one half).
  **Error bound**: pairs in different bins are ordered exactly as their scores are,
  so only positive/negative pairs sharing a bin can be misjudged, each by at most
  1/2. Hence |AUC_binned - AUC_exact| <= same_bin_pairs / (2·P·N) <= the fraction of
  positive/negative pairs that share a bin. The bound is computed per result
  (``Estimate.error_bound``, and ``extra["auc_same_bin_fraction"]``); the interval is
  Hanley & McNeil's (1982) normal interval widened by it;
* expected calibration error over ``ece_bins`` equal-width confidence bins
  (binary: positive-class score vs outcome; multiclass: top-label confidence vs
  correctness). Interval: Wilson intervals per non-empty bin at Bonferroni-adjusted
  level 1 - alpha/bins; the range of ECE over that simultaneous box of bin
  accuracies (bin weights and mean confidences fixed) — conservative.

Accuracy, precision/recall/F1 (per class and macro), log loss and Brier equal
scikit-learn's on the same pairs (counts exactly; means up to float summation order)
while the vocabulary stays under the cap. Merging is exact under the cap too; past
it, which labels fold depends on arrival order.

Worked example: a 3-class confusion matrix with rows "predicted A/B/C" =
[10, 6, 2], [3, 24, 10], [5, 22, 82] holds 116 correct of 164: accuracy 0.707.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .intervals import DEFAULT_CONFIDENCE, DEFAULT_MIN_N, Estimate, normal_interval, wilson
from .moments import Moments
from .results import MetricSet

OTHER = "__other__"
EPS = float(np.finfo(np.float64).eps)


def label_key(value: Any) -> str | None:
    """Canonical string for a class label: booleans 'true'/'false', integral numbers without '.0'."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    raise ValueError(f"label: expected a string, number or boolean, got {type(value).__name__}")


def _bin_index(x: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((x * bins).astype(np.int64), bins - 1)


class ClassificationAccumulator:
    """Mergeable classification-quality state; see the module docstring for the metrics.

    >>> acc = ClassificationAccumulator()
    >>> acc.update_many(["a", "b", "b"], ["a", "b", "a"])
    >>> acc.result().metrics["accuracy"].value
    0.6666666666666666
    """

    def __init__(self, positive_label: Any = None, max_classes: int = 50, auc_bins: int = 100,
                 ece_bins: int = 10):
        if max_classes < 2:
            raise ValueError(f"max_classes must be >= 2, got {max_classes}")
        if auc_bins < 1 or ece_bins < 1:
            raise ValueError("auc_bins and ece_bins must be >= 1")
        self.positive_label = label_key(positive_label)
        self.max_classes = max_classes
        self.auc_bins = auc_bins
        self.ece_bins = ece_bins
        self.classes: list[str] = []
        self._index: dict[str, int] = {}
        self.confusion = np.zeros((0, 0), dtype=np.int64)  # rows: true class, columns: predicted
        self.folded = 0
        self.log_loss = Moments()
        self.brier = Moments()
        self.auc_pos = np.zeros(auc_bins, dtype=np.int64)
        self.auc_neg = np.zeros(auc_bins, dtype=np.int64)
        self.ece_count = np.zeros(ece_bins, dtype=np.int64)
        self.ece_conf = np.zeros(ece_bins, dtype=np.float64)
        self.ece_hits = np.zeros(ece_bins, dtype=np.int64)
        if self.positive_label is not None:
            self._class(self.positive_label)
            self._grow()

    # -- vocabulary -------------------------------------------------------------------------
    def _class(self, label: str) -> int:
        idx = self._index.get(label)
        if idx is not None:
            return idx
        real = len(self.classes) - (OTHER in self._index)
        if label != OTHER and real >= self.max_classes - 1:
            return self._class(OTHER)
        self._index[label] = len(self.classes)
        self.classes.append(label)
        return len(self.classes) - 1

    def _indices(self, labels: Sequence[str]) -> np.ndarray:
        out = np.empty(len(labels), dtype=np.int64)
        cache: dict[str, int] = {}
        for i, lab in enumerate(labels):
            j = cache.get(lab)
            if j is None:
                j = cache[lab] = self._class(lab)
            if lab != OTHER and self.classes[j] == OTHER:
                self.folded += 1
            out[i] = j
        return out

    def _grow(self) -> None:
        k = len(self.classes)
        if self.confusion.shape[0] < k:
            grown = np.zeros((k, k), dtype=np.int64)
            m = self.confusion.shape[0]
            grown[:m, :m] = self.confusion
            self.confusion = grown

    # -- updates ----------------------------------------------------------------------------
    def update(self, y_true: Any, y_pred: Any = None, score: float | None = None,
               probabilities: Mapping[Any, float] | None = None) -> None:
        self.update_many([y_true], [y_pred], None if score is None else [score],
                         None if probabilities is None else [probabilities])

    def update_many(self, y_true: Sequence[Any], y_pred: Sequence[Any] | None = None,
                    scores: Sequence[float] | np.ndarray | None = None,
                    probabilities: Sequence[Mapping[Any, float] | None] | None = None) -> None:
        """Add labelled predictions.

        ``y_true``: true labels (None rows are skipped); ``y_pred``: predicted labels (None:
        not in the confusion matrix); ``scores``: positive-class scores for binary models
        (NaN/None: none); ``probabilities``: per-row class → probability mappings (None: none).
        Binary models (``positive_label`` set) use ``scores``, falling back to the
        positive class's probability; multiclass models use ``probabilities``.
        """
        n = len(y_true)
        for name, col in (("y_pred", y_pred), ("scores", scores), ("probabilities", probabilities)):
            if col is not None and len(col) != n:
                raise ValueError(f"{name}: has {len(col)} values, y_true has {n}")
        truth = [label_key(v) for v in y_true]
        has_truth = np.fromiter((t is not None for t in truth), dtype=bool, count=n)
        if y_pred is not None:
            pairs = [(t, label_key(p)) for t, p in zip(truth, y_pred) if t is not None and p is not None]
            if pairs:
                ti = self._indices([t for t, _ in pairs])
                pi = self._indices([p for _, p in pairs])
                self._grow()
                k = len(self.classes)
                self.confusion += np.bincount(ti * k + pi, minlength=k * k).reshape(k, k)
        if self.positive_label is not None:
            self._update_binary(truth, has_truth, scores, probabilities)
        elif probabilities is not None:
            self._update_multiclass(truth, probabilities)

    def _update_binary(self, truth: list, has_truth: np.ndarray, scores, probabilities) -> None:
        n = len(truth)
        s = np.full(n, np.nan)
        if scores is not None:
            s = np.array([np.nan if v is None else v for v in scores], dtype=np.float64)
        if probabilities is not None:
            pos = self.positive_label
            for i, probs in enumerate(probabilities):
                if np.isnan(s[i]) and probs:
                    s[i] = next((float(v) for k, v in probs.items() if label_key(k) == pos), 0.0)
        ok = has_truth & ~np.isnan(s)
        if not ok.any():
            return
        s = s[ok]
        if (s < 0).any() or (s > 1).any():
            raise ValueError("scores: positive-class scores must lie in [0, 1]")
        y = np.fromiter((t == self.positive_label for t, k in zip(truth, ok) if k), dtype=bool)
        yf = y.astype(np.float64)
        self.log_loss.update_many(-(yf * np.log(np.clip(s, EPS, 1 - EPS))
                                    + (1 - yf) * np.log(np.clip(1 - s, EPS, 1 - EPS))))
        self.brier.update_many(np.square(yf - s))
        b = _bin_index(s, self.auc_bins)
        self.auc_pos += np.bincount(b[y], minlength=self.auc_bins)
        self.auc_neg += np.bincount(b[~y], minlength=self.auc_bins)
        self._update_ece(s, y)

    def _update_multiclass(self, truth: list, probabilities) -> None:
        p_true, sum_sq, conf, hit = [], [], [], []
        for t, probs in zip(truth, probabilities):
            if t is None or not probs:
                continue
            keys = [label_key(k) for k in probs]
            vals = np.fromiter(probs.values(), dtype=np.float64, count=len(keys))
            if (vals < 0).any() or (vals > 1).any():
                raise ValueError("probabilities: each class probability must lie in [0, 1]")
            top = int(np.argmax(vals))
            pt = float(vals[keys.index(t)]) if t in keys else 0.0
            p_true.append(pt)
            sum_sq.append(float(vals @ vals))
            conf.append(float(vals[top]))
            hit.append(keys[top] == t)
        if not p_true:
            return
        pt = np.asarray(p_true)
        self.log_loss.update_many(-np.log(np.clip(pt, EPS, 1 - EPS)))
        self.brier.update_many(np.asarray(sum_sq) - 2 * pt + 1)
        self._update_ece(np.asarray(conf), np.asarray(hit, dtype=bool))

    def _update_ece(self, conf: np.ndarray, hit: np.ndarray) -> None:
        b = _bin_index(conf, self.ece_bins)
        self.ece_count += np.bincount(b, minlength=self.ece_bins)
        self.ece_conf += np.bincount(b, weights=conf, minlength=self.ece_bins)
        self.ece_hits += np.bincount(b[hit], minlength=self.ece_bins)

    # -- merging ----------------------------------------------------------------------------
    def _config(self) -> tuple:
        return (self.positive_label, self.max_classes, self.auc_bins, self.ece_bins)

    def merge(self, other: "ClassificationAccumulator") -> "ClassificationAccumulator":
        if other._config() != self._config():
            raise ValueError(f"can only merge accumulators with the same configuration: "
                             f"{self._config()} != {other._config()}")
        folded_before = self.folded
        ix = self._indices(other.classes)
        self._grow()
        # folding while merging vocabularies counts label occurrences, not labels
        self.folded = folded_before + other.folded
        for j, lab in enumerate(other.classes):
            if lab != OTHER and self.classes[ix[j]] == OTHER:
                self.folded += int(other.confusion[j, :].sum() + other.confusion[:, j].sum())
        np.add.at(self.confusion, (ix[:, None], ix[None, :]), other.confusion)
        self.log_loss.merge(other.log_loss)
        self.brier.merge(other.brier)
        self.auc_pos += other.auc_pos
        self.auc_neg += other.auc_neg
        self.ece_count += other.ece_count
        self.ece_conf += other.ece_conf
        self.ece_hits += other.ece_hits
        return self

    # -- results ----------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Labelled pairs in the confusion matrix."""
        return int(self.confusion.sum())

    def result(self, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N) -> MetricSet:
        c = self.confusion
        n = int(c.sum())
        tp = np.diag(c)
        true_n = c.sum(axis=1)
        pred_n = c.sum(axis=0)
        ms = MetricSet()
        ms.metrics["accuracy"] = wilson(int(tp.sum()), n, confidence, min_n)
        precision, recall, f1 = {}, {}, {}
        for k, cls in enumerate(self.classes):
            if true_n[k] + pred_n[k] == 0:
                continue
            t = int(tp[k])
            precision[cls] = wilson(t, int(pred_n[k]), confidence, min_n)
            recall[cls] = wilson(t, int(true_n[k]), confidence, min_n)
            f1[cls] = _f1_interval(t, int(pred_n[k] - t), int(true_n[k] - t), confidence, min_n)
        ms.per_class = {"precision": precision, "recall": recall, "f1": f1}
        for kind in ("precision", "recall", "f1"):
            ms.metrics[f"macro_{kind}"] = _macro_delta(c, kind, confidence, min_n)
        loss_hi = 1.0 if self.positive_label is not None else 2.0
        for name, mom, hi in (("log_loss", self.log_loss, math.inf), ("brier", self.brier, loss_hi)):
            e = mom.estimate(confidence, min_n)
            ms.metrics[name] = Estimate(e.value, e.n, max(0.0, e.lower), min(hi, e.upper), e.method,
                                        e.sufficient, confidence)
        if self.positive_label is not None:
            auc, same = self._auc(confidence, min_n)
            ms.metrics["roc_auc"] = auc
            ms.extra["auc_same_bin_fraction"] = same
        ms.metrics["ece"] = self._ece(confidence, min_n)
        ms.extra.update({"classes": list(self.classes), "confusion": c.tolist(), "folded": self.folded,
                         "support": {cls: int(true_n[k]) for k, cls in enumerate(self.classes)}})
        return ms

    def _auc(self, confidence: float, min_n: int) -> tuple[Estimate, float]:
        pos, neg = self.auc_pos.astype(np.float64), self.auc_neg.astype(np.float64)
        p, q = pos.sum(), neg.sum()
        if p == 0 or q == 0:
            return Estimate(math.nan, int(p + q), 0.0, 1.0, "hanley_mcneil_binned", False, confidence), math.nan
        below = np.cumsum(neg) - neg
        a = float(pos @ (below + 0.5 * neg)) / (p * q)
        same = float(pos @ neg) / (p * q)
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        var = (a * (1 - a) + (p - 1) * (q1 - a * a) + (q - 1) * (q2 - a * a)) / (p * q)
        est = normal_interval(a, math.sqrt(max(var, 0.0)), int(p + q), "hanley_mcneil_binned", confidence,
                              min_n, 0.0, 1.0, error_bound=same / 2)
        if min(p, q) < min_n:
            est = Estimate(est.value, est.n, est.lower, est.upper, est.method, False, confidence, est.error_bound)
        return est, same

    def _ece(self, confidence: float, min_n: int) -> Estimate:
        cnt = self.ece_count
        total = int(cnt.sum())
        if total == 0:
            return Estimate(math.nan, 0, 0.0, 1.0, "bonferroni_wilson", False, confidence)
        value = float(np.abs(self.ece_hits - self.ece_conf).sum()) / total
        nonempty = np.flatnonzero(cnt)
        level = 1 - (1 - confidence) / len(nonempty)
        lo = hi = 0.0
        for b in nonempty:
            w = wilson(int(self.ece_hits[b]), int(cnt[b]), level)
            mean_conf = self.ece_conf[b] / cnt[b]
            lo += cnt[b] * max(0.0, w.lower - mean_conf, mean_conf - w.upper)
            hi += cnt[b] * max(abs(w.lower - mean_conf), abs(w.upper - mean_conf))
        return Estimate(value, total, lo / total, max(hi / total, value), "bonferroni_wilson",
                        total >= min_n, confidence)

    # -- state ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"positive_label": self.positive_label, "max_classes": self.max_classes,
                "auc_bins": self.auc_bins, "ece_bins": self.ece_bins, "classes": list(self.classes),
                "confusion": self.confusion.tolist(), "folded": self.folded,
                "log_loss": self.log_loss.to_dict(), "brier": self.brier.to_dict(),
                "auc_pos": self.auc_pos.tolist(), "auc_neg": self.auc_neg.tolist(),
                "ece_count": self.ece_count.tolist(), "ece_conf": self.ece_conf.tolist(),
                "ece_hits": self.ece_hits.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassificationAccumulator":
        acc = cls(d["positive_label"], d["max_classes"], d["auc_bins"], d["ece_bins"])
        acc.classes = list(d["classes"])
        acc._index = {c: i for i, c in enumerate(acc.classes)}
        k = len(acc.classes)
        acc.confusion = np.asarray(d["confusion"], dtype=np.int64).reshape(k, k)
        acc.folded = int(d["folded"])
        acc.log_loss = Moments.from_dict(d["log_loss"])
        acc.brier = Moments.from_dict(d["brier"])
        acc.auc_pos = np.asarray(d["auc_pos"], dtype=np.int64)
        acc.auc_neg = np.asarray(d["auc_neg"], dtype=np.int64)
        acc.ece_count = np.asarray(d["ece_count"], dtype=np.int64)
        acc.ece_conf = np.asarray(d["ece_conf"], dtype=np.float64)
        acc.ece_hits = np.asarray(d["ece_hits"], dtype=np.int64)
        return acc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassificationAccumulator) and self.to_dict() == other.to_dict()


def confusion_from_counts(classes: Sequence[Any], counts: Sequence[Sequence[int]],
                          rows_are: str = "true") -> ClassificationAccumulator:
    """An accumulator holding a given confusion matrix (``rows_are`` = "true" or "predicted")."""
    if rows_are not in ("true", "predicted"):
        raise ValueError(f"rows_are: expected 'true' or 'predicted', got {rows_are!r}")
    m = np.asarray(counts, dtype=np.int64)
    if m.shape != (len(classes), len(classes)) or (m < 0).any():
        raise ValueError(f"counts: need a non-negative {len(classes)}x{len(classes)} matrix, got shape {m.shape}")
    acc = ClassificationAccumulator(max_classes=max(2, len(classes) + 1))
    labels = [label_key(c) for c in classes]
    acc._indices(labels)
    acc._grow()
    acc.confusion = m.copy() if rows_are == "true" else m.T.copy()
    return acc


def _f1_interval(tp: int, fp: int, fn: int, confidence: float, min_n: int) -> Estimate:
    m = tp + fp + fn
    j = wilson(tp, m, confidence, min_n)
    if m == 0:
        return Estimate(math.nan, 0, 0.0, 1.0, "wilson_jaccard", False, confidence)
    return Estimate(2 * tp / (2 * tp + fp + fn), m, 2 * j.lower / (1 + j.lower), 2 * j.upper / (1 + j.upper),
                    "wilson_jaccard", j.sufficient, confidence)


def _macro_delta(c: np.ndarray, kind: str, confidence: float, min_n: int) -> Estimate:
    """Macro average of precision/recall/F1 with a delta-method interval over multinomial cells."""
    n = int(c.sum())
    if n == 0:
        return Estimate(math.nan, 0, 0.0, 1.0, "delta", False, confidence)
    p = c / n
    t, r, col = np.diag(p), p.sum(axis=1), p.sum(axis=0)
    present = (r + col) > 0
    a, b_col, b_row = (np.zeros_like(t) for _ in range(3))
    if kind == "precision":
        den = col
    elif kind == "recall":
        den = r
    else:
        den = r + col
    ok = den > 0
    scale = 2.0 if kind == "f1" else 1.0
    vals = np.where(ok, scale * t / np.where(ok, den, 1), 0.0)
    inv = np.where(ok, 1 / np.where(ok, den, 1), 0.0)
    a = scale * inv  # d metric_k / d p_kk (through the numerator)
    slope = -scale * t * inv * inv  # d metric_k / d den_k
    if kind in ("precision", "f1"):
        b_col = slope  # p_ik feeds column sum of class k
    if kind in ("recall", "f1"):
        b_row = slope  # p_ki feeds row sum of class k
    w = present / present.sum()
    grad = np.diag(a * w) + (b_col * w)[None, :] + (b_row * w)[:, None]
    value = float(vals[present].mean())
    var = (float((grad * grad * p).sum()) - float((grad * p).sum()) ** 2) / n
    return normal_interval(value, math.sqrt(max(var, 0.0)), n, "delta", confidence, min_n, 0.0, 1.0)
