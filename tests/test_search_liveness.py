"""A search survives its own death (search/liveness.py): a worker killed with SIGKILL or SIGTERM
mid-evaluation leaves no scheme held for ever; the resumed search gives the uninterrupted run's
answer with no more new evaluations than it plus the schemes that were in flight, and does not hang."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import datetime

import optuna
import pytest
from optuna.trial import TrialState

from apps import REPO_ROOT
from compress.scheme import Scheme
from search import LatencyQuery, Problem, TableEvaluator
from search.liveness import BEAT_KEY, WORKER_KEY, stale_ids
from search.runner import SearchConfig, run_search
from search.samplers.base import SEARCH_CLAIM_KEY
from search.study import make_storage
from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table

CHANNELS = [4, 4, 8, 8]
QUERY = (0.05, 1.0)  # its answer is a split scheme, 3,2,3, after 31 evaluations (uninterrupted)

SEARCH = textwrap.dedent("""
    import json, sys, time
    from cli.run import run_cli
    from search.evaluators import TableEvaluator
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.runner import SearchConfig, run_search
    from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table

    class Slow(TableEvaluator):  # a fine-tune takes a while: the search is killed during one
        def evaluate(self, scheme):
            time.sleep(float(sys.argv[2]))
            return super().evaluate(scheme)

    def main(_argv):
        points = synthetic_points(%s)
        problem = Problem(LatencyQuery(*%s), synthetic_latency(points), 0.9)
        ev = Slow(synthetic_table(points, seed=4))
        r = run_search(problem, ev, SearchConfig("coinfer", study_name="s", study_storage=sys.argv[1]))
        print(json.dumps({"evaluated": [str(s) for s in ev.calls], "scheme": str(r.scheme),
                          "new": r.new_evaluations, "certified": r.certified}))

    run_cli(main)
""") % (CHANNELS, QUERY)


def problem() -> Problem:
    return Problem(LatencyQuery(*QUERY), synthetic_latency(synthetic_points(CHANNELS)), 0.9)


def table() -> dict[Scheme, float]:
    return synthetic_table(synthetic_points(CHANNELS), seed=4)


@pytest.fixture(scope="module")
def uninterrupted():
    return run_search(problem(), TableEvaluator(table()), SearchConfig("coinfer"))


def start(storage: str, sleep_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SEARCH, storage, str(sleep_s)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="s", storage=make_storage(storage)).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def in_flight(storage: str, proc: subprocess.Popen, evaluated: int) -> list[Scheme]:
    """Wait until the search has completed `evaluated` evaluations and holds a split scheme; its
    running trials' schemes."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ts = trials(storage)
        done = [t for t in ts if t.state == TrialState.COMPLETE and t.user_attrs.get("source") == "evaluated"]
        held = [Scheme.parse(t.system_attrs[SEARCH_CLAIM_KEY]) for t in ts
                if t.state == TrialState.RUNNING and SEARCH_CLAIM_KEY in t.system_attrs]
        if len(done) >= evaluated and any(s.is_split for s in held):
            return held
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("the search never held a scheme")


def resume(storage: str) -> dict:
    """The search again, as a process that must finish within two minutes (no hang)."""
    proc = start(storage, 0.0)
    out, err = proc.communicate(timeout=120)  # no hang: a kill -9 inside a journal write leaves a dead holder's lock
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_search_killed_mid_evaluation_resumes_to_the_uninterrupted_answer(sig, tmp_path, uninterrupted):
    storage = str(tmp_path / "s.journal")
    proc = start(storage, 0.3)
    held = in_flight(storage, proc, evaluated=3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 143), err[-2000:]
    if sig == signal.SIGTERM:  # handled as Ctrl-C: the running trial is failed, not left RUNNING
        assert err.strip().splitlines()[-1] == "terminated"
        assert not [t for t in trials(storage) if t.state == TrialState.RUNNING]
    before = {t.user_attrs["scheme"] for t in trials(storage)
              if t.state == TrialState.COMPLETE and t.user_attrs.get("source") == "evaluated"}
    again = resume(storage)
    assert again["scheme"] == str(uninterrupted.scheme) and again["certified"]
    assert not set(again["evaluated"]) & before  # nothing completed is evaluated again
    assert len(before) + again["new"] <= uninterrupted.new_evaluations + len(held)
    ts = trials(storage)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    evaluated = [t.user_attrs["scheme"] for t in ts
                 if t.state == TrialState.COMPLETE and t.user_attrs.get("source") == "evaluated"]
    assert len(evaluated) == len(set(evaluated))  # each scheme completed once


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
@pytest.mark.parametrize("worker, beat_age", [("here", None), ("elsewhere", 1000.0)])
def test_a_dead_trial_holding_the_answer_is_failed_and_its_scheme_taken_back(kind, worker, beat_age, tmp_path,
                                                                              uninterrupted):
    """A RUNNING trial left by a dead worker (on this host: its pid is gone; on another: silent
    past the grace period) that holds the answer: the search fails it and evaluates that scheme."""
    storage = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=make_storage(storage), direction="minimize")
    trial = study._storage.get_trial(study._storage.create_new_trial(study._study_id))  # RUNNING
    where = f"{socket.gethostname()}:{dead_pid()}" if worker == "here" else "elsewhere.invalid:1"
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_KEY, where)
    study._storage.set_trial_system_attr(trial._trial_id, SEARCH_CLAIM_KEY, str(uninterrupted.scheme))
    config = SearchConfig("coinfer", study_name="s", study_storage=storage)
    if beat_age is not None and kind == "journal":
        study._storage.set_trial_system_attr(trial._trial_id, BEAT_KEY, time.time() - beat_age)
    elif beat_age is not None:  # Optuna's RDB heartbeat table: one beat, then silence past a short grace
        config = SearchConfig("coinfer", study_name="s", study_storage=storage, heartbeat_s=0.5, grace_s=1.0)
        study._storage.record_heartbeat(trial._trial_id)
        time.sleep(1.5)
    ev = TableEvaluator(table())
    r = run_search(problem(), ev, config)
    assert r.scheme == uninterrupted.scheme and r.certified
    assert r.new_evaluations == uninterrupted.new_evaluations and uninterrupted.scheme in ev.calls
    ts = optuna.load_study(study_name="s", storage=make_storage(storage)).trials
    assert ts[0].state == TrialState.FAIL and not [t for t in ts if t.state == TrialState.RUNNING]


