"""A query as an Optuna study: one trial is one scheme.

Parameters are suggested define-by-run: p in -1..P (P = number of partition points; -1 is
all-cloud, P is all-edge), then for a split c in 1..C_p and b in 1..8 (`compress.scheme.BITS`).
Optuna's own samplers get p in 0..P-1 (`single_ends=False`): the single ends' latency and accuracy are known, and a
sampler that can propose them keeps re-proposing the feasible one. Every trial records

    value        latency (latency query) or accuracy (accuracy query)
    constraint   Optuna's `constraints` system attribute, a list of one value (feasible when <= 0):
                 threshold - A(s), or L(s) - budget. It is the form Optuna's samplers write from a
                 `constraints_func` and the one form every reader takes: `study.best_trial`, TPE,
                 GP, the visualisations and optuna-dashboard (which shows `Trial.set_constraint`'s
                 named `constraints:accuracy` as no constraint at all); the user attr `constraint`
                 names it (accuracy or latency)
    user attrs   scheme, accuracy (None when over the latency budget: never evaluated),
                 latency_s, source: "evaluated" (new), "database" (stored before the search),
                 "reference" (a single end: the unmodified model), "over-budget", "repeat";
                 a scheme the evaluator cannot evaluate is a FAILed trial with source
                 "not-evaluable" and the reason

so the study alone tells the story of a search. Storages: in memory, a journal file (Optuna's
JournalStorage: a few ms a trial), or any SQLAlchemy URL (Optuna's RDB storage: tens of ms a
trial on SQLite); `open_study` resumes a study of the same name. The storages' best trial honours
the constraints (search/best.py), so a dashboard served on them (`python -m reports.dashboard`) shows
the answer as its best trial.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.distributions import IntDistribution
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY  # "constraints": Optuna's own key
from optuna.trial import FrozenTrial, TrialState

from cli.errors import CoInferError, disk_full, disk_full_error, mask_url
from compress.scheme import MAX_BITS, MIN_BITS, Scheme
from search.bounds import Knowledge
from search.evaluators import Evaluator, NotEvaluable
from search.journal import JournalDamaged, JournalFile, JournalUnwritable
from search.liveness import GRACE_S, HEARTBEAT_S, SearchJournalStorage, SearchRDBStorage, fail_stale
from search.problem import Problem

SOURCE_EVALUATED, SOURCE_DATABASE, SOURCE_REFERENCE = "evaluated", "database", "reference"
SOURCE_OVER_BUDGET, SOURCE_REPEAT, SOURCE_NOT_EVALUABLE = "over-budget", "repeat", "not-evaluable"
JOURNAL_SUFFIXES = (".journal", ".log")


def suggest_scheme(trial: optuna.Trial, problem: Problem, single_ends: bool = True) -> Scheme:
    """The trial's scheme, suggested define-by-run (c within C_p)."""
    points = problem.space.points
    p = trial.suggest_int("p", -1, len(points)) if single_ends else trial.suggest_int("p", 0, len(points) - 1)
    if p == -1:
        return Scheme.ALL_CLOUD
    if p == len(points):
        return Scheme.ALL_EDGE
    return Scheme(p, trial.suggest_int("c", 1, points[p].channels), trial.suggest_int("b", MIN_BITS, MAX_BITS))


def params_of(scheme: Scheme, problem: Problem) -> tuple[dict[str, int], dict[str, IntDistribution]]:
    """The trial parameters of a scheme and their distributions (inverse of `suggest_scheme`)."""
    points = problem.space.points
    p = -1 if scheme.is_all_cloud else len(points) if scheme.is_all_edge else scheme.p
    params, dists = {"p": p}, {"p": IntDistribution(-1, len(points))}
    if scheme.is_split:
        params |= {"c": scheme.c, "b": scheme.b}
        dists |= {"c": IntDistribution(1, points[p].channels), "b": IntDistribution(MIN_BITS, MAX_BITS)}
    return params, dists


def scheme_of(trial: FrozenTrial, problem: Problem) -> Scheme | None:
    """The scheme of a trial of this problem's study (None when its params name none)."""
    params, n = trial.params, len(problem.space.points)
    p = params.get("p")
    if p == -1:
        return Scheme.ALL_CLOUD
    if p == n:
        return Scheme.ALL_EDGE
    if isinstance(p, int) and 0 <= p < n and "c" in params and "b" in params:
        return Scheme(p, params["c"], params["b"])
    return None


