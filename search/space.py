"""The scheme space of an app as flat numpy arrays (one entry per split scheme).

Split scheme i is Scheme(p[i], c[i], b[i]). `grid(p)` maps (c, b) at point p to flat indices, so the
monotone bounds can work on a C_p x 8 grid per point with cumulative max/min.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compress.prune import check_in_space
from compress.scheme import BITS, Scheme
from models.points import PartitionPoint


@dataclass
class Space:
    points: list[PartitionPoint]
    p: np.ndarray = field(init=False)
    c: np.ndarray = field(init=False)
    b: np.ndarray = field(init=False)
    offsets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        ps, cs, bs, self.offsets, start = [], [], [], [], 0
        for pt in self.points:
            self.offsets.append(start)
            cc, bb = np.meshgrid(np.arange(1, pt.channels + 1), np.asarray(BITS), indexing="ij")
            ps.append(np.full(cc.size, pt.index))
            cs.append(cc.ravel())
            bs.append(bb.ravel())
            start += cc.size
        self.p, self.c, self.b = (np.concatenate(a).astype(np.int64) for a in (ps, cs, bs))

    @property
    def size(self) -> int:
        return len(self.p)

    def index(self, scheme: Scheme) -> int:
        """Flat index of a split scheme (one-line error if it is not in this space)."""
        self.check(scheme)
        p, c, b = scheme
        return self.offsets[p] + (c - 1) * len(BITS) + (b - BITS.start)

    def scheme(self, i: int) -> Scheme:
        return Scheme(int(self.p[i]), int(self.c[i]), int(self.b[i]))

    def check(self, scheme: Scheme) -> None:
        check_in_space([pt.channels for pt in self.points], *scheme)

    def grid_slice(self, p: int) -> slice:
        """Flat indices of point p; reshaped to (C_p, len(BITS)) they form the (c, b) grid."""
        start = self.offsets[p]
        return slice(start, start + self.points[p].channels * 8)
