"""Fine-tuned weights per scheme: fine-tuned once, saved atomically, loaded with weights_only, shared by
the edge head and the cloud tail, and as accurate through the server as the accuracy database says."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sqlite3

import pytest
import torch
from conftest import serving

from apps import DEFAULT_STORAGE, load_app
from compress.scheme import Scheme
from data import load_splits
from database.finetune import SchemeFinetuner
from models.train import test_accuracy as top1_top5  # (not collected as a test)
from runtime import weights
from runtime.weights import scheme_accuracy, scheme_model, scheme_path

torch.set_num_threads(1)


class CountingFinetuner:
    """The app's protocol (SchemeFinetuner), counting the schemes it fine-tunes."""

    def __init__(self, app) -> None:
        self.inner, self.tuned = SchemeFinetuner(app), []

    def finetune(self, scheme: Scheme, seed: int | None = None):
        self.tuned.append(scheme)
        return self.inner.finetune(scheme, seed)

    def finetune_row(self, scheme: Scheme, seed: int | None = None):
        self.tuned.append(scheme)
        return self.inner.finetune_row(scheme, seed)


class RefusingFinetuner:
    def finetune(self, scheme: Scheme, seed: int | None = None):
        pytest.fail(f"fine-tuned {scheme} again")

    def finetune_row(self, scheme: Scheme, seed: int | None = None):
        pytest.fail(f"evaluated {scheme} again")


def test_finetuned_once_then_loaded(tiny_app, tmp_path) -> None:
    weights.clear_cache()
    finetuner = CountingFinetuner(tiny_app)
    model = scheme_model(tiny_app, Scheme(2, 3, 4), root=tmp_path, finetuner=finetuner, train=True)
    assert finetuner.tuned == [Scheme(2, 3, 4)]
    path = scheme_path(tiny_app, Scheme(2, 3, 4), tmp_path)
    assert path == tmp_path / tiny_app.name / tiny_app.protocol.name / "2-3-4.pt" and path.is_file()
    assert not list(path.parent.glob("*.tmp")), "temporary files left behind"
    # the recorded accuracy is that of the saved weights on the app's test split
    assert scheme_accuracy(tiny_app, Scheme(2, 3, 4), tmp_path) == top1_top5(model, load_splits(tiny_app)[1])[0]
    state = torch.load(path, weights_only=True)  # a plain state_dict of tensors
    assert set(state) == set(model.state_dict())
    # a second process (empty memory cache) loads the file and never fine-tunes again
    weights.clear_cache()
    again = scheme_model(tiny_app, Scheme(2, 3, 4), root=tmp_path, finetuner=RefusingFinetuner())
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(weights.MissingWeights, match="no fine-tuned weights for scheme 2,3,5 of tiny_digits .*"
                       "python -m database.evaluate --app .*tiny_digits.yml --schemes 2,3,5"):
        scheme_model(tiny_app, Scheme(2, 3, 5), root=tmp_path)


def test_refuses_pickled_objects(tiny_app, tmp_path) -> None:
    weights.clear_cache()
    path = scheme_path(tiny_app, Scheme(1, 2, 3), tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"evil": os.system}, path)  # anything but tensors and plain values needs full unpickling
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        scheme_model(tiny_app, Scheme(1, 2, 3), root=tmp_path, finetuner=RefusingFinetuner())
    torch.save({"step": 3}, path)  # loads with weights_only, but is no state_dict of tensors
    with pytest.raises(ValueError, match="1-2-3.pt is not a state_dict of tensors"):
        scheme_model(tiny_app, Scheme(1, 2, 3), root=tmp_path, finetuner=RefusingFinetuner())


APP = load_app("vgg16_digits")


def database_accuracy(scheme: Scheme) -> float:
    """The scheme's top-1 in the shipped accuracy database (opened read-only; every scheme is in it)."""
    path = DEFAULT_STORAGE.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT top1 FROM accuracy WHERE app=? AND protocol=? AND p=? AND c=? AND b=? AND seed=?",
                          (APP.name, APP.protocol.name, *scheme, APP.protocol.seed)).fetchone()
    finally:
        con.close()
    assert row is not None, f"the shipped database has no accuracy of {scheme}"
    return float(row[0])