def _attrs(problem: Problem, scheme: Scheme, accuracy: float | None, source: str) -> tuple[dict, float, float]:
    """(user attrs, constraint value, objective value) of a scheme."""
    latency = problem.latency_of(scheme)
    q = problem.query
    constraint = q.constraint(problem, latency, accuracy if accuracy is not None else problem.base)
    attrs = {"scheme": str(scheme), "accuracy": accuracy, "latency_s": latency, "source": source,
             "constraint": q.constraint_name}
    return attrs, float(constraint), q.objective(latency, accuracy)


def frozen_trial(problem: Problem, scheme: Scheme, accuracy: float | None, source: str) -> FrozenTrial:
    """A completed trial for a scheme whose accuracy is already known (`study.add_trial`)."""
    params, dists = params_of(scheme, problem)
    attrs, constraint, value = _attrs(problem, scheme, accuracy, source)
    return optuna.trial.create_trial(params=params, distributions=dists, value=value, user_attrs=attrs,
                                     system_attrs={_CONSTRAINTS_KEY: [constraint]})


def record_constraint(trial: optuna.Trial, value: float) -> None:
    """Store a running trial's constraint as Optuna's samplers do after a trial with a `constraints_func`
    (`optuna.samplers._base._process_constraints_after_trial`): the `constraints` system attribute, a list."""
    trial.storage.set_trial_system_attr(trial._trial_id, _CONSTRAINTS_KEY, [float(value)])


class Objective:
    """`study.optimize(Objective(problem, evaluator))`: a trial's value is its scheme's latency
    or accuracy. A scheme over the latency budget is never evaluated; the single ends run the
    unmodified model (the base accuracy); every other accuracy comes from the evaluator once
    (then from memory). `new` lists the schemes this objective evaluated. `single_ends`: whether
    trials may be the single ends (False for Optuna's own samplers)."""

    def __init__(self, problem: Problem, evaluator: Evaluator, single_ends: bool = True) -> None:
        self.problem = problem
        self.evaluator = evaluator
        self.single_ends = single_ends
        self.known = dict(evaluator.known())
        self.new: list[Scheme] = []
        self.not_evaluable: dict[Scheme, str] = {}  # scheme -> why
        self.shared: set[Scheme] = set()  # evaluated by another worker of the study
        self.evaluate_s = 0.0

    def accuracy(self, scheme: Scheme) -> tuple[float | None, str]:
        if not scheme.is_split:
            return self.problem.base, SOURCE_REFERENCE
        if self.problem.latency_of(scheme) > self.problem.budget:
            return None, SOURCE_OVER_BUDGET
        if scheme in self.known:
            repeat = scheme in self.new or scheme in self.shared
            return self.known[scheme], SOURCE_REPEAT if repeat else SOURCE_DATABASE
        t0 = time.perf_counter()
        try:
            acc = float(self.evaluator.evaluate(scheme))
        finally:
            self.evaluate_s += time.perf_counter() - t0
        self.known[scheme] = acc
        self.new.append(scheme)
        return acc, SOURCE_EVALUATED

    def __call__(self, trial: optuna.Trial) -> float:
        scheme = suggest_scheme(trial, self.problem, self.single_ends)
        if scheme.is_split and scheme not in self.known:  # another worker of the study may have measured it
            done = measured(trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), self.problem)
            if scheme in done:
                self.known[scheme] = done[scheme]
                self.shared.add(scheme)
        try:
            accuracy, source = self.accuracy(scheme)
        except NotEvaluable as exc:  # the trial FAILs (optimize with catch=(NotEvaluable,)); the search goes on
            self.not_evaluable[scheme] = str(exc)
            trial.set_user_attr("scheme", str(scheme))
            trial.set_user_attr("source", SOURCE_NOT_EVALUABLE)
            trial.set_user_attr("reason", str(exc))
            if exc.everything:
                trial.study.stop()
            raise
        attrs, constraint, value = _attrs(self.problem, scheme, accuracy, source)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        record_constraint(trial, constraint)
        return value


def measured(trials: list[FrozenTrial], problem: Problem) -> dict[Scheme, float]:
    """The split schemes whose accuracy these (completed) trials recorded."""
    out = {}
    for t in trials:
        acc, scheme = t.user_attrs.get("accuracy"), scheme_of(t, problem)
        if acc is not None and scheme is not None and scheme.is_split:
            out[scheme] = float(acc)
    return out


