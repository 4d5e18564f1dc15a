"""Searches: samplers vs brute force, certificates, the table evaluator, the CLIs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import latency_only_copy

from apps import Device
from cli.errors import CoInferError
from compress.scheme import Scheme
from database.formats import write_csv, write_optcoinfer
from database.paper import DEFAULT_JSON, import_paper_profile
from database.profile import ProfileConfig, profile_app
from database.store import AccuracyRow, Store
from models.build import app_points
from search.bounds import Knowledge
from search.evaluators import TableEvaluator
from search.latency import LatencyModel
from search.problem import Problem
from search.query import AccuracyQuery, LatencyQuery
from search.runner import SearchConfig, run_search
from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table
from tests.oracles import brute_force

SMALL = synthetic_points([4, 4, 8, 8, 8, 16, 16])
QUERIES = ([LatencyQuery(e, bw) for bw in (0.25, 1, 4) for e in (0.005, 0.02, 0.08)]
           + [AccuracyQuery(r, bw) for bw in (0.25, 1, 4) for r in (0.5, 0.8, 1.2, 0.01)])


@pytest.mark.parametrize("shape", ["saturating", "linear", "cliff"])
@pytest.mark.parametrize("sampler", ["coinfer", "exhaustive"])
def test_planners_find_the_brute_force_optimum(sampler, shape):
    model = synthetic_latency(SMALL)
    for seed in range(2):
        table = synthetic_table(SMALL, noise=0.0, seed=seed, shape=shape)
        for q in QUERIES:
            problem = Problem(q, model, 0.9)
            result = run_search(problem, TableEvaluator(table), SearchConfig(sampler))
            expected = brute_force(problem, table)
            if expected is None:  # the 0.01 ratio: no scheme is that fast
                assert not result.feasible and result.certificate.exact, q
            else:
                assert result.feasible and result.scheme == expected, (q, seed)
            assert result.certified, q


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp"])
def test_optuna_samplers_find_the_optimum_on_a_tiny_space(sampler):
    points = synthetic_points([2, 3])
    model = synthetic_latency(points)
    table = synthetic_table(points, seed=3)
    queries = [LatencyQuery(0.05, 1), AccuracyQuery(0.9, 1)]
    for q in queries[:1] if sampler == "gp" else queries:  # GP proposes ~1 trial/s here: one query
        problem = Problem(q, model, 0.9)
        config = SearchConfig(sampler, seed=0, max_evaluations=problem.space.size)
        result = run_search(problem, TableEvaluator(table), config)
        assert result.scheme == brute_force(problem, table), (sampler, q)
        assert result.new_evaluations <= problem.space.size


def test_coinfer_evaluates_a_small_part_and_its_certificate_proves_the_answer():
    points = synthetic_points([8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64])
    model = synthetic_latency(points)
    table = synthetic_table(points, seed=1)
    problem = Problem(LatencyQuery(0.01, 1), model, 0.9)
    result = run_search(problem, TableEvaluator(table), SearchConfig("coinfer"))
    assert result.certified and result.scheme == brute_force(problem, table)
    assert result.new_evaluations < 0.1 * problem.space.size
    # the certificate alone (answer + failed schemes) must rule out every faster scheme
    space = problem.space
    kn = Knowledge(space)
    for s in result.certificate.proof:
        kn.add(space.index(s), table[s])
    st = problem.status(kn)
    assert st.done and st.incumbent == space.index(result.scheme)


def test_noisy_table_gives_an_honest_report():
    table = synthetic_table(SMALL, seed=0)
    # one scheme far better than a scheme that dominates it, both already in the database
    table[Scheme(5, 1, 1)], table[Scheme(5, 16, 8)] = 0.95, 0.5
    problem = Problem(AccuracyQuery(0.8, 1), synthetic_latency(SMALL), 0.9)
    assert problem.latency[problem.space.index(Scheme(5, 1, 1))] <= problem.budget
    ev = TableEvaluator(table, known={Scheme(5, 1, 1): 0.95, Scheme(5, 16, 8): 0.5})
    result = run_search(problem, ev, SearchConfig("coinfer", tolerance=0.0))
    assert result.scheme == brute_force(problem, table) == Scheme(5, 1, 1)
    cert = result.certificate
    assert not cert.certified and "monotonicity" in cert.reason
    assert [(v.high, v.low) for v in cert.violations] == [(Scheme(5, 1, 1), Scheme(5, 16, 8))]
    assert cert.violations[0].drop == pytest.approx(0.45)
    # the exhaustive sampler evaluates everything that could matter: exact, so certified
    exact = run_search(problem, TableEvaluator(table), SearchConfig("exhaustive")).certificate
    assert exact.certified and exact.exact


def test_table_evaluator_counts_first_lookups(tmp_path):
    table = synthetic_table(SMALL, seed=0)
    path = tmp_path / "t.csv"
    write_csv(table, path)
    ev = TableEvaluator.from_file(str(path), [p.channels for p in SMALL])
    problem = Problem(LatencyQuery(0.02, 1), synthetic_latency(SMALL), 0.9)
    result = run_search(problem, ev, SearchConfig("exhaustive"))
    assert result.new_evaluations == len(ev.calls) == int((problem.latency < problem.reference).sum())


@pytest.mark.parametrize("sampler", ["coinfer", "exhaustive"])
def test_a_table_that_lacks_schemes_answers_without_them(tmp_path, sampler):
    """Every scheme at point 1 is missing from the file: the search goes on without them, says how
    many it could not evaluate, and answers as brute force over the schemes the table has."""
    table = synthetic_table(SMALL, seed=0, shape="linear")
    problem = Problem(LatencyQuery(0.05, 1), synthetic_latency(SMALL), 0.9)
    partial = {s: a for s, a in table.items() if s.p != 1}
    write_optcoinfer(partial, tmp_path / "t.txt")
    ev = TableEvaluator.from_file(str(tmp_path / "t.txt"), [p.channels for p in SMALL])
    result = run_search(problem, ev, SearchConfig(sampler))
    assert result.not_evaluable and all(s.p == 1 for s in result.not_evaluable)
    assert any(f"{len(result.not_evaluable)} schemes could not be evaluated" in n for n in result.notes)
    masked = {s: (a if s.p != 1 else -1.0) for s, a in table.items()}  # point 1 can never be chosen
    assert result.scheme == brute_force(problem, masked)
    assert result.certified == (brute_force(problem, table) == result.scheme) or not result.certified


def test_paper_latency_model_reproduces_the_worked_figures(tmp_path):
    from apps import load_app
    store = Store(str(tmp_path / "db.sqlite"))
    import_paper_profile(store, DEFAULT_JSON)
    model = LatencyModel.from_store(store, load_app("vgg16_cars"), "pi-paper", "gpu-paper")
    assert model.breakdown(Scheme(1, 5, 7), 1).total == pytest.approx(0.9312, abs=5e-5)
    assert model.breakdown(Scheme(1, 4, 6), 1).total == pytest.approx(0.7996, abs=5e-5)
    assert model.all_cloud(1) == pytest.approx(1.978, abs=5e-4)
    assert model.all_edge(1) == pytest.approx(3.257, abs=5e-4)


# -- CLIs on a tiny app with a real (tiny) latency profile and a synthetic accuracy table --

def run_cli(kind, args, capsys):
    from search.cli import run
    assert run(kind, args) == 0
    return capsys.readouterr().out


def test_profile_rows(tiny_app):
    rows = profile_app(tiny_app, ProfileConfig(Device(name="tiny-cloud"), runs=2, warmup=1, progress=False))
    keys = {(r.side, r.point, r.channels) for r in rows}
    assert ("edge", 13, 10) in keys and ("cloud", -1, 1) in keys
    assert {("edge", 12, 1), ("edge", 12, 16), ("cloud", 0, 1), ("cloud", 0, 2)} <= keys
    assert all(r.median_s > 0 and r.p90_s >= r.median_s for r in rows)


def tiny_problem(tiny_app, storage: str, query) -> tuple[Problem, dict[Scheme, float]]:
    """The CLI's problem on a tiny database, built here (the stored base, the app's RTT), and its table."""
    store = Store(storage)
    return Problem(query, LatencyModel.from_store(store, tiny_app), 0.9), store.accuracy_table(tiny_app.name)


def test_cli_flag_styles_agree_and_json_keys(tiny_app, tiny_app_path, tiny_db, capsys):
    common = ["--app", tiny_app_path, "--storage", tiny_db, "--json"]
    paper = json.loads(run_cli("latency", ["-accuracy_loss", "0.02", "-bandwidth", "0.5", *common], capsys))
    gnu = json.loads(run_cli("latency", ["--accuracy-loss", "0.02", "--bandwidth", "0.5", *common], capsys))
    for key in ("scheme", "layer", "latency_s", "reference_s", "accuracy", "accuracy_loss", "certified",
                "new_evaluations", "reused_evaluations", "sampler", "wall_s"):
        assert key in paper
    expected = brute_force(*tiny_problem(tiny_app, tiny_db, LatencyQuery(0.02, 0.5)))
    assert expected.is_split and paper["scheme"] == gnu["scheme"] == expected.to_json()
    assert paper["certified"] and paper["new_evaluations"] == 0
    assert set(paper["latency_s"]) == {"edge", "transfer", "cloud", "total"}
    assert set(paper["reference_s"]) == {"all_edge", "all_cloud"}
    acc = json.loads(run_cli("accuracy", ["-latency", "0.9", "-bandwidth", "0.5", *common], capsys))
    problem, table = tiny_problem(tiny_app, tiny_db, AccuracyQuery(0.9, 0.5))
    expected = brute_force(problem, table)
    assert acc["feasible"] and expected.is_split and acc["scheme"] == expected.to_json()
    assert acc["latency_s"]["total"] == pytest.approx(problem.latency_of(expected))
    assert problem.latency_of(expected) <= problem.budget
    assert acc["accuracy"] == pytest.approx(table[expected])
    text = run_cli("latency", ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path,
                               "--storage", tiny_db], capsys)
    assert "certified   yes" in text and "0 new" in text


def test_cli_offline_reports_gap_and_next(tiny_app, tiny_app_path, tiny_db, tmp_path, capsys):
    from search.bounds import DEFAULT_TOLERANCE
    from tests.oracles import offline_open, offline_oracle
    partial = str(tmp_path / "partial.sqlite")
    full, store = latency_only_copy(tiny_db, partial)
    table = full.accuracy_rows("tiny_digits")
    store.put_accuracy([AccuracyRow(r["app"], r["protocol"], r["p"], r["c"], r["b"], r["seed"], r["top1"])
                        for r in table if r["p"] == 3 and r["b"] >= 6])
    store.put_base("tiny_digits", table[0]["protocol"], 0.9)
    out = json.loads(run_cli("latency", ["-accuracy_loss", "0.05", "-bandwidth", "0.5", "--offline", "--json",
                                         "--app", tiny_app_path, "--storage", partial], capsys))
    problem, stored = tiny_problem(tiny_app, partial, LatencyQuery(0.05, 0.5))
    gap, open_ = offline_open(problem, stored, DEFAULT_TOLERANCE)
    assert out["new_evaluations"] == 0 and not out["certified"] and gap > 0 and len(open_) > 5
    assert out["scheme"] == offline_oracle(problem, stored, DEFAULT_TOLERANCE).to_json()
    assert out["certificate"]["gap"] == pytest.approx(gap)
    assert len(out["next_to_evaluate"]) == 5 and {Scheme.from_json(s) for s in out["next_to_evaluate"]} <= open_


def test_infeasible_accuracy_query_exits_1_with_one_line(tiny_app_path, tiny_db, capsys):
    from search.cli import run
    args = ["-latency", "0.01", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage", tiny_db]
    assert run("accuracy", args) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("no scheme meets the bound")
    assert run("accuracy", [*args, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] is False and out["certificate"]["exact"] and "no scheme meets" in out["notes"][0]


@pytest.mark.parametrize("kind,args,match", [
    ("latency", ["-accuracy_loss", "0.01", "-bandwidth", "-1"], "bandwidth"),
    ("latency", ["-accuracy_loss", "0.01", "-bandwidth", "0"], "bandwidth"),
    ("latency", ["-accuracy_loss", "1.0"], "accuracy_loss"),
    ("latency", ["-accuracy_loss", "-0.1"], "accuracy_loss"),
    ("accuracy", ["-latency", "0"], "latency ratio"),
    ("accuracy", ["-latency", "-2"], "latency ratio"),
    ("latency", ["-accuracy_loss", "0.01", "--sampler", "magic"], "unknown sampler"),
    ("latency", ["-accuracy_loss", "0.01", "--evaluator", "oracle"], "unknown evaluator"),
    ("latency", ["-accuracy_loss", "0.01", "--evaluator", "table:/nonexistent.csv"], "cannot read"),
    ("latency", ["-accuracy_loss", "0.01", "--latency-profile", "nope,tiny-cloud"], "no edge latency profile"),
    ("latency", ["-accuracy_loss", "0.01", "--tolerance", "-1"], "tolerance"),
    ("latency", ["-accuracy_loss", "0.01", "--study-storage", "nowhere"], "study storage"),
])
def test_cli_bad_input(kind, args, match, tiny_app_path, tiny_db):
    from search.cli import run
    with pytest.raises(CoInferError, match=match):
        run(kind, [*args, "--app", tiny_app_path, "--storage", tiny_db])


@pytest.mark.parametrize("kind,args", [
    ("latency", ["-accuracy_loss", "0.01", "--tolerance", "nan"]), ("latency", ["-accuracy_loss", "nan"]),
    ("accuracy", ["-latency", "nan"]), ("accuracy", ["-latency", "0.5", "-bandwidth", "inf"]),
])
def test_cli_non_finite_option_is_one_line(kind, args, capsys):
    from search.cli import run
    with pytest.raises(SystemExit) as exc:
        run(kind, args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "not a finite number" in err, err


def test_cli_unknown_app_and_empty_offline_database(tmp_path, tiny_app_path, tiny_db):
    from search.cli import run
    with pytest.raises(CoInferError, match="unknown app"):
        run("latency", ["-accuracy_loss", "0.01", "--app", "nope"])
    empty = str(tmp_path / "empty.sqlite")
    store, full = Store(empty), Store(tiny_db)
    store.put_latency(full.latency_rows("tiny_digits"))
    store.put_base("tiny_digits", "x", 0.9)
    with pytest.raises(CoInferError, match="holds nothing"):
        run("latency", ["-accuracy_loss", "0.01", "--offline", "--app", tiny_app_path, "--storage", empty])


def test_cli_exit_code_2_and_one_line(tmp_path):
    import subprocess
    import sys

    from apps import REPO_ROOT
    out = subprocess.run([sys.executable, "latency_search.py", "-accuracy_loss", "2", "-bandwidth", "1"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "accuracy_loss" in out.stderr
    out = subprocess.run([sys.executable, "accuracy_search.py", "-bandwidth", "1"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "-latency" in out.stderr


def test_status_bounds_are_valid_on_monotone_tables():
    table = synthetic_table(SMALL, seed=2)
    problem = Problem(LatencyQuery(0.02, 1), synthetic_latency(SMALL), 0.9)
    kn = Knowledge(problem.space)
    rng = np.random.default_rng(0)
    for i in rng.choice(problem.space.size, 40, replace=False):
        kn.add(int(i), table[problem.space.scheme(int(i))])
    lower, upper = kn.bounds()
    truth = np.array([table[problem.space.scheme(i)] for i in range(problem.space.size)])
    assert np.all(lower <= truth + 1e-12) and np.all(upper >= truth - 1e-12)


def test_failed_evaluation_mid_search_leaves_a_resumable_database(tiny_app, tiny_db, tmp_path):
    """The finetune evaluator stores each result before the next: a search that dies on its
    third new evaluation keeps the two before, and the rerun reuses them and ends where an
    uninterrupted search ends."""
    from search.evaluators import DatabaseEvaluator
    table = synthetic_table(app_points(tiny_app), base=0.9, seed=5)

    class ScriptedFinetune:  # stands in for the fine-tune (injected); fails on its third call
        def __init__(self, fail_at: int | None) -> None:
            self.calls, self.fail_at = 0, fail_at

        def finetune_row(self, scheme, seed=None):
            self.calls += 1
            if self.calls == self.fail_at:
                raise CoInferError("evaluation crashed")
            return AccuracyRow(tiny_app.name, tiny_app.protocol.name, *scheme, seed, table[scheme])

    def fresh_store(name: str) -> Store:
        store, full = Store(str(tmp_path / name)), Store(tiny_db)
        store.put_latency(full.latency_rows(tiny_app.name))
        for device in ("tiny-edge", "tiny-cloud"):
            store.put_device(device, {"cpu_model": "test"})
        store.put_base(tiny_app.name, tiny_app.protocol.name, 0.9)
        return store

    store = fresh_store("resume.sqlite")
    problem = Problem(LatencyQuery(0.02, 0.5), LatencyModel.from_store(store, tiny_app), 0.9)
    with pytest.raises(CoInferError, match="crashed"):
        run_search(problem, DatabaseEvaluator(tiny_app, store, finetuner=ScriptedFinetune(3)), SearchConfig("coinfer"))
    first_two = set(store.accuracy_table(tiny_app.name))
    assert len(first_two) == 2
    resumed = run_search(problem, DatabaseEvaluator(tiny_app, store, finetuner=ScriptedFinetune(None)),
                         SearchConfig("coinfer"))
    whole = run_search(problem, DatabaseEvaluator(tiny_app, fresh_store("whole.sqlite"),
                                                  finetuner=ScriptedFinetune(None)), SearchConfig("coinfer"))
    assert resumed.certified and resumed.scheme == whole.scheme == brute_force(problem, table)
    assert resumed.new_evaluations == whole.new_evaluations - 2
    assert resumed.reused_evaluations == len(first_two & set(whole.certificate.proof))
    assert len(store.accuracy_table(tiny_app.name)) == whole.new_evaluations


def test_the_study_tells_the_story_and_zero_budget_evaluates_nothing():
    table = synthetic_table(SMALL, seed=1)
    problem = Problem(LatencyQuery(0.02, 1), synthetic_latency(SMALL), 0.9)
    ev = TableEvaluator(table)
    result = run_search(problem, ev, SearchConfig("coinfer"))
    trials = result.study.trials
    evaluated = [t for t in trials if t.user_attrs["source"] == "evaluated"]
    assert [Scheme.parse(t.user_attrs["scheme"]) for t in evaluated] == ev.calls
    assert len(evaluated) == result.new_evaluations > 0
    assert all(table[Scheme(t.params["p"], t.params["c"], t.params["b"])] == t.user_attrs["accuracy"]
               for t in evaluated)
    for sampler in ("coinfer", "tpe"):
        assert run_search(problem, TableEvaluator(table), SearchConfig(sampler, max_evaluations=0)).new_evaluations == 0


def test_when_nothing_can_be_fine_tuned_the_stored_values_answer(tmp_path, tiny_db, capsys):
    """An app whose checkpoint is missing: one line says why, and the answer is the best the
    stored (partial) database proves, not certified, after one attempted evaluation."""
    from conftest import write_tiny_app

    from search.cli import run
    app_path = write_tiny_app(tmp_path, checkpoint=str(tmp_path / "missing.pt"))
    partial = str(tmp_path / "partial.sqlite")
    full, store = latency_only_copy(tiny_db, partial)
    rows = [r for r in full.accuracy_rows("tiny_digits") if r["p"] == 3 and r["b"] >= 6]
    store.put_accuracy([AccuracyRow(r["app"], r["protocol"], r["p"], r["c"], r["b"], r["seed"], r["top1"])
                        for r in rows])
    store.put_base("tiny_digits", rows[0]["protocol"], 0.9)
    assert run("latency", ["-accuracy_loss", "0.05", "-bandwidth", "0.5", "--app", str(app_path),
                           "--storage", partial, "--study-storage", "memory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new_evaluations"] == 0 and out["not_evaluable"] == 1 and not out["certified"]
    assert any("cannot fine-tune schemes of tiny_digits" in n and "checkpoint" in n for n in out["notes"])
    # the answer is what --offline gives from the same database
    assert run("latency", ["-accuracy_loss", "0.05", "-bandwidth", "0.5", "--app", str(app_path), "--storage",
                           partial, "--study-storage", "memory", "--json", "--offline"]) == 0
    assert json.loads(capsys.readouterr().out)["scheme"] == out["scheme"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_offline_answers_on_random_partial_tables_match_the_oracle(seed):
    from tests.oracles import offline_oracle
    rng = np.random.default_rng(seed)
    table = synthetic_table(SMALL, seed=seed)
    stored = {s: a for s, a in table.items() if rng.random() < 0.15}
    model = synthetic_latency(SMALL)
    for q in QUERIES:
        problem = Problem(q, model, 0.9)
        for tol in (0.0, 0.005):
            config = SearchConfig("coinfer", tolerance=tol, offline=True)
            result = run_search(problem, TableEvaluator(table, known=stored), config)
            expected = offline_oracle(problem, stored, tol)
            assert result.new_evaluations == 0
            if expected is None:
                assert not result.feasible, q
            else:
                assert result.scheme == expected, (q, tol)
            if not result.certified:
                assert result.next_to_evaluate and result.certificate.gap > 0, q


def test_protocol_selects_an_imported_partial_table(tiny_app_path, tiny_db, tmp_path, capsys):
    from database.formats import main as formats_main
    from search.cli import run
    db = str(tmp_path / "imported.sqlite")
    full, _ = latency_only_copy(tiny_db, db)
    table = {s: a for s, a in full.accuracy_table("tiny_digits").items() if s.b >= 4 and s.c % 2 == 0}
    write_optcoinfer(table, tmp_path / "t.txt")
    assert formats_main(["import-optcoinfer", str(tmp_path / "t.txt"), "--app", tiny_app_path,
                         "--base-error", "0.1", "--storage", db]) == 0
    capsys.readouterr()
    common = ["-accuracy_loss", "0.05", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage", db,
              "--study-storage", "memory", "--json"]
    with pytest.raises(CoInferError, match="optcoinfer-paper .* schemes.*--protocol"):
        run("latency", [*common, "--offline"])
    with pytest.raises(CoInferError, match="unknown protocol 'nope'.*optcoinfer-paper"):
        run("latency", [*common, "--protocol", "nope"])
    assert run("latency", [*common, "--protocol", "optcoinfer-paper"]) == 0
    online = json.loads(capsys.readouterr().out)
    assert run("latency", [*common, "--protocol", "optcoinfer-paper", "--offline"]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert online["scheme"] == offline["scheme"] and online["new_evaluations"] == 0
    assert online["base_accuracy"] == pytest.approx(0.9)


def test_cli_compact_json_counts_the_proof_and_keeps_wire_bytes(tiny_app_path, tiny_db, capsys):
    common = ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage", tiny_db]
    line = run_cli("latency", [*common, "--json"], capsys)
    assert line.count("\n") == 1
    short, full = json.loads(line), json.loads(run_cli("latency", [*common, "--json-full"], capsys))
    assert short["wire_bytes"] == full["wire_bytes"] > 0
    assert short["certificate"]["proof_count"] == len(full["certificate"]["proof"])
    assert "proof" not in short["certificate"] and short["scheme"] == full["scheme"]


def test_cli_restarts_reach_optcoinfer_and_progress_ticks_per_evaluation(tiny_app_path, tiny_db, monkeypatch, capsys):
    import search.runner
    from search.cli import run
    from search.progress import ProgressEvaluator
    seen = {}
    real = search.runner.run_search

    def spy(*args, **kwargs):
        seen.update(evaluator=args[1], config=args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(search.runner, "run_search", spy)
    args = ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage", tiny_db,
            "--sampler", "optcoinfer", "--restarts", "0", "--study-storage", "memory"]
    assert run("latency", [*args, "--progress"]) == 0
    assert seen["config"].knobs == {"restarts": 0} and isinstance(seen["evaluator"], ProgressEvaluator)
    with pytest.raises(CoInferError, match="--restarts"):
        run("latency", [*args, "--restarts", "-1"])


def test_progress_evaluator_counts_new_evaluations_only():
    import io

    from search.progress import ProgressEvaluator
    table = {Scheme(0, 1, 1): 0.5, Scheme(0, 1, 2): 0.6}
    out = io.StringIO()
    ev = ProgressEvaluator(TableEvaluator(table, known={Scheme(0, 1, 1): 0.5}), total=2, file=out)
    assert ev.known() == {Scheme(0, 1, 1): 0.5} and ev.bar is None and out.getvalue() == ""
    assert ev.evaluate(Scheme(0, 1, 2)) == 0.6 and ev.bar.n == 1
    ev.close()
    assert "1/2" in out.getvalue()


def test_help_states_the_default_tolerance():
    from search.bounds import DEFAULT_TOLERANCE
    from search.cli import HELP_TOLERANCE
    assert float(HELP_TOLERANCE) == DEFAULT_TOLERANCE
