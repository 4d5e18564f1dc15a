"""The distributed build: workers on any number of hosts fill one accuracy table through one Optuna study.

    python -m database.evaluate --app A --storage postgresql://... --schemes all     # on every host

A build is an Optuna study in RDB storage (PostgreSQL across hosts; an SQLite file beside the
default database on one host), named `build/<app>/<protocol>/seed<seed>`. One trial is one attempt
at one scheme. Workers join by pointing at the same URL and run `study.optimize` with
`BuildSampler`, which hands each trial the next scheme that is neither stored nor held:

- Claims. A trial's scheme is its system attribute `coinfer:claim` (with the worker's host:pid),
  written in `before_trial` in the transaction that read every trial's claim, under a write lock
  on the study's row (`BuildStorage.claim`): the trial takes the first scheme no running or
  waiting trial holds, so no two live trials hold one scheme, and no trial waits on another that
  has not claimed yet (the searches claim in trial-number order instead, search/samplers/base.py,
  which keeps their answer the single-worker one; a build's schemes are independent).
- Dead workers. Optuna's heartbeat (`heartbeat_s`) marks a live trial; `fail_stale_trials`, run by
  every worker before each trial and while idle, fails a trial whose heartbeat is older than
  `grace_s`, and Optuna's `RetryHeartbeatStaleTrialCallback` (formerly RetryFailedTrialCallback)
  enqueues a copy, claim included, with `enqueue_trial`'s WAITING state: the next `ask` of any
  worker pops it. `BuildStorage` (database/rdb.py) adds what Optuna leaves out: a running trial
  that never beat (its worker died between `ask` and the first heartbeat) is stale after `grace_s`
  of being seen so, and a lost connection does not kill the heartbeat thread.
- Exactly once. The accuracy table is unique on (app, protocol, p, c, b, seed) and its writes are
  idempotent; a retried scheme is looked up before it is fine-tuned (its worker may have died after
  the write), so a scheme is stored once and, barring a death, fine-tuned once.
- Database restarts. Connections are pinged before use; a worker that loses the database backs off
  (0.5 s doubling to 8 s) for up to `retry_db_s`, then resumes; an interrupted trial is recovered
  as a dead worker's would be.

Why not enqueue every scheme up front (Optuna's queue)? `study.ask` reads the whole queue to pop
one trial: on PostgreSQL here 200 ms a trial with 200 waiting, 500 ms with 1,000 (measured), more
than the work. The sampler reads only the unfinished trials (Optuna's cached storage keeps the
finished ones), so a trial costs the same at any queue length; Optuna's queue carries the retries.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from cli.errors import Unreachable, chain
from compress.scheme import Scheme
from database.finetuner import Finetuner
from database.rdb import (
    BUILD_CLAIM_KEY,
    RETRY_OF,
    Attempt,
    BuildStorage,
    QueueConfig,
    is_db_error,
    raise_disk_full,
    with_retry,
)
from database.storage import is_unreachable, unreachable
from database.store import Store

if TYPE_CHECKING:
    from apps import App
    from database.buildjob import BuildJob

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)

SCHEMES = "coinfer:schemes:"  # study system attr prefix: the scheme lists workers were given


def study_name(app: str, protocol: str, seed: int) -> str:
    return f"build/{app}/{protocol}/seed{seed}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lost_trial(exc: BaseException | None) -> bool:
    """Optuna refused to finish this worker's trial: another worker had failed it as stale."""
    return any(isinstance(e, optuna.exceptions.UpdateFinishedTrialError)
               or (isinstance(e, ValueError) and str(e).startswith("Cannot tell a ")) for e in chain(exc))


@dataclass
class View:
    """What the study says about the schemes, from one read of its trials."""

    done: set[Scheme] = field(default_factory=set)  # completed trials
    held: dict[Scheme, int] = field(default_factory=dict)  # scheme -> number of the running/waiting trial
    failures: dict[Scheme, int] = field(default_factory=dict)  # scheme -> failed trials
    waiting: int = 0
    running: int = 0


def scheme_of_claim(claim: str | None) -> Scheme | None:
    """The scheme of a claim "p,c,b host:pid" (None: no claim, or "-": nothing to claim)."""
    head = claim.split(" ", 1)[0] if claim else "-"
    return None if head == "-" else Scheme.parse(head)


def claimed(t: FrozenTrial) -> Scheme | None:
    """The scheme a build trial claimed (None: none, or not yet)."""
    return scheme_of_claim(t.system_attrs.get(BUILD_CLAIM_KEY))


