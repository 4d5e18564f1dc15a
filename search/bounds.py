"""Monotone accuracy bounds from evaluated schemes.

At a fixed partition point, accuracy is assumed non-decreasing in kept channels c and bits b,
within a tolerance `tol` (measured accuracy is noisy). From the evaluated set E:

    lower(s) = max{ A(e) : e in E, e.p = s.p, e.c <= s.c, e.b <= s.b } - tol
    upper(s) = min{ A(e) : e in E, e.p = s.p, e.c >= s.c, e.b >= s.b } + tol

and an evaluated scheme's bounds are its measured value. On the (C_p x 8) grid of a point
these are 2-D prefix maxima / suffix minima: two numpy accumulates per point.
"""

from __future__ import annotations

import numpy as np

from search.space import Space


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
            grid = self.acc[sl].reshape(pt.channels, 8)
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
            grid = mask[sl].reshape(pt.channels, 8).astype(np.int64)
            out[sl] = grid.cumsum(0).cumsum(1).ravel()
        return out

    def dominators(self, i: int, among: np.ndarray) -> np.ndarray:
        """Indices j in `among` (bool mask) at the same point with c_j >= c_i and b_j >= b_i."""
        s = self.space
        hit = among & (s.p == s.p[i]) & (s.c >= s.c[i]) & (s.b >= s.b[i])
        return np.flatnonzero(hit)

    def violations(self) -> list[tuple[int, int, float]]:
        """Pairs (lower scheme i, higher scheme j) of evaluated schemes where j dominates i but
        A(j) < A(i) - tol: measured non-monotonicity beyond the tolerance."""
        out = []
        s = self.space
        idx = np.flatnonzero(self.evaluated)
        for i in idx:
            dom = idx[(s.p[idx] == s.p[i]) & (s.c[idx] >= s.c[i]) & (s.b[idx] >= s.b[i]) & (idx != i)]
            for j in dom[self.acc[dom] < self.acc[i] - self.tol - 1e-12]:
                out.append((int(i), int(j), float(self.acc[i] - self.acc[j])))
        return out
