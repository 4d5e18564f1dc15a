"""Dataset loaders. `load_splits(app)` returns (train, test) tensor datasets for an app."""

from __future__ import annotations

from torch.utils.data import Dataset

from apps import App
from cli.errors import CoInferError


def load_splits(app: App) -> tuple[Dataset, Dataset]:
    name = app.dataset.get("name")
    if name == "digits":
        from data.digits import load_digits_splits
        return load_digits_splits(app)
    if name == "stanford_cars":
        from data.cars import load_cars_splits
        return load_cars_splits(app)
    raise CoInferError(f"app {app.name}: unknown dataset '{name}' (known: digits, stanford_cars)")
