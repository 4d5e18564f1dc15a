"""An activation's bytes: quantise + pack on the edge, unpack + dequantise in the cloud.

Layout (little-endian): lo float32[N*C], scale float32[N*C] (per sample and channel,
`compress.quant`), then the N*C*H*W codes packed at b bits by `compress.codec` (exactly
ceil(N*C*H*W*b/8) bytes). `to_bytes(a, b)` is the edge's whole quantise + pack stage and
`from_bytes(body, shape, b)` the cloud's unpack + dequantise: the runtime sends them in its
REQUEST frames (`runtime.protocol`) and the latency profiler times exactly these calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from compress.codec import pack, packed_size, unpack

if TYPE_CHECKING:  # torch loads with the first tensor call: the wire format (runtime.protocol) needs none
    import torch

Shape = tuple[int, int, int, int]


def encode(codes: np.ndarray | torch.Tensor, lo: np.ndarray | torch.Tensor, scale: np.ndarray | torch.Tensor,
           bits: int) -> bytes:
    """codes (N, C, H, W) uint8 < 2^bits, lo / scale (N, C) -> bytes."""
    codes, lo, scale = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t) for t in (codes, lo, scale))
    if codes.ndim != 4 or lo.shape != codes.shape[:2] or scale.shape != codes.shape[:2]:
        raise ValueError(f"codes {codes.shape} need lo/scale of shape {codes.shape[:2]}, got {lo.shape}/{scale.shape}")
    return lo.astype("<f4").tobytes() + scale.astype("<f4").tobytes() + pack(codes, bits)


def body_len(shape: Shape, bits: int) -> int:
    n, c, h, w = shape
    return 8 * n * c + packed_size(n * c * h * w, bits)


def decode(body: bytes | memoryview, shape: Shape, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bytes -> codes (N, C, H, W) uint8, lo (N, C) float32, scale (N, C) float32; ValueError when the
    length does not match the shape or a parameter is not finite with scale > 0."""
    n, c, h, w = shape
    if len(body) != body_len(shape, bits):
        raise ValueError(f"activation body has {len(body)} bytes, shape {shape} at {bits} bits needs "
                         f"{body_len(shape, bits)}")
    params = np.frombuffer(body, dtype="<f4", count=2 * n * c).astype(np.float32).reshape(2, n, c)
    lo, scale = params[0], params[1]
    if not (np.isfinite(lo).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("quantisation parameters must be finite with scale > 0")
    codes = unpack(memoryview(body)[8 * n * c:], bits, n * c * h * w)
    return codes.reshape(shape), lo, scale


def to_bytes(a: torch.Tensor, bits: int) -> bytes:
    """The edge's quantise + pack of an activation (N, C, H, W)."""
    from compress.quant import quantize
    return encode(*quantize(a, bits), bits)


def from_bytes(body: bytes | memoryview, shape: Shape, bits: int) -> torch.Tensor:
    """The cloud's unpack + dequantise: the float activation the tail takes."""
    import torch

    from compress.quant import dequantize
    codes, lo, scale = decode(body, shape, bits)
    return dequantize(torch.from_numpy(codes), torch.from_numpy(lo), torch.from_numpy(scale))
