"""`exhaustive`: the oracle. Evaluates every scheme that could matter (faster than the best
single-end scheme for a latency query, within the budget for an accuracy query), in order of
latency, without using any bound. On a complete table it gives the exact optimum."""

from __future__ import annotations

import numpy as np

from search.bounds import Knowledge
from search.problem import Problem, Status


class ExhaustivePlanner:
    name = "exhaustive"

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        pr = problem
        relevant = pr.latency < pr.reference if pr.query.kind == "latency" else pr.latency <= pr.budget
        idx = np.flatnonzero(relevant)
        self.order = idx[np.argsort(pr.latency[idx], kind="stable")]

    def next(self, kn: Knowledge, st: Status) -> int | None:
        todo = self.order[~kn.evaluated[self.order]]
        return int(todo[0]) if len(todo) else None
