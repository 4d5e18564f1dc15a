"""Why an answer is optimal, or why that is not proven: computed here, only formatted elsewhere.

An answer a to a query is certified when no unevaluated scheme can beat it:

- exact: every scheme that could beat a (faster than a for a latency query, within the budget
  for an accuracy query) has been evaluated: nothing is assumed;
- conditional: the rest are ruled out by monotone bounds (search/bounds.py), i.e. on the
  assumption that accuracy does not fall by more than `tolerance` when channels or bits grow
  at a point. Any evaluated pair that breaks that assumption across the decision level (the
  accuracy threshold, or the answer's accuracy) is a violation and withdraws the certificate.

An infeasible query (no scheme's latency fits the budget) is certified exactly: latency is
known for every scheme. `proof` lists the answer and the evaluated schemes whose values rule
out everything better; re-checking the query with those alone gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.scheme import Scheme
from search.bounds import Knowledge
from search.problem import Problem
from search.status import Status


@dataclass(frozen=True)
class Violation:
    """Evaluated `low` dominates `high` (same point, at least as many channels and bits) but
    measured `drop` below it, across the decision level, by more than the tolerance."""

    high: Scheme
    low: Scheme
    drop: float


@dataclass(frozen=True)
class Certificate:
    certified: bool
    exact: bool  # certified without assuming monotonicity
    tolerance: float  # the accepted non-monotonicity a conditional certificate rests on
    proof: tuple[Scheme, ...]  # the answer, then the evaluated schemes that rule out the rest
    violations: tuple[Violation, ...]
    open: int  # unevaluated schemes that could still beat the answer
    gap: float  # how much better one of them could be (s or accuracy); 0 when none
    reason: str  # one sentence

    def to_json(self) -> dict:
        return {"certified": self.certified, "exact": self.exact, "tolerance": self.tolerance,
                "proof": [s.to_json() for s in self.proof], "open": self.open, "gap": self.gap,
                "violations": [{"high": v.high.to_json(), "low": v.low.to_json(), "drop": v.drop}
                               for v in self.violations], "reason": self.reason}


def certify(pr: Problem, kn: Knowledge, st: Status, answer: int | Scheme | None, bounded: bool = False) -> Certificate:
    """The certificate of `answer` (the status's incumbent, or an unevaluated scheme the bounds
    prove better when `bounded`) given what `kn` knows."""
    q, space = pr.query, pr.space
    open_ = int(st.candidates.sum())
    if answer is None:
        if not q.relevant(pr).any() and pr.reference > pr.budget:
            return Certificate(True, True, kn.tol, (), (), 0, 0.0,
                               "no scheme's latency fits the budget")
        return Certificate(False, False, kn.tol, (), (), open_, st.gap,
                           "no evaluated scheme meets the bound yet")
    could_beat = q.could_beat(pr, kn, st)
    level = q.decision_level(pr, st)
    found = kn.violations(level) if could_beat.any() else []
    violations = tuple(Violation(space.scheme(i), space.scheme(j), d) for i, j, d in found)
    proof = tuple(pr.scheme(i) for i in _proof(pr, kn, st, answer))
    if bounded:
        return Certificate(False, False, kn.tol, (), violations, open_, st.gap,
                           "the answer is proven by bounds only and has not been evaluated")
    if violations:
        worst = max(violations, key=lambda v: v.drop)
        return Certificate(False, False, kn.tol, proof, violations, open_, st.gap,
                           f"{len(violations)} evaluated pairs break monotonicity across the decision level "
                           f"{level:.4f} by more than the tolerance {kn.tol:g} (worst: {worst.low} is "
                           f"{worst.drop:.4f} below {worst.high}, which it dominates)")
    if not st.done:
        return Certificate(False, False, kn.tol, (), (), open_, st.gap,
                           f"{open_} unevaluated schemes could still be better")
    if not could_beat.any():
        return Certificate(True, True, kn.tol, proof, (), 0, 0.0,
                           "every scheme that could beat the answer has been evaluated")
    return Certificate(True, False, kn.tol, proof, (), 0, 0.0,
                       f"{len(proof)} evaluated schemes prove nothing better exists, if accuracy is monotone "
                       f"in channels and bits within {100 * kn.tol:.2f} %")


def _proof(pr: Problem, kn: Knowledge, st: Status, answer: int | Scheme) -> list[int | Scheme]:
    """The answer plus the evaluated schemes whose values rule out everything that could beat it."""
    space = pr.space
    evaluated = np.flatnonzero(kn.evaluated)
    fastest_at = np.array([pr.latency[space.offsets[pt.index]] for pt in space.points])[space.p[evaluated]]
    keep = pr.query.ruled_out(pr, kn, st, fastest_at)
    rest: list[int | Scheme] = [int(i) for i in evaluated[keep] if i != answer]
    return [answer] + rest
