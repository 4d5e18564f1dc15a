"""bitpack (wire id 0): the N codes packed at b bits, exactly ceil(N b / 8) bytes.

The format and its kernels are `compress.codec` (big-endian bit order; C kernels, numpy fallback).
Its size is a formula, so the latency model needs no profile, and the wire checks the body's length
exactly. Every frame sent before codecs existed is a bitpack frame (flags byte 0).
"""

from __future__ import annotations

import numpy as np

from codec.base import Codec
from compress.codec import pack, packed_size, unpack


class BitPack(Codec):
    name = "bitpack"
    wire_id = 0
    exact = True

    def encode_codes(self, codes: np.ndarray, bits: int) -> bytes:
        return pack(codes, bits)

    def decode_codes(self, payload: bytes | memoryview, bits: int, n: int) -> np.ndarray:
        return unpack(payload, bits, n)

    def payload_bound(self, n, bits):
        return packed_size(n, bits)