def knowledge(study: optuna.Study, problem: Problem, known: dict[Scheme, float] | None = None,
              tolerance: float = 0.0) -> Knowledge:
    """What `known` and the study's completed trials say about the split schemes' accuracy."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return problem.knowledge(dict(known or {}) | measured(completed, problem), tolerance)


def add_known(study: optuna.Study, problem: Problem, schemes: list[Scheme], table: dict[Scheme, float]) -> int:
    """Add, as completed trials, the schemes of `schemes` the study does not hold yet (their
    accuracy from `table`; single ends are the reference). Returns how many were added."""
    have = {scheme_of(t, problem) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    add = []
    for s in dict.fromkeys(schemes):
        if s in have:
            continue
        if s.is_split:
            add.append(frozen_trial(problem, s, table[s], SOURCE_DATABASE))
        else:
            add.append(frozen_trial(problem, s, problem.base, SOURCE_REFERENCE))
    study.add_trials(add)
    return len(add)


def make_storage(url: str | None, heartbeat_s: float = HEARTBEAT_S,
                 grace_s: float = GRACE_S) -> optuna.storages.BaseStorage | None:
    """None or "memory": in memory; a path ending in .journal / .log (or "journal:PATH"): Optuna's
    JournalStorage in that file; anything else: a SQLAlchemy URL for Optuna's RDB storage (a server
    that cannot be reached: `Unreachable`, exit 3). The searches' default is
    `database.storage.Storage.study_storage`. Both persistent storages beat every `heartbeat_s` and
    fail trials silent for `grace_s` or whose worker on this host is dead (search/liveness.py). A journal
    that cannot be written is `JournalUnwritable`, one with a damaged record `JournalDamaged`
    (search/journal.py); one on a full disk is one line too."""
    if url is None or url == "memory":
        return None
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise CoInferError(f"study storage {path}: no such folder {path.parent}")
        try:
            journal = JournalFile(path)  # search/journal.py: its lock's deadline, its records checked
            journal.check_writable()
        except OSError as exc:  # a full disk (JournalUnwritable: a read-only folder, for `open_study`)
            if disk_full(exc):
                raise disk_full_error(exc, f"study journal {path}") from None
            raise CoInferError(f"study journal {path}: {exc.strerror or exc}") from None
        return SearchJournalStorage(journal, heartbeat_s, grace_s)  # reads every record: JournalDamaged
    if "://" not in url:
        raise CoInferError(f"study storage {url!r}: expected memory, a .journal file or a SQLAlchemy URL")
    from database.rdb import create_tables_once
    from database.storage import Storage, is_unreachable, lock_error, lock_expired, unreachable
    connect_args = Storage.parse(url).connect_args()  # every wait under its deadline (database/storage.py)
    try:  # several searches may open a new database at once
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return create_tables_once(lambda: SearchRDBStorage(
                url, engine_kwargs={"connect_args": connect_args},
                heartbeat_interval=heartbeat_s, grace_period=grace_s))  # type: ignore[arg-type]
    except Exception as exc:  # SQLAlchemy / driver errors: one line, the password masked
        if disk_full(exc):
            raise disk_full_error(exc, f"study storage {mask_url(url)}") from None
        if is_unreachable(exc):
            raise unreachable("study storage", url, exc) from None
        if lock_expired(exc):
            raise lock_error("study storage", url, exc) from None
        raise CoInferError(f"cannot open study storage {mask_url(url)}: {type(exc).__name__}") from None


def open_study(name: str, storage: str | None, problem: Problem, sampler: optuna.samplers.BaseSampler | None = None,
               heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S, shared: bool = False,
               notes: list[str] | None = None) -> optuna.Study:
    """Create the study, or resume it when one of that name exists in the storage; its stale
    trials (a dead worker's: search/liveness.py) are failed, so their schemes are free again.
    A journal that cannot be written (a read-only folder) or holds a damaged record is no reason to
    withhold an answer: unless the study must be `shared` with other processes (`--workers`), the
    search keeps it in memory, with a warning line on stderr (also appended to `notes`)."""
    try:
        backend = make_storage(storage, heartbeat_s, grace_s)
    except (JournalDamaged, JournalUnwritable) as exc:
        if shared:
            raise
        line = f"{exc}; this search keeps its study in memory"
        print(f"warning: {line}", file=sys.stderr)
        if notes is not None:
            notes.append(line)
        backend = None
    try:
        study = optuna.create_study(study_name=name, storage=backend, sampler=sampler, direction=problem.direction,
                                    load_if_exists=True)
    except ValueError as exc:  # e.g. an existing study of that name with the other direction
        raise CoInferError(f"study {name!r}: {exc}") from None
    fail_stale(study)
    return study
