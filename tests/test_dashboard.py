"""Studies that dashboards read right: every trial's constraint in Optuna's `constraints` system attribute (what
Optuna's samplers write and optuna-dashboard reads), the answer as the best trial of optuna-dashboard served by
`reports.dashboard`, and one study per sampler."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from optuna_dashboard._serializer import serialize_frozen_trial

from apps import REPO_ROOT
from cli.errors import CoInferError
from compress.scheme import Scheme
from reports.dashboard import dashboard_app, study_storage_of
from reports.dashboard import main as dashboard_main
from search.best import feasible_best
from search.cli import run as query


def _ask(kind: str, argv: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert query(kind, [*argv, "--json"]) == 0
    return json.loads(out.getvalue())


def _get(app, path: str) -> dict:
    """GET `path` from a WSGI application: the JSON body."""
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


@pytest.fixture(scope="module")
def main_query(tmp_path_factory):
    """README's main query (`python latency_search.py -accuracy_loss 0.01 -bandwidth 1`) on a copy of the shipped
    database, its study kept in the journal beside the copy."""
    folder = tmp_path_factory.mktemp("shipped")
    db = folder / "coinfer.sqlite"
    shutil.copy(REPO_ROOT / "database" / "coinfer.sqlite", db)
    answer = _ask("latency", ["-accuracy_loss", "0.01", "-bandwidth", "1", "--storage", str(db)])
    return answer, folder / "coinfer.studies.journal"


def test_trials_carry_the_constraint_every_reader_takes(main_query):
    answer, journal = main_query
    assert answer["scheme"] == {"p": 1, "c": 5, "b": 1} and answer["certified"]
    plain = JournalStorage(JournalFileBackend(str(journal)))  # what `optuna-dashboard FILE` opens
    study = optuna.load_study(study_name=answer["study"], storage=plain)
    assert answer["study"].endswith("/coinfer")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    # Optuna's readers (best_trial, TPE, GP, the visualisations) see one constraint per trial ...
    assert trials and all(list(t.constraints) == ["0"] for t in trials)
    assert all(t.user_attrs["constraint"] == "accuracy" for t in trials)
    assert Scheme.parse(study.best_trial.user_attrs["scheme"]) == Scheme(1, 5, 1)
    assert {t.constraints["0"] > 0 for t in trials} == {True, False}  # some tried schemes were outside the bound
    # ... and optuna-dashboard's serialisation of a trial carries it (it was [] with `constraints:accuracy`)
    for t in trials:
        shown = serialize_frozen_trial(study._study_id, t, {})
        assert shown["constraints"] == [t.constraints["0"]]
        threshold = answer["base_accuracy"] - answer["accuracy_loss_bound"]
        assert (shown["constraints"][0] <= 0) == (t.user_attrs["accuracy"] >= threshold)


def test_the_dashboard_served_by_reports_dashboard_names_the_answer_best(main_query):
    answer, journal = main_query
    app = dashboard_app(study_storage_of(None, str(journal)))
    studies = _get(app, "/api/studies")["study_summaries"]
    sid = next(s["study_id"] for s in studies if s["study_name"] == answer["study"])
    detail = _get(app, f"/api/studies/{sid}")
    (best,) = detail["best_trials"]
    attrs = {a["key"]: a["value"] for a in best["user_attrs"]}
    assert attrs["scheme"] == "1,5,1" and best["constraints"][0] <= 0
    assert best["values"] == [pytest.approx(answer["latency_s"]["total"])]
    feasible = [t for t in detail["trials"] if t["state"] == "Complete" and t["constraints"][0] <= 0]
    assert best["values"][0] == min(t["values"][0] for t in feasible)


def test_feasible_best_follows_optunas_rule():
    def trial(value: float, constraint: float | None):
        attrs = {} if constraint is None else {"constraints": [constraint]}
        return optuna.trial.create_trial(value=value, system_attrs=attrs)

    trials = [trial(1.0, 0.3), trial(2.0, -0.1), trial(3.0, 0.0), trial(0.5, 0.1)]
    assert feasible_best(trials, optuna.study.StudyDirection.MINIMIZE).value == 2.0
    assert feasible_best(trials, optuna.study.StudyDirection.MAXIMIZE).value == 3.0
    assert feasible_best([trial(1.0, 0.3), trial(2.0, 0.2)], optuna.study.StudyDirection.MINIMIZE).value == 2.0
    assert feasible_best([trial(4.0, None)], optuna.study.StudyDirection.MINIMIZE).value == 4.0
    with pytest.raises(ValueError, match="No trials are completed yet"):
        feasible_best([], optuna.study.StudyDirection.MINIMIZE)


def test_another_sampler_starts_its_own_study(tiny_app_path, tiny_db, tmp_path):
    journal = str(tmp_path / "s.journal")
    args = ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage", tiny_db,
            "--study-storage", journal]
    first = _ask("latency", args)
    n = len(optuna.load_study(study_name=first["study"], storage=JournalStorage(JournalFileBackend(journal))).trials)
    other = _ask("latency", [*args, "--sampler", "random", "--max-evaluations", "0"])
    assert first["study"].endswith("/coinfer") and other["study"] == first["study"].removesuffix("coinfer") + "random"
    storage = JournalStorage(JournalFileBackend(journal))
    assert len(optuna.load_study(study_name=first["study"], storage=storage).trials) == n  # not resumed
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {first["study"], other["study"]}
    again = _ask("latency", args)  # the same sampler resumes its own
    assert again["study"] == first["study"] and again["new_evaluations"] == 0
    assert len(optuna.load_study(study_name=first["study"], storage=storage).trials) == n


def test_reports_dashboard_refuses_what_it_cannot_show(tmp_path):
    with pytest.raises(CoInferError, match="no study storage at .*none.journal"):
        dashboard_main(["--study-storage", str(tmp_path / "none.journal")])
    with pytest.raises(CoInferError, match="memory holds no studies"):
        dashboard_main(["--study-storage", "memory"])
    with pytest.raises(CoInferError, match="--port must be in 1..65535"):
        dashboard_main(["--port", "0"])
