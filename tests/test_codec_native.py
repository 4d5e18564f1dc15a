"""The C codec kernels (compress/_bitpack.c) against the numpy reference, bit for bit.

Both the build compress.codec uses (AVX2 here) and a portable SWAR build (-mno-avx2) are checked.
Skipped only when no C compiler is found.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from compress import codec, native

ROOT = Path(__file__).resolve().parents[1]
LARGE = [200704, 100352 + 5]
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _compiler() -> list[str]:
    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler found (compress.native.compiler() is None): the numpy codec is in use")
    return cc


@pytest.fixture(scope="module", params=["default", "portable"])
def ext(request, tmp_path_factory):
    """The extension as compress.codec builds it, and a build without AVX2 (the SWAR path)."""
    cc = _compiler()
    if request.param == "default":
        if codec._native is not None:
            return codec._native
        path = native.library_path(cc)  # codec fell back (COINFER_NATIVE=0?): build it here
        native.build(cc, path)
        return native.import_module(path)
    if not X86:
        pytest.skip("the default build is already the portable one off x86")
    path = tmp_path_factory.mktemp("bitpack") / f"_bitpack_portable{sysconfig.get_config_var('EXT_SUFFIX')}"
    native.build(cc, path, (*native.FLAGS, "-mno-avx2"))
    module = native.import_module(path)
    assert module.ISA == "scalar"
    return module


def _codes(rng: np.random.Generator, bits: int, n: int) -> np.ndarray:
    return rng.integers(0, 1 << bits, size=n, dtype=np.uint8)


def _check_same(ext, codes: np.ndarray, bits: int) -> None:
    ref = codec.pack_numpy(codes, bits)
    got = ext.pack(codes, bits)
    assert type(got) is bytes and got == ref
    out = ext.unpack(ref, bits, codes.size)
    assert out.dtype == np.uint8 and out.shape == (codes.size,) and out.flags.writeable
    assert np.array_equal(out, codes.reshape(-1))
    assert np.array_equal(out, codec.unpack_numpy(ref, bits, codes.size))


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_exact_every_small_size(ext, bits):
    rng = np.random.default_rng(bits)
    for n in range(81):
        _check_same(ext, _codes(rng, bits, n), bits)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", LARGE)
def test_bit_exact_large_and_misaligned(ext, bits, n):
    rng = np.random.default_rng(n + bits)
    buf = np.empty(n + 64, dtype=np.uint8)
    for offset in (0, 8, 16, 24, 3):  # the kernels align to 32 bytes with scalar groups when they can
        codes = buf[offset:offset + n]
        codes[:] = _codes(rng, bits, n)
        _check_same(ext, codes, bits)
    payload = codec.pack_numpy(codes, bits)
    for offset in (1, 5):  # payload at an odd address
        raw = bytearray(offset) + payload
        assert np.array_equal(ext.unpack(memoryview(raw)[offset:], bits, n), codes)


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("n", [1, 7, 8, 40, 100352 + 5])
def test_out_of_range_code_raises_anywhere(ext, bits, n):
    rng = np.random.default_rng(bits * n)
    buf = np.empty(n + 32, dtype=np.uint8)
    for offset in (0, 8):
        codes = buf[offset:offset + n]
        codes[:] = _codes(rng, bits, n)
        # first code (scalar head or vector body), middle (vector body), last 7 (scalar tail)
        for pos in sorted({0, n // 2, n - 1, max(0, n - 7)}):
            for bad in (1 << bits, 255):
                saved = codes[pos]
                codes[pos] = bad
                with pytest.raises(ValueError, match=f"a code does not fit in {bits} bits"):
                    ext.pack(codes, bits)
                codes[pos] = saved
        assert ext.pack(codes, bits) == codec.pack_numpy(codes, bits)


def test_round_trip_and_argument_checks_through_codec(ext):
    rng = np.random.default_rng(7)
    for bits in range(1, 9):
        codes = _codes(rng, bits, 2 * 3 * 5 * 7).reshape(2, 3, 5, 7)
        payload = codec.pack(codes, bits)
        assert payload == codec.pack_numpy(codes, bits)
        assert np.array_equal(codec.unpack(payload, bits, codes.size), codes.reshape(-1))
        # numpy integer arguments, non-contiguous and non-uint8 inputs take the converting path
        assert codec.pack(codes, np.int64(bits)) == payload
        assert codec.pack(codes.astype(np.int64), bits) == payload
        assert codec.pack(np.asfortranarray(codes), bits) == codec.pack_numpy(np.asfortranarray(codes), bits)
        assert np.array_equal(codec.unpack(payload, np.uint8(bits), np.int64(codes.size)), codes.reshape(-1))
        with pytest.raises(ValueError, match="payload has"):
            ext.unpack(payload + b"\0", bits, codes.size)
        with pytest.raises(ValueError, match="payload has"):
            codec.unpack(payload[:-1], bits, codes.size)
    assert codec.pack(np.array([True, False, True]), 1) == bytes([0b10100000])
    for bad_bits in (0, 9, 2.0, "3"):
        with pytest.raises(ValueError, match="bits must be"):
            codec.pack(np.zeros(4, np.uint8), bad_bits)
        with pytest.raises(ValueError, match="bits must be"):
            codec.unpack(b"", bad_bits, 0)
    with pytest.raises(ValueError, match="negative element count"):
        codec.unpack(b"", 3, -1)
    assert ext.pack(np.zeros(4, np.uint8), 9) is NotImplemented
    assert ext.unpack(b"", 3, -1) is NotImplemented


def test_codec_uses_native_backend_by_default():
    _compiler()
    if os.environ.get("COINFER_NATIVE", "1").strip() == "0":
        pytest.skip("COINFER_NATIVE=0 is set in this environment")
    assert codec.BACKEND in ("native-avx2", "native-scalar")


def test_numpy_fallback_with_coinfer_native_0():
    script = ("import warnings\n"
              "warnings.simplefilter('always')\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    from compress import codec\n"
              "import numpy as np\n"
              "assert codec._native is None\n"
              "assert codec.unpack(codec.pack(np.array([5, 2, 7], np.uint8), 3), 3, 3).tolist() == [5, 2, 7]\n"
              "print(codec.BACKEND, len(caught), caught[0].message)\n")
    env = {**os.environ, "COINFER_NATIVE": "0"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    backend, count, message = proc.stdout.strip().split(" ", 2)
    assert backend == "numpy" and count == "1" and "COINFER_NATIVE=0" in message
