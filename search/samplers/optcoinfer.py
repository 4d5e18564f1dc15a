"""`OptCoInferSampler`: the Opt-CoInfer paper's search (its `latency_search.py`), re-implemented as
an Optuna sampler (search/samplers/base.py) with numpy-vectorised bounds. A baseline for `coinfer`.

Everything is in loss terms: loss = base accuracy - accuracy. The paper keeps two constraints:

- latency query (min latency s.t. loss <= e): the loss constraint is e; the latency constraint
  starts at the best single-end latency and every evaluated scheme meeting e lowers it to that
  scheme's latency (it becomes the optimum);
- accuracy query (min loss s.t. latency <= r x best single-end latency): the latency constraint
  is the budget; the loss constraint starts at 0.1 and every evaluated scheme within the budget
  meeting it lowers it to that scheme's loss.

The available set is the unevaluated schemes within the latency constraint. Each step:

1. filter: available schemes whose loss UPPER bound is <= the loss constraint, where the bound
   is the min of (0) the least loss of an evaluated scheme at the same point that it dominates
   (c_e <= c, b_e <= b), (1) linear interpolation along c between the closest evaluated
   smaller-c and larger-c schemes (same p, b), (2) the same along b (same p, c); (1) and (2)
   count only where (0) exists. If this set is non-empty, evaluate one of it uniformly at random.
2. otherwise space shrink: remove for good the available schemes whose loss LOWER bound is >=
   the loss constraint, the bound being the max of 0 and (0) the greatest loss of an evaluated
   scheme at the same point dominating it, (2) linear extrapolation along c from the two closest
   evaluated smaller-c schemes, (3) along b from the two closest larger-b schemes, (4) along b
   from the two closest smaller-b schemes. Stop when nothing is left available.
3. otherwise fit a Gaussian process (Matern kernel, nu = 0.01, one length scale per input) to
   the loss of every evaluated scheme, inputs normalised as (p / P, c / C_p, b / 8), plus three
   fake anchors per point: (p, 0, 1) and (p, 1, 0) with loss 1, (p, 1000, 10) with loss 0; and
   evaluate the available scheme of highest probability of improvement
   Phi((loss constraint - mu) / (std + 1e-9)). When the predicted means are nearly flat
   (std(mu) < 1e-2) it falls back to a fixed order instead.

Linear interpolation / extrapolation are bounds only for a loss convex along c and b: on other
surfaces the paper's filter and shrink are heuristics and it may miss the optimum. In an accuracy
query whose optimum loses more than 0.1, the shrink (lower bound >= 0.1) may discard the optimum
too; the answer is then the best scheme the search happened to evaluate.

Where this differs from the paper's code:

- State is derived from what the study knows on every call (constraints from the evaluated
  schemes, so schemes already in the database count as evaluated); only the space-shrink
  removals and the random generator are kept between calls (one sampler, one search). The constraints
  equal the paper's sequential updates, except that the paper accepts a loss up to 1e-5 above
  the constraint and we use the problem's own feasibility test (`Problem.threshold`, slack
  1e-9) for the latency query and a plain minimum for the accuracy query.
- The latency constraint is applied before every filter. The paper's filter loop re-runs
  filter() once on the stale available set after an evaluation lowered the latency
  constraint, so it can evaluate a scheme slower than the new optimum and, when it meets e,
  make it the optimum (a worse answer).
- The accuracy budget is `Problem.budget` with <= (the paper: latency < r x reference).
- Probability of improvement is in loss units throughout. The paper's acquisition adds its base
  top-1 error 0.151 to the loss constraint (Phi((0.151 + constraint - mu) / (std + 1e-9))),
  mixing an error with a loss; the GP is fitted to losses, so we leave it out.
- Flat-mean fallback: the lowest-latency available scheme for a latency query, the
  highest-latency one for an accuracy query. The paper takes the first / last available scheme
  in (p, c, b) order, which within one point is the lowest / highest latency.
- Randomness is seeded: the filter pick uses numpy's Generator(seed) (the paper: Python's
  unseeded `random.sample`), and the GP's optimizer restarts use random_state = seed + number of
  evaluated schemes. `n_restarts` (default 100 as in the paper) is a parameter.
- The anchors are placed at every point of this space and normalised by its widths (the paper
  hard-codes 13 points and the VGG-16 widths).
- The answer is the runner's (best evaluated scheme by `Problem.status`), not the paper's
  `optimal_scheme` variable; with exact values they coincide.
- The GP kernel is scikit-learn's Matern with an analytic length-scale gradient (`_Matern`);
  scikit-learn differentiates the general-nu kernel by finite differences, about twice as slow
  overall. Same kernel, same likelihood; only the optimizer's path can differ slightly.

Kept on purpose: the Matern nu = 0.01 of the paper. scikit-learn evaluates it with its general
Bessel formula; it works (finite fits and predictions), but with nu -> 0 the kernel falls from 1
on the diagonal to ~0.5 at any practically small distance (0.27 at 1e-6, 0.13 at 0.01 length
scales) and only approaches 1 at astronomically small ones, so it acts like a large nugget. The
paper also computes an extrapolated lower bound from the two closest larger-c schemes, but stores
it in a misspelt variable and never uses it; that omission is replicated (see `loss_bounds`).
The shrink test is >= as in the paper, so with e = 0 (lower bounds start at 0) a latency query
discards every scheme at once and answers the single end.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.spatial.distance import pdist, squareform
from scipy.special import gamma, kv
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Matern

from cli.errors import CoInferError
from compress.scheme import BITS, MAX_BITS, Scheme
from search.bounds import Knowledge
from search.problem import Problem
from search.samplers.base import PlannerSampler
from search.space import Space
from search.status import Status

INITIAL_LOSS_CONSTRAINT = 0.1  # accuracy query: the paper's starting loss constraint
FLAT_MEAN = 1e-2  # std of the GP means below which the paper falls back to a fixed order
NU = 0.01


class _Matern(Matern):
    """scikit-learn's Matern kernel with an analytic length-scale gradient for a general nu.

    The kernel is scikit-learn's own (same formula, same eps at zero distance, diagonal 1); only
    the gradient differs: scikit-learn approximates it by finite differences (three extra Bessel
    evaluations per step for three length scales), we use d/dt [t^nu K_nu(t)] = -t^nu K_(nu-1)(t),
    which makes a fit about twice as cheap. The fitted model is the same up to the
    optimizer's path."""

    def __call__(self, X, Y=None, eval_gradient=False):
        if not eval_gradient or self.nu in (0.5, 1.5, 2.5, np.inf) or self.hyperparameter_length_scale.fixed:
            return super().__call__(X, Y, eval_gradient)
        if Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        X = np.atleast_2d(X)
        ls = np.broadcast_to(np.asarray(self.length_scale, dtype=float), (X.shape[1],))
        sq = np.stack([pdist(X[:, [k]] / ls[k], metric="sqeuclidean") for k in range(X.shape[1])], axis=-1)
        dists = np.sqrt(sq.sum(-1))
        zero = dists == 0.0
        r = np.where(zero, np.finfo(float).eps, dists)
        t = math.sqrt(2 * self.nu) * r
        coef = 2 ** (1.0 - self.nu) / gamma(self.nu) * t**self.nu
        K = squareform(coef * kv(self.nu, t))
        np.fill_diagonal(K, 1)
        # dK/d log(l_k) = coef * K_(nu-1)(t) * 2 nu * (dx_k / l_k)^2 / t; zero distances stay eps (constant)
        g = np.where(zero, 0.0, coef * kv(self.nu - 1, t) * 2 * self.nu / t)[:, None] * sq
        if not self.anisotropic:
            g = g.sum(-1, keepdims=True)
        return K, np.stack([squareform(g[:, k]) for k in range(g.shape[1])], axis=-1)


