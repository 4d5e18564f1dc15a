"""SVHN (cropped digits) from a local folder in torchvision's layout:

    <root>/{train_32x32.mat, test_32x32.mat}

Read by torchvision's SVHN with download=False (label 10 is digit 0, as torchvision maps it); the files
must be there, their MD5 is not compared with the official one. 32x32 RGB; SVHN's mean/std unless the
app says otherwise (data/transforms.py).
"""

from __future__ import annotations

from torch.utils.data import Dataset
from torchvision.datasets import SVHN

from apps import App
from cli.errors import CoInferError, first_line
from data.local import check_classes, dataset_root, limit_train, require
from data.transforms import image_transforms

FILES = ("train_32x32.mat", "test_32x32.mat")
LAYOUT = "<root>/{" + ", ".join(FILES) + "}"
MEAN, STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


class _SVHN(SVHN):
    """torchvision's reader with the presence of the file as its integrity check (md5 None)."""

    split_list = {split: [url, name, None] for split, (url, name, _) in SVHN.split_list.items()}


def load_splits(app: App) -> tuple[Dataset, Dataset]:
    root = dataset_root(app, LAYOUT)
    require(root, FILES, LAYOUT, app)
    check_classes(app, 10, root)
    train_tf, test_tf = image_transforms(app, MEAN, STD)
    try:
        train = _SVHN(str(root), split="train", transform=train_tf, download=False)
        test = _SVHN(str(root), split="test", transform=test_tf, download=False)
    except (KeyError, ValueError, TypeError, OSError, NotImplementedError) as exc:
        reason = first_line(exc)
        raise CoInferError(f"malformed SVHN .mat files under {root}: {reason}") from None
    return limit_train(app, train), test
