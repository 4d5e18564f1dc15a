"""Any torchvision classifier with the app's classes and input channels, resnet101/152 in the zoo, and
pretrained weights (models/pretrained.py) from a local state-dict file or the local torch hub cache: the
loaded tensors are the saved ones, the head is replaced for the app's classes, a grey app's first conv
answers as the RGB conv on a grey image; models.train fine-tunes from them. Never a download."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from apps import load_app
from cli.errors import CoInferError
from models.build import build_model, load_base_model, pretrained_model
from tests.conftest import write_tiny_app

torch.set_num_threads(1)

TINY_RESNET = {"arch": "resnet18", "width": 1 / 8, "input_size": 32, "in_channels": 1, "num_classes": 5,
               "stem": "small"}


def app_with(tmp_path: Path, name: str = "tiny_pre", **model):
    return load_app(str(write_tiny_app(tmp_path, name, model={**TINY_RESNET, **model})))


def saved_resnet(path: Path, num_classes: int = 7, **model) -> dict[str, torch.Tensor]:
    """A 'pretrained' zoo resnet18 at width 1/8 on RGB with `num_classes` classes, saved as a state dict."""
    torch.manual_seed(1)
    source = load_app("resnet18_digits")
    source = dataclasses.replace(source, in_channels=3, num_classes=num_classes, **model)
    state = {k.removeprefix("net."): v for k, v in build_model(source).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_state_dict_file_loads_with_head_replaced_and_grey_first_conv(tmp_path: Path) -> None:
    saved = saved_resnet(tmp_path / "rgb7.pt")
    app = app_with(tmp_path, weights=str(tmp_path / "rgb7.pt"))
    model, note = pretrained_model(app)
    loaded = {k.removeprefix("net."): v for k, v in model.state_dict().items()}
    assert set(loaded) == set(saved)
    for key, tensor in saved.items():
        if key not in ("conv1.weight", "fc.weight", "fc.bias"):
            assert torch.equal(loaded[key], tensor), key
    assert loaded["fc.weight"].shape == (5, 64) and loaded["fc.bias"].shape == (5,)
    assert loaded["conv1.weight"].shape == (8, 1, 3, 3)
    grey = torch.randn(2, 1, 32, 32)  # the oracle: the saved RGB conv on (g, g, g)
    with torch.no_grad():
        assert torch.allclose(model.net.conv1(grey), F.conv2d(grey.repeat(1, 3, 1, 1), saved["conv1.weight"],
                                                              padding=1), atol=1e-5)
    assert note == (f"pretrained weights from {tmp_path / 'rgb7.pt'} (first conv conv1: 3 -> 1 input channels "
                    f"(summed / 1); head fc replaced ((7, 64) -> (5, 64)))")
    assert len(model.partition_points()) == 9


def test_same_classes_keep_the_head_and_a_coinfer_checkpoint_reads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    base = build_model(app_with(tmp_path, "first"))
    torch.save(base.state_dict(), tmp_path / "base.pt")  # keys under net., as models.train writes them
    model, note = pretrained_model(app_with(tmp_path, weights=str(tmp_path / "base.pt")))
    assert note == f"pretrained weights from {tmp_path / 'base.pt'}"
    for key, tensor in base.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_torchvision_name_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    app = app_with(tmp_path, weights="IMAGENET1K_V1")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(CoInferError) as err:
        pretrained_model(app)
    assert str(err.value) == (f"model.weights IMAGENET1K_V1: not in the local torch hub cache, looked for {cached} "
                              f"(nothing is downloaded: place the file there or name a local state-dict file)")
    saved = saved_resnet(cached, num_classes=1000)
    for name in ("IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"):
        model, note = pretrained_model(app_with(tmp_path, weights=name))
        assert note.startswith(f"pretrained weights from {cached} (") and "(1000, 64) -> (5, 64)" in note
        assert torch.equal(model.state_dict()["net.layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])
    with pytest.raises(CoInferError, match=r"^model.weights: torchvision has no weights 'IMAGENET9K' for resnet18 "
                                           r"\(known: IMAGENET1K_V1, DEFAULT\)$"):
        pretrained_model(app_with(tmp_path, weights="IMAGENET9K"))


def test_any_torchvision_classifier_with_width_channels_and_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = torchvision.models.mobilenet_v3_small(width_mult=0.25, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "mnv3.pt")
    app = app_with(tmp_path, arch="mobilenet_v3_small", width=0.25, stem="imagenet", num_classes=4,
                   weights=str(tmp_path / "mnv3.pt"))
    model, note = pretrained_model(app)
    state = model.state_dict()
    assert state["net.features.0.0.weight"].shape == (8, 1, 3, 3) and state["net.classifier.3.weight"].shape == (4, 256)
    assert torch.allclose(state["net.features.0.0.weight"], source.features[0][0].weight.sum(1, keepdim=True))
    assert torch.equal(state["net.classifier.0.weight"], source.classifier[0].weight)
    assert "head classifier.3 replaced ((10, 256) -> (4, 256))" in note
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    no_width = app_with(tmp_path, arch="squeezenet1_1", width=0.5, stem="imagenet")
    with pytest.raises(CoInferError, match=r"^model.arch squeezenet1_1 has no width multiplier \(model.width must "
                                           r"be 1\); scaled: resnet18, "):
        build_model(no_width)


@pytest.mark.parametrize(("arch", "blocks"), [("resnet101", 33), ("resnet152", 50)])
def test_deep_resnets_in_the_zoo(tmp_path: Path, arch: str, blocks: int) -> None:
    torch.manual_seed(0)
    model = build_model(app_with(tmp_path, arch=arch, width=1 / 16)).eval()
    points = model.partition_points()
    assert len(points) == blocks + 1  # the max-pool, every block but the last, the pooled features
    assert points[0].name == "maxpool" and points[-1].name == "avgpool"
    assert model.net.fc.weight.shape == (5, 2048 // 16) and model.net.conv1.weight.shape == (4, 1, 3, 3)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        y = model(x)
        for p in (1, len(points) // 2):
            assert (model.forward_tail(model.forward_head(x, p), p) - y).abs().max() <= 1e-4


def test_bad_weights_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CoInferError, match=r"^model.weights: no file .*nowhere\.pt$"):
        pretrained_model(app_with(tmp_path, weights=str(tmp_path / "nowhere.pt")))
    saved_resnet(tmp_path / "wide.pt", width=1 / 4)
    with pytest.raises(CoInferError, match=r"^weights .*wide\.pt do not fit ScaledResNet: conv1.weight is "
                                           r"\(16, 3, 3, 3\), the app's model has \(8, 1, 3, 3\)$"):
        pretrained_model(app_with(tmp_path, weights=str(tmp_path / "wide.pt")))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CoInferError, match=r"^weights .*list\.pt are not a state_dict"):
        pretrained_model(app_with(tmp_path, weights=str(tmp_path / "list.pt")))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CoInferError, match=r"^cannot read weights .*junk\.pt: "):
        pretrained_model(app_with(tmp_path, weights=str(tmp_path / "junk.pt")))


def test_models_train_fine_tunes_from_the_weights(tmp_path: Path, capsys) -> None:
    """A near-zero learning rate: the trained checkpoint's convs stay the pretrained ones (a fresh init would not)."""
    from models.train import main
    for split in ("train", "test"):
        for cls, colour in (("a", (250, 10, 10)), ("b", (10, 10, 250))):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 36), colour).save(tmp_path / "img" / split / cls / f"{i}.png")
    saved = saved_resnet(tmp_path / "rgb7.pt")
    path = write_tiny_app(tmp_path, "tiny_ft", model={**TINY_RESNET, "in_channels": 3, "num_classes": 2,
                                                      "weights": str(tmp_path / "rgb7.pt")},
                          dataset={"name": "image_folder", "root": str(tmp_path / "img")},
                          train={"epochs": 1, "lr": 1e-9, "batch_size": 2, "seed": 0})
    assert main(["--app", str(path)]) == 0
    assert f"tiny_ft: pretrained weights from {tmp_path / 'rgb7.pt'} (head fc replaced ((7, 64) -> (2, 64)))" \
        in capsys.readouterr().out
    trained = load_base_model(load_app(str(path))).state_dict()
    for key in ("conv1.weight", "layer2.0.conv1.weight", "layer4.1.conv2.weight"):
        assert torch.allclose(trained["net." + key], saved[key], atol=1e-6), key
