"""Synthetic problems for tests and benchmarks: a latency model from formulas and monotone
accuracy surfaces with optional noise, on any list of partition points."""

from __future__ import annotations

import numpy as np

from compress.scheme import BITS, MAX_BITS, Scheme
from database.store import LatencyRow
from models.points import PartitionPoint
from search.latency import LatencyModel


def synthetic_points(channels: list[int], sizes: list[int] | None = None) -> list[PartitionPoint]:
    sizes = sizes or [max(1, 32 >> (i // 3)) for i in range(len(channels))]
    return [PartitionPoint(i, f"conv{i}", c, s, s) for i, (c, s) in enumerate(zip(channels, sizes))]


def synthetic_latency(points: list[PartitionPoint], edge_per_point: float = 2e-3, cloud_per_point: float = 2e-4,
                      raw_input_bytes: int = 3072, rtt_s: float = 0.0) -> LatencyModel:
    """Edge time grows with depth (and a little with kept channels); the cloud is 10x faster."""
    n = len(points)
    edge, cloud = [], []
    for pt in points:
        for c in sorted({1, pt.channels}):
            frac = 0.8 + 0.2 * c / pt.channels
            edge.append(LatencyRow("syn", "e", pt.index, c, "edge", edge_per_point * (pt.index + frac)))
            cloud.append(LatencyRow("syn", "c", pt.index, c, "cloud", cloud_per_point * (n - pt.index - 1 + frac)))
    edge.append(LatencyRow("syn", "e", n, 0, "edge", edge_per_point * (n + 1)))
    cloud.append(LatencyRow("syn", "c", -1, 0, "cloud", cloud_per_point * (n + 1)))
    return LatencyModel(points, edge, cloud, raw_input_bytes, rtt_s, devices=("e", "c"))


def synthetic_table(points: list[PartitionPoint], base: float = 0.9, noise: float = 0.0, seed: int = 0,
                    shape: str = "saturating") -> dict[Scheme, float]:
    """Accuracy monotone in c and b at each point (before noise); deeper points tolerate
    more compression. `shape` picks the surface family."""
    rng = np.random.default_rng(seed)
    table = {}
    n = len(points)
    for pt in points:
        depth = (pt.index + 1) / n
        sens_c = rng.uniform(0.5, 3.0) * (1.2 - depth)
        sens_b = rng.uniform(0.5, 2.5)
        for c in range(1, pt.channels + 1):
            for b in BITS:
                fc, fb = c / pt.channels, b / MAX_BITS
                if shape == "saturating":
                    drop = 0.5 * np.exp(-6 * fc / sens_c) + 0.4 * np.exp(-7 * fb / sens_b)
                elif shape == "linear":
                    drop = 0.15 * sens_c * (1 - fc) + 0.1 * sens_b * (1 - fb)
                else:  # "cliff": fine above a threshold, collapses below it
                    drop = 0.6 * float(fc * fb < 0.05 * sens_c * sens_b) + 0.01 * (1 - fc) + 0.01 * (1 - fb)
                acc = base - drop + (rng.normal(0, noise) if noise else 0.0)
                table[Scheme(pt.index, c, b)] = float(np.clip(acc, 0.0, 1.0))
    return table


SUITE_SHAPES = ("saturating", "linear", "cliff")
SUITE_NOISES = (0.0, 0.002)


def synthetic_suites() -> list[tuple[str, LatencyModel, dict[Scheme, float], float]]:
    """The benchmarks' synthetic suites (bench.search, bench.certificate): 13 points of 8..64 channels, a
    table per surface shape and noise (seed 7, base 0.9), as (name "shape/noiseN", model, table, base)."""
    points = synthetic_points([8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64])
    model = synthetic_latency(points)
    return [(f"{shape}/noise{noise:g}", model, synthetic_table(points, 0.9, noise, 7, shape), 0.9)
            for shape in SUITE_SHAPES for noise in SUITE_NOISES]
