"""CIFAR-10 and CIFAR-100 from a local folder in torchvision's layout (the python pickle batches):

    <root>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

Read by torchvision's CIFAR10 / CIFAR100 with download=False; the files must be there (checked first, one
line naming what is missing) but their MD5 is not compared with the official archive's, so a re-packed or
a subset copy reads too. 32x32 RGB; CIFAR's own mean/std unless the app says otherwise (data/transforms.py).
"""

from __future__ import annotations

import pickle

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from apps import App
from cli.errors import CoInferError, first_line
from data.local import check_classes, dataset_root, limit_train, require
from data.transforms import image_transforms


class _CIFAR10(CIFAR10):
    """torchvision's reader with the presence of each file as its integrity check (md5 None)."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100(CIFAR100):
    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


KINDS = {  # name: (reader, classes, mean, std)
    "cifar10": (_CIFAR10, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (_CIFAR100, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def layout(reader) -> tuple[str, list[str]]:
    files = [name for name, _ in reader.train_list + reader.test_list] + [reader.meta["filename"]]
    return f"<root>/{reader.base_folder}/{{{', '.join(files)}}}", [f"{reader.base_folder}/{f}" for f in files]


def load_splits(app: App) -> tuple[Dataset, Dataset]:
    reader, classes, mean, std = KINDS[app.dataset["name"]]
    where, files = layout(reader)
    root = dataset_root(app, where)
    require(root, files, where, app)
    check_classes(app, classes, root)
    train_tf, test_tf = image_transforms(app, mean, std)
    try:
        train = reader(str(root), train=True, transform=train_tf, download=False)
        test = reader(str(root), train=False, transform=test_tf, download=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as exc:
        reason = first_line(exc)
        raise CoInferError(f"malformed {app.dataset['name']} batches under {root / reader.base_folder}: "
                           f"{reason}") from None
    return limit_train(app, train), test
