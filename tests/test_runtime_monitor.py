"""Bandwidth estimator and token bucket (simulated)."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.monitor import BandwidthEstimator, ProbeBudget, TokenBucket


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


def test_late_small_replies_make_the_estimate_stale() -> None:
    """Every request below min_bytes (a 248-byte cut): the link falls from 2.61 to 0.25 Mbps, no rate sample
    comes, but two replies in a row later than the estimate predicts ask for a probe at once."""
    clock = Clock()
    est = BandwidthEstimator(initial_mbps=2.61, min_bytes=1000, probe_after_s=60.0, clock=clock)
    est.last_sample_at = 0.0
    clock.t = 30.0  # the run has carried plenty: the budget allows a probe
    for _ in range(3):
        est.observe(248, transfer(248, 2.61, 0.001))
    assert est.stale() is None and not est.needs_probe()
    est.observe(248, transfer(248, 0.25, 0.001))
    assert est.stale() is None  # one late reply is noise
    est.observe(248, transfer(248, 0.25, 0.001))
    assert est.stale() == "late" and est.needs_probe()
    size = est.probe_size()
    assert 2000 <= size <= est.budget.max_bytes
    est.probed(size)
    assert est.stats()["by_reason"] == {"late": 1} and est.stale() is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 200_000), st.floats(1e-4, 5.0), st.floats(0.0, 3.0)), max_size=300),
       st.floats(0.1, 20.0))
def test_probes_stay_within_their_share_of_the_link(steps, mbps) -> None:
    """Whatever the replies, probes (beyond the first, which makes the estimate) never take more than
    max_share of the link's estimated capacity, and never come closer than min_interval_s."""
    clock = Clock()
    budget = ProbeBudget(max_share=0.05, min_interval_s=1.0)
    est = BandwidthEstimator(initial_mbps=mbps, probe_after_s=2.0, clock=clock, budget=budget)
    times = []
    for nbytes, seconds, dt in steps:
        clock.t += dt
        if est.needs_probe():
            est.probed(est.probe_size())
            times.append(clock.t)
            capacity = (clock.t - est.started_at) * est.mbps * BYTES_PER_MBPS
            assert est.probe_bytes <= budget.max_share * capacity + 1e-6
        est.observe(nbytes, seconds)
    assert all(b - a >= budget.min_interval_s for a, b in zip(times, times[1:]))
