"""Multiple-testing correction across features x segments: Benjamini-Hochberg.

``benjamini_hochberg(pvalues, alpha)`` returns the reject mask and the BH-adjusted p-values
(q-values); both equal ``statsmodels.stats.multitest.multipletests(p, alpha, "fdr_bh")``.
NaN p-values (no verdict) are left out of the family and come back as NaN / not rejected.

Why BH: a window tests every feature of every segment at once (often hundreds of tests);
testing each at alpha would raise about ``alpha x tests`` false alarms per window. BH keeps
the expected share of false discoveries at or below ``alpha`` (independent or positively
dependent tests; Benjamini & Hochberg 1995, Benjamini & Yekutieli 2001). When nothing has
drifted every discovery is false, so the FDR equals the probability of *any* false alarm:
a stationary window raises an alarm with probability at most ``alpha``.

>>> reject, q = benjamini_hochberg([0.01, 0.04, 0.03, 0.2], alpha=0.05)
>>> reject.tolist(), [round(float(v), 4) for v in q]
([True, False, False, False], [0.04, 0.0533, 0.0533, 0.2])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def benjamini_hochberg(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(reject mask, adjusted p-values) by the Benjamini-Hochberg step-up procedure."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    if ((p < 0) | (p > 1)).any():
        raise ValueError("pvalues: must be in [0, 1]")
    q = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, dtype=bool)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return reject, q
    pv = p[ok]
    order = np.argsort(pv, kind="mergesort")
    ranked = pv[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    q[ok] = out
    # step-up: reject every p at or below the largest p_(i) with p_(i) <= alpha i / m
    below = np.flatnonzero(pv[order] <= alpha * np.arange(1, m + 1) / m)
    rej = np.zeros(m, dtype=bool)
    if below.size:
        rej[order[: below[-1] + 1]] = True
    reject[ok] = rej
    return reject, q
