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

Everything that differs between the two is here, as a class attribute or a method: the CLI's
goal and bound flag, the JSON key of the bound, how a gap reads, and what each of our samplers
does differently per query (CoInfer's `pick`, Opt-CoInfer's `paper_constraints` and
`first_to_try`). Nothing else switches on the query's type. A query reads the numbers of the
problem it is asked on through `Concrete` (search/problem.py's `Problem` is one), so this module
does not import the problem. numpy is imported by the methods that compute, so the query CLIs'
--help, which reads the class attributes, loads no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from cli.errors import CoInferError
from search.status import Status

if TYPE_CHECKING:
    import numpy as np

    from compress.scheme import Scheme
    from search.bounds import Knowledge

FLOAT_SLACK = 1e-9  # accepted rounding in the threshold and the budget


class Concrete(Protocol):
    """What a query reads of the problem it is asked on (search/problem.py's `Problem`). Arrays
    are over the split schemes, by flat index of the space."""

    latency: np.ndarray  # seconds at the query's bandwidth
    bytes: np.ndarray  # bytes sent at the cut
    reference: float  # latency of the better single end
    single_end: Scheme  # the better single end
    base: float  # the base model's top-1
    threshold: float  # the least accepted top-1
    budget: float  # the most accepted latency (s)


# CoInfer's estimate of each open scheme's chance that its accuracy reaches a level, e.g. the
# threshold: chance(knowledge, open, level) (search/samplers/coinfer.py)
FeasibleChance = Callable[["Knowledge", "np.ndarray", float], "np.ndarray"]


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
    goal: ClassVar[str] = "fastest scheme whose accuracy loss is at most -accuracy_loss"
    bound_flags: ClassVar[tuple[str, ...]] = ("-accuracy_loss", "--accuracy-loss")
    bound_help: ClassVar[str] = "largest accepted top-1 loss vs the base model, a fraction in [0, 1) (0.01 = 1 %%)"
    bound_key: ClassVar[str] = "accuracy_loss_bound"  # in the answer's JSON

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

    def constraint(self, pr: Concrete, latency: float, accuracy: float) -> float:
        return pr.threshold - accuracy

    def relevant(self, pr: Concrete) -> np.ndarray:
        """Split schemes that can matter at all: faster than the best single end."""
        return pr.latency < pr.reference

    # -- what the known accuracies say -----------------------------------------------------
    def status(self, pr: Concrete, kn: Knowledge) -> Status:
        import numpy as np
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

    def proven(self, pr: Concrete, kn: Knowledge, st: Status) -> tuple[np.ndarray, np.ndarray]:
        """Unevaluated schemes the bounds alone prove better than the incumbent, and a key
        (smaller is better) to pick the answer among them."""
        mask = ~kn.evaluated & (st.lower >= pr.threshold) & (pr.latency < st.incumbent_value)
        return mask, pr.latency

    def could_beat(self, pr: Concrete, kn: Knowledge, st: Status) -> np.ndarray:
        return ~kn.evaluated & (pr.latency < st.incumbent_value)

    def certificate_cover(self, pr: Concrete, acc: np.ndarray, value: float,
                          tol: float) -> tuple[np.ndarray, np.ndarray]:
        """For the minimum certificate (search/mincert.py), over a complete table `acc` whose optimum has
        latency `value`: (the schemes that could beat it, the evaluated schemes that rule out every scheme
        they dominate): the status's `latency < incumbent` and `upper >= threshold`."""
        return pr.latency < value, acc + tol < pr.threshold

    def decision_level(self, pr: Concrete, st: Status) -> float:
        """The accuracy a monotonicity violation must cross to undo the proof."""
        return pr.threshold

    def ruled_out(self, pr: Concrete, kn: Knowledge, st: Status, fastest_at: np.ndarray) -> np.ndarray:
        """Evaluated schemes (of `kn.evaluated`, in order) the proof rests on: those that failed
        the threshold at points where some scheme is faster than the answer."""
        ev = kn.evaluated.nonzero()[0]
        return (kn.acc[ev] < pr.threshold) & (fastest_at < st.incumbent_value)

    def order(self, pr: Concrete, st: Status, cand: np.ndarray) -> np.ndarray:
        """Sort key of candidates to evaluate next (smaller first): the fastest."""
        return pr.latency[cand]

    def format_gap(self, gap: float) -> str:
        return f"{format_seconds(gap)} faster"

    # -- what our samplers do differently for this query ----------------------------------
    def pick(self, pr: Concrete, kn: Knowledge, st: Status, held: np.ndarray, chance: FeasibleChance) -> int | None:
        """CoInfer's next evaluation (search/samplers/coinfer.py): the open scheme x, not `held`, of
        best expected gain q x gain_if_feasible + r x gain_if_ruling_out + (1 - q - r) x [x is a
        candidate]. q is x's chance to meet the threshold t, r its chance to fall short of it by more
        than the tolerance (A(x) + tol < t: only then does x rule out the candidates it dominates; in
        between it rules out only itself); each 1 / 0 when the bounds prove it, else `chance`. With
        tolerance 0, r = 1 - q. Ties to the fastest."""
        import numpy as np
        cand = st.candidates
        lat = pr.latency
        open_ = ~kn.evaluated
        t, low = pr.threshold, pr.threshold - kn.tol
        q = np.where(st.lower >= t, 1.0, np.where(st.upper < t, 0.0, chance(kn, open_, t)))
        r = np.where(st.lower >= low, 0.0, np.where(st.upper < low, 1.0, 1.0 - chance(kn, open_, low)))
        r = np.minimum(r, 1.0 - q)
        cand_lat = np.sort(lat[cand])
        slower = len(cand_lat) - np.searchsorted(cand_lat, lat, side="left")
        gain_feasible = np.where(lat < st.incumbent_value, slower, 0)
        gain_ruling_out = kn.dominated_counts(cand)
        gain = q * gain_feasible + r * gain_ruling_out + (1 - q - r) * cand
        score = np.where(open_ & ~held, gain, -1.0)
        best = score.max()
        if best < 0:
            return None
        ties = np.flatnonzero(score >= best - 1e-9)
        return int(ties[np.argmin(lat[ties])])

    def paper_constraints(self, pr: Concrete, kn: Knowledge, initial_loss: float) -> tuple[np.ndarray, float]:
        """Opt-CoInfer's two constraints (search/samplers/optcoinfer.py): the schemes faster than
        the fastest evaluated one meeting the loss (else than the better single end), and the
        query's loss bound."""
        met = kn.evaluated & (kn.acc >= pr.threshold)
        limit = min(pr.reference, float(pr.latency[met].min())) if met.any() else pr.reference
        return pr.latency < limit, float(self.accuracy_loss)

    def first_to_try(self, latency: np.ndarray) -> int:
        """Index into `latency` of the scheme to try when nothing else tells them apart: the fastest."""
        return int(latency.argmin())


@dataclass(frozen=True)
class AccuracyQuery:
    """The most accurate scheme whose latency is at most `latency_ratio` x the best single end."""

    latency_ratio: float
    bandwidth: float  # Mbps

    name: ClassVar[str] = "accuracy"
    direction: ClassVar[str] = "maximize"
    constraint_name: ClassVar[str] = "latency"
    goal: ClassVar[str] = "most accurate scheme whose latency is at most -latency x min(all-edge, all-cloud)"
    bound_flags: ClassVar[tuple[str, ...]] = ("-latency", "--latency")
    bound_help: ClassVar[str] = "latency budget as a ratio of the best single-end latency (0.6 = 60 %%)"
    bound_key: ClassVar[str] = "latency_ratio"

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

    def constraint(self, pr: Concrete, latency: float, accuracy: float | None) -> float:
        return latency - pr.budget

    def relevant(self, pr: Concrete) -> np.ndarray:
        return pr.latency <= pr.budget

    # -- what the known accuracies say -----------------------------------------------------
    def status(self, pr: Concrete, kn: Knowledge) -> Status:
        import numpy as np
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

    def proven(self, pr: Concrete, kn: Knowledge, st: Status) -> tuple[np.ndarray, np.ndarray]:
        mask = ~kn.evaluated & (pr.latency <= pr.budget) & (st.lower > st.incumbent_value)
        return mask, -st.lower

    def could_beat(self, pr: Concrete, kn: Knowledge, st: Status) -> np.ndarray:
        return ~kn.evaluated & (pr.latency <= pr.budget)

    def certificate_cover(self, pr: Concrete, acc: np.ndarray, value: float,
                          tol: float) -> tuple[np.ndarray, np.ndarray]:
        """For the minimum certificate (search/mincert.py), over a complete table `acc` whose optimum has
        `value`: (the schemes that could beat it, the evaluated schemes that rule out every scheme they
        dominate): the status's `within` and `upper > bar`, the bar being the optimum's accuracy."""
        return pr.latency <= pr.budget, acc + tol <= value

    def decision_level(self, pr: Concrete, st: Status) -> float:
        return st.incumbent_value

    def ruled_out(self, pr: Concrete, kn: Knowledge, st: Status, fastest_at: np.ndarray) -> np.ndarray:
        """Evaluated schemes no better than the answer at points where some scheme fits the budget."""
        ev = kn.evaluated.nonzero()[0]
        return (kn.acc[ev] <= st.incumbent_value) & (fastest_at <= pr.budget)

    def order(self, pr: Concrete, st: Status, cand: np.ndarray) -> np.ndarray:
        """Sort key of candidates to evaluate next (smaller first): the highest upper bound."""
        return -st.upper[cand]

    def format_gap(self, gap: float) -> str:
        return f"{100 * gap:.2f} % more accurate"

    # -- what our samplers do differently for this query ----------------------------------
    def pick(self, pr: Concrete, kn: Knowledge, st: Status, held: np.ndarray, chance: FeasibleChance) -> int | None:
        """CoInfer's next evaluation: best-first on the upper bound, ties to the candidate that
        dominates most candidates (its value bounds them all), then to more bytes sent (more
        information, usually more accuracy). `chance` is not needed: latency is known."""
        import numpy as np
        cand = np.flatnonzero(st.candidates & ~held)
        if not len(cand):
            return None
        up = np.clip(st.upper[cand], None, 2.0)
        dominated = kn.dominated_counts(st.candidates)[cand]
        order = np.lexsort((-pr.bytes[cand], -dominated, -up))
        return int(cand[order[0]])

    def paper_constraints(self, pr: Concrete, kn: Knowledge, initial_loss: float) -> tuple[np.ndarray, float]:
        """Opt-CoInfer's two constraints: the schemes within the budget, and the least loss of an
        evaluated scheme within it, at most `initial_loss`."""
        within = pr.latency <= pr.budget
        done = kn.evaluated & within
        loss_con = initial_loss
        if done.any():
            loss_con = min(loss_con, float(pr.base - kn.acc[done].max()))
        return within, loss_con

    def first_to_try(self, latency: np.ndarray) -> int:
        """The slowest (most sent and computed: usually the most accurate)."""
        return int(latency.argmax())


Query = LatencyQuery | AccuracyQuery
QUERY_TYPES: dict[str, type[LatencyQuery] | type[AccuracyQuery]] = {q.name: q for q in (LatencyQuery, AccuracyQuery)}
