"""The two queries. Each owns its direction, objective, feasibility, search status and proof.

Both are "optimise over every scheme s subject to A(s) >= threshold and L(s) <= budget":

- `LatencyQuery(accuracy_loss, bandwidth)` (`latency_search.py -accuracy_loss e`): minimise L(s)
  with threshold = base - e (budget: none). The single-end schemes run the unmodified model
  (loss 0), so the faster of them is always a feasible answer and only split schemes faster
  than it matter.
- `AccuracyQuery(latency_ratio, bandwidth)` (`accuracy_search.py -latency r`): maximise A(s)
  with budget = r x min(all-edge, all-cloud) (threshold: none); ties go to the faster scheme.

A query's constraint, Optuna-style (feasible when <= 0), is threshold - A(s) for a latency
query and L(s) - budget for an accuracy query. `status` says, from what is known, which scheme
is the incumbent and which unevaluated schemes could still beat it (search/problem.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from cli.errors import CoInferError
from search.status import Status

if TYPE_CHECKING:
    from search.bounds import Knowledge
    from search.problem import Problem

FLOAT_SLACK = 1e-9  # accepted rounding in the threshold and the budget


def format_seconds(seconds: float) -> str:
    """12.34 ms below 10 s, 12.34 s above."""
    return f"{seconds * 1e3:.2f} ms" if seconds < 10 else f"{seconds:.2f} s"


def _check_bandwidth(bandwidth: float) -> None:
    if not (isinstance(bandwidth, int | float) and bandwidth > 0 and math.isfinite(bandwidth)):
        raise CoInferError(f"bandwidth must be a positive number of Mbps, got {bandwidth}")


@dataclass(frozen=True)
class LatencyQuery:
    """The fastest scheme whose top-1 loss against the base model is at most `accuracy_loss`."""

    accuracy_loss: float
    bandwidth: float  # Mbps

    name: ClassVar[str] = "latency"
    direction: ClassVar[str] = "minimize"
    constraint_name: ClassVar[str] = "accuracy"

    def __post_init__(self) -> None:
        _check_bandwidth(self.bandwidth)
        if not (isinstance(self.accuracy_loss, int | float) and 0 <= self.accuracy_loss < 1):
            raise CoInferError(f"accuracy_loss must be a fraction in [0, 1), got {self.accuracy_loss}")

    @property
    def bound(self) -> float:
        return self.accuracy_loss

    def __str__(self) -> str:
        return f"latency-loss{self.accuracy_loss:g}-{self.bandwidth:g}Mbps"

    def describe(self, reference: float) -> str:
        return f"fastest scheme with accuracy loss <= {100 * self.accuracy_loss:g} %"

    # -- the constraint set ----------------------------------------------------------------
    def threshold(self, base: float) -> float:
        return base - self.accuracy_loss - FLOAT_SLACK

    def budget(self, reference: float) -> float:
        return math.inf

    def objective(self, latency: float, accuracy: float | None) -> float:
        return latency

    def constraint(self, pr: Problem, latency: float, accuracy: float) -> float:
        return pr.threshold - accuracy

    def relevant(self, pr: Problem) -> np.ndarray:
        """Split schemes that can matter at all: faster than the best single end."""
        return pr.latency < pr.reference

    # -- what the known accuracies say -----------------------------------------------------
    def status(self, pr: Problem, kn: Knowledge) -> Status:
        lower, upper = kn.bounds()
        ev = kn.evaluated
        feasible = ev & (kn.acc >= pr.threshold)
        inc, inc_l = pr.single_end, pr.reference
        if feasible.any():
            i = int(np.flatnonzero(feasible)[np.argmin(pr.latency[feasible])])
            if pr.latency[i] < inc_l:
                inc, inc_l = i, float(pr.latency[i])
        cand = ~ev & (pr.latency < inc_l) & (upper >= pr.threshold)
        gap = float(inc_l - pr.latency[cand].min()) if cand.any() else 0.0
        return Status(inc, inc_l, cand, lower, upper, gap)

    def proven(self, pr: Problem, kn: Knowledge, st: Status) -> tuple[np.ndarray, np.ndarray]:
        """Unevaluated schemes the bounds alone prove better than the incumbent, and a key
        (smaller is better) to pick the answer among them."""
        mask = ~kn.evaluated & (st.lower >= pr.threshold) & (pr.latency < st.incumbent_value)
        return mask, pr.latency

    def could_beat(self, pr: Problem, kn: Knowledge, st: Status) -> np.ndarray:
        return ~kn.evaluated & (pr.latency < st.incumbent_value)

    def decision_level(self, pr: Problem, st: Status) -> float:
        """The accuracy a monotonicity violation must cross to undo the proof."""
        return pr.threshold

    def ruled_out(self, pr: Problem, kn: Knowledge, st: Status, fastest_at: np.ndarray) -> np.ndarray:
        """Evaluated schemes (of `kn.evaluated`, in order) the proof rests on: those that failed
        the threshold at points where some scheme is faster than the answer."""
        ev = np.flatnonzero(kn.evaluated)
        return (kn.acc[ev] < pr.threshold) & (fastest_at < st.incumbent_value)

    def order(self, pr: Problem, st: Status, cand: np.ndarray) -> np.ndarray:
        """Sort key of candidates to evaluate next (smaller first): the fastest."""
        return pr.latency[cand]


@dataclass(frozen=True)
class AccuracyQuery:
    """The most accurate scheme whose latency is at most `latency_ratio` x the best single end."""

    latency_ratio: float
    bandwidth: float  # Mbps

    name: ClassVar[str] = "accuracy"
    direction: ClassVar[str] = "maximize"
    constraint_name: ClassVar[str] = "latency"

    def __post_init__(self) -> None:
        _check_bandwidth(self.bandwidth)
        if not (isinstance(self.latency_ratio, int | float) and self.latency_ratio > 0
                and math.isfinite(self.latency_ratio)):
            raise CoInferError(f"latency ratio must be a number > 0, got {self.latency_ratio}")

    @property
    def bound(self) -> float:
        return self.latency_ratio

    def __str__(self) -> str:
        return f"accuracy-ratio{self.latency_ratio:g}-{self.bandwidth:g}Mbps"

    def describe(self, reference: float) -> str:
        return f"most accurate scheme within {self.latency_ratio:g} x {format_seconds(reference)} = " \
               f"{format_seconds(self.latency_ratio * reference)}"

    # -- the constraint set ----------------------------------------------------------------
    def threshold(self, base: float) -> float:
        return -math.inf

    def budget(self, reference: float) -> float:
        return self.latency_ratio * reference * (1 + FLOAT_SLACK)

    def objective(self, latency: float, accuracy: float | None) -> float:
        return 0.0 if accuracy is None else accuracy  # None: over budget, never evaluated

    def constraint(self, pr: Problem, latency: float, accuracy: float | None) -> float:
        return latency - pr.budget

    def relevant(self, pr: Problem) -> np.ndarray:
        return pr.latency <= pr.budget

    # -- what the known accuracies say -----------------------------------------------------
    def status(self, pr: Problem, kn: Knowledge) -> Status:
        lower, upper = kn.bounds()
        ev = kn.evaluated
        within = pr.latency <= pr.budget
        inc, inc_a = None, -np.inf
        if pr.reference <= pr.budget:
            inc, inc_a = pr.single_end, pr.base
        known = ev & within
        if known.any():
            idx = np.flatnonzero(known)
            best = idx[np.lexsort((pr.latency[idx], -kn.acc[idx]))[0]]
            if kn.acc[best] > inc_a:
                inc, inc_a = int(best), float(kn.acc[best])
        # an unevaluated scheme whose lower bound already beats the incumbent raises the bar
        proven = ~ev & within & (lower > inc_a)
        bar = max(inc_a, float(lower[proven].max())) if proven.any() else inc_a
        cand = ~ev & within & (upper > bar)
        cand |= proven & (lower >= bar)  # the proven-best itself must be measured
        gap = float(np.clip(upper[cand], None, 1.0).max() - max(inc_a, 0.0)) if cand.any() else 0.0
        return Status(inc, inc_a, cand, lower, upper, gap)

    def proven(self, pr: Problem, kn: Knowledge, st: Status) -> tuple[np.ndarray, np.ndarray]:
        mask = ~kn.evaluated & (pr.latency <= pr.budget) & (st.lower > st.incumbent_value)
        return mask, -st.lower

    def could_beat(self, pr: Problem, kn: Knowledge, st: Status) -> np.ndarray:
        return ~kn.evaluated & (pr.latency <= pr.budget)

    def decision_level(self, pr: Problem, st: Status) -> float:
        return st.incumbent_value

    def ruled_out(self, pr: Problem, kn: Knowledge, st: Status, fastest_at: np.ndarray) -> np.ndarray:
        """Evaluated schemes no better than the answer at points where some scheme fits the budget."""
        ev = np.flatnonzero(kn.evaluated)
        return (kn.acc[ev] <= st.incumbent_value) & (fastest_at <= pr.budget)

    def order(self, pr: Problem, st: Status, cand: np.ndarray) -> np.ndarray:
        """Sort key of candidates to evaluate next (smaller first): the highest upper bound."""
        return -st.upper[cand]


Query = LatencyQuery | AccuracyQuery
