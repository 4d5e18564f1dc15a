"""The measured sizes of a data-dependent codec: bytes of one image's body per (p, c, b).

    table = SizeTable("zstd", rows)              # rows: SizeRow(point, channels, bits, mean, p95, bitpacked)
    table.size(point, c, bits, bitpacked=...)    # Size(mean, p95); c, bits: ints or one point's grid

Rows are profiled on the app's test images (`database.codecprof`) at a few kept-channel counts c
per point, every b, and stored with the latency profile (`database.store`). In between, the ratio to
bitpack's (exact) size is interpolated linearly in c (constant beyond the measured range), then
multiplied by bitpack's size at c and capped by it (a codec never sends more than bitpack:
`codec.base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cli.errors import CoInferError
from codec.base import Size

if TYPE_CHECKING:
    from models.points import PartitionPoint


@dataclass(frozen=True)
class SizeRow:
    point: int
    channels: int
    bits: int
    mean: float  # body bytes of one image, mean over the profiled images
    p95: float  # ... and their 95th percentile
    bitpacked: int  # bitpack's body bytes at (point, channels, bits): the ratio's base
    images: int = 0


class SizeTable:
    """One codec's measured sizes for one app (see the module doc)."""

    def __init__(self, codec: str, rows: list[SizeRow]) -> None:
        self.codec = codec
        self.rows = rows
        grouped: dict[tuple[int, int], list[SizeRow]] = {}
        for r in rows:
            grouped.setdefault((r.point, r.bits), []).append(r)
        self._ratio = {key: (np.array([r.channels for r in rs], dtype=np.float64),
                             np.array([r.mean / r.bitpacked for r in rs]), np.array([r.p95 / r.bitpacked for r in rs]))
                       for key, rs in ((k, sorted(v, key=lambda r: r.channels)) for k, v in grouped.items())}

    def __bool__(self) -> bool:
        return bool(self.rows)

    def size(self, point: PartitionPoint, c, bits, bitpacked) -> Size:
        """Size(mean, p95) at point `point`, c channels, `bits`; `bitpacked` is bitpack's size there."""
        c_arr, b_arr, base = np.broadcast_arrays(np.asarray(c, dtype=np.float64), np.asarray(bits),
                                                 np.asarray(bitpacked, dtype=np.float64))
        mean, p95 = np.empty(c_arr.shape), np.empty(c_arr.shape)
        for b in np.unique(b_arr):
            key = (point.index, int(b))
            if key not in self._ratio:
                raise CoInferError(f"{self.codec} sizes lack point {point.index} at {int(b)} bits; profile them "
                                   f"(python -m database.codecprof --codec {self.codec})")
            cs, rm, rp = self._ratio[key]
            sel = b_arr == b
            mean[sel] = np.minimum(np.interp(c_arr[sel], cs, rm), 1.0) * base[sel]
            p95[sel] = np.minimum(np.interp(c_arr[sel], cs, rp), 1.0) * base[sel]
        if mean.ndim == 0:
            return Size(float(mean), float(p95))
        return Size(mean, p95)
