"""Run a query: an Optuna study over (p, c, b) whose trials' accuracies come from an evaluator.

Planner samplers (coinfer, optcoinfer, exhaustive) choose each trial from the monotone bounds;
each evaluation is logged into the Optuna study as a trial. Optuna's own samplers (tpe, gp,
random) run a normal `study.optimize` with constraints (`trial.set_constraint`), on a fixed budget.
Every answer is checked against the bounds of everything evaluated: `certified` means no
unevaluated scheme can beat it as long as accuracy is monotone within the tolerance.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import optuna

from apps.errors import CoInferError
from compress.scheme import Scheme
from search.bounds import Knowledge
from search.latency import Breakdown
from search.problem import Problem, Status
from search.samplers import OPTUNA_SAMPLERS, SAMPLERS

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class SearchResult:
    kind: str
    bandwidth: float
    bound: float  # the query's accuracy_loss (latency query) or latency ratio (accuracy query)
    sampler: str
    evaluator: str
    scheme: Scheme
    layer: str | None
    feasible: bool
    breakdown: Breakdown
    reference: dict[str, float]
    base_accuracy: float
    accuracy: float | None
    accuracy_is_bound: bool
    certified: bool
    certificate: list[Scheme]
    new_evaluations: int
    reused_evaluations: int
    wall_s: float
    sampler_s: float
    tolerance: float
    offline: bool = False
    gap: float | None = None
    next_to_evaluate: list[Scheme] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    study: optuna.Study | None = None  # every new evaluation as an Optuna trial (inspection, plots)

    @property
    def trials(self) -> list[tuple[Scheme, float, str]]:
        """The new evaluations in order: (scheme, accuracy, source)."""
        if self.study is None:
            return []
        return [(Scheme(t.params["p"], t.params["c"], t.params["b"]), t.user_attrs["accuracy"], t.user_attrs["source"])
                for t in self.study.trials]

    @property
    def accuracy_loss(self) -> float | None:
        return None if self.accuracy is None else self.base_accuracy - self.accuracy

    def to_json(self) -> dict:
        out = {
            "query": self.kind, "bandwidth_mbps": self.bandwidth,
            ("accuracy_loss_bound" if self.kind == "latency" else "latency_ratio"): self.bound,
            "scheme": self.scheme.to_json(),
            "layer": self.layer, "feasible": self.feasible,
            "latency_s": self.breakdown.as_dict(), "bytes": self.breakdown.bytes,
            "reference_s": self.reference, "accuracy": self.accuracy, "accuracy_is_lower_bound":
                self.accuracy_is_bound, "accuracy_loss": self.accuracy_loss, "base_accuracy": self.base_accuracy,
            "certified": self.certified, "certificate": [s.to_json() for s in self.certificate],
            "new_evaluations": self.new_evaluations, "reused_evaluations": self.reused_evaluations,
            "sampler": self.sampler, "evaluator": self.evaluator, "tolerance": self.tolerance,
            "wall_s": self.wall_s, "sampler_s": self.sampler_s, "notes": self.notes,
        }
        if self.offline:
            out["gap"] = self.gap
            out["next_to_evaluate"] = [s.to_json() for s in self.next_to_evaluate]
        return out


def make_planner(name: str, problem: Problem, seed: int, **options):
    if name == "coinfer":
        from search.samplers.coinfer import CoInferPlanner
        return CoInferPlanner(problem)
    if name == "optcoinfer":
        from search.samplers.optcoinfer import OptCoInferPlanner
        return OptCoInferPlanner(problem, seed=seed, **options)
    if name == "exhaustive":
        from search.samplers.exhaustive import ExhaustivePlanner
        return ExhaustivePlanner(problem)
    raise CoInferError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")


class _Study:
    """An Optuna study that logs every evaluated scheme as a trial."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        direction = "minimize" if problem.query.kind == "latency" else "maximize"
        self.study = optuna.create_study(direction=direction)
        cmax = max(pt.channels for pt in problem.space.points)
        self.dists = {"p": optuna.distributions.IntDistribution(0, len(problem.space.points) - 1),
                      "c": optuna.distributions.IntDistribution(1, cmax),
                      "b": optuna.distributions.IntDistribution(1, 8)}

    def log(self, i: int, accuracy: float, source: str) -> None:
        p, c, b = self.problem.space.scheme(i)
        self.study.add_trial(optuna.trial.create_trial(
            params={"p": p, "c": c, "b": b}, distributions=self.dists,
            value=self.problem.objective(i, accuracy),
            user_attrs={"accuracy": accuracy, "latency_s": float(self.problem.latency[i]), "source": source}))


