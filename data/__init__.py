"""Datasets as plug-ins: `load_splits(app)` returns the (train, test) torch datasets of the app's `dataset.name`.

A dataset kind is one module of this package with one function, `load_splits(app) -> (train, test)`
(`SplitLoader`): each item is `(float tensor of shape (in_channels, input_size, input_size), int label)`,
labels 0-based. `DATASETS` maps every name the app schema accepts (`apps.schema.DATASET_NAMES`) to its
module; the module is imported only when its dataset is loaded.

    digits         scikit-learn's bundled 8x8 digits (data/digits.py)
    stanford_cars  torchvision's StanfordCars layout in a local folder (data/cars.py)
    image_folder   a class per subfolder; train/ and test/ (or val/) subfolders, or a seeded split (data/folder.py)
    cifar10        torchvision's CIFAR10 layout (python pickle batches) in a local folder (data/cifar.py)
    cifar100       torchvision's CIFAR100 layout (data/cifar.py)
    mnist          torchvision's MNIST layout (raw idx files) in a local folder (data/mnist.py)
    svhn           torchvision's SVHN layout (train_32x32.mat, test_32x32.mat) (data/svhn.py)

Nothing downloads: a missing folder or file is one CoInferError line naming where it looked.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from torch.utils.data import Dataset

from apps import App
from cli.errors import CoInferError

DATASETS: dict[str, str] = {
    "digits": "data.digits", "stanford_cars": "data.cars", "image_folder": "data.folder",
    "cifar10": "data.cifar", "cifar100": "data.cifar", "mnist": "data.mnist", "svhn": "data.svhn",
}


class SplitLoader(Protocol):
    """What a dataset module provides: the app's (train, test) splits."""

    def __call__(self, app: App) -> tuple[Dataset, Dataset]: ...


def load_splits(app: App) -> tuple[Dataset, Dataset]:
    name = app.dataset.get("name")
    module = DATASETS.get(str(name))
    if module is None:
        raise CoInferError(f"app {app.name}: unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    loader: SplitLoader = importlib.import_module(module).load_splits
    return loader(app)
