"""Dataset plug-ins (data/): image folders of generated PNGs and the on-disk layouts torchvision reads
(CIFAR-10/100 pickle batches, MNIST idx files, SVHN .mat), built here in a temp folder; never a download.
Expected tensors are the fixture's pixel values worked out by hand (uniform images, so resizing keeps them)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from apps import load_app
from apps.schema import DATASET_NAMES
from cli.errors import CoInferError
from data import DATASETS, load_splits
from tests.conftest import write_tiny_app

torch.set_num_threads(1)

COLOURS = {"apple": (255, 0, 0), "kiwi": (0, 255, 0), "plum": (0, 0, 255)}


def app_for(tmp_path: Path, dataset: dict, in_channels: int = 3, num_classes: int = 3, name: str = "tiny_data"):
    model = {"arch": "vgg16_bn", "width": 1 / 32, "input_size": 32, "in_channels": in_channels,
             "num_classes": num_classes, "classifier_hidden": 16}
    return load_app(str(write_tiny_app(tmp_path, name, model=model, dataset=dataset)))


def write_pngs(folder: Path, counts: dict[str, int]) -> None:
    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8 + i, 8), COLOURS[cls]).save(folder / cls / f"{i}.png")


def test_registry_matches_the_schema() -> None:
    assert set(DATASETS) == set(DATASET_NAMES)


def test_image_folder_train_test_folders(tmp_path: Path) -> None:
    write_pngs(tmp_path / "fruit" / "train", {"apple": 2, "kiwi": 3, "plum": 1})
    write_pngs(tmp_path / "fruit" / "val", {"apple": 1, "kiwi": 1, "plum": 1})  # an ImageNet-style val/ folder
    app = app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "fruit"), "mean": [0.0], "std": [1.0]})
    train, test = load_splits(app)
    assert (len(train), len(test)) == (6, 3)
    assert [y for _, y in train] == [0, 0, 1, 1, 1, 2] and [y for _, y in test] == [0, 1, 2]
    for x, y in test:  # a solid colour: 255 -> 1.0 in its channel, 0 elsewhere, at every pixel
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        expected = torch.tensor(COLOURS[list(COLOURS)[y]], dtype=torch.float32) / 255
        assert torch.equal(x, expected[:, None, None].expand(3, 32, 32))


def test_image_folder_grey_with_stats(tmp_path: Path) -> None:
    write_pngs(tmp_path / "fruit" / "train", {"apple": 1, "kiwi": 1, "plum": 1})
    write_pngs(tmp_path / "fruit" / "test", {"apple": 1, "kiwi": 1, "plum": 1})
    app = app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "fruit"), "mean": [0.5], "std": [0.25]},
                  in_channels=1)
    _, test = load_splits(app)
    # PIL's luma L = (19595 R + 38470 G + 7471 B + 2^15) >> 16: red 76, green 150, blue 29
    for (x, _), luma in zip(test, (76, 150, 29), strict=True):
        assert x.shape == (1, 32, 32)
        assert torch.allclose(x, torch.full((1, 32, 32), (luma / 255 - 0.5) / 0.25), atol=1e-6)


def test_image_folder_seeded_fraction(tmp_path: Path) -> None:
    write_pngs(tmp_path / "flat", {"apple": 5, "kiwi": 4, "plum": 1})
    spec = {"name": "image_folder", "root": str(tmp_path / "flat"), "test_fraction": 0.4, "split_seed": 3}
    train, test = load_splits(app_for(tmp_path, spec))
    # per class round(n x 0.4) to test, at least 1 and at most n - 1: 2 of 5, 2 of 4, 0 of 1
    assert sorted(y for _, y in test) == [0, 0, 1, 1] and sorted(y for _, y in train) == [0, 0, 0, 1, 1, 2]
    assert not set(train.indices) & set(test.indices) and len(set(train.indices) | set(test.indices)) == 10
    assert test.indices == [2, 4, 6, 8]  # the seeded split, fixed on every machine (numpy's PCG64)
    other = load_splits(app_for(tmp_path, {**spec, "split_seed": 1}))[1]
    assert other.indices == [0, 4, 5, 6]


def test_image_folder_augment_and_limit(tmp_path: Path) -> None:
    write_pngs(tmp_path / "fruit" / "train", {"apple": 3, "kiwi": 1, "plum": 1})
    write_pngs(tmp_path / "fruit" / "test", {"apple": 1, "kiwi": 1, "plum": 1})
    app = app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "fruit"), "augment": True,
                             "limit_train": 2, "mean": [0, 0, 0], "std": [1, 1, 1]})
    train, _ = load_splits(app)
    assert len(train) == 2
    x, y = train[0]  # a random crop padded by 4: the padding is 0, the image red
    assert y == 0 and x.shape == (3, 32, 32) and set(x[0].unique().tolist()) <= {0.0, 1.0} and x[1:].abs().sum() == 0


def write_cifar10(root: Path) -> tuple[list[int], list[int]]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train_labels, test_labels = [], []
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = [(2 * k) % 10, (2 * k + 1) % 10]
        data = np.stack([np.full(3072, 10 * k + j, dtype=np.uint8) for j in range(2)])  # channel-major rows
        data[:, 1024:2048] = 200  # green plane
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        (test_labels if name == "test_batch" else train_labels).extend(labels)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return train_labels, test_labels


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    train_labels, test_labels = write_cifar10(tmp_path / "c10")
    app = app_for(tmp_path, {"name": "cifar10", "root": str(tmp_path / "c10")}, num_classes=10)
    train, test = load_splits(app)
    assert [y for _, y in train] == train_labels and [y for _, y in test] == test_labels
    x, _ = train[3]  # batch 2, image 1: red = blue = 11, green 200; CIFAR-10's mean/std
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    for c, value in enumerate((11, 200, 11)):
        assert torch.allclose(x[c], torch.full((32, 32), (value / 255 - mean[c]) / std[c]), atol=1e-5)


def test_cifar100_and_missing_file(tmp_path: Path) -> None:
    base = tmp_path / "c100" / "cifar-100-python"
    base.mkdir(parents=True)
    for name, labels in (("train", [99, 0, 5]), ("test", [7])):
        data = np.full((len(labels), 3072), 50, dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)}, f)
    app = app_for(tmp_path, {"name": "cifar100", "root": str(tmp_path / "c100")}, num_classes=100)
    with pytest.raises(CoInferError) as err:  # no meta yet
        load_splits(app)
    assert str(err.value) == (f"cifar100 not found in {tmp_path / 'c100'} (missing cifar-100-python/meta); expected "
                              "<root>/cifar-100-python/{train, test, meta}; set dataset.root in app tiny_data")
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    train, test = load_splits(app)
    assert [y for _, y in train] == [99, 0, 5] and [y for _, y in test] == [7]


def idx(path: Path, array: np.ndarray) -> None:
    code = 0x0800 + array.ndim  # ubyte, then the number of dimensions
    path.write_bytes(struct.pack(">I", code) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def test_mnist_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "m" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, values, labels in (("train", [0, 128, 255], [3, 1, 4]), ("t10k", [64, 32], [1, 5])):
        idx(raw / f"{split}-images-idx3-ubyte", np.stack([np.full((28, 28), v) for v in values]))
        idx(raw / f"{split}-labels-idx1-ubyte", np.array(labels))
    app = app_for(tmp_path, {"name": "mnist", "root": str(tmp_path / "m")}, in_channels=1, num_classes=10)
    train, test = load_splits(app)
    assert [y for _, y in train] == [3, 1, 4] and [y for _, y in test] == [1, 5]
    x, _ = train[1]
    assert x.shape == (1, 32, 32) and torch.allclose(x, torch.full((1, 32, 32), (128 / 255 - 0.1307) / 0.3081),
                                                     atol=1e-5)
    rgb = app_for(tmp_path, {"name": "mnist", "root": str(tmp_path / "m"), "mean": [0.0], "std": [1.0]},
                  num_classes=10, name="tiny_rgb")
    x, _ = load_splits(rgb)[1][0]
    assert torch.allclose(x, torch.full((3, 32, 32), 64 / 255), atol=1e-6)


def test_svhn_mat_files(tmp_path: Path) -> None:
    for split, labels in (("train", [10, 3]), ("test", [7, 10])):
        x = np.zeros((32, 32, 3, len(labels)), dtype=np.uint8)
        x[:, :, 2, :] = 255
        sio.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array(labels)[:, None]})
    app = app_for(tmp_path, {"name": "svhn", "root": str(tmp_path), "mean": [0.0], "std": [1.0]}, num_classes=10)
    train, test = load_splits(app)
    assert [y for _, y in train] == [0, 3] and [y for _, y in test] == [7, 0]  # torchvision maps 10 to digit 0
    assert torch.equal(test[0][0][2], torch.ones(32, 32)) and test[0][0][:2].abs().sum() == 0


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    missing = app_for(tmp_path, {"name": "mnist", "root": str(tmp_path / "nowhere")}, in_channels=1, num_classes=10)
    with pytest.raises(CoInferError, match=r"^mnist not found in .*nowhere \(no such folder\); expected "
                                           r"<root>/MNIST/raw/\{train-images-idx3-ubyte, "):
        load_splits(missing)
    no_root = app_for(tmp_path, {"name": "cifar10"}, num_classes=10)
    with pytest.raises(CoInferError, match=r"^app tiny_data: set dataset.root to the folder holding "
                                           r"<root>/cifar-10-batches-py/\{data_batch_1, "):
        load_splits(no_root)
    write_cifar10(tmp_path / "c10")
    wrong = app_for(tmp_path, {"name": "cifar10", "root": str(tmp_path / "c10")}, num_classes=7)
    with pytest.raises(CoInferError, match=r"^app tiny_data: model.num_classes is 7 but cifar10 in .* has 10 "
                                           r"classes$"):
        load_splits(wrong)
    (tmp_path / "c10" / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(CoInferError, match=r"^malformed cifar10 batches under "):
        load_splits(app_for(tmp_path, {"name": "cifar10", "root": str(tmp_path / "c10")}, num_classes=10))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoInferError, match=r"^image_folder .*empty: Couldn't find any class folder"):
        load_splits(app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "empty")}))
    with pytest.raises(CoInferError, match=r"dataset.name: must be 'digits', 'stanford_cars', 'image_folder', "):
        app_for(tmp_path, {"name": "imagenet21k"})
    write_pngs(tmp_path / "two", {"apple": 2, "kiwi": 2, "plum": 2})
    odd = app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "two"), "mean": [0.1, 0.2]})
    with pytest.raises(CoInferError, match=r"^app tiny_data: dataset.mean has 2 values, model.in_channels is 3$"):
        load_splits(odd)


def test_transform_keys_are_checked(tmp_path: Path) -> None:
    write_pngs(tmp_path / "two", {"apple": 2, "kiwi": 2, "plum": 2})
    small = app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "two"), "resize": 16})
    with pytest.raises(CoInferError, match=r"^app tiny_data: dataset.resize 16 is smaller than model.input_size 32$"):
        load_splits(small)
    with pytest.raises(CoInferError, match=r"dataset.std.0: must be greater than 0, got 0.0"):
        app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "two"), "std": [0.0]})
    five = app_for(tmp_path, {"name": "image_folder", "root": str(tmp_path / "two")}, in_channels=5)
    with pytest.raises(CoInferError, match=r"^app tiny_data: image_folder images have 1 or 3 channels, "
                                           r"model.in_channels is 5$"):
        load_splits(five)