@pytest.mark.slow
@pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
def test_split_scheme_through_server_reaches_database_accuracy(tmp_path) -> None:
    """(4, 12, 3): the pruned base gets ~40 % of the test set right, the fine-tuned scheme ~94 %."""
    from data import load_splits
    from models.build import load_base_model
    from runtime.client import ClientConfig, EdgeClient
    from runtime.cloud import ServerConfig

    weights.clear_cache()
    scheme = Scheme(4, 12, 3)
    base = load_base_model(APP)
    test = load_splits(APP)[1]
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = [int(test[i][1]) for i in range(len(test))]

    async def accuracy(finetuned: bool) -> float:
        async with serving(APP, ServerConfig(finetuned=finetuned, weights_root=str(tmp_path)), base) as server:
            config = ClientConfig(port=server.port, k=1, finetuned=finetuned, weights_root=str(tmp_path),
                                  finetune_missing=True)
            async with EdgeClient(APP, scheme, config, base=base) as client:
                preds = [c[0] for i in range(0, len(x), 64) for c in (await client.infer(x[i:i + 64])).classes]
        return sum(p == t for p, t in zip(preds, y)) / len(y)

    tuned = asyncio.run(accuracy(True))
    recorded = scheme_accuracy(APP, scheme, tmp_path)
    assert recorded is not None and tuned == pytest.approx(recorded, abs=0.01)
    assert tuned == pytest.approx(database_accuracy(scheme), abs=0.015)  # 0.94 in the shipped database
    assert tuned > asyncio.run(accuracy(False)) + 0.2  # the old behaviour: pruned base weights


def test_the_build_keeps_what_it_finetunes(tiny_app, tiny_app_path, tmp_path, monkeypatch, capsys) -> None:
    """database.evaluate stores each scheme's weights beside its row (same key, same top-1); the runtime then
    loads them and never fine-tunes; a scheme the build did not make is refused, naming the build command."""
    from database.evaluate import main as evaluate
    from database.store import Store
    from runtime.edge import main as edge
    monkeypatch.setenv(weights.ENV_DIR, str(tmp_path / "schemes"))
    weights.clear_cache()
    db = f"sqlite:///{tmp_path / 'acc.sqlite'}"
    assert evaluate(["--app", tiny_app_path, "--schemes", "2,3,4", "--storage", db]) == 0
    row = Store(db).accuracy_table(tiny_app.name, tiny_app.protocol.name, tiny_app.protocol.seed)[Scheme(2, 3, 4)]
    meta = json.loads(scheme_path(tiny_app, Scheme(2, 3, 4)).with_suffix(".json").read_text())
    assert (meta["p"], meta["c"], meta["b"], meta["seed"], meta["protocol"]) == (2, 3, 4, tiny_app.protocol.seed,
                                                                                  tiny_app.protocol.name)
    assert meta["top1"] == pytest.approx(row) and len(meta["sha256"]) == 64
    model = scheme_model(tiny_app, Scheme(2, 3, 4), finetuner=RefusingFinetuner())  # loaded, not fine-tuned
    assert top1_top5(model, load_splits(tiny_app)[1])[0] == pytest.approx(row)
    capsys.readouterr()
    with pytest.raises(weights.MissingWeights) as info:  # before any connection: no server is needed to refuse
        edge(["--app", tiny_app_path, "--scheme", "2,3,5", "--server", "127.0.0.1:9"])
    hint = str(info.value).split("make them with ", 1)[1].split(", or", 1)[0].split()
    assert hint[:3] == ["python", "-m", "database.evaluate"] and "\n" not in str(info.value)
    assert evaluate([*hint[3:], "--storage", db]) == 0  # the hinted command makes them
    assert scheme_path(tiny_app, Scheme(2, 3, 5)).is_file()
    # a row stored without its weights (an older build, an imported table): the same command makes them only
    scheme_path(tiny_app, Scheme(2, 3, 4)).unlink()
    capsys.readouterr()
    assert evaluate(["--app", tiny_app_path, "--schemes", "2,3,4", "--weights", "--storage", db]) == 0
    assert "0 new evaluations" in capsys.readouterr().out and scheme_path(tiny_app, Scheme(2, 3, 4)).is_file()
    assert Store(db).accuracy_table(tiny_app.name, tiny_app.protocol.name,
                                    tiny_app.protocol.seed)[Scheme(2, 3, 4)] == row  # the row stays