def run_search(problem: Problem, evaluator, sampler: str = "coinfer", tolerance: float = 0.0, seed: int = 0,
               offline: bool = False, max_evaluations: int | None = None, **options) -> SearchResult:
    if sampler not in SAMPLERS:
        raise CoInferError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    if tolerance < 0:
        raise CoInferError("tolerance must be >= 0")
    start = time.perf_counter()
    space = problem.space
    kn = Knowledge(space, tolerance)
    stored = {}
    for scheme, acc in evaluator.known().items():
        try:
            i = space.index(scheme)
        except CoInferError:
            continue
        kn.add(i, acc)
        stored[i] = acc
    if offline and not stored:
        raise CoInferError("the accuracy database holds nothing for this app/protocol: --offline cannot answer "
                           "(run without --offline, or fill it with python -m database.evaluate)")
    log = _Study(problem)
    new: list[int] = []
    sampler_s = 0.0

    def evaluate(i: int) -> float:
        if not np.isnan(kn.acc[i]):
            return float(kn.acc[i])
        acc = float(evaluator.evaluate(space.scheme(i)))
        kn.add(i, acc)
        new.append(i)
        log.log(i, acc, "new")
        return acc

    budget = max_evaluations if max_evaluations is not None else (200 if sampler in OPTUNA_SAMPLERS else None)
    planner = None
    if sampler in OPTUNA_SAMPLERS:
        if not offline and budget > 0:
            proven = lambda: problem.status(kn).done
            sampler_s = _run_optuna(problem, sampler, evaluate, seed, budget, lambda: len(new), proven)
    else:
        planner = make_planner(sampler, problem, seed, **options)
        while not offline and (budget is None or len(new) < budget):
            t0 = time.perf_counter()
            st = problem.status(kn)
            i = planner.next(kn, st)
            sampler_s += time.perf_counter() - t0
            if i is None:
                break
            evaluate(i)
    st = problem.status(kn)
    result = _result(problem, kn, st, evaluator, sampler, tolerance, stored, new, offline)
    result.sampler_s = sampler_s
    result.study = log.study
    if offline:
        nxt = planner.next(kn, st) if planner is not None and not st.done else None
        cand = np.flatnonzero(st.candidates)
        key = problem.latency[cand] if problem.query.kind == "latency" else -st.upper[cand]
        order = [int(i) for i in cand[np.argsort(key, kind="stable")]]
        picks = ([nxt] if nxt is not None else []) + [i for i in order if i != nxt]
        result.next_to_evaluate = [space.scheme(i) for i in picks[:5]]
        result.gap = st.gap
    if budget is not None and len(new) >= budget and not st.done:
        result.notes.append(f"stopped at the evaluation budget ({budget})")
    result.wall_s = time.perf_counter() - start
    return result


def _run_optuna(problem: Problem, name: str, evaluate, seed: int, budget: int, spent_evals, proven) -> float:
    """Optuna's sampler proposes (p, c_frac, b); repeats of a scheme cost nothing. Stops after
    `budget` new evaluations, when the bounds prove the best trial optimal, or after 2 x budget + 10
    trials. Returns the sampler's own time (evaluations excluded)."""
    space, latency = problem.space, problem.latency
    points = space.points

    if name == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    elif name == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    direction = "minimize" if problem.query.kind == "latency" else "maximize"
    study = optuna.create_study(direction=direction, sampler=sampler)
    spent = {"eval": 0.0}

    def objective(trial: optuna.trial.Trial) -> float:
        p = trial.suggest_int("p", 0, len(points) - 1)
        frac = trial.suggest_float("c_frac", 0.0, 1.0)
        b = trial.suggest_int("b", 1, 8)
        c = max(1, math.ceil(frac * points[p].channels))
        i = space.index(Scheme(p, c, b))
        t0 = time.perf_counter()
        if problem.query.kind == "latency":
            acc = evaluate(i)
            trial.set_constraint("accuracy", problem.threshold - acc)
            value = float(latency[i])
        elif latency[i] > problem.budget:  # latency is known: no evaluation needed to reject it
            trial.set_constraint("latency", float(latency[i] - problem.budget))
            value = 0.0
        else:
            acc = evaluate(i)
            trial.set_constraint("latency", float(latency[i] - problem.budget))
            value = acc
        spent["eval"] += time.perf_counter() - t0
        return value

    def stop(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if spent_evals() >= budget or proven():
            study.stop()

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=2 * budget + 10, callbacks=[stop])
    return time.perf_counter() - t0 - spent["eval"]


