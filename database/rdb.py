"""Optuna's RDB storage as the build's queue (database/distributed.py): what it costs, and what survives.

`BuildStorage` is Optuna's `RDBStorage` (PostgreSQL across hosts, an SQLite file on one) with
heartbeats, the retry callback and these changes, each for a measured cost or a failure Optuna
leaves open:

- Reads. Optuna's ORM loads a trial's values, attributes, parameters and intermediate values one
  relation at a time (six or seven statements per read); here one statement reads the trials and
  one UNION ALL their relations, on one autocommit connection (no BEGIN and ROLLBACK round trips).
- The worker's own running trial. Optuna reads a trial back from the database when the trial
  object is made (`ask`) and again before `tell`. Nobody but its worker writes a running trial,
  except to fail it as stale, and that `tell` still finds in the database (its update locks the
  row and refuses a finished trial: `UpdateFinishedTrialError`). So a trial this process created
  is served from memory while it runs, its claim written through.
- Dead workers. A running trial that never beat (its worker died between `ask` and the first
  heartbeat) is stale after `grace_s` of being seen so; Optuna's check misses it. Stale trials
  are looked for at most once a heartbeat interval.
- Lost databases. A heartbeat that cannot reach the database is skipped instead of ending the
  heartbeat thread; `with_retry` backs off (0.5 s doubling to 8 s) for up to `retry_db_s`.
- Commits. The queue's commits do not wait for the disk (PostgreSQL `synchronous_commit=off`,
  SQLite WAL without fsync): a claim or a state lost to a server crash (not a restart) is a trial
  retried after the grace period, and the accuracy table, written with full durability, is the
  truth of what was done.

Trial numbers need no lock of ours: Optuna creates a trial under a row lock on its study
(`SELECT ... FOR UPDATE`), so numbers are unique and ordered on PostgreSQL too.
"""

from __future__ import annotations

import copy
import functools
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from cli.errors import CoInferError, Unreachable, chain, disk_full, disk_full_error, mask_url
from database.storage import Storage

# system attr of a build trial, "p,c,b host:pid": its scheme and its worker ("- host:pid": nothing to claim)
BUILD_CLAIM_KEY = "coinfer:claim"
RETRY_OF = "failed_trial"  # set by Optuna's retry callback on a retried trial


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


class Attempt(NamedTuple):
    """What the build needs of one trial."""

    number: int
    state: TrialState
    claim: str | None  # "p,c,b host:pid", "- host:pid", or None before the sampler wrote it
    retry: bool  # a copy enqueued by the retry callback


def is_db_error(exc: BaseException | None) -> bool:
    """A lost or refused database connection (worth retrying), as opposed to bad input. The chain
    is followed: Optuna's own handling of a failed `tell` can raise another error on top of it
    (its `_run_trial` then reads an unbound local), and the store's one-line errors keep the
    driver's error as their context. A full disk is not one: no retry mends it (`cli.errors.disk_full`)."""
    if disk_full(exc):
        return False
    return any(isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError, optuna.exceptions.StorageInternalError))
               or (isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated) for e in chain(exc))


def raise_disk_full(exc: BaseException, config: QueueConfig) -> None:
    """A full disk met by Optuna's calls on the build queue, raised as its one line (the store's errors name
    their own database)."""
    if disk_full(exc) and not isinstance(exc, CoInferError):
        raise disk_full_error(exc, f"build queue {mask_url(config.url)}") from None


