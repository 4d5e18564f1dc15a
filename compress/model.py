"""A split scheme (p, c, b) applied to a base model: pruned at p, quantised at the cut.

`SchemeModel` is what gets fine-tuned and tested for the accuracy database, and whose
`head` / `tail` the runtime executes on the edge and in the cloud. The base is any
`models.splittable.Splittable` (VGG or a traced graph); pruning is `compress.prune.prune_at`.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.prune import check_scheme, prune_at
from compress.quant import FakeQuant
from compress.scheme import Scheme
from models.splittable import Splittable


class SchemeModel(nn.Module):
    def __init__(self, base: Splittable, scheme: Scheme) -> None:
        super().__init__()
        p, c, b = scheme
        check_scheme(base, p, c, b)
        self.scheme = scheme
        self.p, self.c, self.b = p, c, b
        self.net = prune_at(base, p, c)
        self.quant = FakeQuant(b)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Edge compute up to the cut (float activation, before quantisation)."""
        return self.net.forward_head(x, self.p)

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        """Cloud compute from the (dequantised) activation to the logits."""
        return self.net.forward_tail(a, self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.quant(self.head(x)))

