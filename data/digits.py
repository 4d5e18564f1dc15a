"""scikit-learn's bundled digits (1797 8x8 images), upsampled to the app's input size.

The split is fixed and seeded (stratified), so the test set is the same on every machine.
Images are scaled to [0, 1], bilinearly upsampled, then normalised to zero mean / unit std
with the training set's statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from apps import App
from cli.errors import CoInferError


def load_splits(app: App) -> tuple[TensorDataset, TensorDataset]:
    test_size = int(app.dataset.get("test_size", 600))
    seed = int(app.dataset.get("split_seed", 0))
    limit = app.dataset.get("limit_train")
    digits = load_digits()
    if not 0 < test_size < len(digits.target):
        raise CoInferError(f"app {app.name}: dataset.test_size must be in 1..{len(digits.target) - 1}")
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(app.input_size, app.input_size), mode="bilinear", align_corners=False)
    x = x.repeat(1, app.in_channels, 1, 1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_size,
                                           random_state=seed, stratify=digits.target)
    if limit is not None:
        idx_train = idx_train[: int(limit)]
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = (x - mean) / std
    return TensorDataset(x[idx_train], y[idx_train]), TensorDataset(x[idx_test], y[idx_test])
