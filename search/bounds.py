"""Monotone accuracy bounds from evaluated schemes.

At a fixed partition point, accuracy is assumed non-decreasing in kept channels c and bits b,
within a tolerance `tol` (measured accuracy is noisy). From the evaluated set E:

    lower(s) = max{ A(e) : e in E, e.p = s.p, e.c <= s.c, e.b <= s.b } - tol
    upper(s) = min{ A(e) : e in E, e.p = s.p, e.c >= s.c, e.b >= s.b } + tol

and an evaluated scheme's bounds are its measured value. On the (C_p x 8) grid of a point
these are 2-D prefix maxima / suffix minima: two numpy accumulates per point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from compress.scheme import BITS

if TYPE_CHECKING:
    from search.space import Space

# Default accepted non-monotonicity of measured accuracy: 0.5 % (3 test images of the default
# app). Calibrated on the complete default table (1-epoch fine-tunes are noisy): with 1 image
# the exhaustive optimum was missed on 3 of 40 benchmark queries, with 2 on 1, with 3 on none.
DEFAULT_TOLERANCE = 0.005


class Knowledge:
    """Measured accuracies (NaN = not evaluated) and the monotone bounds they imply."""

    def __init__(self, space: Space, tol: float = 0.0) -> None:
        self.space = space
        self.tol = tol
        self.acc = np.full(space.size, np.nan)

    @property
    def evaluated(self) -> np.ndarray:
        return ~np.isnan(self.acc)

    def add(self, i: int, accuracy: float) -> None:
        self.acc[i] = accuracy

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) for every scheme; -inf / +inf where nothing evaluated bounds it."""
        lower = np.empty(self.space.size)
        upper = np.empty(self.space.size)
        for pt in self.space.points:
            sl = self.space.grid_slice(pt.index)
            grid = self.acc[sl].reshape(pt.channels, len(BITS))
            known = ~np.isnan(grid)
            lo = np.where(known, grid, -np.inf)
            lo = np.maximum.accumulate(np.maximum.accumulate(lo, axis=0), axis=1) - self.tol
            hi = np.where(known, grid, np.inf)[::-1, ::-1]
            hi = (np.minimum.accumulate(np.minimum.accumulate(hi, axis=0), axis=1) + self.tol)[::-1, ::-1]
            lower[sl] = np.where(known, grid, lo).ravel()
            upper[sl] = np.where(known, grid, hi).ravel()
        return lower, upper

    def dominated_counts(self, mask: np.ndarray) -> np.ndarray:
        """For every scheme s: how many schemes of `mask` at s.p have c <= s.c and b <= s.b."""
        out = np.empty(self.space.size)
        for pt in self.space.points:
            sl = self.space.grid_slice(pt.index)
            grid = mask[sl].reshape(pt.channels, len(BITS)).astype(np.int64)
            out[sl] = grid.cumsum(0).cumsum(1).ravel()
        return out

    def violations(self, level: float) -> list[tuple[int, int, float]]:
        """Evaluated pairs (i, j), j dominating i, with A(i) >= level > A(j) + tol: measured
        non-monotonicity that crosses `level`, i.e. evidence that a proof "j falls short of the
        level, so everything j dominates does too" can be wrong. Returns (i, j, A(i) - A(j))."""
        out = []
        s = self.space
        idx = np.flatnonzero(self.evaluated)
        high = idx[self.acc[idx] >= level]
        low = idx[self.acc[idx] + self.tol < level]
        for i in high:
            dom = low[(s.p[low] == s.p[i]) & (s.c[low] >= s.c[i]) & (s.b[low] >= s.b[i])]
            out += [(int(i), int(j), float(self.acc[i] - self.acc[j])) for j in dom]
        return out
