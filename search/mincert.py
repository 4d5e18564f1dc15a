"""The minimum certificate of a query over a complete accuracy table: the fewest evaluated
schemes whose results prove the optimum through the search's own monotone bounds.

A search stops when `Problem.status` (search/query.py) is done with the answer as incumbent. Over
a complete table the optimum s* and its value v* are known, so which evaluated sets E make the
status done can be written down. Only schemes a search can evaluate are allowed in E (latency
within the query's budget: search/study.py's `Objective` never evaluates the others).

- s* is in E when it is a split scheme (it is the answer; the single end needs no evaluation).
- Every scheme t that could beat s* (latency query: L(t) < v*; accuracy query: t within the
  budget, t != s*) is *ruled out*: t is in E, or E holds a failing e at t's point with
  e.c >= t.c and e.b >= t.b, since then upper(t) <= A(e) + tol. Failing means the candidate
  test of the status rejects that upper bound: A(e) + tol < threshold for a latency query,
  A(e) + tol <= v* for an accuracy query.

For an accuracy query the bar stays v*: with E within the budget and s* in E, a lower bound
max{A(e) : e <= t} - tol never exceeds v*, so no unevaluated scheme is "proven" better. Both
conditions grow with E, so the minimum is a set cover:

    minimise sum_j x_j   s.t.   x_s* = 1,   x_t + sum_{e failing, e >= t, e != t} x_e >= 1  for t in T

Only failing schemes maximal at their point (no other failing scheme dominates them; at most 8
a point, one per bit width) need be covers: a dominating failing scheme rules out a superset.
Solved with scipy.optimize.milp (HiGHS). `verify` re-checks a result with `Problem.status`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.scheme import BITS, Scheme
from search.bounds import Knowledge
from search.problem import Problem


@dataclass(frozen=True)
class MinimumCertificate:
    """`schemes`: flat indices of the split schemes to evaluate (the answer first when it is split)."""

    answer: int | Scheme | None  # s*: flat index of a split scheme, a single end, or None (infeasible)
    value: float  # its latency (latency query) or accuracy (accuracy query)
    schemes: tuple[int, ...]
    could_beat: int  # schemes that had to be ruled out
    solve_s: float  # HiGHS's time

    @property
    def size(self) -> int:
        return len(self.schemes)


def complete_knowledge(problem: Problem, table: dict[Scheme, float], tol: float) -> Knowledge:
    """Every split scheme of the problem's space evaluated, from `table` (ValueError if one is missing)."""
    kn = problem.knowledge(table, tol)
    if not kn.evaluated.all():
        missing = problem.space.scheme(int(np.flatnonzero(~kn.evaluated)[0]))
        raise ValueError(f"the table has no accuracy for {missing} ({int((~kn.evaluated).sum())} schemes missing)")
    return kn


def _maximal(space, mask: np.ndarray) -> np.ndarray:
    """Schemes of `mask` that no other scheme of `mask` at their point dominates (c and b >=)."""
    out = np.zeros(space.size, dtype=bool)
    nb = len(BITS)
    for pt in space.points:
        sl = space.grid_slice(pt.index)
        grid = mask[sl].reshape(pt.channels, nb)
        above = np.logical_or.accumulate(np.logical_or.accumulate(grid[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]
        pad = np.zeros((pt.channels + 1, nb + 1), dtype=bool)
        pad[:-1, :-1] = above
        out[sl] = (grid & ~pad[1:, :-1] & ~pad[:-1, 1:]).ravel()
    return out


def minimum_certificate(problem: Problem, table: dict[Scheme, float], tol: float) -> MinimumCertificate:
    """The fewest schemes to evaluate whose results let `problem.status` (tolerance `tol`) prove the
    optimum of the complete `table`; exact (an integer program solved by HiGHS)."""
    import time

    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    kn = complete_knowledge(problem, table, tol)
    st = problem.status(kn)
    answer, value = st.incumbent, st.incumbent_value
    space = problem.space
    allowed = problem.latency <= problem.budget
    if answer is None:  # nothing fits the budget: latency alone proves it
        return MinimumCertificate(None, value, (), 0, 0.0)
    could_beat, failing = problem.query.certificate_cover(problem, kn.acc, value, tol)
    star = answer if isinstance(answer, int) else None
    must = could_beat & allowed
    if star is not None:
        must[star] = False
    covers = _maximal(space, failing & allowed)
    variables = np.flatnonzero(must | covers | (np.arange(space.size) == star))
    col = {int(j): k for k, j in enumerate(variables)}
    rows, cols = [], []
    cover_idx = np.flatnonzero(covers)
    for r, t in enumerate(np.flatnonzero(must)):
        dom = cover_idx[(space.p[cover_idx] == space.p[t]) & (space.c[cover_idx] >= space.c[t])
                        & (space.b[cover_idx] >= space.b[t])]
        for j in {int(t), *map(int, dom)}:
            rows.append(r)
            cols.append(col[j])
    n, m = len(variables), int(must.sum())
    lb = np.zeros(n)
    if star is not None:
        lb[col[star]] = 1.0
    constraints = []
    if m:
        a = csr_array((np.ones(len(rows)), (rows, cols)), shape=(m, n))
        constraints = [LinearConstraint(a, lb=np.ones(m), ub=np.inf)]
    t0 = time.perf_counter()
    res = milp(np.ones(n), integrality=np.ones(n), bounds=Bounds(lb, np.ones(n)), constraints=constraints)
    solve_s = time.perf_counter() - t0
    if res.status != 0:
        raise RuntimeError(f"HiGHS found no minimum certificate for {problem.query}: {res.message}")
    chosen = [int(j) for j in variables[np.round(res.x) > 0.5]]
    if star is not None:
        chosen = [star] + [j for j in chosen if j != star]
    return MinimumCertificate(answer, value, tuple(chosen), m, solve_s)


def knowledge_of(problem: Problem, table: dict[Scheme, float], schemes: tuple[int, ...], tol: float) -> Knowledge:
    """A Knowledge holding only `schemes` (flat indices), with their accuracies from `table`."""
    kn = Knowledge(problem.space, tol)
    for i in schemes:
        kn.add(i, table[problem.space.scheme(i)])
    return kn


def verify(problem: Problem, table: dict[Scheme, float], cert: MinimumCertificate, tol: float) -> bool:
    """The project's own status, on `cert.schemes` alone, is done with the answer as incumbent."""
    st = problem.status(knowledge_of(problem, table, cert.schemes, tol))
    return st.done and st.incumbent == cert.answer and st.incumbent_value == cert.value
