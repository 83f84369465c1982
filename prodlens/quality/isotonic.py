"""Isotonic (monotone non-decreasing) regression by pool-adjacent-violators, numpy only.

:func:`fit_isotonic` returns an :class:`IsotonicMap`: the fitted step function's
breakpoints, evaluated by linear interpolation between them and clipped outside the
fitted range — the same function as scikit-learn's
``IsotonicRegression(out_of_bounds="clip")`` (ties in x are pooled first, as
scikit-learn does). The fit is exact (PAVA solves the weighted least-squares problem
under the order constraint); in-sample, each pooled block's value is the mean
outcome of the block, so the map is calibrated on its own data by construction.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class IsotonicMap:
    """A monotone piecewise-linear map x → y given by breakpoints."""

    __slots__ = ("x", "y")

    def __init__(self, x: Sequence[float], y: Sequence[float]):
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        if self.x.shape != self.y.shape or self.x.size == 0:
            raise ValueError("IsotonicMap: x and y must be non-empty and of equal length")

    def __call__(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(values, dtype=np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "IsotonicMap":
        return cls(d["x"], d["y"])


def fit_isotonic(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                 weights: Sequence[float] | np.ndarray | None = None) -> IsotonicMap:
    """Weighted isotonic regression of y on x (non-decreasing)."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    wa = np.ones_like(xa) if weights is None else np.asarray(weights, dtype=np.float64)
    if xa.shape != ya.shape or xa.shape != wa.shape or xa.ndim != 1 or xa.size == 0:
        raise ValueError("fit_isotonic: x, y (and weights) must be equal-length, non-empty 1-D arrays")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()) or (wa <= 0).any():
        raise ValueError("fit_isotonic: x and y must be finite and weights positive")
    ux, inv = np.unique(xa, return_inverse=True)
    w = np.bincount(inv, weights=wa)
    s = np.bincount(inv, weights=wa * ya)
    # PAVA over the unique x: a stack of blocks (value sum, weight, first index).
    sums, wts, starts = [], [], []
    for i in range(ux.size):
        cs, cw, st = s[i], w[i], i
        while sums and sums[-1] / wts[-1] >= cs / cw:
            cs += sums.pop()
            cw += wts.pop()
            st = starts.pop()
        sums.append(cs)
        wts.append(cw)
        starts.append(st)
    values = np.asarray(sums) / np.asarray(wts)
    first = np.asarray(starts)
    last = np.append(first[1:] - 1, ux.size - 1)
    # Breakpoints: each block's first and last x (one point when they coincide).
    bx = np.column_stack([ux[first], ux[last]]).ravel()
    by = np.repeat(values, 2)
    keep = np.ones(bx.size, dtype=bool)
    keep[1::2] = first != last
    return IsotonicMap(bx[keep], by[keep])
