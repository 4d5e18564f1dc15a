"""Bit-packing codec for b-bit codes, b = 1..8.

`pack(codes, bits)` turns N codes (uint8, each < 2^b) into exactly ceil(N * b / 8) bytes,
big-endian bit order (the first code occupies the high bits of the first byte): every group of 8
codes is b bytes, the 8b-bit big-endian number with code 0 highest. `unpack(payload, bits, n)`
inverts it and checks the payload length first. runtime/protocol.py sends this format.

Two implementations of the same format: the C kernels of compress/_bitpack.c (AVX2 where the
compiler targets it, else SWAR on 64-bit words), built on first import by compress.native, and the
numpy reference `pack_numpy` / `unpack_numpy` (no loop over elements: b = 1 uses numpy's packbits;
b = 2 and 4 shift 8/b codes into each byte; b = 3, 5, 6, 7 build one 64-bit word per group).
`pack` / `unpack` use the C kernels when they loaded, else numpy (after one warning, see
compress.native); `BACKEND` says which: "native-avx2", "native-scalar" or "numpy".
"""

from __future__ import annotations

import numpy as np

from compress import native
from compress.scheme import BITS, MAX_BITS, MIN_BITS

_native = native.load()
BACKEND = f"native-{_native.ISA}" if _native is not None else "numpy"


def packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or bits not in BITS:
        raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


def _check_unpack(payload: bytes | bytearray | memoryview, bits: int, n: int) -> None:
    _check_bits(bits)
    if n < 0:
        raise ValueError("negative element count")
    expected = packed_size(n, bits)
    if len(payload) != expected:
        raise ValueError(f"payload has {len(payload)} bytes, {n} codes of {bits} bits need {expected}")


def pack(codes: np.ndarray, bits: int) -> bytes:
    """ceil(N * bits / 8) bytes for the N codes of `codes` (any shape, uint8, each < 2^bits)."""
    if _native is None:
        return pack_numpy(codes, bits)
    out = _native.pack(codes, bits)  # NotImplemented unless codes is a contiguous uint8 buffer, bits an int 1..8
    if out is NotImplemented:
        _check_bits(bits)
        out = _native.pack(np.ascontiguousarray(codes, dtype=np.uint8), int(bits))
    return out


def unpack(payload: bytes | bytearray | memoryview, bits: int, n: int) -> np.ndarray:
    """The n codes packed in `payload` at `bits` bits, as a new writable uint8 array."""
    if _native is None:
        return unpack_numpy(payload, bits, n)
    out = _native.unpack(payload, bits, n)  # NotImplemented unless bits and n are ints in range
    if out is NotImplemented:
        _check_unpack(payload, bits, n)  # raises, or passes np.integer arguments on
        out = _native.unpack(payload, int(bits), int(n))
    return out


def pack_numpy(codes: np.ndarray, bits: int) -> bytes:
    """Reference implementation of `pack` (and fallback), in numpy."""
    _check_bits(bits)
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    n = flat.size
    if bits == 8:
        return flat.tobytes()
    if n and int(flat.max()) >> bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    if bits == 1:
        return np.packbits(flat).tobytes()
    if 8 % bits == 0:  # 2 or 4 bits: k codes per byte, shifted in uint8 (4x faster than 64-bit words)
        k = 8 // bits
        padded = np.zeros(-(-n // k) * k, dtype=np.uint8)
        padded[:n] = flat
        group = padded.reshape(-1, k)
        out = group[:, 0] << np.uint8(bits * (k - 1))
        for i in range(1, k):
            out |= group[:, i] << np.uint8(bits * (k - 1 - i))
        return out.tobytes()
    groups = -(-n // 8)
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:n] = flat
    padded = padded.reshape(groups, 8)
    word = np.zeros(groups, dtype=np.uint64)
    for i in range(8):  # 8 vector ops, one per position in the group
        word |= padded[:, i] << np.uint64(bits * (7 - i))
    # word holds 8*bits significant bits at its bottom; its last `bits` big-endian bytes are them
    raw = word.astype(">u8").view(np.uint8).reshape(groups, 8)[:, 8 - bits:]
    return raw.reshape(-1)[: packed_size(n, bits)].tobytes()


def unpack_numpy(payload: bytes | bytearray | memoryview, bits: int, n: int) -> np.ndarray:
    """Reference implementation of `unpack` (and fallback), in numpy."""
    _check_unpack(payload, bits, n)
    data = np.frombuffer(payload, dtype=np.uint8)
    if bits == 8:
        return data.copy()
    if bits == 1:
        return np.unpackbits(data)[:n]
    if 8 % bits == 0:
        k, mask = 8 // bits, np.uint8((1 << bits) - 1)
        out = np.empty((data.size, k), dtype=np.uint8)
        for i in range(k):
            out[:, i] = (data >> np.uint8(bits * (k - 1 - i))) & mask
        return out.reshape(-1)[:n]
    groups = -(-n // 8)
    raw = np.zeros((groups, 8), dtype=np.uint8)
    full = np.zeros(groups * bits, dtype=np.uint8)
    full[: data.size] = data
    raw[:, 8 - bits:] = full.reshape(groups, bits)
    word = raw.view(">u8").reshape(groups).astype(np.uint64)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint8)
    for i in range(8):
        out[:, i] = (word >> np.uint64(bits * (7 - i))) & mask
    return out.reshape(-1)[:n]
