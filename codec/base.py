"""The `Codec` interface: how the activation at the cut becomes the body of a REQUEST frame and back.

A codec turns the quantised symbols of the cut (`compress.quant`: per image and channel min-max at b
bits, codes 0..2^b-1) into bytes and back. It does not change what the tail receives: every codec
here is lossless over the symbols, so the accuracy of a scheme (p, c, b) is the same under each, and
one accuracy row serves them all.

Body layout, shared by every codec (little-endian):

    lo    float32[N*C]   per image and channel (`compress.quant`)
    scale float32[N*C]
    payload              the N*C*H*W codes, as the codec writes them (`encode_codes`)

A codec is a subclass with three class attributes and three methods:

    name      the codec's name on the command line and in the database (`--codec NAME`)
    wire_id   0..255, the REQUEST frame's flags byte (`runtime.protocol`); bitpack is 0
    exact     True when the payload's size depends on the shape and b only (its size is a formula);
              False when it depends on the values (its size is profiled: `codec.sizes`)
    encode_codes(codes, bits) -> bytes            codes: uint8, any shape, each < 2^bits
    decode_codes(payload, bits, n) -> uint8[n]    ValueError on anything malformed, before allocating
    payload_bound(n, bits)                        the payload's exact size (exact codec) or an upper
                                                  bound; ints or numpy arrays. Never above n (one
                                                  byte per code, `raw_body_len`): the wire bounds
                                                  every body by that before reading it.

and inherits the rest: the knob grid `knobs` (the bits b = 1..8, `compress.scheme.BITS`), `encode`
(a float activation or its (codes, lo, scale) -> body), `decode` (body -> the float activation the
tail takes), `decode_parts`, `body_bound`, `check_body_len` and `size`. Registering it
(`codec.registry.register`) makes it known to the wire, the runtime, the benchmarks and the searches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from compress.codec import packed_size
from compress.scheme import BITS

if TYPE_CHECKING:  # torch loads with the first tensor call: the wire format needs none
    import torch

    from codec.sizes import SizeTable
    from models.points import PartitionPoint

Shape = tuple[int, int, int, int]
Quantised = tuple  # (codes (N, C, H, W) uint8, lo (N, C) float32, scale (N, C) float32), numpy or torch
PARAM_BYTES_PER_CHANNEL = 8  # float32 lo + float32 scale, per image and channel (`compress.quant`)


def param_bytes(channels):
    """Bytes of the quantisation parameters of `channels` channels (N*C for a batch); ints or arrays."""
    return PARAM_BYTES_PER_CHANNEL * channels


def raw_body_len(shape: Shape) -> int:
    """The body of `shape` with one byte per code: the most any codec may send (`runtime.protocol`
    bounds the body of an unknown codec by it)."""
    n, c, h, w = shape
    return param_bytes(n * c) + n * c * h * w


@dataclass(frozen=True)
class Size:
    """Bytes of a body (parameters + payload) of one image: the mean and the 95th percentile over the
    profiled images (equal for an exact codec). Floats, or numpy arrays over a grid of schemes."""

    mean: object
    p95: object


class Codec(ABC):
    """How the quantised symbols of the cut are written in a REQUEST body (see the module doc)."""

    name: ClassVar[str]
    wire_id: ClassVar[int]
    exact: ClassVar[bool]
    knobs: ClassVar[range] = BITS

    # -- what a codec writes -------------------------------------------------------------
    @abstractmethod
    def encode_codes(self, codes: np.ndarray, bits: int) -> bytes:
        """The payload for the codes (uint8, any shape, C order, each < 2^bits)."""

    @abstractmethod
    def decode_codes(self, payload: bytes | memoryview, bits: int, n: int) -> np.ndarray:
        """The n codes of `payload` as a new uint8 array; ValueError when malformed."""

    @abstractmethod
    def payload_bound(self, n, bits):
        """The payload's size for n codes at `bits` (exact codec) or its upper bound, <= n."""

    # -- what it inherits ----------------------------------------------------------------
    def body_bound(self, shape: Shape, bits: int) -> int:
        """The body's size for `shape` at `bits` (exact codec), or its upper bound."""
        n, c, h, w = shape
        return param_bytes(n * c) + self.payload_bound(n * c * h * w, bits)

    def check_body_len(self, length: int, shape: Shape, bits: int) -> None:
        """ValueError unless a body of `length` bytes can be `shape` at `bits` under this codec."""
        bound = self.body_bound(shape, bits)
        n, c = shape[:2]
        if self.exact and length != bound:
            raise ValueError(f"{self.name} body has {length} bytes, shape {shape} at {bits} bits needs {bound}")
        if not self.exact and not param_bytes(n * c) < length <= bound:
            raise ValueError(f"{self.name} body has {length} bytes, shape {shape} at {bits} bits needs "
                             f"{param_bytes(n * c) + 1}..{bound}")

    def encode(self, x: torch.Tensor | Quantised, bits: int) -> bytes:
        """The body for a float activation (N, C, H, W), quantised here at `bits`, or for its
        (codes, lo, scale) already quantised."""
        if isinstance(x, tuple):
            codes, lo, scale = x
        else:
            from compress.quant import quantize
            codes, lo, scale = quantize(x, bits)
        codes, lo, scale = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t) for t in (codes, lo, scale))
        if codes.ndim != 4 or lo.shape != codes.shape[:2] or scale.shape != codes.shape[:2]:
            raise ValueError(f"codes {codes.shape} need lo/scale of shape {codes.shape[:2]}, got {lo.shape}/"
                             f"{scale.shape}")
        if bits not in self.knobs:
            raise ValueError(f"bits must be in {self.knobs.start}..{self.knobs.stop - 1}, got {bits!r}")
        return lo.astype("<f4").tobytes() + scale.astype("<f4").tobytes() + self.encode_codes(codes, bits)

    def decode_parts(self, body: bytes | memoryview, shape: Shape, bits: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """body -> codes (N, C, H, W) uint8, lo (N, C) float32, scale (N, C) float32; ValueError when the
        length does not fit the shape, a parameter is not finite with scale > 0, or the payload is malformed."""
        if bits not in self.knobs:
            raise ValueError(f"bits must be in {self.knobs.start}..{self.knobs.stop - 1}, got {bits!r}")
        self.check_body_len(len(body), shape, bits)
        n, c, h, w = shape
        params = np.frombuffer(body, dtype="<f4", count=2 * n * c).astype(np.float32).reshape(2, n, c)  # lo, scale
        lo, scale = params[0], params[1]
        if not (np.isfinite(lo).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("quantisation parameters must be finite with scale > 0")
        codes = self.decode_codes(memoryview(body)[param_bytes(n * c):], bits, n * c * h * w)
        return codes.reshape(shape), lo, scale

    def decode(self, body: bytes | memoryview, shape: Shape, bits: int) -> torch.Tensor:
        """The cloud's decode + dequantise: the float activation (N, C, H, W) the tail takes."""
        import torch

        from compress.quant import dequantize
        codes, lo, scale = self.decode_parts(body, shape, bits)
        return dequantize(torch.from_numpy(codes), torch.from_numpy(lo), torch.from_numpy(scale))

    def size(self, point: PartitionPoint, c, bits, measured: SizeTable | None = None) -> Size:
        """Bytes of one image's body at point `point` keeping c channels at `bits` (c, bits: ints or
        arrays of one point's grid). Exact codec: the formula. Otherwise `measured` (its profile on the
        app's test images, `codec.sizes`) gives the mean and 95th percentile."""
        if self.exact:
            exact = param_bytes(c) + self.payload_bound(point.elements_per_channel * c, bits)
            return Size(exact, exact)
        if measured is None or measured.codec != self.name:
            from cli.errors import CoInferError
            raise CoInferError(f"the size of a {self.name} body depends on the activations: profile it "
                               f"(python -m database.codecprof --codec {self.name})")
        return measured.size(point, c, bits, bitpacked=param_bytes(c) + packed_size(point.elements_per_channel * c,
                                                                                     bits))

    def __repr__(self) -> str:
        return f"<codec {self.name} (wire id {self.wire_id})>"
