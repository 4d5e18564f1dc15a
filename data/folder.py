"""An image folder: one subfolder per class (torchvision's ImageFolder), classes sorted by name -> 0, 1, ...

    <root>/train/<class>/*.png  and  <root>/test/<class>/*.png   (or val/: an ImageNet-style validation folder)
    <root>/<class>/*.png        split here: a seeded `dataset.test_fraction` (default 0.2) of each class is test

The seeded split takes, per class, round(n x test_fraction) images (at least 1 and at most n - 1 when a class
has 2 or more) by a numpy permutation seeded with `dataset.split_seed` (default 0): the same on every machine.
Images are resized to 256/224 of the input size and centre-cropped, ImageNet mean/std unless the app says
otherwise (data/transforms.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from apps import App
from cli.errors import CoInferError, first_line
from data.local import check_classes, dataset_root, limit_train
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, image_transforms

LAYOUT = "<root>/{train,test}/<class>/<images> (test/ may be val/), or <root>/<class>/<images>"
TEST_FOLDERS = ("test", "val")


def _folder(path: Path, transform, app: App) -> ImageFolder:
    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, OSError) as exc:
        reason = first_line(exc)
        raise CoInferError(f"image_folder {path}: {reason}; expected {LAYOUT} (app {app.name})") from None


def fraction_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, test indices), each sorted: per class, a seeded round(n x fraction) go to test."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(targets)
    test: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        k = min(max(round(len(members) * fraction), 1), len(members) - 1) if len(members) >= 2 else 0
        test.extend(int(i) for i in rng.permutation(members)[:k])
    chosen = set(test)
    return [i for i in range(len(labels)) if i not in chosen], sorted(test)


def load_splits(app: App) -> tuple[Dataset, Dataset]:
    root = dataset_root(app, LAYOUT)
    if not root.is_dir():
        raise CoInferError(f"image_folder not found in {root} (no such folder); expected {LAYOUT}; "
                           f"set dataset.root in app {app.name}")
    train_tf, test_tf = image_transforms(app, IMAGENET_MEAN, IMAGENET_STD, round(app.input_size * 256 / 224))
    test_dir = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train, test = _folder(root / "train", train_tf, app), _folder(test_dir, test_tf, app)
        if train.classes != test.classes:
            raise CoInferError(f"image_folder {root}: train/ has classes {len(train.classes)} and {test_dir.name}/ "
                               f"{len(test.classes)}, or they differ by name; both need the same class folders")
        check_classes(app, len(train.classes), root)
        return limit_train(app, train), test
    train_all, test_all = _folder(root, train_tf, app), _folder(root, test_tf, app)
    check_classes(app, len(train_all.classes), root)
    train_idx, test_idx = fraction_split(train_all.targets, float(app.dataset.get("test_fraction", 0.2)),
                                         int(app.dataset.get("split_seed", 0)))
    return limit_train(app, Subset(train_all, train_idx)), Subset(test_all, test_idx)
