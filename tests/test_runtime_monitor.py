"""Bandwidth estimator and token bucket (simulated)."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.monitor import BandwidthEstimator, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


BYTES_PER_MBPS = 131_072  # the project's 1 Mbps = 2**20 bit/s, written out (not apps.units' constant)


def transfer(nbytes: int, mbps: float, floor: float = 0.0) -> float:
    return floor + nbytes / (mbps * BYTES_PER_MBPS)


def test_estimator_ewma_floor_and_probe() -> None:
    clock = Clock()
    est = BandwidthEstimator(alpha=0.5, min_bytes=1000, probe_after_s=2.0, window=1, clock=clock)
    assert est.mbps is None and est.needs_probe()
    est.observe(48, 0.002)  # a HELLO round trip: the floor, no rate sample
    assert est.mbps is None and est.floor_s == pytest.approx(0.002)
    est.observe(100_000, transfer(100_000, 4.0, 0.002))
    assert est.mbps == pytest.approx(4.0, rel=1e-6) and not est.needs_probe()
    est.observe(100_000, transfer(100_000, 2.0, 0.002))
    assert est.mbps == pytest.approx(3.0, rel=1e-6)  # EWMA, alpha 0.5
    est.observe(200, 1.0)  # small: ignored for the rate
    assert est.mbps == pytest.approx(3.0, rel=1e-6)
    clock.t = 5.0
    assert est.needs_probe()


def test_estimator_median_ignores_one_outlier() -> None:
    est = BandwidthEstimator(alpha=1.0, window=3)
    for _ in range(3):
        est.observe(50_000, transfer(50_000, 1.0))
    est.observe(50_000, 0.2)  # a stall: one slow sample
    assert est.mbps == pytest.approx(1.0, rel=1e-6)
    est.observe(50_000, transfer(50_000, 0.25))
    est.observe(50_000, transfer(50_000, 0.25))  # a real step: followed after two samples
    assert est.mbps == pytest.approx(0.25, rel=1e-6)


def test_token_bucket_paces_bytes() -> None:
    assert TokenBucket(1.0).rate == BYTES_PER_MBPS and TokenBucket(2.5).rate == 327_680
    # 2**17 bytes owed at once on an empty bucket at 1 Mbps: 1.000 s (10**6 bit/s would make it 1.049 s)
    assert TokenBucket(1.0, burst=0).delay(131_072) == pytest.approx(1.0, abs=0.01)
    bucket = TokenBucket(1.0, burst=0)

    async def send() -> float:
        t0 = time.monotonic()
        for _ in range(4):
            await bucket.send(16_384)
        return time.monotonic() - t0

    assert asyncio.run(send()) == pytest.approx(0.5, rel=0.15)  # 4 x 16 KiB at 1 Mbps = 2**20 bit/s: 0.5 s