def with_retry(fn: Callable[[], Any], config: QueueConfig) -> Any:
    """fn(), retried with backoff (0.5 s doubling to 8 s) for up to `retry_db_s` while the
    database is unreachable; then `Unreachable` (exit 3), one line, the password masked."""
    deadline, delay = time.monotonic() + config.retry_db_s, 0.5
    while True:
        try:
            return fn()
        except Exception as exc:
            raise_disk_full(exc, config)
            if not is_db_error(exc):
                raise
            if time.monotonic() > deadline:
                if isinstance(exc, CoInferError):  # the store's own line (Unreachable when it is)
                    raise
                orig = getattr(exc, "orig", None) or exc
                text = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
                raise Unreachable(f"database unreachable for {config.retry_db_s:g} s: {mask_url(text)}") from None
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
    """Optuna's RDB storage for the build (see the module doc). `heartbeat_times` (seconds spent
    recording each heartbeat) is kept for the benchmark."""

    def __init__(self, config: QueueConfig) -> None:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        try:  # every wait under its deadline (database/storage.py); commits that do not wait for the disk
            kwargs["connect_args"] = Storage(config.url).connect_args(synchronous_commit="off")
            sqlite = Storage(config.url).backend == "sqlite"
        except sa.exc.ArgumentError:  # Optuna refuses it below, in one line
            sqlite = False
        self.config = config
        self.heartbeat_times: list[float] = []
        self._unbeaten: dict[int, float] = {}
        self._last_check = 0.0
        self._claims: dict[int, dict[int, Attempt]] = {}  # study id -> trial id -> attempt
        self._mine: dict[int, FrozenTrial] = {}  # trial id -> a running trial this process created
        try:
            with warnings.catch_warnings():  # heartbeats and the retry callback are "experimental" since 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                create_tables_once(lambda: super(BuildStorage, self).__init__(  # type: ignore[func-returns-value]
                    config.url, engine_kwargs=kwargs, heartbeat_interval=config.heartbeat_s,  # type: ignore[arg-type]
                    grace_period=config.grace_s,  # type: ignore[arg-type]
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(config.max_retry)))
            if sqlite:
                self.engine.dispose()
                sa.event.listen(self.engine, "connect", _sqlite_queue_pragmas)
        except Exception as exc:  # driver / connection errors: one line, the password masked
            if disk_full(exc):
                raise disk_full_error(exc, f"build queue {mask_url(config.url)}") from None
            if is_db_error(exc):
                raise
            raise CoInferError(f"cannot open build queue {mask_url(config.url)}: "
                               f"{mask_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}") from None

    @property
    def _reader(self) -> sa.engine.Engine:
        """The engine's pool in autocommit mode: a read costs its statements, no BEGIN or ROLLBACK."""
        return self.engine.execution_options(isolation_level="AUTOCOMMIT")

    def claims(self, study_id: int) -> list[Attempt]:
        """Every trial of the study as an `Attempt`, in one statement (see `_read_claims`)."""
        with self._reader.connect() as conn:
            return list(self._read_claims(conn, study_id).values())

    def claim(self, study_id: int, trial_id: int, choose: Callable[[list[Attempt]], str]) -> str:
        """Write the running trial `trial_id`'s claim, `choose(every trial's attempt)`, in the
        transaction that read them, under a write lock on the study's row (PostgreSQL: a row lock,
        as Optuna takes to create a trial; SQLite: the database's write lock): no two trials
        choose from the same claims, and nobody waits on a trial that has not claimed yet (its
        worker may be dead). Raises Optuna's `UpdateFinishedTrialError` when another worker
        failed the trial meanwhile (as stale)."""
        from optuna.storages._rdb.models import StudyModel, TrialSystemAttributeModel
        studies, attrs = StudyModel.__table__, TrialSystemAttributeModel.__table__
        with self.engine.begin() as conn:
            conn.execute(studies.update().where(studies.c.study_id == study_id)
                         .values(study_name=studies.c.study_name))  # the lock: a no-op write
            trials = self._read_claims(conn, study_id)
            if trials[trial_id].state != TrialState.RUNNING:
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"trial {trial_id} is {trials[trial_id].state.name}: it cannot claim")
            value = choose(list(trials.values()))
            if trials[trial_id].claim is None:
                conn.execute(attrs.insert().values(trial_id=trial_id, key=BUILD_CLAIM_KEY,
                                                   value_json=json.dumps(value)))
            else:  # a retry: its claim came with the failed trial's attributes
                conn.execute(attrs.update().where(attrs.c.trial_id == trial_id, attrs.c.key == BUILD_CLAIM_KEY)
                             .values(value_json=json.dumps(value)))
        if trial_id in self._mine:
            self._mine[trial_id].system_attrs[BUILD_CLAIM_KEY] = value
        return value

    def _read_claims(self, conn: sa.Connection, study_id: int) -> dict[int, Attempt]:
        """trial id -> `Attempt` for every trial of the study, in one statement: the trials that
        were unfinished at the last read and the ones added since (finished ones are kept here, as
        Optuna's cached storage keeps them, but without its statements per relation)."""
        from optuna.storages._rdb.models import TrialModel, TrialSystemAttributeModel
        trials, attrs = TrialModel.__table__, TrialSystemAttributeModel.__table__
        cache = self._claims.setdefault(study_id, {})
        open_ids = [i for i, a in cache.items() if not a.state.is_finished()]
        where = trials.c.trial_id > max(cache, default=-1)
        if open_ids:
            where = sa.or_(where, trials.c.trial_id.in_(open_ids))
        q = (sa.select(trials.c.trial_id, trials.c.number, trials.c.state, attrs.c.key, attrs.c.value_json)
             .select_from(trials.outerjoin(attrs, sa.and_(attrs.c.trial_id == trials.c.trial_id,
                                                          attrs.c.key.in_((BUILD_CLAIM_KEY, RETRY_OF)))))
             .where(trials.c.study_id == study_id, where))
        fresh: dict[int, dict] = {}
        for trial_id, number, state, key, value in conn.execute(q):
            entry = fresh.setdefault(trial_id, {"number": number, "state": state})
            if key is not None:
                entry[key] = json.loads(value)
        for trial_id, e in fresh.items():
            state = e["state"] if isinstance(e["state"], TrialState) else TrialState[e["state"]]
            cache[trial_id] = Attempt(e["number"], state, e.get(BUILD_CLAIM_KEY), RETRY_OF in e)
        return cache

    # -- this process's running trials, from memory ------------------------------------------
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == TrialState.RUNNING:
            self._mine[trial._trial_id] = copy.deepcopy(trial)
        return trial

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        super().set_trial_system_attr(trial_id, key, value)
        if trial_id in self._mine:
            self._mine[trial_id].system_attrs[key] = value

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        self._mine.pop(trial_id, None)  # read from the database from now on, whatever the outcome
        return super().set_trial_state_values(trial_id, state, values)

    def _set_trial_param(self, trial_id: int, *args: Any, **kwargs: Any) -> None:  # the build sets none: forget
        self._mine.pop(trial_id, None)
        super()._set_trial_param(trial_id, *args, **kwargs)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._mine.pop(trial_id, None)
        super().set_trial_user_attr(trial_id, key, value)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._mine.pop(trial_id, None)
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    # -- reading trials: two statements instead of Optuna's six or seven -------------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        if trial_id in self._mine:
            return copy.deepcopy(self._mine[trial_id])
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
        try:
            with self._reader.connect() as conn:
                rows = conn.execute(sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start,
                                              t.c.datetime_complete).where(where(t)).order_by(t.c.trial_id)).all()
                related: dict[int, list] = {r[0]: [] for r in rows}
                if rows:
                    for trial_id, kind, key, txt, value, order in conn.execute(_relations(), {"ids": list(related)}):
                        related[trial_id].append((kind, key, txt, value, order))
        except sa.exc.SQLAlchemyError as exc:  # as Optuna's own reads fail
            raise optuna.exceptions.StorageInternalError(str(exc).splitlines()[0]) from exc
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
        with self._reader.connect() as conn:
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


