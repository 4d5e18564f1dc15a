"""An activation's bytes at the cut: quantise + encode on the edge, decode + dequantise in the cloud.

The body's layout and its coding are the codec's (`codec`: lo and scale float32 per image and
channel, then the codes as the codec writes them; `bitpack` by default, exactly ceil(N*C*H*W*b/8)
bytes of codes). `to_bytes(a, b, codec)` is the edge's whole quantise + encode stage and
`from_bytes(body, shape, b, codec)` the cloud's decode + dequantise: the runtime sends them in its
REQUEST frames (`runtime.protocol`), its cloud (`runtime.batching`) and the in-process VnV
(`runtime.vnv`) read them, and the latency profiler times exactly these calls.

Sizes: `payload_bytes` (an activation of c channels of H*W values at b bits, bit-packed:
ceil(H W c b / 8) + 8 c bytes) is bitpack's exact size, `codec.Codec.size` any codec's (exact, or
profiled for a data-dependent one); `body_len` is the body's size (exact codec) or upper bound.
`wire_bytes` / `frame_on_wire` add the app's `link` overhead (the frame header once, the transport's
headers per segment) for the latency model and the in-process VnV alike. They take Python ints
(exact) or numpy arrays (the whole scheme space at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from codec import BITPACK, Codec
from codec.base import PARAM_BYTES_PER_CHANNEL, param_bytes
from compress.codec import packed_size

if TYPE_CHECKING:  # torch loads with the first tensor call: the wire format (runtime.protocol) needs none
    import torch

    from apps import Link

Shape = tuple[int, int, int, int]
HEADER_BYTES_PER_CHANNEL = PARAM_BYTES_PER_CHANNEL  # float32 lo + float32 scale, per image and channel


def payload_bytes(elements_per_channel, channels, bits):
    """Bytes of an activation of `channels` channels of `elements_per_channel` (H*W) values each at
    `bits`, bit-packed: the codes packed, ceil(H W c b / 8), then a float32 lo and scale per channel,
    8 c. For N images, `channels` is N*C (the codes of the batch are packed as one run). Ints or numpy
    arrays."""
    return packed_size(elements_per_channel * channels, bits) + param_bytes(channels)


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
           bits: int, codec: Codec = BITPACK) -> bytes:
    """codes (N, C, H, W) uint8 < 2^bits, lo / scale (N, C) -> the body."""
    return codec.encode((codes, lo, scale), bits)


def body_len(shape: Shape, bits: int, codec: Codec = BITPACK) -> int:
    """The body's bytes for an activation of `shape` (N, C, H, W) at `bits` (an upper bound for a
    data-dependent codec)."""
    return codec.body_bound(shape, bits)


def decode(body: bytes | memoryview, shape: Shape, bits: int,
           codec: Codec = BITPACK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bytes -> codes (N, C, H, W) uint8, lo (N, C) float32, scale (N, C) float32; ValueError when the
    length does not match the shape or a parameter is not finite with scale > 0."""
    return codec.decode_parts(body, shape, bits)


def to_bytes(a: torch.Tensor, bits: int, codec: Codec = BITPACK) -> bytes:
    """The edge's quantise + encode of an activation (N, C, H, W)."""
    return codec.encode(a, bits)


def from_bytes(body: bytes | memoryview, shape: Shape, bits: int, codec: Codec = BITPACK) -> torch.Tensor:
    """The cloud's decode + dequantise: the float activation the tail takes (ValueError when malformed)."""
    return codec.decode(body, shape, bits)
