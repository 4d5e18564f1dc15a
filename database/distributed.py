"""The distributed build: workers on any number of hosts fill one accuracy table through one Optuna study.

    python -m database.evaluate --app A --storage postgresql://... --schemes all     # on every host

A build is an Optuna study in RDB storage (PostgreSQL across hosts; an SQLite file beside the
default database on one host), named `build/<app>/<protocol>/seed<seed>`. One trial is one attempt
at one scheme. Workers join by pointing at the same URL and run `study.optimize` with
`BuildSampler`, which hands each trial the next scheme that is neither stored nor held:

- Claims. A trial's scheme is its system attribute `coinfer:scheme` (with the worker's host:pid),
  written in `before_trial`. Trials claim in trial-number order (as the search samplers do,
  search/samplers/base.py): trial n waits until every running trial numbered below n has claimed,
  then excludes the claims of every running and waiting trial. Numbers are unique and claims are
  written once, so no two live trials hold one scheme.
- Dead workers. Optuna's heartbeat (`heartbeat_s`) marks a live trial; `fail_stale_trials`, run by
  every worker before each trial and while idle, fails a trial whose heartbeat is older than
  `grace_s`, and Optuna's `RetryHeartbeatStaleTrialCallback` (formerly RetryFailedTrialCallback)
  enqueues a copy, claim included, with `enqueue_trial`'s WAITING state: the next `ask` of any
  worker pops it. `BuildStorage` adds what Optuna leaves out: a running trial that never beat (its
  worker died between `ask` and the first heartbeat) is stale after `grace_s` of being seen so, and
  a lost connection does not kill the heartbeat thread.
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

import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from apps.errors import CoInferError, mask_url
from compress.scheme import Scheme
from database.finetuner import Finetuner
from database.store import Store

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.ERROR)

CLAIM = "coinfer:claim"  # "p,c,b host:pid": the trial's scheme and its worker ("- host:pid": nothing to claim)
RETRY_OF = "failed_trial"  # set by Optuna's retry callback on a retried trial
SCHEMES = "coinfer:schemes:"  # study system attr prefix: the scheme lists workers were given
POLL_S = 0.02  # wait for an earlier trial's claim
NUMBER_LOCK = 0x436F4E  # PostgreSQL advisory lock class: numbering a build's trials ("CoN")


@dataclass(frozen=True)
class QueueConfig:
    """Where the build study lives and how dead workers are found."""

    url: str  # SQLAlchemy URL of Optuna's RDB storage
    heartbeat_s: float = 10.0  # a running trial records a heartbeat this often
    grace_s: float = 60.0  # ... and is failed and retried when its heartbeat is older than this
    max_retry: int = 3  # retries of one scheme after its worker died
    poll_s: float = 1.0  # how often an idle worker looks for retried work
    retry_db_s: float = 300.0  # how long a worker keeps retrying a lost database

    def __post_init__(self) -> None:
        if not self.heartbeat_s > 0 or not self.grace_s > self.heartbeat_s:
            raise CoInferError(f"heartbeat {self.heartbeat_s} s and grace {self.grace_s} s: need 0 < heartbeat < grace")
        if self.max_retry < 0 or self.poll_s <= 0 or self.retry_db_s < 0:
            raise CoInferError("--max-retry and --retry-db must be >= 0, the poll interval > 0")


def queue_url(storage_url: str) -> str:
    """The build study's storage for an accuracy database: the same database for a server (its
    own tables: studies, trials, ...), a `.queue.sqlite` file beside an SQLite file (the
    accuracy file stays free of Optuna's tables)."""
    if storage_url.startswith("sqlite:///") and storage_url != "sqlite:///:memory:":
        path = storage_url.removeprefix("sqlite:///")
        stem = path[:-len(".sqlite")] if path.endswith(".sqlite") else path
        return f"sqlite:///{stem}.queue.sqlite"
    if storage_url.startswith("sqlite"):
        raise CoInferError("an in-memory database cannot hold a build shared by workers")
    return storage_url


def study_name(app: str, protocol: str, seed: int) -> str:
    return f"build/{app}/{protocol}/seed{seed}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_db_error(exc: BaseException | None) -> bool:
    """A lost or refused database connection (worth retrying), as opposed to bad input. The chain
    is followed: Optuna's own handling of a failed `tell` can raise another error on top of it
    (its `_run_trial` then reads an unbound local), and the store's one-line errors keep the
    driver's error as their context."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, optuna.exceptions.StorageInternalError)):
            return True
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def lost_trial(exc: BaseException | None) -> bool:
    """Optuna refused to finish this worker's trial: another worker had failed it as stale."""
    for _ in range(10):
        if exc is None:
            return False
        if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or (
                isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a ")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def with_retry(fn: Callable[[], Any], config: QueueConfig, what: str) -> Any:
    """fn(), retried with backoff (0.5 s doubling to 8 s) for up to `retry_db_s` while the
    database is unreachable."""
    deadline, delay = time.monotonic() + config.retry_db_s, 0.5
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_db_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(8.0, 2 * delay)


def create_tables_once(make: Callable[[], RDBStorage], attempts: int = 20) -> RDBStorage:
    """make() — an Optuna RDBStorage — retried while other processes create the same tables: two
    workers that open a new database at once collide on the schema or on Optuna's version row
    (IntegrityError, "already exists"); the second attempt finds the tables made."""
    for i in range(attempts):
        try:
            return make()
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
            if i == attempts - 1 or not any(w in str(exc) for w in ("already exists", "UNIQUE", "duplicate key",
                                                                     "locked", "version_info")):
                raise
            time.sleep(0.05 * (i + 1))
    raise AssertionError("unreachable")


def _sqlite_queue_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = OFF")
    cur.close()


class BuildStorage(RDBStorage):
    """Optuna's RDB storage with heartbeats, the retry callback, pinged connections, and two
    additions (see the module doc): never-beating running trials become stale, and a heartbeat
    that cannot reach the database is skipped instead of ending the heartbeat thread.
    `heartbeat_s` (the time spent recording heartbeats) is kept for the benchmark."""

    def __init__(self, config: QueueConfig) -> None:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        sqlite = config.url.startswith("sqlite")
        if sqlite:
            kwargs["connect_args"] = {"timeout": 60}
        elif config.url.startswith("postgresql"):
            # the queue's commits need not wait for the disk: a claim or a state lost to a server crash
            # (not a restart) is a trial retried after the grace period, and the accuracy row is its truth
            kwargs["connect_args"] = {"options": "-c synchronous_commit=off"}
        self.config = config
        self.heartbeat_times: list[float] = []
        self._unbeaten: dict[int, float] = {}
        self._last_check = 0.0
        self._claims: dict[int, dict[int, Attempt]] = {}  # study id -> trial id -> attempt
        try:
            with warnings.catch_warnings():  # heartbeats and the retry callback are "experimental" since 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                create_tables_once(lambda: super(BuildStorage, self).__init__(  # type: ignore[func-returns-value]
                    config.url, engine_kwargs=kwargs, heartbeat_interval=config.heartbeat_s,  # type: ignore[arg-type]
                    grace_period=config.grace_s,  # type: ignore[arg-type]
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(config.max_retry)))
            if sqlite:  # WAL, no fsync per commit (as above: the queue is recoverable, the accuracy table is not)
                self.engine.dispose()
                sa.event.listen(self.engine, "connect", _sqlite_queue_pragmas)
        except Exception as exc:  # driver / connection errors: one line, the password masked
            if is_db_error(exc):
                raise
            raise CoInferError(f"cannot open build queue {mask_url(config.url)}: "
                               f"{mask_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}") from None

    def claims(self, study_id: int) -> list[Attempt]:
        """Every trial of the study as an `Attempt`, in one statement: the trials that were
        unfinished at the last read and the ones added since (finished ones are kept here, as
        Optuna's cached storage keeps them, but without its six statements per read)."""
        from optuna.storages._rdb.models import TrialModel, TrialSystemAttributeModel
        trials, attrs = TrialModel.__table__, TrialSystemAttributeModel.__table__
        cache = self._claims.setdefault(study_id, {})
        open_ids = [i for i, a in cache.items() if not a.state.is_finished()]
        newest = max(cache, default=-1)
        where = trials.c.trial_id > newest
        if open_ids:
            where = sa.or_(where, trials.c.trial_id.in_(open_ids))
        q = (sa.select(trials.c.trial_id, trials.c.number, trials.c.state, attrs.c.key, attrs.c.value_json)
             .select_from(trials.outerjoin(attrs, sa.and_(attrs.c.trial_id == trials.c.trial_id,
                                                          attrs.c.key.in_((CLAIM, RETRY_OF)))))
             .where(trials.c.study_id == study_id, where))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        fresh: dict[int, dict] = {}
        for trial_id, number, state, key, value in rows:
            entry = fresh.setdefault(trial_id, {"number": number, "state": state})
            if key is not None:
                entry[key] = json.loads(value)
        for trial_id, e in fresh.items():
            state = e["state"] if isinstance(e["state"], TrialState) else TrialState[e["state"]]
            cache[trial_id] = Attempt(e["number"], state, e.get(CLAIM), RETRY_OF in e)
        return list(cache.values())

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """Optuna's, one process at a time on PostgreSQL. Optuna numbers a trial by counting the
        trials before it in the same transaction; under PostgreSQL's read-committed isolation two
        concurrent creations may not see each other's rows and count alike: one number for two
        trials would break the claim order and Optuna's own cache (keyed by number). A session
        advisory lock per study makes numbers unique and ordered as the trials become visible.
        (SQLite serialises writers itself.)"""
        if self.engine.dialect.name != "postgresql":
            return super().create_new_trial(study_id, template_trial)
        with self.engine.connect() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_lock(NUMBER_LOCK, study_id)))
            conn.commit()
            try:
                return super().create_new_trial(study_id, template_trial)
            finally:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(NUMBER_LOCK, study_id)))
                conn.commit()

    # -- reading trials: two statements instead of Optuna's six or seven -------------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        trials = self._frozen(lambda t: t.c.trial_id == trial_id)
        if not trials:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return trials[0]

    def _get_trials(self, study_id: int, states, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        """What Optuna's cached storage asks for (`_read_trials_from_remote_storage`): the study's
        trials in `included_trial_ids` or numbered above `trial_id_greater_than` (all when -1)."""
        included = [i for i in included_trial_ids if i <= trial_id_greater_than]

        def where(t):
            cond = t.c.study_id == study_id
            if states is not None:
                cond = sa.and_(cond, t.c.state.in_(list(states)))
            if trial_id_greater_than > -1:
                newer = t.c.trial_id > trial_id_greater_than
                cond = sa.and_(cond, sa.or_(newer, t.c.trial_id.in_(included)) if included else newer)
            return cond
        return self._frozen(where)

    def _frozen(self, where: Callable) -> list[FrozenTrial]:
        """Frozen trials: one statement for the trials, one UNION ALL for their values, attributes,
        parameters and intermediate values (Optuna's ORM loads each relation on its own)."""
        from optuna.distributions import json_to_distribution
        from optuna.storages._rdb import models as m
        t = m.TrialModel.__table__
        rows = self._read(sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
                          .where(where(t)).order_by(t.c.trial_id))
        if not rows:
            return []
        ids = [r[0] for r in rows]
        text, num = sa.Text, sa.Float

        def part(kind: str, table: sa.Table, key, txt, value, order):
            return sa.select(table.c.trial_id, sa.literal(kind).label("kind"), sa.cast(key, text).label("key"),
                             sa.cast(txt, text).label("txt"), sa.cast(value, num).label("num"),
                             sa.cast(order, sa.Integer).label("ord")).where(table.c.trial_id.in_(ids))
        v, sy = m.TrialValueModel.__table__, m.TrialSystemAttributeModel.__table__
        u = m.TrialUserAttributeModel.__table__
        pa, iv = m.TrialParamModel.__table__, m.TrialIntermediateValueModel.__table__
        union = sa.union_all(
            part("v", v, v.c.objective, v.c.value_type, v.c.value, v.c.trial_value_id),
            part("s", sy, sy.c.key, sy.c.value_json, sa.null(), sy.c.trial_system_attribute_id),
            part("u", u, u.c.key, u.c.value_json, sa.null(), u.c.trial_user_attribute_id),
            part("p", pa, pa.c.param_name, pa.c.distribution_json, pa.c.param_value, pa.c.param_id),
            part("i", iv, iv.c.step, iv.c.intermediate_value_type, iv.c.intermediate_value,
                 iv.c.trial_intermediate_value_id))
        related: dict[int, list] = {i: [] for i in ids}
        for trial_id, kind, key, txt, value, order in self._read(union):
            related[trial_id].append((kind, key, txt, value, order))
        out = []
        for trial_id, number, state, start, complete in rows:
            values: dict[int, float] = {}
            params, dists, user, system, inter = {}, {}, {}, {}, {}
            for kind, key, txt, value, _order in sorted(related[trial_id], key=lambda x: (x[0], x[4])):
                if kind == "v":
                    values[int(key)] = m.TrialValueModel.stored_repr_to_value(
                        value, m.TrialValueModel.TrialValueType[txt.rsplit(".", 1)[-1]])
                elif kind == "s":
                    system[key] = json.loads(txt)
                elif kind == "u":
                    user[key] = json.loads(txt)
                elif kind == "p":
                    dist = json_to_distribution(txt)
                    params[key], dists[key] = dist.to_external_repr(value), dist
                else:
                    inter[int(key)] = m.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                        value, m.TrialIntermediateValueModel.TrialIntermediateValueType[txt.rsplit(".", 1)[-1]])
            out.append(FrozenTrial(
                number=number, state=state if isinstance(state, TrialState) else TrialState[state], value=None,
                values=[values[k] for k in sorted(values)] if values else None, datetime_start=start,
                datetime_complete=complete, params=params, distributions=dists, user_attrs=user,
                system_attrs=system, intermediate_values=inter, trial_id=trial_id))
        return out

    def _read(self, query) -> list:
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).all()
        except sa.exc.SQLAlchemyError as exc:  # as Optuna's own reads fail
            raise optuna.exceptions.StorageInternalError(str(exc).splitlines()[0]) from exc

    def record_heartbeat(self, trial_id: int) -> None:
        t0 = time.perf_counter()
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_db_error(exc):
                raise
        self.heartbeat_times.append(time.perf_counter() - t0)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials whose heartbeat is older than the grace period, or that never beat and
        were seen so for the grace period. Checked at most once a heartbeat interval."""
        now = time.monotonic()
        if now - self._last_check < self.config.heartbeat_s:
            return []
        self._last_check = now
        from optuna.storages._rdb.models import TrialHeartbeatModel, TrialModel
        trials, beats = TrialModel.__table__, TrialHeartbeatModel.__table__
        q = (sa.select(trials.c.trial_id, beats.c.heartbeat, sa.func.current_timestamp())
             .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
             .where(trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING.name))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        stale, running = [], set()
        for trial_id, beat, db_now in rows:
            running.add(trial_id)
            if beat is None:
                first = self._unbeaten.setdefault(trial_id, now)
                if now - first > self.config.grace_s:
                    stale.append(trial_id)
            elif (db_now.replace(tzinfo=None) - beat).total_seconds() > self.config.grace_s:
                stale.append(trial_id)
        self._unbeaten = {k: v for k, v in self._unbeaten.items() if k in running}
        return stale


class Attempt(NamedTuple):
    """What the build needs of one trial."""

    number: int
    state: TrialState
    claim: str | None  # "p,c,b host:pid", "- host:pid", or None before before_trial wrote it
    retry: bool  # a copy enqueued by the retry callback


@dataclass
class View:
    """What the study says about the schemes, from one read of its trials."""

    done: set[Scheme] = field(default_factory=set)  # completed trials
    held: dict[Scheme, int] = field(default_factory=dict)  # scheme -> number of the running/waiting trial
    failures: dict[Scheme, int] = field(default_factory=dict)  # scheme -> failed trials
    unclaimed_before: int = 0  # running trials numbered below the asking one without a claim
    waiting: int = 0
    running: int = 0


def scheme_of_claim(claim: str | None) -> Scheme | None:
    """The scheme of a claim "p,c,b host:pid" (None: no claim, or "-": nothing to claim)."""
    head = claim.split(" ", 1)[0] if claim else "-"
    return None if head == "-" else Scheme.parse(head)


def claimed(t: FrozenTrial) -> Scheme | None:
    """The scheme a build trial claimed (None: none, or not yet)."""
    return scheme_of_claim(t.system_attrs.get(CLAIM))


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
            elif t.state == TrialState.RUNNING and number is not None and t.number < number and t.claim is None:
                v.unclaimed_before += 1
        elif t.state == TrialState.FAIL and scheme is not None:
            v.failures[scheme] = v.failures.get(scheme, 0) + 1
    return v


def attempts(study: optuna.Study) -> list[Attempt]:
    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, BuildStorage):
        raise TypeError("a build study lives in a BuildStorage")
    return backend.claims(study._study_id)


class BuildSampler(BaseSampler):
    """Hands each trial of a build study one scheme of `schemes` (in order) that is neither
    stored (`stored`, read when the worker started), completed, held by a live trial, nor failed
    more than `max_retry` times. A retried trial keeps the scheme it inherited. A trial that finds
    nothing open gets no scheme: the objective ends it (PRUNED) and the study stops."""

    def __init__(self, schemes: list[Scheme], stored: set[Scheme], max_retry: int, worker: str,
                 wait_s: float = 60.0, history: frozenset[int] = frozenset()) -> None:
        self.history = history  # trials finished before this worker read the accuracy table (see `view`)
        self.schemes = schemes
        self.stored = set(stored)
        self.max_retry = max_retry
        self.worker = worker
        self.wait_s = wait_s
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
        raise RuntimeError("a build trial's scheme is its claim (coinfer:scheme), not a parameter")

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        t0 = time.perf_counter()
        storage = study._storage
        scheme = claimed(trial)
        if scheme is not None:  # a retry popped from Optuna's queue: same scheme, unless done meanwhile
            v = view(attempts(study), trial.number, self.history)
            if scheme in v.done or v.held.get(scheme, trial.number) < trial.number:
                scheme = None
        elif RETRY_OF in trial.system_attrs:  # a retry of a trial that died before it claimed: it held nothing
            scheme = None
        else:
            deadline, beat = time.monotonic() + self.wait_s, None
            while True:
                v = view(attempts(study), trial.number, self.history)
                if not v.unclaimed_before or time.monotonic() > deadline:
                    break
                if beat is None or time.monotonic() - beat > storage.get_heartbeat_interval() / 2:
                    storage.record_heartbeat(trial._trial_id)  # alive while it waits (Optuna's thread starts later)
                    beat = time.monotonic()
                fail_stale(study)  # an earlier trial whose worker died before it claimed: failed after the grace
                time.sleep(POLL_S)
            scheme = next(iter(self.open_schemes(v)), None)
        self.claims[trial._trial_id] = (scheme, RETRY_OF in trial.system_attrs)
        storage.set_trial_system_attr(trial._trial_id, CLAIM, f"{scheme or '-'} {self.worker}")
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
                                self.config, "read").get(scheme)
            if stored is not None:
                self.report.found_stored += 1
                return stored
        t0 = time.perf_counter()
        row = self.finetuner.evaluate(scheme, self.seed)
        t1 = time.perf_counter()
        with_retry(lambda: self.store.put_accuracy([row]), self.config, "write")
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
    storage = with_retry(lambda: BuildStorage(config), config, "open")
    return with_retry(lambda: optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                                  load_if_exists=True), config, "open")


def record_schemes(study: optuna.Study, schemes: list[Scheme]) -> None:
    """Keep the scheme list this worker was given (status counts what remains of the union)."""
    import hashlib
    text = " ".join(map(str, schemes))
    key = SCHEMES + hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
    if key not in study._storage.get_study_system_attrs(study._study_id):
        study._storage.set_study_system_attr(study._study_id, key, text)


def run_worker(config: QueueConfig, name: str, schemes: list[Scheme], store: Store, finetuner: Finetuner,
               app: str, protocol: str, seed: int, progress: bool = False) -> WorkerReport:
    """Work on the build study `name` until every scheme of `schemes` is stored or failed for
    good, with nothing left running elsewhere (a running trial may die and be retried here)."""
    from tqdm import tqdm
    report = WorkerReport(worker_id())
    start = time.perf_counter()
    study = open_build(config, name)
    with_retry(lambda: record_schemes(study, schemes), config, "open")
    # the trials before the rows: a trial finished by now wrote its row before it finished
    history = frozenset(a.number for a in with_retry(lambda: attempts(study), config, "read") if a.state.is_finished())
    stored = set(with_retry(lambda: store.accuracy_table(app, protocol, seed), config, "read"))
    sampler = BuildSampler(schemes, stored & set(schemes), config.max_retry, report.worker, history=history)
    study.sampler = sampler
    total = len(set(schemes))
    bar = tqdm(total=total, initial=len(sampler.stored), desc=f"build {app}", unit="scheme", disable=not progress)
    objective = BuildObjective(sampler, finetuner, store, app, protocol, seed, config, report,
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
                if not is_db_error(exc):
                    raise
                report.db_retries += 1
                with_retry(lambda: study.get_trials(deepcopy=False), config, "reconnect")
    finally:
        bar.close()
        report.claim_s = list(sampler.claim_times)
        report.heartbeat_s = list(study._storage._backend.heartbeat_times) if hasattr(
            study._storage, "_backend") else []
        report.wall_s = time.perf_counter() - start
    return report