def _neighbours(known: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every cell of a 2-D grid, the indices along `axis` of the closest and second-closest
    known cells strictly before it (prev1, prev2) and strictly after it (next1, next2) on the
    same line; -1 where there is none."""
    n = known.shape[axis]
    shape = [1, 1]
    shape[axis] = n
    pos = np.broadcast_to(np.arange(n).reshape(shape), known.shape)
    last_le = np.maximum.accumulate(np.where(known, pos, -1), axis=axis)
    first_ge = np.flip(np.minimum.accumulate(np.flip(np.where(known, pos, n), axis=axis), axis=axis), axis=axis)
    first_ge = np.where(first_ge == n, -1, first_ge)
    pad = np.full(np.take(known, [0], axis=axis).shape, -1)
    prev1 = np.concatenate([pad, np.take(last_le, np.arange(n - 1), axis=axis)], axis=axis)
    next1 = np.concatenate([np.take(first_ge, np.arange(1, n), axis=axis), pad], axis=axis)
    prev2 = np.where(prev1 >= 0, np.take_along_axis(prev1, np.maximum(prev1, 0), axis=axis), -1)
    next2 = np.where(next1 >= 0, np.take_along_axis(next1, np.maximum(next1, 0), axis=axis), -1)
    return prev1, prev2, next1, next2


def _line(grid: np.ndarray, axis: int, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """Value at each cell of the straight line through cells i1 and i2 (indices along `axis`,
    -1 = missing) of `grid`; NaN where either is missing."""
    ok = (i1 >= 0) & (i2 >= 0) & (i1 != i2)
    j1, j2 = np.maximum(i1, 0), np.maximum(i2, 0)
    v1 = np.take_along_axis(grid, j1, axis=axis)
    v2 = np.take_along_axis(grid, j2, axis=axis)
    shape = [1, 1]
    shape[axis] = grid.shape[axis]
    x = np.broadcast_to(np.arange(grid.shape[axis]).reshape(shape), grid.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (v1 - v2) / (j1 - j2) * (x - j2) + v2
    return np.where(ok, out, np.nan)


def loss_bounds(space: Space, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's (lower, upper) loss bounds for every scheme from `loss` (NaN = unevaluated).

    upper: min of the monotone bound (least loss of an evaluated scheme it dominates) and the
    interpolations along c and along b; +inf where the monotone bound does not exist (the paper
    then leaves the scheme out of the filter).
    lower: max of 0, the monotone bound (greatest loss of an evaluated scheme dominating it),
    and the extrapolations from the two closest smaller-c, larger-b and smaller-b schemes.
    Values at evaluated schemes are not meaningful (only unevaluated ones are ever asked)."""
    lower = np.zeros(space.size)
    upper = np.full(space.size, np.inf)
    for pt in space.points:
        sl = space.grid_slice(pt.index)
        g = loss[sl].reshape(pt.channels, len(BITS))
        known = ~np.isnan(g)
        if not known.any():
            continue
        up0 = np.minimum.accumulate(np.minimum.accumulate(np.where(known, g, np.inf), axis=0), axis=1)
        lo0 = np.where(known, g, -np.inf)[::-1, ::-1]
        lo0 = np.maximum.accumulate(np.maximum.accumulate(lo0, axis=0), axis=1)[::-1, ::-1]
        cp1, cp2, cn1, _cn2 = _neighbours(known, 0)
        bp1, bp2, bn1, bn2 = _neighbours(known, 1)
        up1 = _line(g, 0, cn1, cp1)  # interpolation along c (same p, b)
        up2 = _line(g, 1, bn1, bp1)  # interpolation along b (same p, c)
        up = np.fmin(np.fmin(up0, up1), up2)
        upper[sl] = np.where(np.isfinite(up0), up, np.inf).ravel()
        # The paper also extrapolates from the two closest larger-c schemes (cn1, _cn2) but assigns
        # it to an unused variable, so that bound never acts; we replicate the omission.
        lo2 = _line(g, 0, cp1, cp2)  # from the two closest smaller-c schemes
        lo3 = _line(g, 1, bn1, bn2)  # from the two closest larger-b schemes
        lo4 = _line(g, 1, bp1, bp2)  # from the two closest smaller-b schemes
        lo = np.fmax(np.fmax(np.fmax(np.maximum(lo0, 0.0), lo2), lo3), lo4)
        lower[sl] = lo.ravel()
    return lower, upper


class OptCoInferSampler(PlannerSampler):
    name = "optcoinfer"

    def __init__(self, problem: Problem, known: dict[Scheme, float] | None = None, seed: int = 0,
                 n_restarts: int = 100, wait_s: float = 600.0) -> None:
        if n_restarts < 0:
            raise CoInferError(f"n_restarts must be >= 0, got {n_restarts}")
        super().__init__(problem, known, 0.0, wait_s)
        self.seed = seed
        self.n_restarts = n_restarts
        s = problem.space
        widths = np.array([pt.channels for pt in s.points], dtype=float)
        self._widths = widths
        self._x = np.column_stack([s.p / len(s.points), s.c / widths[s.p], s.b / MAX_BITS])
        self._anchors_x, self._anchors_y = self._anchors()
        self.rng = np.random.default_rng(seed)
        self.removed = np.zeros(s.size, dtype=bool)

    def _anchors(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._widths)
        p = np.repeat(np.arange(n), 3)
        c = np.tile([0.0, 1.0, 1000.0], n)
        b = np.tile([1.0, 0.0, 10.0], n)
        x = np.column_stack([p / n, c / self._widths[p], b / MAX_BITS])
        return x, np.tile([1.0, 1.0, 0.0], n)

    def constraints(self, kn: Knowledge) -> tuple[np.ndarray, float]:
        """(schemes within the latency constraint, loss constraint) as the paper would hold them."""
        return self.problem.query.paper_constraints(self.problem, kn, INITIAL_LOSS_CONSTRAINT)

    def _filter_and_shrink(self, kn: Knowledge, held: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Steps 1 and 2: (filtered set, available set after the shrink, losses, loss constraint)."""
        within, loss_con = self.constraints(kn)
        loss = self.problem.base - kn.acc
        available = ~kn.evaluated & within & ~self.removed & ~held
        lower, upper = loss_bounds(self.problem.space, loss)
        chosen = available & (upper <= loss_con)
        if not chosen.any():
            self.removed |= available & (lower >= loss_con)
            available &= ~self.removed
        return chosen, available, loss, loss_con

    def finished(self, kn: Knowledge, st: Status) -> bool:
        chosen, available, _, _ = self._filter_and_shrink(kn, np.zeros_like(self.removed))
        return not chosen.any() and not available.any()

    def pick(self, kn: Knowledge, st: Status, held: np.ndarray) -> int | None:
        chosen, available, loss, loss_con = self._filter_and_shrink(kn, held)
        if chosen.any():
            return int(self.rng.choice(np.flatnonzero(chosen)))
        if not available.any():
            return None
        return self._gp_pick(kn, loss, np.flatnonzero(available), loss_con)

    def _gp_pick(self, kn: Knowledge, loss: np.ndarray, avail: np.ndarray, loss_con: float) -> int:
        ev = np.flatnonzero(kn.evaluated)
        x = np.vstack([self._x[ev], self._anchors_x])
        y = np.concatenate([loss[ev], self._anchors_y])
        kernel = _Matern(length_scale=[1.0, 1.0, 1.0],
                        length_scale_bounds=[(1e-10, 1e10), (1e-10, 1e10), (1e-5, 1e10)], nu=NU)
        gp = GaussianProcessRegressor(kernel=kernel, alpha=1e-5, normalize_y=True,
                                      n_restarts_optimizer=self.n_restarts, random_state=self.seed + len(ev))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            gp.fit(x, y)
            mu, std = gp.predict(self._x[avail], return_std=True)
        lat = self.problem.latency[avail]
        if np.std(mu) < FLAT_MEAN:
            return int(avail[self.problem.query.first_to_try(lat)])
        pi = norm.cdf((loss_con - mu) / (std + 1e-9))
        return int(avail[np.argmax(pi)])
