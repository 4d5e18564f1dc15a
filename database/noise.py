"""How far a latency profile can be trusted: its own dispersion, and the machine's drift during it.

The profiler reports two numbers and warns when either crosses its threshold:

- tail ratio: per row, p90 / median of its samples; reported as the median over rows and the
  worst row. The latency model uses the medians, which survive slow samples only while they are
  a minority. Calls of the same code on the same input vary by a few per cent on a quiet core; a
  p90 at 1.5 x the median means that in the typical row one sample in ten or more was slowed by
  half, which is preemption by other processes (a shared machine), not the call itself.
  Threshold: median tail ratio > `MAX_TAIL_RATIO` (1.5).
- drift: a fixed workload (`reference_workload`: the same small matrix products every time) is
  timed before and after the profile; drift = |after / before - 1|. The runtime is checked
  against the profile within 10 % (`bench.runtime`), so a machine whose speed moved by more
  than that during the profile cannot give a profile that predicts to 10 %: whichever end the
  runtime meets, part of the profile was measured at the other speed.
  Threshold: drift > `MAX_DRIFT` (0.10).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

MAX_TAIL_RATIO = 1.5
MAX_DRIFT = 0.10


@dataclass(frozen=True)
class Noise:
    """The dispersion of one profile (see the module doc)."""

    median_tail_ratio: float  # median over rows of p90 / median
    worst_tail_ratio: float
    worst_row: str  # side:point:channels of the worst row
    drift: float | None = None  # |after / before - 1| of the reference workload; None: not measured

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.median_tail_ratio > MAX_TAIL_RATIO:
            out.append(f"the typical row's p90 is {self.median_tail_ratio:.2f} x its median (> {MAX_TAIL_RATIO:g}): "
                       "other processes preempted the profile")
        if self.drift is not None and self.drift > MAX_DRIFT:
            out.append(f"a fixed workload's time moved by {100 * self.drift:.0f} % between the start and the end "
                       f"(> {100 * MAX_DRIFT:.0f} %): the machine's speed drifted")
        return out

    def describe(self) -> str:
        drift = "" if self.drift is None else f"; fixed workload drift {100 * self.drift:.1f} %"
        return (f"dispersion: p90/median {self.median_tail_ratio:.2f} (median row), {self.worst_tail_ratio:.2f} "
                f"(worst, {self.worst_row}){drift}")

    def to_json(self) -> dict:
        return {"median_tail_ratio": self.median_tail_ratio, "worst_tail_ratio": self.worst_tail_ratio,
                "worst_row": self.worst_row, "drift": self.drift}


def noise_of(rows: Iterable, drift: float | None = None) -> Noise:
    """`Noise` of profile rows (`database.store.LatencyRow`s with a p90)."""
    ratios = {f"{r.side}:{r.point}:{r.channels}": r.p90_s / r.median_s for r in rows
              if r.p90_s is not None and r.median_s > 0}
    if not ratios:
        return Noise(1.0, 1.0, "-", drift)
    worst = max(ratios, key=ratios.__getitem__)
    return Noise(statistics.median(ratios.values()), ratios[worst], worst, drift)


def reference_workload(repeats: int = 15, size: int = 96, products: int = 20) -> float:
    """Median seconds of a fixed CPU workload: `products` products of two size x size float32
    matrices (torch, this process's thread count), `repeats` times."""
    import torch
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(products):
            a @ b
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def drift(before: float, after: float) -> float:
    return abs(after / before - 1) if before > 0 else 0.0
