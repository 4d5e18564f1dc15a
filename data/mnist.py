"""MNIST from a local folder in torchvision's layout (the raw idx files, uncompressed):

    <root>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
                      t10k-labels-idx1-ubyte}

Read by torchvision's MNIST with download=False. 28x28 grey images, resized to the app's input size
(an app with in_channels 3 gets the grey value in every channel); MNIST's mean/std (0.1307, 0.3081) unless
the app says otherwise (data/transforms.py).
"""

from __future__ import annotations

from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from apps import App
from cli.errors import CoInferError, first_line
from data.local import check_classes, dataset_root, limit_train, require
from data.transforms import image_transforms

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
LAYOUT = "<root>/MNIST/raw/{" + ", ".join(FILES) + "}"
MEAN, STD = (0.1307,), (0.3081,)


def load_splits(app: App) -> tuple[Dataset, Dataset]:
    root = dataset_root(app, LAYOUT)
    require(root, [f"MNIST/raw/{name}" for name in FILES], LAYOUT, app)
    check_classes(app, 10, root)
    train_tf, test_tf = image_transforms(app, MEAN, STD)
    try:
        train = MNIST(str(root), train=True, transform=train_tf, download=False)
        test = MNIST(str(root), train=False, transform=test_tf, download=False)
    except (AssertionError, ValueError, RuntimeError, OSError) as exc:  # torchvision asserts the idx header
        reason = first_line(exc) or "bad idx header"
        raise CoInferError(f"malformed MNIST idx files under {root / 'MNIST' / 'raw'}: {reason}") from None
    if len(train.data) != len(train.targets) or len(test.data) != len(test.targets):
        raise CoInferError(f"malformed MNIST idx files under {root / 'MNIST' / 'raw'}: images and labels differ "
                           f"in number")
    return limit_train(app, train), test
