"""Searches as Optuna studies: persisted and resumed, constraints on every trial, a user's own
study with CoInferSampler, and two processes sharing one study."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import optuna
import pytest

from apps import REPO_ROOT
from compress.scheme import Scheme
from search import CoInferSampler, LatencyQuery, Objective, Problem, TableEvaluator, certify
from search.runner import SearchConfig, run_search
from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table
from tests.oracles import brute_force

POINTS = synthetic_points([4, 4, 8, 8, 8, 16, 16])


def test_cli_study_in_sqlite_reloads_with_constraints_and_a_feasible_answer(tiny_app_path, tiny_db, tmp_path,
                                                                            capsys):
    from search.cli import run
    url = f"sqlite:///{tmp_path / 'studies.sqlite'}"
    args = ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage", tiny_db,
            "--study-storage", url, "--study-name", "q1", "--json"]
    assert run("latency", args) == 0
    out = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="q1", storage=url)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert trials and all(set(t.constraints) == {"0"} and t.user_attrs["constraint"] == "accuracy" for t in trials)
    assert {t.user_attrs["source"] for t in trials} <= {"database", "reference", "evaluated"}
    best = study.best_trial  # Optuna's own choice among the feasible trials
    assert best.constraints["0"] <= 0 and Scheme.parse(best.user_attrs["scheme"]).to_json() == out["scheme"]
    assert best.value == pytest.approx(out["latency_s"]["total"])
    # re-running resumes the study: nothing new, no trial added
    assert run("latency", args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["scheme"] == out["scheme"] and again["new_evaluations"] == 0
    assert len(optuna.load_study(study_name="q1", storage=url).trials) == len(study.trials)


def test_a_users_own_study_with_the_coinfer_sampler():
    table = synthetic_table(POINTS, seed=4)
    problem = Problem(LatencyQuery(0.02, 1.0), synthetic_latency(POINTS), 0.9)
    sampler = CoInferSampler(problem)
    study = optuna.create_study(direction=problem.direction, sampler=sampler)
    study.optimize(Objective(problem, TableEvaluator(table)), n_trials=500)  # stops itself when certified
    kn, st = sampler.state(study)
    cert = certify(problem, kn, st, st.incumbent)
    assert len(study.trials) < 500 and cert.certified
    assert problem.scheme(st.incumbent) == brute_force(problem, table)
    assert Scheme.parse(study.best_trial.user_attrs["scheme"]) == brute_force(problem, table)


WORKER = textwrap.dedent("""
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

    points = synthetic_points([4, 4, 8, 8, 8, 16, 16])
    problem = Problem(LatencyQuery(0.02, 1.0), synthetic_latency(points), 0.9)
    ev = Slow(synthetic_table(points, seed=4))
    r = run_search(problem, ev, SearchConfig("coinfer", study_name="shared", study_storage=sys.argv[1]))
    print(json.dumps({"evaluated": [str(s) for s in ev.calls], "scheme": str(r.scheme), "certified": r.certified}))
""")


def test_two_processes_share_one_study_and_never_evaluate_a_scheme_twice(tmp_path):
    storage = str(tmp_path / "shared.journal")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, storage], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    table = synthetic_table(POINTS, seed=4)
    problem = Problem(LatencyQuery(0.02, 1.0), synthetic_latency(POINTS), 0.9)
    single = run_search(problem, TableEvaluator(table), SearchConfig("coinfer"))
    evaluated = [s for o in outs for s in o["evaluated"]]
    assert len(evaluated) == len(set(evaluated))  # no scheme twice across the two workers
    assert all(o["evaluated"] for o in outs)  # both did work
    # the second worker's picks are speculative (the best scheme not already held): some extra work
    assert len(evaluated) <= 2 * single.new_evaluations
    assert all(o["scheme"] == str(single.scheme) and o["certified"] for o in outs)
