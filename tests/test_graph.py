"""DAG partitioning with torch.fx (models/graph.py): head∘tail is the model at every point of every zoo
model, pruning and quantisation at a residual cut, and the bad inputs (untraceable model, a cut where
two tensors cross, an arch torchvision lacks) as one line and exit 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

from apps import APPS_DIR, REPO_ROOT, load_app
from cli.errors import CoInferError
from compress.model import SchemeModel
from compress.prune import keep_filters, prune_at
from compress.scheme import Scheme
from models.build import app_points, build_model
from models.graph import GraphModel
from models.splittable import Splittable

ZOO_APPS = ["resnet18_digits", "resnet34_digits", "resnet50_digits", "mobilenet_digits"]


def untrained(name: str) -> GraphModel:
    torch.manual_seed(0)
    model = build_model(load_app(name)).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that a wrong cut shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("name", ZOO_APPS)
def test_head_then_tail_is_the_model_at_every_point(name) -> None:
    model = untrained(name)
    assert isinstance(model, Splittable)
    points = model.partition_points()
    assert [pt.index for pt in points] == list(range(len(points))) and all(pt.node for pt in points)
    assert points == app_points(load_app(name))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        y = model(x)
        for pt in points:
            a = model.forward_head(x, pt.index)
            assert tuple(a.shape) == (3, pt.channels, pt.height, pt.width)
            assert (model.forward_tail(a, pt.index) - y).abs().max().item() <= 1e-5, pt


def test_zoo_points_are_block_outputs() -> None:
    r18 = [pt.name for pt in app_points(load_app("resnet18_digits"))]
    assert r18 == ["maxpool", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0",
                   "avgpool"]
    mb = app_points(load_app("mobilenet_digits"))
    assert [pt.name for pt in mb[:3]] == ["features.0", "features.1", "features.2"] and len(mb) == 19


def test_any_torchvision_classifier_splits() -> None:
    import torchvision
    torch.manual_seed(0)
    model = GraphModel(torchvision.models.shufflenet_v2_x0_5(num_classes=5).eval(), 3, 64, 5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        for pt in model.partition_points():
            assert (model.forward_tail(model.forward_head(x, pt.index), pt.index) - y).abs().max() <= 1e-5


def test_pruning_and_quantisation_at_a_residual_cut() -> None:
    model = untrained("resnet18_digits")
    p = 1  # layer1.0's output: read by layer1.1's conv branch and by its identity shortcut
    pt = model.partition_points()[p]
    assert pt.name == "layer1.0" and pt.channels == 8
    keep = keep_filters(model.net.get_submodule("layer1.0.conv2").weight, 3)
    pruned = prune_at(model, p, 3).eval()
    assert pruned.partition_points()[p].channels == 3 and model.partition_points()[p].channels == 8
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        full = model.forward_head(x, p)
        a = pruned.forward_head(x, p)
        assert a.shape == (4, 3, 16, 16) and torch.equal(a, full[:, keep])
        # the pruned channels carry nothing: the tail sees them as zeros, whatever the head computed
        zeroed = torch.zeros_like(full)
        zeroed[:, keep] = full[:, keep]
        assert torch.allclose(pruned.forward_tail(a, p), model.forward_tail(zeroed, p), atol=1e-6)
        noisy = full + torch.randn_like(full) * 10
        noisy[:, keep] = full[:, keep]
        assert torch.allclose(pruned.forward_tail(noisy[:, keep], p), pruned.forward_tail(a, p))
        # other points are untouched; the base model is unchanged (own weights)
        assert pruned.forward_head(x, 2).shape[1] == 8
        # c = C_p at 8 bits reproduces the model closely
        y = model(x)
        close = SchemeModel(model, Scheme(p, 8, 8)).eval()(x)
        assert (close - y).abs().max() <= 0.05 * y.abs().max() and torch.equal(close.argmax(1), y.argmax(1))
        coarse = SchemeModel(model, Scheme(p, 3, 2)).eval()
        assert coarse.head(x).shape == (4, 3, 16, 16) and coarse(x).shape == (4, 10)
    # fine-tuning reaches the head's weights through the scatter and the straight-through quantiser
    scheme = SchemeModel(model, Scheme(p, 3, 4)).train()
    scheme(x).sum().backward()
    assert scheme.net.net.get_submodule("layer1.0.conv2").weight.grad.abs().sum() > 0
    assert scheme.net.net.get_submodule("fc").weight.grad.abs().sum() > 0


def write_app(tmp_path, **model) -> str:
    data = yaml.safe_load((APPS_DIR / "resnet18_digits.yml").read_text())
    data["model"].update(model)
    data["checkpoint"] = str(REPO_ROOT / "checkpoints" / "resnet18_digits.pt")
    path = tmp_path / "app.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_cut_where_two_tensors_cross_is_refused(tmp_path) -> None:
    app = load_app(write_app(tmp_path, points=["layer1_0_relu"]))  # inside a block: the shortcut crosses too
    with pytest.raises(CoInferError, match=r"2 tensors cross after it \(maxpool, layer1_0_relu\)"):
        build_model(app)
    ok = build_model(dataclasses.replace(app, points=("layer1_1_relu_1", "maxpool")))
    assert [pt.node for pt in ok.partition_points()] == ["maxpool", "layer1_1_relu_1"]


def test_an_arch_torchvision_lacks_is_refused(tmp_path) -> None:
    with pytest.raises(CoInferError, match="torchvision has no classification model 'resnet19'"):
        load_app(write_app(tmp_path, arch="resnet19"))


class Branchy(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self, *args) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_model_is_one_line() -> None:
    with pytest.raises(CoInferError) as exc:
        GraphModel(Branchy(), 1, 32, 4)
    assert "cannot trace Branchy" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("model", "says"), [
    ({"points": ["layer1_0_relu"]}, "2 tensors cross"),
    ({"width": 0.25}, "cannot trace Branchy"),  # resnet18's builder swapped for an untraceable model below
])
def test_cli_bad_model_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, model, says) -> None:
    from cli.run import run_cli
    from models import zoo
    from search.cli import run
    monkeypatch.setitem(zoo.BUILDERS, "resnet18", lambda app: Branchy() if app.width == 0.25 else zoo.resnet(app))
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda argv: run("latency", argv), ["-accuracy_loss", "0.01", "-bandwidth", "1", "--offline",
                                                     "--app", write_app(tmp_path, **model)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and says in err and err.count("\n") == 1, err


def test_cli_unknown_torchvision_model_exits_2(tmp_path) -> None:
    out = subprocess.run([sys.executable, "latency_search.py", "-accuracy_loss", "0.01", "-bandwidth", "1",
                          "--app", write_app(tmp_path, arch="resnet19")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "torchvision has no classification model 'resnet19'" in out.stderr
