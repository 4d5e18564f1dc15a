"""zstd (wire id 1): the codes entropy-coded by Zstandard (the `zstandard` package), lossless.

Payload, for N codes at b bits, one of two forms told apart by its length:

- compressed: a Zstandard frame (level 1, content size in the frame header) of the codes bit-packed
  (`compress.codec`) when b <= 4, of the codes one byte each when b >= 5; always shorter than
  ceil(N b / 8) bytes;
- stored: exactly ceil(N b / 8) bytes, the codes bit-packed (bitpack's payload), when compressing
  would not shrink them.

So a zstd payload is never larger than bitpack's, and `payload_bound` is bitpack's size. Why these
choices (`python -m bench.codec` measures them on the apps' activations): of zstandard, lz4, brotli
and constriction (ANS with a per-frame histogram), zstd level 1 gave the best bytes for the time:
lz4 does not shrink these symbols (about 1.0-2.4x bitpack's bytes), brotli saves 1-4 % more bytes
at a third of the speed or less, and ANS's histogram (2^b counts) outweighs its gain in frames of a
few thousand codes. Below 5 bits zstd finds more in the packed bytes than in one byte per code (it
matches byte strings: packed codes make longer runs), from 5 bits on the reverse.

The decoder checks the frame's declared content size against what the shape implies before it
decompresses anything (a hostile frame cannot make it allocate more), refuses trailing bytes and,
for the one-byte form, codes of b bits or more. A compressor and decompressor per thread (the cloud
decodes in worker threads; zstandard's objects are not thread-safe).
"""

from __future__ import annotations

import threading

import numpy as np

from codec.base import Codec
from compress.codec import pack, packed_size, unpack

LEVEL = 1
PACKED_UP_TO_BITS = 4  # b <= this: compress the bit-packed codes; above: one byte per code
_local = threading.local()


def _zstd():
    import zstandard  # only when a zstd frame is made or read: bitpack-only edges need not install it
    if not hasattr(_local, "c"):
        _local.c = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
        _local.d = zstandard.ZstdDecompressor()
    return zstandard, _local.c, _local.d


class Zstd(Codec):
    name = "zstd"
    wire_id = 1
    exact = False

    def encode_codes(self, codes: np.ndarray, bits: int) -> bytes:
        packed = pack(codes, bits)
        _, compressor, _ = _zstd()
        if bits <= PACKED_UP_TO_BITS:
            frame = compressor.compress(packed)
        else:
            frame = compressor.compress(np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1))
        return frame if len(frame) < len(packed) else packed

    def decode_codes(self, payload: bytes | memoryview, bits: int, n: int) -> np.ndarray:
        stored = packed_size(n, bits)
        if len(payload) == stored:
            return unpack(payload, bits, n)
        if len(payload) > stored:
            raise ValueError(f"zstd payload of {len(payload)} bytes > {stored} (bit-packed size)")
        zstandard, _, decompressor = _zstd()
        expected = stored if bits <= PACKED_UP_TO_BITS else n
        try:
            declared = zstandard.frame_content_size(payload)
            if declared != expected:
                raise ValueError(f"zstd frame declares {declared} bytes, {n} codes at {bits} bits need {expected}")
            raw = decompressor.decompress(payload, max_output_size=expected, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise ValueError(f"bad zstd frame: {exc}") from None
        if len(raw) != expected:
            raise ValueError(f"zstd frame holds {len(raw)} bytes, {n} codes at {bits} bits need {expected}")
        if bits <= PACKED_UP_TO_BITS:
            return unpack(raw, bits, n)
        codes = np.frombuffer(raw, dtype=np.uint8).copy()
        if n and int(codes.max()) >> bits:
            raise ValueError(f"a code does not fit in {bits} bits")
        return codes

    def payload_bound(self, n, bits):
        return packed_size(n, bits)
