"""Filter pruning at the partition point by L1 norm, for any `models.splittable.Splittable`.

`prune_at(model, p, c)` ranks the filters of the conv that produces point p's tensor
(`model.producer_weight(p)`) by L1 norm, keeps the c largest (in their original order) and
returns `model.keep_channels(p, keep)`: a copy whose point p carries those c channels only.
How a model drops the others is its own business: VGG removes them physically (conv p and its
consumer shrink, `models/vgg.py`); a traced graph sends only the kept channels and scatters them
back into zeros before the tail, which is the same as pruning every consumer's input channels,
residual shortcuts included (`models/graph.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cli.errors import CoInferError
from compress.scheme import BITS, MAX_BITS, MIN_BITS

if TYPE_CHECKING:
    from models.splittable import Splittable


def keep_filters(conv_weight: torch.Tensor, c: int) -> torch.Tensor:
    """Indices (ascending) of the c filters with the largest L1 norm; ties go to the lower index."""
    norms = conv_weight.detach().abs().flatten(1).sum(1)
    order = sorted(range(len(norms)), key=lambda i: (-float(norms[i]), i))
    return torch.tensor(sorted(order[:c]), dtype=torch.long)


def check_in_space(widths: list[int], p: int, c: int, b: int | None = None) -> None:
    """One-line error unless (p, c, b) is a split scheme of a model with these point widths."""
    if not 0 <= p < len(widths):
        raise CoInferError(f"partition point {p} outside 0..{len(widths) - 1}")
    if not 1 <= c <= widths[p]:
        raise CoInferError(f"channels {c} outside 1..{widths[p]} at point {p}")
    if b is not None and b not in BITS:
        raise CoInferError(f"bits {b} outside {MIN_BITS}..{MAX_BITS}")


def check_scheme(model: Splittable, p: int, c: int, b: int | None = None) -> None:
    check_in_space([pt.channels for pt in model.partition_points()], p, c, b)


def prune_at(model: Splittable, p: int, c: int) -> Splittable:
    """A copy of `model` whose point p keeps its c channels of largest producer-filter L1 norm."""
    check_scheme(model, p, c)
    return model.keep_channels(p, keep_filters(model.producer_weight(p), c))