def test_stale_running_trials():
    """Stale: RUNNING, and its worker on this host is dead, or silent for over the grace period
    (its last heartbeat, else its start)."""
    now = 10_000.0
    here = socket.gethostname()

    def trial(tid: int, state=TrialState.RUNNING, worker=None, beat=None, start=None):
        attrs = {k: v for k, v in ((WORKER_KEY, worker), (BEAT_KEY, beat)) if v is not None}
        t = optuna.trial.FrozenTrial(tid, state, None, datetime.fromtimestamp(start if start else now - 1),
                                     None, {}, {}, {}, attrs, {}, tid)
        return t

    ts = [trial(0, worker=f"{here}:{dead_pid()}", beat=now - 1),  # dead here: stale at once
          trial(1, worker=f"{here}:{os.getpid()}", beat=now - 1),  # alive here
          trial(2, worker="elsewhere.invalid:1", beat=now - 61),  # silent past the grace
          trial(3, worker="elsewhere.invalid:1", beat=now - 59),  # beating elsewhere
          trial(4, start=now - 61),  # never beat, started long ago
          trial(5, start=now - 30),  # never beat, started recently
          trial(6, state=TrialState.COMPLETE, worker=f"{here}:{dead_pid()}", beat=now - 100)]  # finished
    assert stale_ids(ts, 60.0, now) == [0, 2, 4]
    assert stale_ids(ts, 60.0, now, beats=False) == [0]


# -- --workers helpers get the parsed request, not a filtered argv ------------------------------
def test_a_query_request_survives_json():
    """What the --workers helpers read on stdin is the parent's request, field for field."""
    from database.storage import Storage
    from search.answer import QueryRequest
    from search.query import AccuracyQuery
    for query in (LatencyQuery(0.01, 1.0), AccuracyQuery(0.6, 2.0)):
        config = SearchConfig("optcoinfer", 0.01, 3, {"restarts": 3}, max_evaluations=7, study_name="a/b",
                              study_storage="x.journal", heartbeat_s=2.0, grace_s=30.0)
        request = QueryRequest(query, "vgg16_digits", config, "table:t.csv", "imported", Storage("sqlite:///x.db"),
                               "pi", "gpu", 0.02, 0.9, "cuda:1")
        assert QueryRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
        assert QueryRequest.from_json(json.loads(json.dumps(
            QueryRequest(query, "a", SearchConfig()).to_json()))) == QueryRequest(query, "a", SearchConfig())


def test_workers_over_the_bound_is_one_line_exit_2():
    limit = 4 * (os.cpu_count() or 1)
    for n in (limit + 1, 100000, 0):
        proc = subprocess.run([sys.executable, "latency_search.py", "-accuracy_loss", "0.01", "--workers", str(n)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.splitlines() == [f"error: --workers must be between 1 and {limit} "
                                            f"(4 x this machine's {os.cpu_count() or 1} CPUs), got {n}"]
    proc = subprocess.run([sys.executable, "latency_search.py", "-accuracy_loss", "0.01", "--work", "2"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # no abbreviations
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1


def test_a_helper_refuses_anything_but_a_request_on_stdin():
    for argv, stdin in ((["latency", "-accuracy_loss", "0.01"], ""), (["--worker"], "not json"),
                        (["--worker"], '{"query": {}}')):
        proc = subprocess.run([sys.executable, "-m", "search.cli", *argv], input=stdin, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_a_trial_failed_as_stale_while_its_worker_lives_is_lost_not_fatal(tmp_path, uninterrupted):
    """Another worker fails this search's running trial (as stale: say its heartbeats stalled past
    the grace) during its first split evaluation: the search goes on, keeps that evaluation and
    gives the uninterrupted answer with the same evaluations."""
    storage = str(tmp_path / "s.journal")

    class FailedMeanwhile(TableEvaluator):
        def evaluate(self, scheme):
            if not self.calls:
                other = optuna.load_study(study_name="s", storage=make_storage(storage))  # another process's view
                for t in other.get_trials(states=(TrialState.RUNNING,)):
                    other._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            return super().evaluate(scheme)

    ev = FailedMeanwhile(table())
    r = run_search(problem(), ev, SearchConfig("coinfer", study_name="s", study_storage=storage))
    assert r.scheme == uninterrupted.scheme and r.certified
    assert r.new_evaluations == uninterrupted.new_evaluations and len(ev.calls) == len(set(ev.calls))
    ts = optuna.load_study(study_name="s", storage=make_storage(storage)).trials
    assert [t.state for t in ts].count(TrialState.FAIL) == 1 and not [t for t in ts if t.state == TrialState.RUNNING]
