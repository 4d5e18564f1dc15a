"""The distributed build (database/distributed.py) and parallel searches on SQLite and on a real PostgreSQL.

- Kill -9 chaos: 3 workers build 200 schemes of the default app with the synthetic evaluator; one of
  them is killed with SIGKILL 5 times while it holds a scheme, and restarted. Every scheme ends up
  stored exactly once with the value a single worker computes.
- Database restart: a private PostgreSQL (initdb in a temp folder, its own port) is restarted
  mid-build; the workers back off, reconnect and finish, nothing lost.
- Parallel searches: two processes optimise one study in RDB storage; no scheme is evaluated twice
  and both give the single-worker answer, certified.

PostgreSQL tests run when COINFER_TEST_POSTGRES is set (.ci/run); the restart test when this runs
as root with PostgreSQL's binaries in /usr/lib/postgresql/*/bin; otherwise they skip, saying why.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest
import sqlalchemy as sa

from apps import REPO_ROOT, load_app
from compress.scheme import Scheme, all_schemes
from database.buildjob import BuildJob
from database.distributed import BuildStorage, QueueConfig, open_build, scheme_of_claim, study_name
from database.evaluate import build_worker
from database.storage import Storage
from database.store import Store
from database.synthetic_finetuner import SyntheticFinetuner, synthetic_protocol
from models.build import app_points
from reports.build_status import build_status

PG = os.environ.get("COINFER_TEST_POSTGRES")
needs_pg = pytest.mark.skipif(not PG, reason="COINFER_TEST_POSTGRES not set (no PostgreSQL server)")
APP = load_app("vgg16_digits")
WIDTHS = tuple(pt.channels for pt in app_points(APP))
FORK = mp.get_context("fork")


@pytest.fixture
def pg_database():
    """A fresh, empty database on the test server (dropped afterwards)."""
    name = f"coinfer_dist_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    yield sa.engine.make_url(PG).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def storages(kind: str, tmp_path, pg_url: str | None) -> tuple[str, str]:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'acc.sqlite'}", f"sqlite:///{tmp_path / 'acc.queue.sqlite'}"
    return pg_url, pg_url


def job_for(storage: str, queue: str, schemes: list[Scheme], delay: float, **cfg) -> BuildJob:
    config = QueueConfig(queue, **{"heartbeat_s": 0.5, "grace_s": 2.5, "max_retry": 10, "poll_s": 0.2, **cfg})
    return BuildJob("vgg16_digits", Storage.parse(storage), config, tuple(schemes), 0, WIDTHS, f"synthetic:{delay}")


def holds_a_scheme(storage: BuildStorage, study_id: int, pid: int) -> bool:
    from optuna.trial import TrialState
    return any(a.state == TrialState.RUNNING and a.claim and a.claim.endswith(f":{pid}")
               and scheme_of_claim(a.claim) is not None for a in storage.claims(study_id))


def check_table(job: BuildJob) -> dict:
    """Every scheme stored once, with the single-worker value; returns the build's counts."""
    protocol = synthetic_protocol(APP)
    rows = [r for r in Store(job.storage).accuracy_rows(APP.name) if r["protocol"] == protocol]
    keys = [Scheme(r["p"], r["c"], r["b"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(job.schemes) and set(keys) == set(job.schemes)
    single = SyntheticFinetuner(APP, WIDTHS)
    assert all(r["top1"] == single.top1(Scheme(r["p"], r["c"], r["b"]), 0) for r in rows)
    [status] = build_status(job.queue.url, job.storage, APP.name)
    assert status.done == len(job.schemes) and status.remaining == status.running == status.failed == 0
    return status.to_json()


def chaos(job: BuildJob, kills: int = 5, seed: int = 13) -> dict:
    """3 workers; worker 0 is killed with SIGKILL `kills` times while it holds a scheme, and restarted."""
    name = study_name(APP.name, synthetic_protocol(APP), 0)
    Store(job.storage).close()  # tables and study created once, before the workers race to create them
    study = open_build(job.queue, name)
    storage, study_id = study._storage._backend, study._study_id
    storage.engine.dispose()
    rng = random.Random(seed)
    procs = [FORK.Process(target=build_worker, args=(job,)) for _ in range(3)]
    for p in procs:
        p.start()
    killed = 0
    for _ in range(kills):
        victim = procs[0]
        deadline = time.monotonic() + 60
        while not holds_a_scheme(storage, study_id, victim.pid):
            assert time.monotonic() < deadline, "the victim never held a scheme"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))  # mid fine-tune, or in Optuna's bookkeeping around it
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        killed += 1
        storage.engine.dispose()  # the fork below inherits no connection
        procs[0] = FORK.Process(target=build_worker, args=(job,))
        procs[0].start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    counts = check_table(job)
    completes = sum(1 for a in storage.claims(study_id) if a.state.name == "COMPLETE")
    out = dict(killed=killed, schemes=len(job.schemes), attempts=counts["attempts"], retried=counts["retried"],
               completed_trials=completes)
    print(f"chaos {job.queue.url.split(':')[0]}: {out}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_kill_9_chaos_every_scheme_once_with_single_worker_values(kind, tmp_path, request):
    pg_url = request.getfixturevalue("pg_database") if kind == "postgresql" else None
    storage, queue = storages(kind, tmp_path, pg_url)
    schemes = [s for s in all_schemes(list(WIDTHS)) if s.p == 4][:200]  # of 32 channels x 8 bits
    out = chaos(job_for(storage, queue, schemes, 0.01))
    assert out["killed"] == 5 and out["retried"] >= 1
    assert out["completed_trials"] >= len(schemes)  # a retry may find its row stored: completed again, not stored


def test_a_build_resumes_and_status_reports_it(tmp_path, capsys):
    """Two builds of overlapping sets: the second evaluates only what the first did not; status says so."""
    from reports.build_status import main as status_main
    storage, queue = storages("sqlite", tmp_path, None)
    first = [Scheme(1, c, b) for c in range(1, 9) for b in range(1, 4)]
    reports = [build_worker(job_for(storage, queue, first, 0.0))]
    second = job_for(storage, queue, first + [Scheme(2, 1, b) for b in range(1, 9)], 0.0)
    reports.append(build_worker(second))
    assert [r.evaluated for r in reports] == [24, 8] and all(r.found_stored == 0 for r in reports)
    check_table(second)
    assert status_main(["--storage", storage, "--app", APP.name, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["requested"] == 32 and row["done"] == 32 and row["remaining"] == 0 and row["per_minute"] > 0
    assert status_main(["--storage", storage, "--app", str(APP.source), "--json"]) == 0  # the app as a YAML path
    assert [r["requested"] for r in json.loads(capsys.readouterr().out)] == [32]


def test_workers_on_one_host_share_the_default_sqlite_file(tmp_path):
    """The CLI with --workers 3 on an SQLite file: every scheme once."""
    db = tmp_path / "coinfer.sqlite"
    out = subprocess.run([sys.executable, "-m", "database.evaluate", "--storage", str(db), "--evaluator",
                          "synthetic:0.01", "--schemes", "point:0", "--workers", "3", "--json"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["new"] == res["stored"] == 64 and res["missing"] == 0 and len(res["workers"]) == 3
    assert sum(w["evaluated"] + w["found_stored"] for w in res["workers"]) == 64
    assert (tmp_path / "coinfer.queue.sqlite").is_file()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_build_storage_reads_trials_as_optuna_does(kind, tmp_path, request):
    """BuildStorage's two-statement trial reads against Optuna's own, on trials with everything."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial
    url = request.getfixturevalue("pg_database") if kind == "postgresql" else f"sqlite:///{tmp_path / 'q.sqlite'}"
    ours = BuildStorage(QueueConfig(url))
    study = optuna.create_study(storage=ours, study_name="s")
    study.add_trial(create_trial(params={"x": 0.5, "n": 3, "k": "b"}, distributions={
        "x": FloatDistribution(0, 1), "n": IntDistribution(1, 8), "k": CategoricalDistribution(["a", "b"])},
        value=float("inf"), user_attrs={"u": [1, 2]}, system_attrs={"s": {"a": 1}, "t": "x"},
        intermediate_values={0: 1.5, 3: float("-inf")}))
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"coinfer:claim": "1,2,3 h:1"}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    trial = study.ask()
    trial.set_user_attr("r", None)
    theirs = optuna.storages.RDBStorage(url)
    sid = study._study_id
    for t in theirs.get_all_trials(sid):
        assert ours.get_trial(t._trial_id) == t and ours.get_trial(t._trial_id).system_attrs == t.system_attrs
    assert ours._get_trials(sid, None, set(), -1) == theirs._get_trials(sid, None, set(), -1)
    first = theirs.get_all_trials(sid)[0]._trial_id
    assert ours._get_trials(sid, None, {first}, first) == theirs._get_trials(sid, None, {first}, first)
    assert ours._get_trials(sid, (TrialState.WAITING,), set(), -1) == theirs._get_trials(sid, (TrialState.WAITING,),
                                                                                          set(), -1)
    with pytest.raises(KeyError):
        ours.get_trial(10**6)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_own_running_trial_is_served_from_memory_until_another_worker_fails_it(kind, tmp_path, request):
    """A worker reads its running trial from memory (claim written through); once another worker
    has failed it as stale, its `tell` is refused, as `run_worker` expects (`lost_trial`)."""
    import optuna
    from optuna.trial import TrialState

    from database.distributed import lost_trial
    from database.rdb import BUILD_CLAIM_KEY
    url = request.getfixturevalue("pg_database") if kind == "postgresql" else f"sqlite:///{tmp_path / 'q.sqlite'}"
    mine, other = BuildStorage(QueueConfig(url)), BuildStorage(QueueConfig(url))
    study = optuna.create_study(storage=mine, study_name="s")
    trial = study.ask()
    mine.set_trial_system_attr(trial._trial_id, BUILD_CLAIM_KEY, "1,2,3 h:1")
    theirs = optuna.storages.RDBStorage(url).get_trial(trial._trial_id)
    assert trial._trial_id in mine._mine and mine.get_trial(trial._trial_id) == theirs
    assert mine.get_trial(trial._trial_id).system_attrs == {BUILD_CLAIM_KEY: "1,2,3 h:1"}
    other.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # failed as stale elsewhere
    with pytest.raises(Exception) as info:
        study.tell(trial, 0.5)
    assert lost_trial(info.value)
    assert mine.get_trial(trial._trial_id).state == TrialState.FAIL and trial._trial_id not in mine._mine


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_a_claim_excludes_held_schemes_and_waits_on_no_unclaimed_trial(kind, tmp_path, request):
    """A worker that died between `ask` and its claim holds nothing and delays nobody: the next
    trials claim at once, each a scheme no live trial holds; a trial failed meanwhile cannot claim."""
    import optuna
    from optuna.trial import TrialState

    from database.distributed import BuildSampler, backend
    url = request.getfixturevalue("pg_database") if kind == "postgresql" else f"sqlite:///{tmp_path / 'q.sqlite'}"
    config = QueueConfig(url, heartbeat_s=10, grace_s=60)
    open_build(config, "b").ask()  # trial 0: its worker dies before claiming
    schemes = [Scheme(0, 1, 1), Scheme(0, 2, 1), Scheme(0, 3, 1)]
    got = []
    for worker in ("h:2", "h:3"):
        study = open_build(config, "b")
        study.sampler = sampler = BuildSampler(schemes, set(), 3, worker)
        t0 = time.monotonic()
        trial = study.ask()
        assert time.monotonic() - t0 < 5  # not the 60 s grace of trial 0
        got.append(sampler.claims[trial._trial_id][0])
    assert got == schemes[:2]
    study = open_build(config, "b")
    trial = study.ask()
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        backend(study).claim(study._study_id, trial._trial_id, lambda _: "- h:4")


@needs_pg
def test_concurrent_asks_on_postgres_number_trials_uniquely(pg_database):
    """Searches and builds rely on unique, gap-free trial numbers: Optuna numbers a new trial under
    a row lock on its study, so 8 clients asking at once on PostgreSQL never count alike."""
    import threading

    import optuna
    optuna.create_study(storage=optuna.storages.RDBStorage(pg_database), study_name="n")
    numbers: list[int] = []
    start = threading.Barrier(8)

    def client() -> None:
        study = optuna.load_study(study_name="n", storage=optuna.storages.RDBStorage(pg_database))
        start.wait()
        for _ in range(15):
            numbers.append(study.ask().number)
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(120))


def test_synthetic_evaluator_is_deterministic_and_monotone_before_noise():
    ft = SyntheticFinetuner(APP, WIDTHS, noise=0.0)
    assert ft.finetune_row(Scheme(3, 4, 2)).top1 == ft.finetune_row(Scheme(3, 4, 2)).top1
    assert ft.top1(Scheme(3, 4, 2), 0) <= ft.top1(Scheme(3, 8, 2), 0) <= ft.top1(Scheme(3, 8, 5), 0)
    noisy = SyntheticFinetuner(APP, WIDTHS)
    assert noisy.top1(Scheme(3, 4, 2), 0) != noisy.top1(Scheme(3, 4, 2), 1)
    assert noisy.finetune_row(Scheme(0, 1, 1)).protocol.startswith("synthetic-")


# -- PostgreSQL restarted mid-build ----------------------------------------------------------
def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of our own (initdb in a temp folder, a free port), so restarting it
    disturbs nothing else; yields (url, restart)."""
    bindir = _pg_bin()
    if bindir is None or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root, runuser and PostgreSQL's binaries (/usr/lib/postgresql/*/bin) for a private server")
    folder = tempfile.mkdtemp(prefix="coinfer-pg-", dir="/tmp")
    os.chmod(folder, 0o755)
    shutil.chown(folder, "postgres")
    data = os.path.join(folder, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    pg(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = os.path.join(folder, "log")  # the server's output goes there, never to our pipes
    pg(f"{bindir}/pg_ctl", "-D", data, "-l", log, "-o", opts, "-w", "start")
    try:
        yield (f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
               lambda: pg(f"{bindir}/pg_ctl", "-D", data, "-l", log, "-o", opts, "-m", "fast", "-w", "restart"))
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", data, "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_postgres_restart_mid_build_loses_nothing(private_postgres):
    url, restart = private_postgres
    schemes = [s for s in all_schemes(list(WIDTHS)) if s.p == 2]  # 16 x 8 = 128
    job = job_for(url, url, schemes, 0.03, grace_s=3.0, retry_db_s=120.0)
    Store(url).close()
    open_build(job.queue, study_name(APP.name, synthetic_protocol(APP), 0))._storage._backend.engine.dispose()
    procs = [FORK.Process(target=build_worker, args=(job,)) for _ in range(2)]
    for p in procs:
        p.start()
    store = Store(url)
    deadline = time.monotonic() + 120
    while len(store.accuracy_table(APP.name, synthetic_protocol(APP), 0)) < 30:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    store.close()
    restart()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    counts = check_table(job)
    print(f"postgres restart: {counts['attempts']} attempts for {len(schemes)} schemes, {counts['retried']} retried")


# -- parallel searches on one study in RDB storage ---------------------------------------------
SEARCH = textwrap.dedent("""
    import json, sys, time
    from search.evaluators import TableEvaluator
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.runner import SearchConfig, run_search
    from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table

    class Slow(TableEvaluator):  # a fine-tune takes a while: the two workers overlap
        def evaluate(self, scheme):
            time.sleep(0.05)
            return super().evaluate(scheme)

    points = synthetic_points(%s)
    problem = Problem(LatencyQuery(0.02, 1.0), synthetic_latency(points), 0.9)
    ev = Slow(synthetic_table(points, seed=4))
    r = run_search(problem, ev, SearchConfig("coinfer", study_name="shared", study_storage=sys.argv[1]))
    print(json.dumps({"evaluated": [str(s) for s in ev.calls], "scheme": str(r.scheme), "certified": r.certified}))
""")
SEARCH_POINTS = [4, 4, 8, 8]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_two_searches_on_one_rdb_study_give_the_single_certified_answer(kind, tmp_path, request):
    from search.evaluators import TableEvaluator
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.runner import SearchConfig, run_search
    from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table
    url = request.getfixturevalue("pg_database") if kind == "postgresql" else f"sqlite:///{tmp_path / 'studies.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", SEARCH % SEARCH_POINTS, url], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO_ROOT))) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out))
    points = synthetic_points(SEARCH_POINTS)
    problem = Problem(LatencyQuery(0.02, 1.0), synthetic_latency(points), 0.9)
    single = run_search(problem, TableEvaluator(synthetic_table(points, seed=4)), SearchConfig("coinfer"))
    evaluated = [s for o in outs for s in o["evaluated"]]
    assert len(evaluated) == len(set(evaluated))  # no scheme twice across the two workers
    assert all(o["evaluated"] for o in outs)  # both did work
    assert all(o["scheme"] == str(single.scheme) and o["certified"] for o in outs)


@pytest.mark.slow
def test_search_cli_with_two_workers_answers_as_one(tiny_app_path, tiny_db, tmp_path, capsys):
    """latency_search.py --workers 2 on an RDB study: the single worker's certified answer, no scheme twice."""
    import optuna

    from database.formats import write_csv
    from search.cli import run
    from tests.conftest import latency_only_copy
    full, _ = latency_only_copy(tiny_db, tmp_path / "part.sqlite")
    table = tmp_path / "table.csv"
    write_csv(full.accuracy_table("tiny_digits"), table)
    study = f"sqlite:///{tmp_path / 'studies.db'}"
    args = ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage",
            str(tmp_path / "part.sqlite"), "--evaluator", f"table:{table}", "--base-accuracy", "0.9", "--json"]
    assert run("latency", [*args, "--study-storage", study, "--study-name", "two", "--workers", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert run("latency", [*args, "--study-storage", "memory"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert two["scheme"] == one["scheme"] and two["certified"] and one["certified"]
    trials = optuna.load_study(study_name="two", storage=study).trials
    evaluated = [t.user_attrs["scheme"] for t in trials if t.user_attrs.get("source") == "evaluated"]
    assert evaluated and len(evaluated) == len(set(evaluated))


def test_bench_scale_measures_every_scheme_once_on_sqlite(capsys, tmp_path, monkeypatch):
    """bench.scale with 1 and 2 workers and no sleep: each run evaluates each of its schemes once,
    and reports both throughput ratios and the overhead split."""
    from bench import scale
    monkeypatch.setattr("reports.figure.OUT", tmp_path)
    assert scale.main(["--workers", "1,2", "--per-worker", "3", "--delay", "0.05", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(r["storage"], r["workers"]): r for r in out["table"]}
    assert {k[1] for k in rows if k[0] == "sqlite"} == {1, 2}
    for (_, n), r in rows.items():
        assert r["schemes"] == r["evaluations"] == 3 * n
        assert r["ratio"] > 0 and r["sustained_ratio"] > 0 and r["overhead_median_ms"] > 0
    assert rows[("sqlite", 1)]["ratio"] == rows[("sqlite", 1)]["sustained_ratio"] == 1.0
