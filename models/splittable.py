"""What the pipeline needs of a model it splits: one narrow interface, implemented by `models.vgg.VGG`
(a chain of conv blocks) and `models.graph.GraphModel` (any model traced with torch.fx).

    points = model.partition_points()       # ordered; point p: exactly one tensor crosses after it
    a = model.forward_head(x, p)            # edge: input -> the tensor at point p (N, C_p, H_p, W_p)
    y = model.forward_tail(a, p)            # cloud: that tensor -> logits; p = -1 runs the whole model
    w = model.producer_weight(p)            # the conv whose filters rank point p's channels (L1 norm)
    pruned = model.keep_channels(p, keep)   # a copy whose point p carries only channels `keep`

`forward_tail(forward_head(x, p), p) == model(x)` for every p. After `keep_channels(p, keep)` the head
at p returns `len(keep)` channels and the tail at p takes them; every other point is unchanged.
`compress.prune.prune_at` chooses `keep` (the c filters of largest L1 norm) and calls `keep_channels`;
the scheme model, the accuracy database, the profiler and the runtime see only this interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from models.points import PartitionPoint


@runtime_checkable
class Splittable(Protocol):
    in_channels: int
    input_size: int
    num_classes: int

    def partition_points(self) -> list[PartitionPoint]: ...

    def forward_head(self, x: torch.Tensor, p: int) -> torch.Tensor: ...

    def forward_tail(self, a: torch.Tensor, p: int) -> torch.Tensor: ...

    def producer_weight(self, p: int) -> torch.Tensor: ...

    def keep_channels(self, p: int, keep: torch.Tensor) -> Splittable: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
