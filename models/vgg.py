"""VGG-16-BN as a list of 13 conv blocks (the partition points) plus a classifier.

Block p is conv -> BN -> ReLU, followed by max-pool when the VGG-16 configuration has one
after it. Partition point p is the output of block p (pooled when a pool follows, as the
paper transmits the pooled map). `forward_head(x, p)` runs blocks 0..p on the edge,
`forward_tail(a, p)` runs the rest in the cloud (the `models.splittable.Splittable` interface).
Widths are explicit so a model pruned at the cut is again a plain `VGG` with a smaller width at
one block: `keep_channels(p, keep)` keeps those filters of conv p (with their BN entries) and the
matching input channels of its consumer (conv p+1, or the first classifier layer after the last).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from models.points import PartitionPoint

# VGG-16 configuration: conv widths; "M" = 2x2 max-pool.
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_widths(width: float) -> list[int]:
    """Conv widths of VGG-16 scaled by `width` (at least 1 channel each)."""
    return [max(1, round(v * width)) for v in VGG16 if v != "M"]


def pool_after() -> list[bool]:
    """For each of the 13 convs: is it followed by a max-pool?"""
    flags = []
    for i, v in enumerate(VGG16):
        if v != "M":
            flags.append(i + 1 < len(VGG16) and VGG16[i + 1] == "M")
    return flags


def point_names() -> list[str]:
    """torchvision-style names conv<stage>_<i>, with +pool when a pool follows."""
    names, stage, idx = [], 1, 0
    for i, v in enumerate(VGG16):
        if v == "M":
            stage, idx = stage + 1, 0
            continue
        idx += 1
        pooled = i + 1 < len(VGG16) and VGG16[i + 1] == "M"
        names.append(f"conv{stage}_{idx}" + ("+pool" if pooled else ""))
    return names


def partition_points(widths: list[int], input_size: int) -> list[PartitionPoint]:
    """The 13 partition points of a VGG-16 with these conv widths (no model needed)."""
    points, size = [], input_size
    for i, (name, pooled) in enumerate(zip(point_names(), pool_after())):
        if pooled:
            size //= 2
        points.append(PartitionPoint(i, name, widths[i], size, size))
    return points


class VGG(nn.Module):
    """VGG-16-BN with explicit per-conv widths. Plain nn.Module; state_dict keys are stable."""

    def __init__(self, widths: list[int], num_classes: int, in_channels: int = 3,
                 input_size: int = 224, hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        if len(widths) != 13:
            raise ValueError(f"VGG-16 has 13 conv widths, got {len(widths)}")
        self.widths = list(widths)
        self.in_channels = in_channels
        self.input_size = input_size
        self.num_classes = num_classes
        self.hidden = hidden
        pools = pool_after()
        blocks, cin = [], in_channels
        for w, pooled in zip(widths, pools):
            layers = OrderedDict(conv=nn.Conv2d(cin, w, 3, padding=1), bn=nn.BatchNorm2d(w),
                                 relu=nn.ReLU(inplace=True))
            if pooled:
                layers["pool"] = nn.MaxPool2d(2)
            blocks.append(nn.Sequential(layers))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.final_size = input_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * self.final_size ** 2, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def partition_points(self) -> list[PartitionPoint]:
        return partition_points(self.widths, self.input_size)

    def forward_head(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """Edge side: blocks 0..p. Returns the activation at partition point p."""
        for block in self.blocks[: p + 1]:
            x = block(x)
        return x

    def forward_tail(self, a: torch.Tensor, p: int) -> torch.Tensor:
        """Cloud side: blocks p+1.. and the classifier. p = -1 runs the whole model."""
        for block in self.blocks[p + 1:]:
            a = block(a)
        return self.classifier(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tail(x, -1)

    def producer_weight(self, p: int) -> torch.Tensor:
        """Conv p's weight: its filters' L1 norms rank the channels of point p."""
        return self.blocks[p].conv.weight

    def keep_channels(self, p: int, keep: torch.Tensor) -> VGG:
        """A physically smaller copy: conv p keeps filters `keep` (ascending) with their BN entries, and
        its consumer (conv p+1, or the first classifier layer) keeps the matching input channels."""
        c = len(keep)
        pruned = copy.deepcopy(self)
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


def vgg16_bn(width: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
             input_size: int = 224, hidden: int | None = None) -> VGG:
    """VGG-16-BN scaled in width and input size; `hidden` defaults to 4096 * width."""
    return VGG(vgg16_widths(width), num_classes, in_channels, input_size,
               hidden if hidden is not None else max(1, round(4096 * width)))