def view(trials: Iterable[Attempt], number: int | None = None, history: frozenset[int] = frozenset()) -> View:
    """The view from trial `number` (None: from outside any trial). `history`: the numbers of the
    trials already finished when this worker started; what they stored is in the accuracy table it
    read then, and a row deleted since is evaluated again."""
    v = View()
    for t in trials:
        scheme = scheme_of_claim(t.claim)
        if t.number in history and t.state.is_finished():
            continue
        if t.state == TrialState.COMPLETE and scheme is not None:
            v.done.add(scheme)
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            if t.state == TrialState.WAITING:
                v.waiting += 1
            elif number is None or t.number != number:
                v.running += 1
            if number is not None and t.number == number:
                continue
            if scheme is not None:
                v.held[scheme] = t.number
        elif t.state == TrialState.FAIL and scheme is not None:
            v.failures[scheme] = v.failures.get(scheme, 0) + 1
    return v


def backend(study: optuna.Study) -> BuildStorage:
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, BuildStorage):
        raise TypeError("a build study lives in a BuildStorage")
    return storage


def attempts(study: optuna.Study) -> list[Attempt]:
    return backend(study).claims(study._study_id)


class BuildSampler(BaseSampler):
    """Hands each trial of a build study one scheme of `schemes` (in order) that is neither
    stored (`stored`, read when the worker started), completed, held by a live trial, nor failed
    more than `max_retry` times. A retried trial keeps the scheme it inherited. A trial that finds
    nothing open gets no scheme: the objective ends it (PRUNED) and the study stops."""

    def __init__(self, schemes: list[Scheme], stored: set[Scheme], max_retry: int, worker: str,
                 history: frozenset[int] = frozenset()) -> None:
        self.history = history  # trials finished before this worker read the accuracy table (see `view`)
        self.schemes = schemes
        self.stored = set(stored)
        self.max_retry = max_retry
        self.worker = worker
        self.claims: dict[int, tuple[Scheme | None, bool]] = {}  # trial id -> (scheme or None: nothing open, retry)
        self.claim_times: list[float] = []
        self._next = 0  # schemes before this index are done or stored (a hint, re-checked)

    def open_schemes(self, v: View) -> Iterable[Scheme]:
        for i in range(self._next, len(self.schemes)):
            s = self.schemes[i]
            if s in self.stored or s in v.done:
                if i == self._next:
                    self._next += 1
                continue
            if s in v.held or v.failures.get(s, 0) > self.max_retry:
                continue
            yield s

    def has_work(self, study: optuna.Study) -> tuple[bool, View]:
        """(whether a trial would get a scheme now, or a retried trial waits), and the view."""
        v = view(attempts(study), history=self.history)
        return v.waiting > 0 or next(iter(self.open_schemes(v)), None) is not None, v

    # -- optuna.samplers.BaseSampler -------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        raise RuntimeError("a build trial's scheme is its claim (coinfer:claim), not a parameter")

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Claim, under the study's lock (`BuildStorage.claim`): a fresh trial the first open
        scheme; a retry popped from Optuna's queue the scheme it inherited, unless done or held
        by an earlier trial meanwhile (nothing when its worker died before claiming)."""
        t0 = time.perf_counter()
        inherited, retry = claimed(trial), RETRY_OF in trial.system_attrs

        def choose(trials: list[Attempt]) -> str:
            v = view(trials, trial.number, self.history)
            if retry:
                keep = inherited is not None and inherited not in v.done
                scheme = inherited if keep and v.held.get(inherited, trial.number) >= trial.number else None
            else:
                scheme = next(iter(self.open_schemes(v)), None)
            self.claims[trial._trial_id] = (scheme, retry)
            return f"{scheme or '-'} {self.worker}"
        backend(study).claim(study._study_id, trial._trial_id, choose)
        self.claim_times.append(time.perf_counter() - t0)


@dataclass
class WorkerReport:
    """What one worker did, and where its time went (seconds per scheme, for `bench.scale`)."""

    worker: str
    evaluated: int = 0  # schemes fine-tuned and stored by this worker
    found_stored: int = 0  # retried schemes whose row a dead worker had already written
    idle_trials: int = 0
    db_retries: int = 0
    lost_trials: int = 0  # trials another worker failed as stale while this one still ran them
    wall_s: float = 0.0
    trial_s: list[float] = field(default_factory=list)  # one trial's wall time, from ask to the next ask
    evaluate_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)
    claim_s: list[float] = field(default_factory=list)
    heartbeat_s: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


class BuildObjective:
    """A trial's value is the top-1 of its claimed scheme: fine-tuned by `finetuner`, written to
    `store` (with retries), or read back when a dead worker had written it already."""

    def __init__(self, sampler: BuildSampler, finetuner: Finetuner, store: Store, app: str, protocol: str,
                 seed: int, config: QueueConfig, report: WorkerReport,
                 on_done: Callable[[View | None], None] | None = None) -> None:
        self.sampler, self.finetuner, self.store = sampler, finetuner, store
        self.app, self.protocol, self.seed, self.config, self.report = app, protocol, seed, config, report
        self.on_done = on_done
        self._last: float | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        now = time.perf_counter()
        if self._last is not None:
            self.report.trial_s.append(now - self._last)
        self._last = now
        scheme, retry = self.sampler.claims.pop(trial._trial_id, (None, False))
        if scheme is None:
            self.report.idle_trials += 1
            trial.study.stop()
            raise optuna.TrialPruned("nothing open to claim")
        if retry:
            stored = with_retry(lambda: self.store.accuracy_table(self.app, self.protocol, self.seed),
                                self.config).get(scheme)
            if stored is not None:
                self.report.found_stored += 1
                return stored
        t0 = time.perf_counter()
        row = self.finetuner.finetune_row(scheme, self.seed)
        t1 = time.perf_counter()
        with_retry(lambda: self.store.put_accuracy([row]), self.config)
        self.report.evaluate_s.append(t1 - t0)
        self.report.write_s.append(time.perf_counter() - t1)
        self.report.evaluated += 1
        if self.on_done is not None:
            self.on_done(None)
        return row.top1


def fail_stale(study: optuna.Study) -> None:
    """Optuna's `fail_stale_trials` (fail dead workers' trials, enqueue their retries)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def open_build(config: QueueConfig, name: str) -> optuna.Study:
    """The build study, created or joined. A queue this worker never reached is `Unreachable` after
    `storage.CONNECT_TIMEOUT_S` (its first connection is not retried: nothing was lost); one lost later
    is retried for `retry_db_s` (`with_retry`)."""
    storage = with_retry(lambda: _first_contact(config), config)
    return with_retry(lambda: optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                                  load_if_exists=True), config)


