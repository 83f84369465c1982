"""Confidence-based performance estimation (CBPE) for binary classifiers, streaming.

Labels can take days. For a classifier with scores, a window's accuracy, precision,
recall and F1 can be estimated before any label arrives (NannyML's CBPE, in batch
there): calibrate scores into probabilities p = P(y=1 | score) on labelled reference
data, then for each prediction with decision ŷ (score >= threshold, or the model's
label) the confusion-matrix cell it lands in is random with known probabilities:
TP with p and FP with 1-p when ŷ=1, FN with p and TN with 1-p when ŷ=0.

Per window the state is six sums, so it streams and merges:
n, m = #(ŷ=1), A = Σ_{ŷ=1} p, vA = Σ_{ŷ=1} p(1-p), B = Σ_{ŷ=0} p, vB = Σ_{ŷ=0} p(1-p),
plus a histogram of raw scores over the reference's PSI bins.

Estimates (E[TP] = A, E[FP] = m - A, E[FN] = B, E[TN] = n - m - B):

* accuracy = (A + n - m - B)/n. Given the scores, the realized count of correct
  predictions is a sum of independent Bernoullis (Poisson binomial) with variance
  vA + vB, so realized accuracy = estimate ± z·sqrt(vA + vB)/n (normal approximation).
* precision = A/m: the denominator m is known, variance vA/m².
* recall = A/(A + B), F1 = 2A/(A + m + B): ratios of the independent Poisson-binomial
  sums TP ~ (A, vA) and FN ~ (B, vB); delta-method variances
  Var(recall) ≈ (B²·vA + A²·vB)/(A+B)⁴ and
  Var(F1) ≈ (4(m+B)²·vA + 4A²·vB)/(A+m+B)⁴.

These intervals are prediction intervals for the *realized* metric of the window:
they cover the sampling of outcomes given perfectly calibrated probabilities. They do
not include calibration error, which CBPE cannot see without labels — hence the
``trustworthy`` flag: False when the reference calibration error (ECE of the
calibrated probabilities, out-of-fold, in bins of (decision, probability) because CBPE
needs P(y=1 | p, ŷ) = p) exceeds ``max_ece``, or when the window's raw scores drifted
from the reference (PSI over reference-decile bins > ``max_psi``, default 0.25), or
when the window has no scores. Concept drift (P(y | score) changing while scores
look the same) is invisible to CBPE: compare with the realized metrics once labels
arrive.

Calibration: isotonic regression (:mod:`prodlens.quality.isotonic`), or ``"none"``
when the scores are already probabilities.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .intervals import DEFAULT_CONFIDENCE, DEFAULT_MIN_N, Estimate, normal_interval
from .isotonic import IsotonicMap, fit_isotonic
from .results import MetricSet

PSI_EPS = 1e-4  # floor on bin shares so empty bins give a finite PSI


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index Σ (a - e)·ln(a / e) over bin shares (floored at 1e-4)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_EPS)
    return float(((a - e) * np.log(a / e)).sum())


def _ece_by_decision(p: np.ndarray, y: np.ndarray, decision: np.ndarray, bins: int) -> float:
    idx = np.minimum((p * bins).astype(np.int64), bins - 1) + bins * decision.astype(np.int64)
    cnt = np.bincount(idx, minlength=2 * bins)
    gap = np.bincount(idx, weights=y - p, minlength=2 * bins)
    return float(np.abs(gap).sum() / max(cnt.sum(), 1))


class CBPEReference:
    """Calibration and drift baseline fitted once on labelled reference data."""

    def __init__(self, calibration: IsotonicMap | None, threshold: float, psi_edges: Sequence[float],
                 psi_reference: Sequence[float], reference_ece: float, n_reference: int,
                 max_ece: float = 0.05, max_psi: float = 0.25):
        self.calibration = calibration
        self.threshold = float(threshold)
        self.psi_edges = np.asarray(psi_edges, dtype=np.float64)
        self.psi_reference = np.asarray(psi_reference, dtype=np.float64)
        self.reference_ece = float(reference_ece)
        self.n_reference = int(n_reference)
        self.max_ece = float(max_ece)
        self.max_psi = float(max_psi)

    @classmethod
    def fit(cls, scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, threshold: float = 0.5,
            calibration: str = "isotonic", ece_bins: int = 10, psi_bins: int = 10, folds: int = 5, seed: int = 0,
            max_ece: float = 0.05, max_psi: float = 0.25) -> "CBPEReference":
        """Fit on reference scores (in [0, 1]) and binary labels (1/True = positive).

        The reference ECE is measured out-of-fold (``folds``-fold cross-fitting), since an
        isotonic map is calibrated on its own training data by construction.
        """
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if s.ndim != 1 or s.shape != y.shape or s.size < 2 * folds:
            raise ValueError(f"scores/labels: need equal-length 1-D arrays with at least {2 * folds} values")
        if not np.isfinite(s).all() or (s < 0).any() or (s > 1).any():
            raise ValueError("scores: must be finite and in [0, 1]")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("labels: must be 0/1 or booleans")
        if calibration not in ("isotonic", "none"):
            raise ValueError(f"calibration: expected 'isotonic' or 'none', got {calibration!r}")
        decision = s >= threshold
        if calibration == "none":
            cal, oof = None, s
        else:
            cal = fit_isotonic(s, y)
            oof = np.empty_like(s)
            fold = np.random.default_rng(seed).permutation(s.size) % folds
            for f in range(folds):
                train = fold != f
                oof[~train] = fit_isotonic(s[train], y[train])(s[~train])
        edges = np.unique(np.quantile(s, np.linspace(0, 1, psi_bins + 1)[1:-1]))
        ref_counts = np.bincount(np.searchsorted(edges, s, side="right"), minlength=edges.size + 1)
        return cls(cal, threshold, edges, ref_counts / s.size, _ece_by_decision(oof, y, decision, ece_bins),
                   s.size, max_ece, max_psi)

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) if self.calibration is None else self.calibration(scores)

    def to_dict(self) -> dict:
        return {"calibration": None if self.calibration is None else self.calibration.to_dict(),
                "threshold": self.threshold, "psi_edges": self.psi_edges.tolist(),
                "psi_reference": self.psi_reference.tolist(), "reference_ece": self.reference_ece,
                "n_reference": self.n_reference, "max_ece": self.max_ece, "max_psi": self.max_psi}

    @classmethod
    def from_dict(cls, d: dict) -> "CBPEReference":
        cal = None if d["calibration"] is None else IsotonicMap.from_dict(d["calibration"])
        return cls(cal, d["threshold"], d["psi_edges"], d["psi_reference"], d["reference_ece"], d["n_reference"],
                   d["max_ece"], d["max_psi"])


class CBPEWindow:
    """Expected-confusion sums for one window; mergeable, serialisable."""

    def __init__(self, reference: CBPEReference):
        self.reference = reference
        self.n = 0
        self.m = 0
        self.a = self.va = self.b = self.vb = 0.0
        self.score_counts = np.zeros(reference.psi_edges.size + 1, dtype=np.int64)

    def update_many(self, scores: Sequence[float] | np.ndarray,
                    predicted_positive: Sequence[bool] | None = None) -> None:
        """Add predictions: raw scores (NaN/None skipped) and, optionally, the model's decisions
        (default: score >= the reference threshold)."""
        s = np.array([np.nan if v is None else v for v in scores], dtype=np.float64) \
            if not isinstance(scores, np.ndarray) else scores.astype(np.float64)
        ok = ~np.isnan(s)
        if predicted_positive is not None:
            if len(predicted_positive) != s.size:
                raise ValueError(f"predicted_positive: has {len(predicted_positive)} values, scores has {s.size}")
            dec = np.asarray(predicted_positive, dtype=bool)[ok]
        else:
            dec = s[ok] >= self.reference.threshold
        s = s[ok]
        if s.size == 0:
            return
        if (s < 0).any() or (s > 1).any():
            raise ValueError("scores: must lie in [0, 1]")
        p = self.reference.calibrate(s)
        v = p * (1 - p)
        self.n += int(s.size)
        self.m += int(dec.sum())
        self.a += float(p[dec].sum())
        self.va += float(v[dec].sum())
        self.b += float(p[~dec].sum())
        self.vb += float(v[~dec].sum())
        self.score_counts += np.bincount(np.searchsorted(self.reference.psi_edges, s, side="right"),
                                         minlength=self.score_counts.size)

    def merge(self, other: "CBPEWindow") -> "CBPEWindow":
        if other.score_counts.size != self.score_counts.size:
            raise ValueError("can only merge CBPE windows built on the same reference")
        self.n += other.n
        self.m += other.m
        self.a += other.a
        self.va += other.va
        self.b += other.b
        self.vb += other.vb
        self.score_counts += other.score_counts
        return self

    def psi(self) -> float:
        return psi(self.reference.psi_reference, self.score_counts / self.n) if self.n else math.nan

    def result(self, confidence: float = DEFAULT_CONFIDENCE, min_n: int = DEFAULT_MIN_N) -> MetricSet:
        n, m, a, b, va, vb = self.n, self.m, self.a, self.b, self.va, self.vb
        ms = MetricSet()
        nan = math.nan

        def est(value: float, var: float, size: int, method: str) -> Estimate:
            if size == 0 or not math.isfinite(value):
                return Estimate(nan, size, 0.0, 1.0, method, False, confidence)
            return normal_interval(value, math.sqrt(max(var, 0.0)), size, method, confidence, min_n, 0.0, 1.0)

        ms.metrics["estimated_accuracy"] = est((a + n - m - b) / n if n else nan, (va + vb) / n ** 2 if n else 0,
                                               n, "cbpe_poisson_binomial")
        ms.metrics["estimated_precision"] = est(a / m if m else nan, va / m ** 2 if m else 0, m,
                                                "cbpe_poisson_binomial")
        pos = a + b
        ms.metrics["estimated_recall"] = est(a / pos if pos > 0 else nan,
                                             (b * b * va + a * a * vb) / pos ** 4 if pos > 0 else 0, n, "cbpe_delta")
        den = a + m + b
        ms.metrics["estimated_f1"] = est(2 * a / den if den > 0 else nan,
                                         (4 * (m + b) ** 2 * va + 4 * a * a * vb) / den ** 4 if den > 0 else 0, n,
                                         "cbpe_delta")
        drift = self.psi()
        reasons = []
        if self.reference.reference_ece > self.reference.max_ece:
            reasons.append("reference_calibration_error")
        if n == 0:
            reasons.append("no_scores")
        elif drift > self.reference.max_psi:
            reasons.append("score_drift")
        ms.extra = {"trustworthy": not reasons, "untrusted_because": reasons, "score_psi": drift,
                    "reference_ece": self.reference.reference_ece, "expected_tp": a, "expected_fp": m - a,
                    "expected_fn": b, "expected_tn": n - m - b}
        return ms

    def to_dict(self) -> dict:
        return {"n": self.n, "m": self.m, "a": self.a, "va": self.va, "b": self.b, "vb": self.vb,
                "score_counts": self.score_counts.tolist()}

    @classmethod
    def from_dict(cls, d: dict, reference: CBPEReference) -> "CBPEWindow":
        w = cls(reference)
        if len(d["score_counts"]) != w.score_counts.size:
            raise ValueError("score_counts: state was built on a different reference")
        w.n, w.m = int(d["n"]), int(d["m"])
        w.a, w.va, w.b, w.vb = float(d["a"]), float(d["va"]), float(d["b"]), float(d["vb"])
        w.score_counts = np.asarray(d["score_counts"], dtype=np.int64)
        return w

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CBPEWindow) and self.to_dict() == other.to_dict()
