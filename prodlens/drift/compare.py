"""``compare()``: one closed window against its reference -> one DriftResult per segment x field.

The stream layer calls it once per closed window of a (model, version)::

    results = compare(window_summary, reference, config)
    for r in results:
        metrics: r.statistics / r.verdict labelled (model, version, segment, field, statistic)
        events:  r.to_dict() for the results with r.verdict in ("warn", "alert")

Statistics per field (see :mod:`prodlens.drift.stats` for definitions and error bounds):

* numeric: ``psi`` and ``js`` on ``bins`` bins at the reference quantiles, ``ks`` (test:
  ``ks_pvalue``, conservative by the sketch bound), ``wasserstein`` and
  ``wasserstein_norm`` (W1 / reference std), ``mean_shift`` ((mean - reference mean) /
  reference std), ``missing_rate``;
* categorical: ``psi`` and ``js`` on the reference's ``top_k`` categories + ``__other__``,
  ``chi2`` (test: ``chi2_pvalue``), ``missing_rate``.

Verdicts (``DriftConfig`` documents the rule): ``ok``, ``warn``, ``alert``,
``insufficient_data`` (fewer than ``min_samples`` values on a side: statistics may be
reported, no verdict, not part of the multiple-testing family) and ``no_reference``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from prodlens.drift import stats as st
from prodlens.drift.config import DriftConfig, ResolvedField
from prodlens.drift.fdr import benjamini_hochberg
from prodlens.sketches.categorical import CategoricalSummary
from prodlens.sketches.numeric import NumericSummary
from prodlens.sketches.summary import ALL, SegmentSummary, WindowSummary

VERDICTS = ("ok", "warn", "alert", "insufficient_data", "no_reference")


@dataclass
class DriftResult:
    """Drift of one field of one segment in one window against the reference."""

    segment: str
    field: str
    kind: str
    verdict: str
    n_current: int
    n_reference: int
    statistics: dict[str, float] = field(default_factory=dict)
    bounds: dict[str, float] = field(default_factory=dict)        # sketch error bounds
    thresholds: dict[str, tuple[float, float]] = field(default_factory=dict)  # effective (warn, alert)
    test: str | None = None
    pvalue: float = math.nan
    qvalue: float = math.nan
    reference_segment: str | None = None
    reasons: list[str] = field(default_factory=list)
    model: str | None = None
    version: str | None = None
    window_start: float | None = None
    window_end: float | None = None

    @property
    def flagged(self) -> bool:
        return self.verdict in ("warn", "alert")

    @property
    def feature(self) -> str:
        """The field name without its ``features.`` prefix."""
        return self.field[len("features."):] if self.field.startswith("features.") else self.field

    def to_dict(self) -> dict:
        """JSON-ready (non-finite numbers become None)."""
        def num(v):
            return v if isinstance(v, (int, float)) and math.isfinite(v) else None
        return {"model": self.model, "version": self.version, "window_start": self.window_start,
                "window_end": self.window_end, "segment": self.segment, "field": self.field,
                "kind": self.kind, "verdict": self.verdict, "n_current": self.n_current,
                "n_reference": self.n_reference,
                "statistics": {k: num(v) for k, v in self.statistics.items()},
                "bounds": {k: num(v) for k, v in self.bounds.items()},
                "thresholds": {k: [num(w), num(a)] for k, (w, a) in self.thresholds.items()},
                "test": self.test, "pvalue": num(self.pvalue), "qvalue": num(self.qvalue),
                "reference_segment": self.reference_segment, "reasons": list(self.reasons)}


def _segments(obj: Any, name: str) -> dict[str, SegmentSummary]:
    if isinstance(obj, SegmentSummary):
        return {ALL: obj}
    segs = getattr(obj, "segments", obj)
    if not isinstance(segs, Mapping):
        raise TypeError(f"{name}: expected a WindowSummary, Reference, SegmentSummary or a mapping "
                        f"segment -> SegmentSummary, got {type(obj).__name__}")
    return dict(segs)


def _missing_rate(s: NumericSummary | CategoricalSummary) -> float:
    total = s.count + s.missing
    return s.missing / total if total else math.nan


def compare_field(path: str, current: NumericSummary | CategoricalSummary,
                  reference: NumericSummary | CategoricalSummary, settings: ResolvedField,
                  config: DriftConfig) -> DriftResult:
    """All statistics of one field (before the multiple-testing step: verdict is provisional)."""
    res = DriftResult(segment="", field=path, kind=current.kind, verdict="ok",
                      n_current=current.count, n_reference=reference.count)
    if current.kind != reference.kind:
        res.verdict = "no_reference"
        res.reasons.append(f"reference summary is {reference.kind}, window is {current.kind}")
        return res
    res.statistics["missing_rate"] = _missing_rate(current)
    if current.count == 0 or reference.count == 0:
        res.verdict = "insufficient_data"
        res.reasons.append("no values" if current.count == 0 else "empty reference")
        return res
    n_eff = st.effective_n(current.count, reference.count)
    if isinstance(current, NumericSummary):
        edges, p, q = st.numeric_bins(reference, current, settings.bins)
        nbins = p.size
        res.statistics["psi"] = st.psi_from_proportions(p, q, config.eps)
        res.statistics["js"] = st.js_distance(p, q)
        dp, dq = current.pmf_error, reference.pmf_error
        if dp or dq:
            lo, hi = st.psi_bounds(p, q, dp, dq, config.eps)
            res.bounds["psi"] = max(res.statistics["psi"] - lo, hi - res.statistics["psi"])
            lo, hi = st.js_bounds(p, q, dp, dq)
            res.bounds["js"] = max(res.statistics["js"] - lo, hi - res.statistics["js"])
        ks = st.ks_from_summaries(reference, current)
        res.statistics["ks"] = ks.statistic
        res.statistics["ks_pvalue"] = ks.pvalue
        res.bounds["ks"] = ks.bound
        w, wb = st.wasserstein_from_summaries(reference, current)
        std = reference.std
        res.statistics["wasserstein"] = w
        res.bounds["wasserstein"] = wb
        scale = std if std and math.isfinite(std) and std > 0 else math.nan
        res.statistics["wasserstein_norm"] = w / scale if scale == scale else (0.0 if w == 0 else math.inf)
        res.bounds["wasserstein_norm"] = wb / scale if scale == scale else math.nan
        res.statistics["mean_shift"] = (current.mean - reference.mean) / scale if scale == scale else math.nan
        res.test, res.pvalue = "ks", ks.conservative_pvalue
        floors = {"psi": lambda: st.psi_noise_floor(n_eff, nbins, config.noise_alpha),
                  "js": lambda: st.js_noise_floor(n_eff, nbins, config.noise_alpha),
                  "ks": lambda: st.ks_noise_floor(current.count, reference.count, config.noise_alpha) + ks.bound,
                  "wasserstein_norm": lambda: st.wasserstein_norm_noise_floor(reference, n_eff, config.noise_alpha)}
    else:
        cats, cur_counts, ref_counts = st.categorical_counts(reference, current, settings.top_k)
        p, q = cur_counts / cur_counts.sum(), ref_counts / ref_counts.sum()
        nbins = int(((p > 0) | (q > 0)).sum())
        res.statistics["psi"] = st.psi_from_proportions(p, q, config.eps)
        res.statistics["js"] = st.js_distance(p, q)
        chi = st.chi2_2xk(ref_counts, cur_counts)
        res.statistics["chi2"] = chi.statistic
        res.statistics["chi2_pvalue"] = chi.pvalue
        if not (current.exact and reference.exact):
            dp = len(cats) * current.error / current.count
            dq = len(cats) * reference.error / reference.count
            lo, hi = st.psi_bounds(p, q, dp, dq, config.eps)
            res.bounds["psi"] = max(res.statistics["psi"] - lo, hi - res.statistics["psi"])
            lo, hi = st.js_bounds(p, q, dp, dq)
            res.bounds["js"] = max(res.statistics["js"] - lo, hi - res.statistics["js"])
        res.test, res.pvalue = "chi2", (chi.pvalue if chi.dof > 0 else math.nan)
        floors = {"psi": lambda: st.psi_noise_floor(n_eff, nbins, config.noise_alpha),
                  "js": lambda: st.js_noise_floor(n_eff, nbins, config.noise_alpha)}
    for name in settings.statistics:
        base = settings.thresholds[name]
        floor = floors[name]() if name in floors else 0.0
        res.thresholds[name] = (max(base.warn, floor), max(base.alert, floor))
    if current.count < settings.min_samples or reference.count < settings.min_samples:
        res.verdict = "insufficient_data"
        res.reasons.append(f"{min(current.count, reference.count)} values < min_samples {settings.min_samples}")
        res.pvalue = math.nan
    return res


def _effect_level(res: DriftResult) -> tuple[int, list[str]]:
    level, reasons = 0, []
    for name, (warn, alert) in res.thresholds.items():
        value = res.statistics.get(name, math.nan)
        if not value >= warn:  # NaN-safe
            continue
        lvl, which, th = (2, "alert", alert) if value >= alert else (1, "warn", warn)
        level = max(level, lvl)
        reasons.append(f"{name} {value:.4g} >= {which} {th:.4g}")
    return level, reasons


def compare(window: WindowSummary | SegmentSummary | Mapping[str, SegmentSummary],
            reference: Any, config: DriftConfig | None = None) -> list[DriftResult]:
    """Compare every segment x field of ``window`` with ``reference``; BH across all of them.

    ``reference`` is a :class:`prodlens.reference.Reference`, another version's
    :class:`WindowSummary` (canary/shadow vs primary), a :class:`SegmentSummary` (used for
    every segment) or a mapping segment -> SegmentSummary. A segment missing from the
    reference is compared with the reference's ``__all__`` segment when
    ``config.fallback_to_all`` (the result names the ``reference_segment`` used).
    Results come sorted by (segment, field).
    """
    config = config or DriftConfig()
    cur_segs = _segments(window, "window")
    ref_segs = _segments(reference, "reference")
    meta = {"model": getattr(window, "model", None), "version": getattr(window, "version", None),
            "window_start": getattr(window, "start", None), "window_end": getattr(window, "end", None)}
    results: list[DriftResult] = []
    for seg_key in sorted(cur_segs):
        ref_key = seg_key if seg_key in ref_segs else (ALL if config.fallback_to_all and ALL in ref_segs else None)
        if ref_key is None and len(ref_segs) == 1 and config.fallback_to_all:
            ref_key = next(iter(ref_segs))
        cur_seg = cur_segs[seg_key]
        ref_seg = ref_segs.get(ref_key) if ref_key is not None else None
        for path in sorted(cur_seg.fields):
            cur = cur_seg.fields[path]
            settings = config.resolve(path, cur.kind)
            if settings is None:
                continue
            ref = ref_seg.fields.get(path) if ref_seg is not None else None
            if ref is None:
                res = DriftResult(segment=seg_key, field=path, kind=cur.kind, verdict="no_reference",
                                  n_current=cur.count, n_reference=0,
                                  reasons=[f"no reference for segment {seg_key!r}" if ref_seg is None
                                           else "field not in the reference"])
            else:
                res = compare_field(path, cur, ref, settings, config)
                res.segment = seg_key
                res.reference_segment = ref_key
            for k, v in meta.items():
                setattr(res, k, v)
            results.append(res)
    family = [i for i, r in enumerate(results) if r.verdict == "ok" and not math.isnan(r.pvalue)]
    if family:
        reject, q = benjamini_hochberg([results[i].pvalue for i in family], config.alpha)
        for j, i in enumerate(family):
            r = results[i]
            r.qvalue = float(q[j])
            level, reasons = _effect_level(r)
            if reject[j] and level:
                r.verdict = "alert" if level == 2 else "warn"
                r.reasons = reasons + [f"{r.test} q={r.qvalue:.3g} <= alpha {config.alpha}"]
            elif level:
                r.reasons = reasons + [f"not significant: {r.test} q={r.qvalue:.3g} > alpha {config.alpha}"]
    return results


def flagged(results: list[DriftResult], level: str = "warn") -> list[DriftResult]:
    """Results at or above ``level`` ('warn' or 'alert')."""
    wanted = ("warn", "alert") if level == "warn" else ("alert",)
    return [r for r in results if r.verdict in wanted]


__all__ = ["DriftResult", "compare", "compare_field", "flagged", "VERDICTS"]