def _first_contact(config: QueueConfig) -> BuildStorage:
    """BuildStorage(config); a server that cannot be reached is `Unreachable` at once, raised outside the
    driver's error so that `with_retry` (which follows the chain) does not take it for a lost connection."""
    failure: Unreachable | None = None
    try:
        return BuildStorage(config)
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        failure = unreachable("build queue", config.url, exc)
    raise failure


def record_schemes(study: optuna.Study, schemes: list[Scheme]) -> None:
    """Keep the scheme list this worker was given (status counts what remains of the union)."""
    import hashlib
    text = " ".join(map(str, schemes))
    key = SCHEMES + hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
    if key not in study._storage.get_study_system_attrs(study._study_id):
        study._storage.set_study_system_attr(study._study_id, key, text)


def run_worker(job: BuildJob, app: App, store: Store, finetuner: Finetuner, progress: bool = False) -> WorkerReport:
    """Work on the job's build study until every scheme of `job.schemes` is stored or failed for
    good, with nothing left running elsewhere (a running trial may die and be retried here).
    `app`: the job's app, loaded; `store`: the job's storage, open; `finetuner`: the job's evaluator."""
    from cli.progress import progress as progress_bar
    config, schemes, seed, protocol = job.queue, list(job.schemes), job.seed, job.protocol(app)
    name, app_name = study_name(app.name, protocol, seed), app.name
    report = WorkerReport(worker_id())
    start = time.perf_counter()
    study = open_build(config, name)
    with_retry(lambda: record_schemes(study, schemes), config)
    # the trials before the rows: a trial finished by now wrote its row before it finished
    history = frozenset(a.number for a in with_retry(lambda: attempts(study), config) if a.state.is_finished())
    stored = set(with_retry(lambda: store.accuracy_table(app_name, protocol, seed), config))
    sampler = BuildSampler(schemes, stored & set(schemes), config.max_retry, report.worker, history=history)
    study.sampler = sampler
    total = len(set(schemes))
    bar = progress_bar(total=total, initial=len(sampler.stored), desc=f"build {app_name}", unit="scheme",
                       enabled=progress)
    objective = BuildObjective(sampler, finetuner, store, app_name, protocol, seed, config, report,
                               on_done=lambda _v: bar.update(1))
    try:
        while True:
            try:
                fail_stale(study)
                work, v = sampler.has_work(study)
                if work:
                    study.optimize(objective, catch=(), gc_after_trial=False)
                    continue
                if v.running == 0 and v.waiting == 0:
                    break
                time.sleep(config.poll_s)  # others are running: one may die and its scheme come back
            except Exception as exc:
                if lost_trial(exc):  # failed by another worker while this one was stalled (> grace): retried there
                    report.lost_trials += 1
                    continue
                raise_disk_full(exc, config)
                if not is_db_error(exc):
                    raise
                report.db_retries += 1
                with_retry(lambda: study.get_trials(deepcopy=False), config)
    finally:
        bar.close()
        report.claim_s = list(sampler.claim_times)
        report.heartbeat_s = list(backend(study).heartbeat_times)
        report.wall_s = time.perf_counter() - start
    return report
