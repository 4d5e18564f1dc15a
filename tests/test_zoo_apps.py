"""The shipped zoo apps: their checkpoints load and fit, and their default queries answer certified from
the shipped database with no new evaluation (a copy of it; the study kept in memory)."""

from __future__ import annotations

import json
import shutil

import pytest

from apps import REPO_ROOT, load_app
from models.build import load_base_model

SHIPPED = REPO_ROOT / "database" / "coinfer.sqlite"
ZOO_APPS = ["resnet18_digits", "resnet34_digits", "resnet50_digits", "mobilenet_v2_digits"]
QUERIES = [("latency", ["-accuracy_loss", "0.01", "-bandwidth", "1"]),
           ("accuracy", ["-latency", "0.6", "-bandwidth", "1"])]


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory) -> str:
    db = tmp_path_factory.mktemp("shipped") / "coinfer.sqlite"
    shutil.copyfile(SHIPPED, db)
    return str(db)


@pytest.mark.parametrize("name", ZOO_APPS)
def test_shipped_checkpoint_is_small_and_fits(name) -> None:
    app = load_app(name)
    assert app.checkpoint.stat().st_size < 1.5e6
    assert len(load_base_model(app).partition_points()) >= 9


@pytest.mark.parametrize("name", ZOO_APPS)
@pytest.mark.parametrize(("kind", "args"), QUERIES)
def test_default_queries_answer_certified_from_the_shipped_database(shipped_copy, capsys, name, kind, args) -> None:
    from search.cli import run
    code = run(kind, [*args, "--app", name, "--storage", shipped_copy, "--study-storage", "memory", "--json"])
    out = json.loads(capsys.readouterr().out)
    # an infeasible query (no scheme fits the latency budget) is an answer too: certified exactly, exit 1
    assert out["certified"] and out["new_evaluations"] == 0 and code == (0 if out["feasible"] else 1), out
