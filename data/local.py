"""A dataset's local folder and the checks made before torchvision reads it (nothing is ever downloaded).

`dataset_root(app)` is the app's `dataset.root` (relative paths from the checkout, `cli.paths.DATA_ROOT`);
`require(root, files, layout, app)` names, in one CoInferError line, what is missing and the layout
expected. `limit_train` keeps the first `dataset.limit_train` training items; `check_classes` refuses
an app whose `model.num_classes` is not the dataset's number of classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset, Subset

from apps import App
from cli.errors import CoInferError
from cli.paths import data_file


def dataset_root(app: App, layout: str) -> Path:
    """The folder named by `dataset.root` (relative: to `cli.paths.DATA_ROOT`); `layout` is what it should hold."""
    root = app.dataset.get("root")
    if not root:
        raise CoInferError(f"app {app.name}: set dataset.root to the folder holding {layout}")
    path = Path(str(root)).expanduser()
    return path if path.is_absolute() else data_file(path)


def missing_files(root: Path, files: Sequence[str]) -> list[str]:
    """Those of `files` (a trailing / for a folder) that `root` lacks."""
    return [name for name in files if not ((root / name).is_dir() if name.endswith("/") else (root / name).is_file())]


def require(root: Path, files: Sequence[str], layout: str, app: App) -> None:
    """One CoInferError line when any of `files` (a trailing / for a folder) is missing under `root`."""
    missing = missing_files(root, files)
    if missing:
        what = "no such folder" if not root.is_dir() else f"missing {', '.join(missing)}"
        raise CoInferError(f"{app.dataset['name']} not found in {root} ({what}); expected {layout}; "
                           f"set dataset.root in app {app.name}")


def check_classes(app: App, classes: int, where: Path) -> None:
    if classes != app.num_classes:
        raise CoInferError(f"app {app.name}: model.num_classes is {app.num_classes} but {app.dataset['name']} "
                           f"in {where} has {classes} classes")


def limit_train(app: App, train: Dataset) -> Dataset:
    limit = app.dataset.get("limit_train")
    return train if limit is None else Subset(train, range(min(int(limit), len(train))))  # type: ignore[arg-type]
