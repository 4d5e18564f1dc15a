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
