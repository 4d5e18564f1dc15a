"""Bandwidth estimator, token bucket and scheme adaptation (simulated, and over loopback)."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from apps import load_app
from compress.scheme import Scheme
from database.store import LatencyRow
from models.build import app_points
from runtime.monitor import (
    BYTES_PER_MBPS,
    Adapter,
    BandwidthEstimator,
    Frontier,
    TokenBucket,
    log_grid,
    throughput_scheme,
)
from search.latency import LatencyModel

APP = load_app("vgg16_digits")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


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
    bucket = TokenBucket(1.0, burst=0)

    async def send() -> float:
        t0 = time.monotonic()
        for _ in range(4):
            await bucket.send(16_384)
        return time.monotonic() - t0

    assert asyncio.run(send()) == pytest.approx(4 * 16_384 / BYTES_PER_MBPS, rel=0.15)  # 0.5 s


def test_log_grid() -> None:
    grid = log_grid(0.125, 8.0, 2)
    assert grid[0] == 0.125 and grid[-1] == pytest.approx(8.0) and len(grid) == 13


def synthetic_model() -> LatencyModel:
    """vgg16_digits' points; edge time grows with p (1 ms a point), the cloud takes 1 ms."""
    points = app_points(APP)
    edge, cloud = [], []
    for pt in points:
        for c in (1, pt.channels):
            edge.append(LatencyRow(APP.name, "e", pt.index, c, "edge", 0.001 * (pt.index + 1)))
            cloud.append(LatencyRow(APP.name, "c", pt.index, c, "cloud", 0.001))
    edge.append(LatencyRow(APP.name, "e", len(points), APP.num_classes, "edge", 0.02))
    cloud.append(LatencyRow(APP.name, "c", -1, 1, "cloud", 0.001))
    return LatencyModel(points, edge, cloud, APP.raw_input_bytes)


CANDIDATES = [Scheme(0, 8, 8), Scheme(4, 16, 2), Scheme(10, 16, 1), Scheme.ALL_CLOUD, Scheme.ALL_EDGE]


def test_adapter_switches_within_three_requests_of_a_rate_step() -> None:
    model = synthetic_model()
    at_fast = min(CANDIDATES, key=lambda s: model.breakdown(s, 2.0).total)
    at_slow = min(CANDIDATES, key=lambda s: model.breakdown(s, 0.5).total)
    assert at_fast != at_slow, "the synthetic model must make the step matter"
    adapter = Adapter(model, Frontier(0.01, [0.5, 2.0], CANDIDATES))
    est = BandwidthEstimator()
    probe = 16 * 1080
    est.observe(probe, transfer(probe, 2.0))
    used = []
    for i in range(20):
        rate = 2.0 if i < 10 else 0.5
        scheme = adapter.choose(est.mbps, i)
        used.append(scheme)
        nbytes = model.breakdown(scheme, rate).bytes + 48
        est.observe(int(nbytes), transfer(nbytes, rate, floor=0.0005))
        if nbytes < est.min_bytes:  # what the edge does when its messages say nothing: probe
            est.observe(probe, transfer(probe, rate, floor=0.0005))
    assert used[9] == at_fast
    assert at_slow in used[10:13] and all(s == at_slow for s in used[13:])
    assert len(adapter.switches) == 1


def test_adapter_hysteresis_does_not_flap() -> None:
    model = synthetic_model()
    adapter = Adapter(model, Frontier(0.01, [1.0], CANDIDATES), hysteresis=0.2)
    first = adapter.choose(1.0)
    for mbps in (0.97, 1.03, 0.98, 1.02):
        assert adapter.choose(mbps) == first


def test_throughput_scheme_minimises_the_slowest_stage() -> None:
    model = synthetic_model()
    pick = throughput_scheme(model, CANDIDATES, 1.0)
    bottleneck = lambda s: max(model.breakdown(s, 1.0).edge, model.breakdown(s, 1.0).transfer,  # noqa: E731
                               model.breakdown(s, 1.0).cloud)
    assert all(bottleneck(pick) <= bottleneck(s) for s in CANDIDATES)


@pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
def test_adaptation_over_loopback_with_a_rate_step() -> None:
    """A real server and client on loopback, the uplink shaped by the client's token bucket, whose
    rate steps from 2 to 0.5 Mbps: the estimate follows and the scheme switches. (How fast it
    switches is a timing target for bench.adaptivity, not for a test on a shared CI machine.)"""
    from compress.scheme import ALL_CLOUD
    from models.build import load_base_model
    from runtime.cloud import CloudServer
    from runtime.edge import EdgeClient

    model = synthetic_model()
    candidates = [Scheme.ALL_CLOUD, Scheme(4, 16, 2)]  # the model's crossover is at 1 Mbps
    at_slow = min(candidates, key=lambda s: model.breakdown(s, 0.5).total)
    base = load_base_model(APP)
    x = torch.rand(1, 1, 32, 32)

    async def run() -> list[str]:
        server = CloudServer(APP, base=base)
        await server.start("127.0.0.1", 0)
        shaper = TokenBucket(2.0, burst=0)
        client = EdgeClient(APP, ALL_CLOUD, base, port=server.port, k=1, shaper=shaper,
                            monitor=BandwidthEstimator())
        adapter = Adapter(model, Frontier(0.01, [0.5, 2.0], candidates))
        used = []
        try:
            await client.probe()
            for i in range(24):
                if i == 8:
                    shaper.set_rate(0.5)
                if client.monitor.needs_probe():
                    await client.probe()
                client.use(adapter.choose(client.monitor.mbps, i))
                await client.infer(x)
                used.append(str(client.scheme))
        finally:
            await client.close()
            await server.close()
        return used

    used = asyncio.run(run())
    assert used[7] != str(at_slow), used
    assert used[-3:] == [str(at_slow)] * 3, used
