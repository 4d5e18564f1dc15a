"""Run a query: `study.optimize` with any sampler, then the answer and its certificate.

Every search, ours and Optuna's, is an Optuna study (search/study.py) driven by its sampler:
`coinfer`, `optcoinfer` and `exhaustive` are our `BaseSampler`s and stop the study themselves;
Optuna's `tpe`, `gp` and `random` run on a fixed budget of evaluations (search/samplers: the
registry). How to search is one frozen `SearchConfig`: `run_search(problem, evaluator, config)`. The answer is what the
stored database plus the study's trials prove (search/query.py), checked by
search/certificate.py; the stored evaluations the answer and its certificate rely on are added
to the study as completed trials (source "database"), so the study alone tells the story.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import optuna

from cli.errors import CoInferError
from compress.scheme import Scheme
from database.distributed import lost_trial
from search.certificate import Certificate, certify
from search.evaluators import DatabaseEvaluator, Evaluator, NotEvaluable
from search.latency import Breakdown
from search.liveness import GRACE_S, HEARTBEAT_S, fail_own
from search.problem import Problem
from search.samplers import SamplerSpec, sampler_spec
from search.samplers.base import PlannerSampler
from search.study import Objective, add_known, knowledge, open_study

optuna.logging.set_verbosity(optuna.logging.ERROR)  # our output says what failed (e.g. not evaluable)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)



@dataclass(frozen=True)
class SearchConfig:
    """How to search (what to answer is the `Problem`): the sampler by name (search/samplers:
    `SAMPLERS`) with its seed and its own knobs (a mapping; missing knobs take the registry's
    defaults, e.g. {"restarts": 2} for optcoinfer), the accepted non-monotonicity of measured
    accuracy, whether to evaluate at all (`offline`: never), a budget of new evaluations (default:
    the sampler's, none for ours), and where the study lives (resumed when it exists; default: in
    memory, named after the query) with its trials' heartbeat and grace period (search/liveness.py);
    `shared`: other processes optimise the study too (`--workers`), so a journal that cannot be used is
    an error instead of a study kept in memory (search/study.py `open_study`)."""

    sampler: str = "coinfer"
    tolerance: float = 0.0
    seed: int = 0
    knobs: Mapping[str, int] = field(default_factory=dict)
    offline: bool = False
    max_evaluations: int | None = None
    study_name: str | None = None
    study_storage: str | None = None
    heartbeat_s: float = HEARTBEAT_S  # a running trial beats this often (search/liveness.py) ...
    grace_s: float = GRACE_S  # ... and is failed, its scheme freed, when silent this long
    shared: bool = False  # other processes optimise the study too (--workers)

    def __post_init__(self) -> None:
        values = self.spec.knob_values(self.knobs)  # refuses an unknown sampler or knob
        object.__setattr__(self, "knobs", MappingProxyType(values))
        if not (self.tolerance >= 0 and np.isfinite(self.tolerance)):
            raise CoInferError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        if self.max_evaluations is not None and self.max_evaluations < 0:
            raise CoInferError("max_evaluations must be >= 0")
        if not 0 < self.heartbeat_s < self.grace_s < float("inf"):
            raise CoInferError(f"heartbeat {self.heartbeat_s} s and grace {self.grace_s} s: need 0 < heartbeat < grace")

    @property
    def spec(self) -> SamplerSpec:
        return sampler_spec(self.sampler)

    def to_json(self) -> dict:
        """Plain JSON (`from_json` inverts it): how `--workers` helpers are told how to search."""
        return dict(vars(self), knobs=dict(self.knobs))

    @classmethod
    def from_json(cls, obj: Mapping) -> SearchConfig:
        return cls(**obj)

    @property
    def budget(self) -> int | None:
        """New evaluations this search may make (None: until the sampler stops)."""
        return self.max_evaluations if self.max_evaluations is not None else self.spec.budget


@dataclass
class SearchResult:
    problem: Problem
    scheme: Scheme  # the answer; when nothing meets the bound, the closest (fastest) scheme
    feasible: bool
    accuracy: float | None  # measured, or the proven lower bound when accuracy_is_bound
    accuracy_is_bound: bool
    breakdown: Breakdown
    certificate: Certificate
    sampler: str
    evaluator: str
    new_evaluations: int
    not_evaluable: list[Scheme]  # schemes the evaluator could not evaluate (see notes for why)
    reused_evaluations: int  # stored before the search, and part of the proof
    sampler_s: float  # the sampler's own decision time (evaluations excluded)
    wall_s: float
    offline: bool = False
    next_to_evaluate: list[Scheme] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    study: optuna.Study | None = None

    @property
    def query(self):
        return self.problem.query

    @property
    def certified(self) -> bool:
        return self.certificate.certified

    @property
    def base_accuracy(self) -> float:
        return self.problem.base

    @property
    def accuracy_loss(self) -> float | None:
        return None if self.accuracy is None else self.problem.base - self.accuracy

    @property
    def layer(self) -> str | None:
        return self.problem.space.points[self.scheme.p].name if self.scheme.is_split else None

    @property
    def reference(self) -> dict[str, float]:
        return {"all_edge": self.problem.all_edge, "all_cloud": self.problem.all_cloud}

    def evaluated(self) -> list[tuple[Scheme, float]]:
        """The schemes this search evaluated, in order, with their accuracy (from the study)."""
        if self.study is None:
            return []
        return [(Scheme.parse(t.user_attrs["scheme"]), t.user_attrs["accuracy"]) for t in self.study.trials
                if t.user_attrs.get("source") == "evaluated"]

    def to_json(self) -> dict:
        q = self.query
        out = {
            "query": q.name, "bandwidth_mbps": q.bandwidth,
            q.bound_key: q.bound,
            "scheme": self.scheme.to_json(), "layer": self.layer, "feasible": self.feasible,
            "latency_s": self.breakdown.as_dict(), "bytes": self.breakdown.bytes, "wire_bytes": self.breakdown.wire,
            "reference_s": self.reference, "accuracy": self.accuracy, "accuracy_is_lower_bound": self.accuracy_is_bound,
            "accuracy_loss": self.accuracy_loss, "base_accuracy": self.base_accuracy,
            "certified": self.certified, "certificate": self.certificate.to_json(),
            "new_evaluations": self.new_evaluations, "reused_evaluations": self.reused_evaluations,
            "not_evaluable": len(self.not_evaluable),
            "sampler": self.sampler, "evaluator": self.evaluator, "wall_s": self.wall_s, "sampler_s": self.sampler_s,
            "notes": self.notes,
        }
        if self.study is not None:
            out["study"] = self.study.study_name
        if self.offline:
            out["next_to_evaluate"] = [s.to_json() for s in self.next_to_evaluate]
        return out


def run_search(problem: Problem, evaluator: Evaluator, config: SearchConfig = SearchConfig()) -> SearchResult:
    """Answer `problem` as `config` says, evaluating through `evaluator`."""
    spec, tolerance, offline, budget = config.spec, config.tolerance, config.offline, config.budget
    start = time.perf_counter()
    objective = Objective(problem, evaluator, single_ends=spec.ours)
    stored = dict(objective.known)
    if offline and not problem.knowledge(stored).evaluated.any():
        from database.storage import app_flags
        fill = (f", or fill it: python -m database.evaluate {app_flags(evaluator.app, evaluator.store.storage)} "
                f"--schemes all" if isinstance(evaluator, DatabaseEvaluator) else "")
        raise CoInferError(f"the accuracy database holds nothing for this app/protocol: --offline cannot answer "
                           f"(run without --offline{fill})")
    planner = spec.make(problem, stored, tolerance, config.seed, config.knobs)
    notes: list[str] = []
    study = open_study(config.study_name or f"coinfer-{problem.query}/{config.sampler}", config.study_storage, problem,
                       planner, config.heartbeat_s, config.grace_s, config.shared, notes)
    sampler_s = 0.0
    if not offline and budget != 0:
        try:
            sampler_s = _optimize(study, objective, planner, problem, stored, tolerance, budget)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: leave no trial of ours RUNNING
            fail_own(study)
            raise
    kn = knowledge(study, problem, stored, tolerance)
    st = problem.status(kn)
    answer, bounded = st.incumbent, False
    if offline:  # an unevaluated scheme the bounds prove better is a valid (bounded) answer
        proven, key = problem.query.proven(problem, kn, st)
        if proven.any():
            idx = np.flatnonzero(proven)
            answer, bounded = int(idx[np.argmin(key[idx])]), True
    cert = certify(problem, kn, st, answer, bounded)
    feasible = answer is not None
    if answer is None:  # nothing meets the latency budget: report the closest (fastest) scheme
        fastest = int(np.argmin(problem.latency))
        answer = fastest if problem.latency[fastest] < problem.reference else problem.single_end
        notes.append(f"no scheme meets the latency budget {problem.budget:.6g} s "
                     f"({problem.query.bound:g} x {problem.reference:.6g} s); the closest is shown")
    scheme = problem.scheme(answer)
    if not scheme.is_split:
        accuracy = problem.base
    elif bounded:
        accuracy = float(st.lower[answer])
    else:
        accuracy = None if np.isnan(kn.acc[answer]) else float(kn.acc[answer])
    table = {problem.space.scheme(i): float(kn.acc[i]) for i in np.flatnonzero(kn.evaluated)}
    add_known(study, problem, [s for s in (scheme, *cert.proof) if not s.is_split or s in table], table)
    if budget is not None and len(objective.new) >= budget and not st.done:
        notes.append(f"stopped at the evaluation budget ({budget})")
    if objective.not_evaluable:
        first = next(iter(objective.not_evaluable.values()))
        notes.append(f"{len(objective.not_evaluable)} schemes could not be evaluated (e.g. {first})")
    if not cert.certified:
        notes.append(cert.reason)
    return SearchResult(
        problem=problem, scheme=scheme, feasible=feasible, accuracy=accuracy, accuracy_is_bound=bounded,
        breakdown=problem.model.breakdown(scheme, problem.query.bandwidth), certificate=cert, sampler=config.sampler,
        evaluator=evaluator.name, new_evaluations=len(objective.new), not_evaluable=list(objective.not_evaluable),
        reused_evaluations=sum(1 for s in cert.proof if s in stored), sampler_s=sampler_s,
        wall_s=time.perf_counter() - start, offline=offline,
        next_to_evaluate=_next(problem, kn, st, planner) if offline else [], notes=notes, study=study)


def _optimize(study: optuna.Study, objective: Objective, planner, problem: Problem, stored: dict,
              tolerance: float, budget: int | None) -> float:
    """Run the study; returns the sampler's own time (evaluations and our bookkeeping excluded
    for our samplers; everything but the evaluations for Optuna's)."""
    ours = isinstance(planner, PlannerSampler)

    def stop(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if budget is not None and len(objective.new) >= budget:
            study.stop()
        elif not ours and problem.status(knowledge(study, problem, stored, tolerance)).done:
            study.stop()

    def optimize(n_trials: int | None = None) -> None:
        while not (ours and planner.done(study)):
            try:
                study.optimize(objective, n_trials=n_trials, callbacks=[stop], catch=(NotEvaluable,))
                return
            except Exception as exc:  # another worker failed our trial as stale (search/liveness.py):
                if not lost_trial(exc):  # it is lost, its evaluation kept in `objective.known`; go on
                    raise

    if ours:
        optimize()
        return planner.decision_s
    t0 = time.perf_counter()
    optimize(5 * budget + 10)  # repeats and single ends cost nothing
    return time.perf_counter() - t0 - objective.evaluate_s


def _next(problem: Problem, kn, st, planner) -> list[Scheme]:
    """Offline: the five schemes to evaluate next, the sampler's own pick first."""
    nxt = None
    if isinstance(planner, PlannerSampler) and not st.done:
        nxt = planner.pick(kn, st, np.zeros(problem.space.size, dtype=bool))
    cand = np.flatnonzero(st.candidates)
    order = [int(i) for i in cand[np.argsort(problem.query.order(problem, st, cand), kind="stable")]]
    picks = ([nxt] if nxt is not None else []) + [i for i in order if i != nxt]
    return [problem.space.scheme(i) for i in picks[:5]]
