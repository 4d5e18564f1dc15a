"""Latency predictors: layer enumeration, fitting on a small profile, leave-one-model-out, predicted profiles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from apps import REPO_ROOT
from cli.errors import CoInferError
from database.layerprof import WHOLE, Layer, LayerSample, model_layers, sweep, whole_layer
from database.predictor import LatencyPredictor, PredictorConfig, leave_one_model_out, median_error, store_predicted
from database.store import LatencyRow, Store


def _truth(layer: Layer) -> float:
    """A known device: 20 us a layer plus 1 ns a multiply-accumulate plus 0.1 ns an output element."""
    return 20e-6 + 1e-9 * layer.flops + 1e-10 * layer.out_elems


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


def test_model_layers_traces_a_residual_model_with_shapes():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), Block(8), nn.Conv2d(8, 8, 3, 1, 1, groups=8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    layers = model_layers(model, torch.randn(1, 1, 16, 16))
    assert [x.kind for x in layers] == ["conv", "conv", "bn", "add", "act", "dwconv", "pool", "other", "linear"]
    first = layers[0]
    assert (first.in_shape, first.out_shape, first.kernel, first.stride) == ((1, 1, 16, 16), (1, 8, 8, 8), 3, 2)
    assert first.flops == 8 * 8 * 8 * 1 * 9  # output elements x (cin / groups) x k^2
    assert layers[5].groups == 8 and layers[5].flops == 8 * 8 * 8 * 9
    assert layers[-1].flops == 80 and Layer.from_json(json.loads(json.dumps(first.to_json()))) == first


def _samples(models: dict[str, list[Layer]], overhead: float = 1.5) -> list[LayerSample]:
    out = [LayerSample("dev", "sweep", x, _truth(x)) for x in sweep(12, seed=1)]
    for name, layers in models.items():
        out += [LayerSample("dev", name, x, _truth(x)) for x in layers]
        out.append(LayerSample("dev", name, whole_layer(name, layers), overhead * sum(map(_truth, layers))))
    return out


def _models() -> dict[str, list[Layer]]:
    torch.manual_seed(0)
    out = {}
    for name, widths in (("a", (8, 16)), ("b", (16, 32, 32)), ("c", (4, 8, 16, 16))):
        mods, cin = [], 1
        for w in widths:
            mods += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            cin = w
        out[name] = model_layers(nn.Sequential(*mods), torch.randn(1, 1, 32, 32))
    return out


@pytest.mark.parametrize("regressor", ["linear", "gbr"])
def test_fit_on_a_small_profile_recovers_layers_and_the_model_overhead(regressor):
    models = _models()
    samples = _samples(models)
    predictor = LatencyPredictor.fit(samples, PredictorConfig(regressor))
    layers = models["b"]
    rel = [abs(p - _truth(x)) / _truth(x) for x, p in zip(layers, predictor.layer_seconds(layers))]
    assert max(rel) < (0.02 if regressor == "linear" else 0.35)
    assert predictor.scale == pytest.approx(1.5, rel=0.05 if regressor == "linear" else 0.3)
    errors = leave_one_model_out(samples, PredictorConfig(regressor))
    assert [e.model for e in errors] == ["a", "b", "c"]
    assert median_error(errors) < (0.03 if regressor == "linear" else 0.2)
    assert all(e.measured_s == pytest.approx(1.5 * sum(map(_truth, models[e.model]))) for e in errors)


def test_leave_one_model_out_never_sees_the_held_out_model():
    models = _models()
    samples = _samples(models)
    held = [s for s in samples if s.source == "b"]
    assert any(s.layer.kind == WHOLE for s in held)
    skewed = [LayerSample(s.device, s.source, s.layer, s.seconds * (100 if s.source == "b" else 1)) for s in samples]
    free = LatencyPredictor.fit([s for s in samples if s.source != "b"], PredictorConfig())
    left = LatencyPredictor.fit(skewed, PredictorConfig(), leave_out="b")
    assert left.seconds(models["b"]) == pytest.approx(free.seconds(models["b"]))


def test_store_keeps_samples_in_order_and_marks_a_predicted_profile(tiny_app, tiny_app_path, tmp_path):
    store = Store(str(tmp_path / "p.sqlite"))
    samples = _samples(_models())
    store.put_layer_samples(samples)
    assert store.layer_samples("dev") == samples and store.layer_samples("other") == []
    predictor = LatencyPredictor.fit(samples, PredictorConfig())
    rows = store_predicted(store, tiny_app, "dev", ("edge", "cloud"), predictor)
    assert store.predicted(tiny_app.name) == {"dev": {"edge", "cloud"}}
    from reports.show import summary
    assert summary(store, tiny_app_path)["devices"]["dev"]["predicted"] == ["cloud", "edge"]
    from models.build import app_points
    points = app_points(tiny_app)
    keys = {(r.side, r.point) for r in rows}
    assert {("edge", p.index) for p in points} <= keys and {("edge", 13), ("edge", -1), ("cloud", -1)} <= keys
    by = {(r.side, r.point, r.channels): r.median_s for r in rows}
    full = {p.index: p.channels for p in points}
    edge = [by["edge", p, full[p]] for p in range(13)]
    assert all(a < b for a, b in zip(edge, edge[1:]))  # more layers on the edge, more time
    assert by["edge", 13, 10] > edge[-1] and by["cloud", -1, 1] > by["cloud", 0, full[0]]
    assert by["edge", 5, 1] < by["edge", 5, full[5]]  # pruned at the cut: less work
    from search.latency import LatencyModel
    model = LatencyModel.from_store(store, tiny_app, "dev", "dev")
    assert model.all_edge(1.0) == pytest.approx(by["edge", 13, 10])
    # a measured profile is kept unless --replace; re-profiling (delete_latency) drops the predicted mark
    store.put_latency([LatencyRow(tiny_app.name, "meas", 0, 1, "edge", 1.0)])
    with pytest.raises(CoInferError, match="measured edge profile .*--replace"):
        store_predicted(store, tiny_app, "meas", ("edge",), predictor)
    store.delete_latency(tiny_app.name, "dev", ("edge",))
    assert store.predicted(tiny_app.name) == {"dev": {"cloud"}}


def _cli(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "database.predictor", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)  # generous: the machine may be shared


def test_cli_bad_inputs_are_one_line_and_exit_2(tmp_path):
    db = str(tmp_path / "x.sqlite")
    Store(db).close()  # predict reads an existing database (a missing one is its own error)
    cases = [("predict", "--device", "no-such-device", "--storage", db),
             ("predict", "--device", "cpu-cloud", "--storage", db),  # known device, nothing fitted
             ("predict", "--device", "cpu-cloud", "--app", "no_such_app", "--storage", db),
             ("fit", "--device", "cpu-cloud", "--apps", "no_such_app", "--storage", db),
             ("fit", "--device", "cpu-cloud", "--sweep", "0", "--storage", db)]
    for case in cases:
        proc = _cli(*case)
        assert proc.returncode == 2, (case, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), (case, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert "no fitted latency predictor" in _cli(*cases[1]).stderr
    assert "unknown device" in _cli(*cases[0]).stderr


def test_cli_fit_then_predict_on_a_tiny_app(tiny_app_path, tmp_path):
    db, devices = str(tmp_path / "y.sqlite"), tmp_path / "devices.yml"
    devices.write_text("devices:\n  slow: {side: edge, speed: 0.5}\n")
    fit = _cli("fit", "--device", "slow", "--devices", str(devices), "--apps", tiny_app_path, "--no-reference",
               "--sweep", "6", "--runs", "2", "--regressor", "linear", "--storage", db, "--json")
    assert fit.returncode == 0, fit.stderr
    report = json.loads(fit.stdout)
    assert report["speed"] == 0.5 and report["leave_one_model_out"][0]["model"] == "tiny_digits"
    pred = _cli("predict", "--device", "slow", "--devices", str(devices), "--app", tiny_app_path, "--storage", db,
                "--regressor", "linear", "--json")
    assert pred.returncode == 0, pred.stderr
    out = json.loads(pred.stdout)
    assert out["sides"] == ["edge"] and out["all_edge_s"] > 0
    assert Store(db).predicted("tiny_digits") == {"slow": {"edge"}}
