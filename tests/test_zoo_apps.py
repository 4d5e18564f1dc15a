"""The shipped zoo apps: their checkpoints load and fit, and their default queries answer certified from
the shipped database with no new evaluation (a copy of it; the study kept in memory)."""

from __future__ import annotations

import json
import shutil

import pytest

from apps import REPO_ROOT, Device, load_app
from models.build import load_base_model

SHIPPED = REPO_ROOT / "database" / "coinfer.sqlite"
ZOO_APPS = ["resnet18_digits", "resnet34_digits", "resnet50_digits", "mobilenet_digits"]
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
    assert out["scheme"] == shipped_answer(name, kind, args, shipped_copy).to_json()


def shipped_answer(name: str, kind: str, args: list[str], storage: str):
    """The oracle: plain Python over the stored accuracies of the app's protocol with the latency model
    (tests/oracles.py), the query built here from its two flags; when nothing fits, the fastest scheme."""
    from database.store import Store
    from search.bounds import DEFAULT_TOLERANCE
    from search.latency import LatencyModel
    from search.problem import Problem
    from search.query import AccuracyQuery, LatencyQuery
    from tests.oracles import offline_oracle
    app, store = load_app(name), Store(storage)
    bound, bandwidth = float(args[1]), float(args[3])
    query = LatencyQuery(bound, bandwidth) if kind == "latency" else AccuracyQuery(bound, bandwidth)
    problem = Problem(query, LatencyModel.from_store(store, app), store.base(name, app.protocol.name))
    stored = store.accuracy_table(name, app.protocol.name, app.protocol.seed)
    answer = offline_oracle(problem, stored, DEFAULT_TOLERANCE)
    if answer is None:  # nothing fits the latency budget: the fastest scheme is shown
        fastest = min(range(problem.space.size), key=lambda i: float(problem.latency[i]))
        answer = problem.space.scheme(fastest) if problem.latency[fastest] < problem.reference else problem.single_end
    return answer


def test_profile_and_cloud_tail_of_a_zoo_app() -> None:
    """The profiler's per-point rows and the cloud's tail work through the same interface as VGG's."""
    import torch

    from compress import activation
    from compress.model import SchemeModel
    from compress.scheme import Scheme
    from database.profile import ProfileConfig, profile_app
    from runtime.tails import TailCache
    app = load_app("resnet18_digits")
    config = ProfileConfig(Device(name="t"), sides=("edge", "cloud"), runs=1, warmup=0, passes=1, idle_s=0.0,
                           only_points=frozenset({1}), progress=False)
    rows = profile_app(app, config)
    assert {(r.side, r.point, r.channels) for r in rows} >= {("edge", 1, 1), ("edge", 1, 8), ("cloud", 1, 4)}
    base = load_base_model(app)
    scheme = Scheme(1, 3, 4)
    x = torch.randn(2, 1, 32, 32)
    tails = TailCache(base)
    tails.check(scheme, (2, 3, 16, 16))
    with torch.no_grad():
        model = SchemeModel(base, scheme).eval()
        a = model.head(x)
        wire = activation.from_bytes(activation.to_bytes(a, 4), tuple(a.shape), 4)
        assert torch.allclose(tails.get(scheme)(wire), model(x), atol=1e-4)