def _result(problem: Problem, kn: Knowledge, st: Status, evaluator, sampler: str, tol: float,
            stored: dict[int, float], new: list[int], offline: bool) -> SearchResult:
    space, model, q = problem.space, problem.model, problem.query
    inc = st.incumbent
    bound = False
    notes: list[str] = []
    if offline:  # an unevaluated scheme proven better by the bounds is a valid (bounded) answer
        ev = kn.evaluated
        if q.kind == "latency":
            proven = ~ev & (st.lower >= problem.threshold) & (problem.latency < st.incumbent_value)
            if proven.any():
                inc = int(np.flatnonzero(proven)[np.argmin(problem.latency[proven])])
                bound = True
        else:
            proven = ~ev & (problem.latency <= problem.budget) & (st.lower > st.incumbent_value)
            if proven.any():
                inc = int(np.flatnonzero(proven)[np.argmax(st.lower[proven])])
                bound = True
    feasible = inc is not None
    if inc is None:  # nothing meets the latency budget: report the closest (fastest) scheme
        fastest = int(np.argmin(problem.latency))
        inc = fastest if problem.latency[fastest] < problem.reference else problem.single_end
        notes.append(f"no scheme meets the latency budget {problem.budget:.6g} s "
                     f"({q.latency_ratio:g} x {problem.reference:.6g} s); the closest is shown")
    if isinstance(inc, Scheme):
        scheme, layer, accuracy = inc, None, problem.base
        bd = model.breakdown(inc, q.bandwidth)
    else:
        scheme = space.scheme(inc)
        layer = space.points[scheme.p].name
        accuracy = float(st.lower[inc]) if bound else (None if np.isnan(kn.acc[inc]) else float(kn.acc[inc]))
        bd = model.breakdown(scheme, q.bandwidth)
    # Certified: nothing unevaluated can beat the answer. Exact when every scheme that could
    # beat it was evaluated; otherwise it rests on monotonicity within the tolerance, and any
    # evaluated pair that breaks it across the decision level withdraws the certificate.
    could_beat = ~kn.evaluated & (problem.latency < st.incumbent_value if q.kind == "latency"
                                  else problem.latency <= problem.budget)
    level = problem.threshold if q.kind == "latency" else st.incumbent_value
    violations = kn.violations(level) if could_beat.any() else []
    certified = bool(st.done and feasible and not bound and not violations)
    if not feasible and not offline:  # latency is known exactly: no scheme fits, for certain
        certified = True
    if certified and not could_beat.any():
        notes.append("exact: every scheme that could beat the answer was evaluated")
    if violations:
        worst = max(violations, key=lambda v: v[2])
        notes.append(f"{len(violations)} evaluated pairs break monotonicity across the decision level "
                     f"{level:.4f} by more than the tolerance {tol:g} (worst: {space.scheme(worst[1])} is "
                     f"{worst[2]:.4f} below {space.scheme(worst[0])}, which it dominates); no certificate")
    if not st.done and not offline and sampler not in ("exhaustive",):
        notes.append("schemes that could still be better remain unevaluated: no certificate")
    proof = _proof(problem, kn, st, inc)
    used_stored = sum(1 for i in proof if i in stored)
    return SearchResult(
        kind=q.kind, bandwidth=q.bandwidth, sampler=sampler,
        bound=q.accuracy_loss if q.kind == "latency" else q.latency_ratio, evaluator=evaluator.name,
        scheme=scheme, layer=layer,
        feasible=feasible, breakdown=bd,
        reference={"all_edge": problem.all_edge, "all_cloud": problem.all_cloud},
        base_accuracy=problem.base, accuracy=accuracy, accuracy_is_bound=bound, certified=certified,
        certificate=[space.scheme(i) for i in proof] if certified else [], new_evaluations=len(new),
        reused_evaluations=used_stored, wall_s=0.0, sampler_s=0.0, tolerance=tol, offline=offline, notes=notes)


def _proof(problem: Problem, kn: Knowledge, st: Status, inc: int | Scheme) -> list[int]:
    """The answer plus the evaluated schemes whose values rule out everything that could beat it:
    failed schemes at points where some scheme is faster than the answer (latency query), or
    worse schemes at points where some scheme fits the budget (accuracy query)."""
    space = problem.space
    evaluated = np.flatnonzero(kn.evaluated)
    fastest_at = np.array([problem.latency[space.offsets[pt.index]] for pt in space.points])[space.p[evaluated]]
    if problem.query.kind == "latency":
        keep = (kn.acc[evaluated] < problem.threshold) & (fastest_at < st.incumbent_value)
    else:
        keep = (kn.acc[evaluated] <= st.incumbent_value) & (fastest_at <= problem.budget)
    proof = [int(i) for i in evaluated[keep] if i != inc]
    return proof if isinstance(inc, Scheme) else [int(inc)] + proof

