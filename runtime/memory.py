"""Give freed heap memory back to the operating system (glibc's `malloc_trim`).

A burst of connections (TLS handshakes, frame buffers) or a fine-tune on request allocates many small
blocks from glibc's arenas (one per thread that allocated: the event loop's, each `asyncio.to_thread`
worker's). Python frees them, but glibc keeps the pages unless the top of a heap is free, so the server's
RSS stays at its peak after the burst. `trim()` asks glibc to release every free page of every arena
(`malloc_trim(0)`); it is a no-op returning False where the C library is not glibc. The cloud server calls
it after an attack has passed (`runtime.cloud`: many connections closed, the pending pool back to little)
and after each fine-tune on request (`runtime.tails`); `bench.flood` measures the RSS it gives back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        lib = ctypes.CDLL(name)
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        lib.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return None
    return lib


def trim() -> bool:
    """Release the free pages of every malloc arena to the OS; True when glibc did (it returns 1 when it
    released some), False when nothing was released or the C library has no malloc_trim."""
    lib = _libc()
    return bool(lib is not None and lib.malloc_trim(0))
