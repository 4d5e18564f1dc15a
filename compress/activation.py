"""An activation's bytes: quantise + pack on the edge, unpack + dequantise in the cloud.

Layout (little-endian): lo float32[N*C], scale float32[N*C] (per sample and channel,
`compress.quant`), then the N*C*H*W codes packed at b bits by `compress.codec` (exactly
ceil(N*C*H*W*b/8) bytes). `to_bytes(a, b)` is the edge's whole quantise + pack stage and
`from_bytes(body, shape, b)` the cloud's unpack + dequantise: the runtime sends them in its
REQUEST frames (`runtime.protocol`), its cloud (`runtime.batching`) and the in-process VnV
(`runtime.vnv`) read them with `from_bytes`, and the latency profiler times exactly these calls.

The sizes are written once, here: `payload_bytes` (an activation of c channels of H*W values at b
bits: ceil(H W c b / 8) + 8 c bytes) is what `body_len` checks, what the latency model
(`search.latency`) sends over the link and what the runtime puts in a frame; `wire_bytes` /
`frame_on_wire` add the app's `link` overhead (the frame header once, the transport's headers per
segment) for the latency model and the in-process VnV alike. They take Python ints (exact) or
numpy arrays (the whole scheme space at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from compress.codec import pack, packed_size, unpack

if TYPE_CHECKING:  # torch loads with the first tensor call: the wire format (runtime.protocol) needs none
    from collections.abc import Callable

    import torch

    from apps import Link

Shape = tuple[int, int, int, int]
HEADER_BYTES_PER_CHANNEL = 8  # float32 lo + float32 scale, per image and channel (`compress.quant`)


def payload_bytes(elements_per_channel, channels, bits):
    """Bytes of an activation of `channels` channels of `elements_per_channel` (H*W) values each at
    `bits`: the codes packed, ceil(H W c b / 8), then a float32 lo and scale per channel, 8 c. For N
    images, `channels` is N*C (the codes of the batch are packed as one run). Ints or numpy arrays."""
    return packed_size(elements_per_channel * channels, bits) + HEADER_BYTES_PER_CHANNEL * channels


def wire_bytes(link: Link, payload):
    """Bytes one message of `payload` bytes puts on the link: the frame header, then the transport's."""
    return frame_on_wire(link, payload + link.message_bytes)


def frame_on_wire(link: Link, frame):
    """Bytes a frame of `frame` bytes (header included) puts on the link: plus the transport's headers
    once per segment of at most `link.mss` bytes (at least one segment)."""
    if not link.packet_bytes:
        return frame
    segments = -(-frame // link.mss)  # ceil, for ints and arrays alike
    return frame + link.packet_bytes * (segments + (segments < 1))


def encode(codes: np.ndarray | torch.Tensor, lo: np.ndarray | torch.Tensor, scale: np.ndarray | torch.Tensor,
           bits: int) -> bytes:
    """codes (N, C, H, W) uint8 < 2^bits, lo / scale (N, C) -> bytes."""
    codes, lo, scale = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t) for t in (codes, lo, scale))
    if codes.ndim != 4 or lo.shape != codes.shape[:2] or scale.shape != codes.shape[:2]:
        raise ValueError(f"codes {codes.shape} need lo/scale of shape {codes.shape[:2]}, got {lo.shape}/{scale.shape}")
    return lo.astype("<f4").tobytes() + scale.astype("<f4").tobytes() + pack(codes, bits)


def body_len(shape: Shape, bits: int) -> int:
    """The body's bytes for an activation of `shape` (N, C, H, W) at `bits`."""
    n, c, h, w = shape
    return payload_bytes(h * w, n * c, bits)


def decode(body: bytes | memoryview, shape: Shape, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bytes -> codes (N, C, H, W) uint8, lo (N, C) float32, scale (N, C) float32; ValueError when the
    length does not match the shape or a parameter is not finite with scale > 0."""
    n, c, h, w = shape
    if len(body) != body_len(shape, bits):
        raise ValueError(f"activation body has {len(body)} bytes, shape {shape} at {bits} bits needs "
                         f"{body_len(shape, bits)}")
    params = np.frombuffer(body, dtype="<f4", count=2 * n * c).astype(np.float32).reshape(2, n, c)  # lo, scale
    lo, scale = params[0], params[1]
    if not (np.isfinite(lo).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("quantisation parameters must be finite with scale > 0")
    codes = unpack(memoryview(body)[HEADER_BYTES_PER_CHANNEL * n * c:], bits, n * c * h * w)
    return codes.reshape(shape), lo, scale


def to_bytes(a: torch.Tensor, bits: int) -> bytes:
    """The edge's quantise + pack of an activation (N, C, H, W)."""
    from compress.quant import quantize
    return encode(*quantize(a, bits), bits)


def from_bytes(body: bytes | memoryview, shape: Shape, bits: int,
               decoder: Callable[[bytes | memoryview, Shape, int], tuple] = decode) -> torch.Tensor:
    """The cloud's unpack + dequantise: the float activation the tail takes. `decoder` reads the body
    (`decode`, or the runtime's `runtime.protocol.decode_activation`, which raises its ProtocolError)."""
    import torch

    from compress.quant import dequantize
    codes, lo, scale = decoder(body, shape, bits)
    return dequantize(torch.from_numpy(codes), torch.from_numpy(lo), torch.from_numpy(scale))
