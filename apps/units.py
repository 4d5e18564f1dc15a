"""Units of the link, as the paper counts them: 1 Mbps = 2^20 bit/s.

Every conversion between a rate in Mbps and bytes per second goes through this module.
"""

from __future__ import annotations

import math

from cli.errors import CoInferError

BYTES_PER_MBPS = 2**20 / 8  # 131,072 bytes/s per Mbps


def bytes_per_second(mbps: float) -> float:
    """Mbps -> bytes/s; one-line error unless `mbps` is a positive finite number."""
    if not (mbps > 0 and math.isfinite(mbps)):
        raise CoInferError(f"bandwidth must be a positive number of Mbps, got {mbps}")
    return mbps * BYTES_PER_MBPS


def mbps_of(nbytes: float, seconds: float) -> float:
    """The rate in Mbps at which `nbytes` bytes cross in `seconds` seconds."""
    return nbytes / seconds / BYTES_PER_MBPS
