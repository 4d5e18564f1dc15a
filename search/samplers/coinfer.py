"""`CoInferSampler`: our sampler, an Optuna sampler (search/samplers/base.py).

Latency is known for every scheme; accuracy is bounded by monotone bounds from what has been
evaluated (search/bounds.py), so a scheme is either proven feasible, proven infeasible, or open.
It evaluates the open scheme that most shrinks the set of schemes that could still be optimal,
and stops the study when that set is empty: the answer is then certified (search/certificate.py).

    study = optuna.create_study(direction=problem.direction, sampler=CoInferSampler(problem, known))
    study.optimize(Objective(problem, evaluator))          # stops by itself

Latency query (min L s.t. A >= t). An evaluation of x either succeeds (A(x) >= t: every
candidate at least as slow as x is out), fails by more than the tolerance (A(x) + tol < t:
every candidate x dominates is out), or falls in between (only x itself is out). Score =
q * gain_if_feasible + r * gain_if_ruling_out + (1 - q - r) * [x is a candidate], with q and r
the chances of the first two: 1 / 0 where the bounds prove them, otherwise kernel estimates
from the evaluated schemes near x at the same point (at the levels t and t - tol). Any unevaluated
scheme may be picked, including one slower than the incumbent whose failure would rule out
a whole block of candidates (a "probe").

Accuracy query (max A s.t. L <= budget). Best-first on the upper bound: the candidate whose
accuracy could be highest, ties broken by how many candidates it dominates (its value bounds
them all), then by more transmitted bits (more information, usually more accuracy).

The two strategies are the queries' `pick` (search/query.py); this sampler supplies the
chance estimate the latency query's score needs. Counting the in-between outcome apart (it
used to count as ruling out) cut the evaluations of bench.certificate's latency queries from
4.5 to 3.1 x the minimum certificate over its 68 latency queries (default table: 3.2 to 2.9).
"""

from __future__ import annotations

import numpy as np

from compress.scheme import MAX_BITS, Scheme
from search.bounds import Knowledge
from search.problem import Problem
from search.samplers.base import PlannerSampler
from search.status import Status

KERNEL_WIDTH = 0.15  # in normalised (log c, b) units
PRIOR_WEIGHT = 0.5


class CoInferSampler(PlannerSampler):
    name = "coinfer"

    def __init__(self, problem: Problem, known: dict[Scheme, float] | None = None, tolerance: float = 0.0,
                 wait_s: float = 600.0) -> None:
        super().__init__(problem, known, tolerance, wait_s)
        s = problem.space
        cp = np.array([pt.channels for pt in s.points])[s.p]
        self._u = np.log(s.c) / np.log(cp + 1)  # position of each scheme in its point's grid
        self._v = s.b / MAX_BITS

    def pick(self, kn: Knowledge, st: Status, held: np.ndarray) -> int | None:
        if st.done:
            return None
        return self.problem.query.pick(self.problem, kn, st, held, self._feasible_chance)

    def _feasible_chance(self, kn: Knowledge, open_: np.ndarray, level: float) -> np.ndarray:
        """Estimated chance that each open scheme's accuracy reaches `level` (e.g. the threshold): a
        kernel-weighted share of the evaluated schemes at the same point that reached it, by distance
        in (log channels, bits), smoothed towards the share over all evaluated schemes."""
        s = self.problem.space
        ev = kn.evaluated
        ok = ev & (kn.acc >= level)
        prior = (ok.sum() + 1) / (ev.sum() + 2)
        q = np.full(s.size, prior)
        for pt in s.points:
            sl = s.grid_slice(pt.index)
            e = np.flatnonzero(ev[sl])
            o = np.flatnonzero(open_[sl])
            if not len(e) or not len(o):
                continue
            u, v = self._u[sl], self._v[sl]
            d2 = (u[o, None] - u[None, e]) ** 2 + (v[o, None] - v[None, e]) ** 2
            w = np.exp(-d2 / KERNEL_WIDTH**2)
            q[sl][o] = (w @ ok[sl][e] + PRIOR_WEIGHT * prior) / (w.sum(1) + PRIOR_WEIGHT)
        return q
