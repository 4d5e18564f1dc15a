"""A scheme (p, c, b) applied to a base model: pruned at p, quantised at the cut.

`SchemeModel` is what gets fine-tuned and tested for the accuracy database, and whose
`head` / `tail` the runtime executes on the edge and in the cloud.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.prune import check_scheme, prune_at
from compress.quant import FakeQuant
from models.vgg import VGG


class SchemeModel(nn.Module):
    def __init__(self, base: VGG, p: int, c: int, b: int) -> None:
        super().__init__()
        check_scheme(base, p, c, b)
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


def all_schemes(widths: list[int]) -> list[tuple[int, int, int]]:
    """Every split scheme (p, c, b): p over the points, c in 1..C_p, b in 1..8."""
    return [(p, c, b) for p, cp in enumerate(widths) for c in range(1, cp + 1) for b in range(1, 9)]


def parse_scheme(text: str) -> tuple[int, int, int]:
    """'p,c,b' (or p-c-b) -> (p, c, b); range checks are the model's (check_scheme)."""
    from apps.errors import CoInferError
    parts = text.replace("-", ",").split(",")
    try:
        p, c, b = (int(x) for x in parts)
    except ValueError:
        raise CoInferError(f"bad scheme {text!r}: expected p,c,b (three integers)") from None
    return p, c, b
