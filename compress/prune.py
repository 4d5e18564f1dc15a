"""Filter pruning at the partition point by L1 norm.

`prune_at(model, p, c)` returns a new, physically smaller VGG: conv p keeps the c filters
with the largest L1 norm (in their original order) with their BN entries, and the consumer
of point p (conv p+1, or the first classifier layer after the last conv) loses the matching
input channels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from apps.errors import CoInferError
from models.vgg import VGG


def keep_filters(conv_weight: torch.Tensor, c: int) -> torch.Tensor:
    """Indices (ascending) of the c filters with the largest L1 norm; ties go to the lower index."""
    norms = conv_weight.detach().abs().flatten(1).sum(1)
    order = sorted(range(len(norms)), key=lambda i: (-float(norms[i]), i))
    return torch.tensor(sorted(order[:c]), dtype=torch.long)


def check_in_space(widths: list[int], p: int, c: int, b: int | None = None) -> None:
    """One-line error unless (p, c, b) is a split scheme of a model with these conv widths."""
    if not 0 <= p < len(widths):
        raise CoInferError(f"partition point {p} outside 0..{len(widths) - 1}")
    if not 1 <= c <= widths[p]:
        raise CoInferError(f"channels {c} outside 1..{widths[p]} at point {p}")
    if b is not None and not 1 <= b <= 8:
        raise CoInferError(f"bits {b} outside 1..8")


def check_scheme(model: VGG, p: int, c: int, b: int | None = None) -> None:
    check_in_space(model.widths, p, c, b)


def prune_at(model: VGG, p: int, c: int) -> VGG:
    """A copy of `model` with conv p pruned to c filters and its consumer's inputs to match."""
    check_scheme(model, p, c)
    pruned = copy.deepcopy(model)
    keep = keep_filters(model.blocks[p].conv.weight, c)
    block = pruned.blocks[p]
    conv, bn = block.conv, block.bn
    new_conv = nn.Conv2d(conv.in_channels, c, conv.kernel_size, conv.stride, conv.padding)
    new_conv.weight.data = conv.weight.data[keep].clone()
    new_conv.bias.data = conv.bias.data[keep].clone()
    new_bn = nn.BatchNorm2d(c, eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias"):
        getattr(new_bn, name).data = getattr(bn, name).data[keep].clone()
    for name in ("running_mean", "running_var"):
        setattr(new_bn, name, getattr(bn, name)[keep].clone())
    new_bn.num_batches_tracked = bn.num_batches_tracked.clone()
    block.conv, block.bn = new_conv, new_bn
    if p + 1 < len(pruned.blocks):
        nxt = pruned.blocks[p + 1].conv
        consumer = nn.Conv2d(c, nxt.out_channels, nxt.kernel_size, nxt.stride, nxt.padding)
        consumer.weight.data = nxt.weight.data[:, keep].clone()
        consumer.bias.data = nxt.bias.data.clone()
        pruned.blocks[p + 1].conv = consumer
    else:
        fc = pruned.classifier[1]
        area = pruned.final_size ** 2
        cols = (keep[:, None] * area + torch.arange(area)[None, :]).flatten()
        consumer = nn.Linear(c * area, fc.out_features)
        consumer.weight.data = fc.weight.data[:, cols].clone()
        consumer.bias.data = fc.bias.data.clone()
        pruned.classifier[1] = consumer
    pruned.widths[p] = c
    return pruned
