"""Stanford Cars loader on a tiny fixture in torchvision's layout (a few 8x8 JPEGs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
import yaml
from PIL import Image

from apps import load_app
from cli.errors import CoInferError
from data import load_splits
from data.cars import ENV_ROOT

torch.set_num_threads(1)

TRAIN = [("00001.jpg", 1), ("00002.jpg", 5), ("00003.jpg", 196)]  # 1-based classes, as in the devkit
TEST = [("00001.jpg", 42), ("00002.jpg", 7)]


def _annotations(samples: list[tuple[str, int]]) -> np.ndarray:
    return np.array(samples, dtype=[("fname", "O"), ("class", "O")])


def make_cars(root: Path) -> Path:
    base = root / "stanford_cars"
    for folder, samples in (("cars_train", TRAIN), ("cars_test", TEST)):
        (base / folder).mkdir(parents=True)
        for i, (fname, _) in enumerate(samples):
            Image.new("RGB", (8, 8), (10 * i, 100, 200)).save(base / folder / fname)
    (base / "devkit").mkdir()
    sio.savemat(base / "devkit" / "cars_meta.mat",
                {"class_names": np.array([f"car {i}" for i in range(196)], dtype=object)})
    sio.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(TRAIN)})
    sio.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _annotations(TEST)})
    return root


def write_app(tmp_path: Path, root: Path) -> str:
    app = {
        "name": "tiny_cars",
        "model": {"arch": "vgg16_bn", "width": 0.125, "input_size": 32, "in_channels": 3,
                  "num_classes": 196, "classifier_hidden": 64},
        "dataset": {"name": "stanford_cars", "root": str(root)},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 4, "seed": 0},
        "protocol": {"epochs": 1, "lr": 0.01, "schedule": "linear", "batch_size": 4,
                     "momentum": 0.9, "weight_decay": 0.0005, "seed": 0},
        "devices": {"edge": {"name": "cpu-edge"}, "cloud": {"name": "cpu-cloud"}},
        "raw_input_bytes": 3072,
        "rtt_s": 0.0,
        "checkpoint": str(tmp_path / "tiny_cars.pt"),
    }
    path = tmp_path / "tiny_cars.yml"
    path.write_text(yaml.safe_dump(app))
    return str(path)


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ROOT, raising=False)


def test_splits_load(tmp_path: Path) -> None:
    app = load_app(write_app(tmp_path, make_cars(tmp_path / "cars")))
    train, test = load_splits(app)
    assert (len(train), len(test)) == (len(TRAIN), len(TEST))
    for split, samples in ((train, TRAIN), (test, TEST)):
        for i, (_, label) in enumerate(samples):
            x, y = split[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert type(y) is int and y == label - 1


def test_missing_folder_names_layout(tmp_path: Path) -> None:
    app = load_app(write_app(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(CoInferError) as err:
        load_splits(app)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    root = make_cars(tmp_path / "cars")
    (root / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(CoInferError, match=r"missing cars_test_annos_withlabels\.mat\)"):
        load_splits(load_app(write_app(tmp_path, root)))


def test_env_root_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = load_app(write_app(tmp_path, tmp_path / "nowhere"))
    monkeypatch.setenv(ENV_ROOT, str(make_cars(tmp_path / "elsewhere")))
    train, test = load_splits(app)
    assert (len(train), len(test)) == (len(TRAIN), len(TEST))


@pytest.mark.parametrize("name, arch", [("resnet18_cars", "resnet18"), ("resnet34_cars", "resnet34"),
                                        ("resnet50_cars", "resnet50"), ("mobilenet_cars", "mobilenet_v2")])
def test_zoo_cars_apps_validate_and_need_the_data(name: str, arch: str) -> None:
    """The full-size zoo apps load, their models split (a traced graph), and without the dataset the data
    loader and the CLI that trains say what is missing in one line."""
    from models.build import app_points
    app = load_app(name)
    assert (app.arch, app.input_size, app.num_classes) == (arch, 224, 196)
    points = app_points(app)
    assert len(points) >= 9 and all(pt.node for pt in points)
    with pytest.raises(CoInferError, match="Stanford Cars not found") as err:
        load_splits(app)
    assert "\n" not in str(err.value)
