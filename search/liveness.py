"""A search survives its own death: heartbeats and stale trials of a search study.

A search trial holds its scheme while it runs (search/samplers/base.py), so a worker killed
mid-evaluation (`kill -9`, a lost host) must not leave its trial RUNNING for ever. Three things
see to it:

- Each search trial records its worker, "host:pid", as the system attribute `coinfer:worker`
  (`WORKER_KEY`, written by `PlannerSampler.before_trial` before it claims a scheme).
- Each running trial beats every `heartbeat_s`: Optuna's heartbeat thread for the RDB storage
  (its own table), and for the journal storage, which implements no heartbeat in Optuna 5.1,
  `SearchJournalStorage` records the time as the system attribute `coinfer:heartbeat`
  (`BEAT_KEY`). A trial waiting in its sampler for other workers beats too.
- A RUNNING trial is stale when its worker ran on this host and its process is gone, or when it
  has not beaten for `grace_s` (never beaten: since it started). Optuna's `fail_stale_trials`
  fails stale trials when a search opens its study, before each trial, and while a trial waits;
  the sampler then takes their schemes back (a FAIL trial holds nothing; only a scheme the
  evaluator could not evaluate stays excluded).

Ctrl-C and SIGTERM (cli/run.py raises `KeyboardInterrupt` for both) fail the interrupted process's
own running trials (`fail_own`) before it exits; they wait while the journal's lock is held
(`signals_deferred`, search/journal.py), so they never leave it behind.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from cli.errors import CoInferError
from database.distributed import fail_stale, worker_id  # the build's: Optuna's fail_stale_trials, quietly
from search.best import FeasibleBest

WORKER_KEY = "coinfer:worker"  # system attr of a search trial: "host:pid" of the process running it
BEAT_KEY = "coinfer:heartbeat"  # system attr (journal storage): unix time of the trial's last heartbeat
HEARTBEAT_S, GRACE_S = 10.0, 60.0

__all__ = ["BEAT_KEY", "GRACE_S", "HEARTBEAT_S", "WORKER_KEY", "SearchJournalStorage", "SearchRDBStorage",
           "fail_own", "fail_stale", "pid_alive", "stale_ids", "worker_id"]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (a zombie, killed but not yet reaped, does not)."""
    if Path("/proc/self").is_dir():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead(trial: FrozenTrial, host: str | None = None) -> bool:
    """The trial's worker ran on `host` (default: this one) and its process is gone."""
    worker = trial.system_attrs.get(WORKER_KEY)
    if not isinstance(worker, str):
        return False
    where, _, pid = worker.rpartition(":")
    return where == (host or socket.gethostname()) and pid.isdigit() and not pid_alive(int(pid))


def silent_s(trial: FrozenTrial, now: float) -> float:
    """Seconds since the trial's last `BEAT_KEY` heartbeat (since it started, when it never beat)."""
    beat = trial.system_attrs.get(BEAT_KEY)
    if isinstance(beat, (int, float)):
        return now - beat
    return now - trial.datetime_start.timestamp() if trial.datetime_start is not None else 0.0


def stale_ids(trials: Iterable[FrozenTrial], grace_s: float, now: float | None = None,
              beats: bool = True) -> list[int]:
    """The ids of the RUNNING trials whose worker on this host is dead, or (`beats`: their
    heartbeats are `BEAT_KEY`) that have been silent for over `grace_s`."""
    now = time.time() if now is None else now
    return [t._trial_id for t in trials if t.state == TrialState.RUNNING
            and (dead(t) or (beats and silent_s(t, now) > grace_s))]


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (in the main thread, where Python handles them):
    raised while the journal's lock is held, their `KeyboardInterrupt` would leave it behind, and every
    other worker waiting on it until its deadline (search/journal.py)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class SearchJournalStorage(FeasibleBest, JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats (system attribute `BEAT_KEY`) and stale trials
    (module doc), so Optuna's `fail_stale_trials` and heartbeat thread work on it; its best trial is
    the best feasible one (search/best.py)."""

    def __init__(self, backend, heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S) -> None:
        super().__init__(backend)
        self.heartbeat_s, self.grace_s = heartbeat_s, grace_s
        self._started: set[int] = set()

    def record_heartbeat(self, trial_id: int) -> None:
        if trial_id not in self._started:  # Optuna beats as a trial starts: its start time says as much
            self._started.add(trial_id)
            return
        try:
            self.set_trial_system_attr(trial_id, BEAT_KEY, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it as stale
            pass
        except (CoInferError, OSError):  # a lock past its deadline, a full disk: the search's own writes say so;
            pass  # a beat missed here (Optuna's heartbeat thread) costs at most the trial, after the grace

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return stale_ids(self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)), self.grace_s)

    def get_heartbeat_interval(self) -> float:  # type: ignore[override]
        return self.heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return None


class SearchRDBStorage(FeasibleBest, RDBStorage):
    """Optuna's RDB storage (heartbeats in its own table, `grace_period`) that also fails the
    trials whose worker on this host is dead, without waiting for the grace period; its best trial is
    the best feasible one (search/best.py)."""

    _dead_checked = -float("inf")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's (heartbeat older than the grace) and, at most once a heartbeat interval (a read
        of the running trials: tens of ms), those whose worker on this host is dead."""
        stale = set(super()._get_stale_trial_ids(study_id))
        if time.monotonic() - self._dead_checked >= (self.heartbeat_interval or 0):
            self._dead_checked = time.monotonic()
            stale |= set(stale_ids(self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)),
                                   0.0, beats=False))
        return sorted(stale)


def fail_own(study: optuna.Study) -> None:
    """Fail this process's RUNNING trials of the study: Ctrl-C or SIGTERM may land outside the
    part of `study.optimize` that fails the trial it interrupts (e.g. in `tell`)."""
    me = worker_id()
    for t in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        if t.system_attrs.get(WORKER_KEY) == me:
            try:
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