@functools.cache
def _relations() -> sa.CompoundSelect:
    """The values, attributes, parameters and intermediate values of the trials in the parameter
    `ids`, as rows (trial_id, kind, key, text, number, order) of one UNION ALL. Built once: a new
    statement per read costs SQLAlchemy more (its cache keys, its types' dialect lookups) than
    the database takes to answer it."""
    from optuna.storages._rdb import models as m
    text, num, ids = sa.Text(), sa.Float(), sa.bindparam("ids", expanding=True)

    def part(kind: str, table: sa.Table, key, txt, value, order):
        return sa.select(table.c.trial_id, sa.literal(kind).label("kind"), sa.cast(key, text).label("key"),
                         sa.cast(txt, text).label("txt"), sa.cast(value, num).label("num"),
                         sa.cast(order, sa.Integer()).label("ord")).where(table.c.trial_id.in_(ids))
    v, sy = m.TrialValueModel.__table__, m.TrialSystemAttributeModel.__table__
    u = m.TrialUserAttributeModel.__table__
    pa, iv = m.TrialParamModel.__table__, m.TrialIntermediateValueModel.__table__
    return sa.union_all(
        part("v", v, v.c.objective, v.c.value_type, v.c.value, v.c.trial_value_id),
        part("s", sy, sy.c.key, sy.c.value_json, sa.null(), sy.c.trial_system_attribute_id),
        part("u", u, u.c.key, u.c.value_json, sa.null(), u.c.trial_user_attribute_id),
        part("p", pa, pa.c.param_name, pa.c.distribution_json, pa.c.param_value, pa.c.param_id),
        part("i", iv, iv.c.step, iv.c.intermediate_value_type, iv.c.intermediate_value,
             iv.c.trial_intermediate_value_id))
