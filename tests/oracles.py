"""Independent oracles for the tests: plain Python, no numpy bounds, no samplers."""

from __future__ import annotations

from compress.scheme import Scheme
from search.problem import Problem
from search.query import LatencyQuery


def brute_force(problem: Problem, table: dict) -> Scheme | None:
    """Independent oracle: plain Python over every scheme (None: no scheme meets the bound)."""
    space = problem.space
    if isinstance(problem.query, LatencyQuery):
        best = (problem.reference, problem.single_end)
        for i in range(space.size):
            if table[space.scheme(i)] >= problem.threshold and problem.latency[i] < best[0]:
                best = (float(problem.latency[i]), space.scheme(i))
        return best[1]
    best = (problem.base, 0.0, problem.single_end) if problem.reference <= problem.budget else (-1.0, 0.0, None)
    for i in range(space.size):
        acc = table[space.scheme(i)]
        if problem.latency[i] <= problem.budget and (acc, -problem.latency[i]) > (best[0], -best[1]):
            best = (acc, float(problem.latency[i]), space.scheme(i))
    return best[2]


def offline_oracle(problem: Problem, stored: dict[Scheme, float], tol: float) -> Scheme | None:
    """The best answer `stored` alone proves: a latency query's fastest scheme that is stored and
    meets the threshold, or that dominates (same point, c and b at least as large) a stored scheme
    meeting it by `tol`; an accuracy query's most accurate stored scheme within the budget (ties:
    the faster); the single end when nothing split does better."""
    space = problem.space
    latency = {space.scheme(i): float(problem.latency[i]) for i in range(space.size)}
    if isinstance(problem.query, LatencyQuery):
        best = (problem.reference, problem.single_end)
        for s, lat in latency.items():
            ok = stored.get(s, -1.0) >= problem.threshold or any(
                e.p == s.p and e.c <= s.c and e.b <= s.b and a - tol >= problem.threshold for e, a in stored.items())
            if ok and lat < best[0]:
                best = (lat, s)
        return best[1]
    best = (problem.base, 0.0, problem.single_end) if problem.reference <= problem.budget else (-1.0, 0.0, None)
    for s, a in stored.items():
        if latency[s] <= problem.budget and (a, -latency[s]) > (best[0], -best[1]):
            best = (a, latency[s], s)
    return best[2]


def offline_open(problem: Problem, stored: dict[Scheme, float], tol: float) -> tuple[float, set[Scheme]]:
    """A latency query on the `stored` accuracies alone: (gap, open schemes). The incumbent is the
    fastest stored scheme meeting the threshold (or the best single end); a scheme is open when it is
    not stored, faster than the incumbent, and no stored scheme at its point with c and b at least as
    large falls short of the threshold by more than `tol`; the gap is how much faster the fastest open
    one is."""
    space = problem.space
    latency = {space.scheme(i): float(problem.latency[i]) for i in range(space.size)}
    inc = min([problem.reference] + [latency[s] for s, a in stored.items() if a >= problem.threshold])
    open_ = {s for s, lat in latency.items() if s not in stored and lat < inc and not any(
        e.p == s.p and e.c >= s.c and e.b >= s.b and a + tol < problem.threshold for e, a in stored.items())}
    return (inc - min(latency[s] for s in open_) if open_ else 0.0), open_
