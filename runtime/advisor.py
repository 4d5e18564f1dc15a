"""Which scheme the edge should run at a bandwidth: the search's answer, its frontier, and adaptation.

- `search_scheme`: one latency query at a bandwidth (`search.runner.run_search`, CoInfer's
  sampler). It is the only call into the search.
- `Frontier` (`build_frontier`): the search's optimal scheme on a log grid of bandwidths
  (`log_grid`, 0.125..8 Mbps), one search per grid point.
- `Adapter`: picks among the frontier's schemes by the latency model at the current estimate,
  with hysteresis.
- `throughput_scheme`: Neurosurgeon's queue mode: with a queue of tasks the head of task i+1
  overlaps the transfer of task i and the cloud work of task i-1, so the rate is set by the
  slowest stage; it picks the feasible scheme whose slowest stage is fastest.
- `SchemeAdvisor`: all of it over one app's latency model and accuracy database (read only),
  which is what `python -m runtime.edge --auto` needs.

Bandwidths are in Mbps with the latency model's convention 1 Mbps = 2^20 / 8 bytes/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from apps import App
from cli.errors import CoInferError
from compress.scheme import Scheme

if TYPE_CHECKING:
    from database.storage import Storage
    from search.latency import LatencyModel


def log_grid(lo: float = 0.125, hi: float = 8.0, per_octave: int = 2) -> list[float]:
    """Bandwidths lo .. hi Mbps, `per_octave` points per doubling (0.125, 0.177, 0.25, ...)."""
    n = round(math.log2(hi / lo) * per_octave)
    return [lo * 2 ** (i / per_octave) for i in range(n + 1)]


@dataclass
class Frontier:
    """The optimal scheme per grid bandwidth for one accuracy-loss bound."""

    accuracy_loss: float
    grid: list[float]
    schemes: list[Scheme]
    accuracies: list[float | None] = field(default_factory=list)

    @property
    def candidates(self) -> list[Scheme]:
        """The distinct schemes, in grid order."""
        return list(dict.fromkeys(self.schemes))

    def at(self, mbps: float) -> Scheme:
        """The grid's answer for the largest grid bandwidth <= mbps (the conservative cell)."""
        i = max([0] + [j for j, g in enumerate(self.grid) if g <= mbps * (1 + 1e-9)])
        return self.schemes[i]


def search_scheme(model: LatencyModel, evaluator, base_accuracy: float, mbps: float, accuracy_loss: float,
                  offline: bool = True):
    """One latency query at `mbps` (CoInfer's sampler): the search's result, with `.scheme` and
    `.accuracy`. `offline`: answer from the evaluator's known accuracies only."""
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.runner import SearchConfig, run_search
    problem = Problem(LatencyQuery(accuracy_loss, mbps), model, base_accuracy)
    return run_search(problem, evaluator, SearchConfig("coinfer", offline=offline))


def build_frontier(model: LatencyModel, evaluator, base_accuracy: float, accuracy_loss: float,
                   grid: list[float] | None = None, offline: bool = True) -> Frontier:
    """`search_scheme` at every grid bandwidth (default `log_grid()`)."""
    grid = grid or log_grid()
    results = [search_scheme(model, evaluator, base_accuracy, g, accuracy_loss, offline) for g in grid]
    return Frontier(accuracy_loss, grid, [r.scheme for r in results], [r.accuracy for r in results])


class Adapter:
    """Which frontier scheme to run at the current estimate: the lowest predicted latency among the
    frontier's schemes; a switch needs a predicted gain of more than `hysteresis` (fraction)."""

    def __init__(self, model: LatencyModel, frontier: Frontier, hysteresis: float = 0.05) -> None:
        self.model, self.frontier, self.hysteresis = model, frontier, hysteresis
        self.current: Scheme | None = None
        self.switches: list[tuple[int, Scheme, float]] = []  # (request index, new scheme, estimate)

    def predicted(self, scheme: Scheme, mbps: float) -> float:
        return self.model.breakdown(scheme, mbps).total

    def choose(self, mbps: float, request_index: int = 0) -> Scheme:
        best = min(self.frontier.candidates, key=lambda s: self.predicted(s, mbps))
        if self.current is None:
            self.current = best
        elif best != self.current:
            now, new = self.predicted(self.current, mbps), self.predicted(best, mbps)
            if new < now * (1 - self.hysteresis):
                self.current = best
                self.switches.append((request_index, best, mbps))
        return self.current


def throughput_scheme(model: LatencyModel, feasible: list[Scheme], mbps: float) -> Scheme:
    """Queue mode: the scheme whose slowest pipeline stage (edge, transfer, cloud) is fastest."""
    def bottleneck(s: Scheme) -> float:
        bd = model.breakdown(s, mbps)
        return max(bd.edge, bd.transfer, bd.cloud)
    return min(feasible, key=bottleneck)


class SchemeAdvisor:
    """One app's latency model (`.model`) and accuracy database (`.store`, `.evaluator`), read only,
    and the scheme to run at a bandwidth under an accuracy-loss bound (fraction of top-1).
    `evaluate_missing`: let the search fine-tune schemes missing from the database (default: answer
    from it). `edge` / `cloud`: the profiled devices of the latency model (default: the app's own,
    `devices.edge.name` / `devices.cloud.name`), as `--latency-profile EDGE,CLOUD` of the searches."""

    def __init__(self, app: App, storage: Storage | str | None = None, evaluate_missing: bool = False,
                 edge: str | None = None, cloud: str | None = None) -> None:
        from database.storage import app_flags
        from database.store import Store
        from search.evaluators import DatabaseEvaluator
        from search.latency import LatencyModel
        self.store = Store(storage, create=False)
        self.model = LatencyModel.from_store(self.store, app, edge, cloud)
        self.evaluator = DatabaseEvaluator(app, self.store)
        base = self.evaluator.base_accuracy()
        if base is None:
            raise CoInferError(f"the accuracy database has no base accuracy for {app.name}: evaluate the base model "
                               f"(python -m database.evaluate {app_flags(app, self.store.storage)} --schemes none)")
        self.base_accuracy: float = base
        self.offline = not evaluate_missing

    def best(self, mbps: float, accuracy_loss: float) -> Scheme:
        """The search's lowest-latency scheme at `mbps`."""
        return search_scheme(self.model, self.evaluator, self.base_accuracy, mbps, accuracy_loss, self.offline).scheme

    def frontier(self, accuracy_loss: float, per_octave: int = 2) -> Frontier:
        """The search's answers on the log grid 0.125..8 Mbps."""
        return build_frontier(self.model, self.evaluator, self.base_accuracy, accuracy_loss,
                              log_grid(0.125, 8.0, per_octave), self.offline)

    def feasible(self, accuracy_loss: float) -> list[Scheme]:
        """Every stored scheme within the accuracy loss, plus the two single-end schemes."""
        ok = [s for s, a in self.evaluator.known().items() if a >= self.base_accuracy - accuracy_loss - 1e-9]
        return ok + [Scheme.ALL_EDGE, Scheme.ALL_CLOUD]

    def choose(self, mbps: float, accuracy_loss: float, queue: bool = False) -> Scheme:
        """The scheme to run at `mbps`: the lowest latency (`best`), or in queue mode the fastest
        slowest stage among the feasible schemes (`throughput_scheme`)."""
        if queue:
            return throughput_scheme(self.model, self.feasible(accuracy_loss), mbps)
        return self.best(mbps, accuracy_loss)
