"""Per-channel min-max uniform quantisation of the activation at the cut.

For each sample and channel: lo = min, hi = max over H x W; scale = (hi - lo) / (2^b - 1);
code = round((x - lo) / scale) in 0..2^b-1. The decoder needs (lo, scale) per channel: that is
the per-channel header, 2 float32 = 8 bytes a channel. While fine-tuning, `FakeQuant` applies
quantise-dequantise in the forward pass and passes gradients straight through (STE).
"""

from __future__ import annotations

import torch
from torch import nn

from compress.scheme import BITS, MAX_BITS, MIN_BITS


def quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, C, H, W) float -> codes uint8 (N, C, H, W), lo (N, C) float32, scale (N, C) float32."""
    if bits not in BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    flat = x.detach().float().flatten(2)
    lo = flat.amin(2)
    hi = flat.amax(2)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((flat - lo[..., None]) / scale[..., None]).clamp_(0, levels)
    return codes.to(torch.uint8).view_as(x), lo, scale


def dequantize(codes: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return codes.float() * scale[..., None, None] + lo[..., None, None]


class FakeQuant(nn.Module):
    """Quantise-dequantise with a straight-through gradient."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = dequantize(*quantize(x, self.bits)).to(x.dtype)
        return x + (q - x).detach()
