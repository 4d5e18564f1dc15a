"""`ExhaustiveSampler`: the oracle. Evaluates every scheme that could matter (faster than the best
single-end scheme for a latency query, within the budget for an accuracy query), in order of
latency, without using any bound. On a complete table it gives the exact optimum."""

from __future__ import annotations

import numpy as np

from compress.scheme import Scheme
from search.bounds import Knowledge
from search.problem import Problem
from search.samplers.base import PlannerSampler
from search.status import Status


class ExhaustiveSampler(PlannerSampler):
    name = "exhaustive"

    def __init__(self, problem: Problem, known: dict[Scheme, float] | None = None, tolerance: float = 0.0,
                 wait_s: float = 600.0) -> None:
        super().__init__(problem, known, tolerance, wait_s)
        idx = np.flatnonzero(problem.query.relevant(problem))
        self.order = idx[np.argsort(problem.latency[idx], kind="stable")]

    def pick(self, kn: Knowledge, st: Status, held: np.ndarray) -> int | None:
        todo = self.order[~kn.evaluated[self.order] & ~held[self.order]]
        return int(todo[0]) if len(todo) else None

    def finished(self, kn: Knowledge, st: Status) -> bool:
        return bool(kn.evaluated[self.order].all())
