"""Stanford Cars (196 classes, 8,144 train / 8,041 test images) from a local folder.

The dataset can no longer be downloaded, so the user places it under `dataset.root` of the
app (relative paths are taken from the checkout, `cli.paths.DATA_ROOT`) or points `COINFER_CARS_ROOT` at it
(the variable wins). The folder layout is torchvision's `StanfordCars`:

    <root>/stanford_cars/cars_train/*.jpg
    <root>/stanford_cars/cars_test/*.jpg
    <root>/stanford_cars/devkit/cars_meta.mat
    <root>/stanford_cars/devkit/cars_train_annos.mat
    <root>/stanford_cars/cars_test_annos_withlabels.mat

Images get ImageNet-style transforms at the app's input size: a random resized crop and a
horizontal flip for training; resize to 256/224 of the input size and a centre crop for
testing; then ImageNet mean/std normalisation. Labels are 0-based class indices.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import StanfordCars

from apps import App
from cli.errors import CoInferError, first_line
from cli.paths import data_file
from data.local import missing_files

ENV_ROOT = "COINFER_CARS_ROOT"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REQUIRED = ("cars_train/", "cars_test/", "devkit/cars_meta.mat", "devkit/cars_train_annos.mat",
            "cars_test_annos_withlabels.mat")
LAYOUT = "<root>/stanford_cars/{" + ", ".join(REQUIRED) + "}"


def cars_root(app: App) -> Path:
    """The folder that holds `stanford_cars/`: $COINFER_CARS_ROOT, else the app's dataset.root."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).expanduser().resolve()
    root = app.dataset.get("root")
    if not root:
        raise CoInferError(f"app {app.name}: set dataset.root or {ENV_ROOT} to the folder holding {LAYOUT}")
    path = Path(str(root)).expanduser()
    return path if path.is_absolute() else data_file(path)


def check_layout(root: Path) -> None:
    """Raise one CoInferError line naming what is missing, before torchvision sees the folder."""
    base = root / "stanford_cars"
    missing = missing_files(base, REQUIRED)
    if missing:
        what = "no stanford_cars/ folder" if not base.is_dir() else f"missing {', '.join(missing)}"
        raise CoInferError(f"Stanford Cars not found in {root} ({what}); expected {LAYOUT}; "
                           f"set dataset.root in the app or {ENV_ROOT}")


def cars_transforms(size: int) -> tuple[transforms.Compose, transforms.Compose]:
    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), *normalise])
    test = transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), *normalise])
    return train, test


def load_splits(app: App) -> tuple[Dataset, Dataset]:
    if app.in_channels != 3:
        raise CoInferError(f"app {app.name}: Stanford Cars images are RGB, model.in_channels must be 3")
    root = cars_root(app)
    check_layout(root)
    train_tf, test_tf = cars_transforms(app.input_size)
    try:
        train = StanfordCars(str(root), split="train", transform=train_tf, target_transform=int)
        test = StanfordCars(str(root), split="test", transform=test_tf, target_transform=int)
    except (ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        reason = first_line(exc)
        raise CoInferError(f"malformed Stanford Cars annotations under {root / 'stanford_cars'}: {reason}") from None
    limit = app.dataset.get("limit_train")
    if limit is not None:
        return Subset(train, range(min(int(limit), len(train)))), test
    return train, test
