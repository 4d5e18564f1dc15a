"""Scheme adaptation: the frontier adapter and queue mode on a synthetic latency model (simulated,
and over loopback)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import serving

from apps import load_app
from apps.units import BYTES_PER_MBPS
from compress.scheme import Scheme
from database.store import LatencyRow
from models.build import app_points
from runtime.advisor import Adapter, Frontier, log_grid, throughput_scheme
from runtime.monitor import BandwidthEstimator, TokenBucket
from search.latency import LatencyModel

APP = load_app("vgg16_digits")


def transfer(nbytes: int, mbps: float, floor: float = 0.0) -> float:
    return floor + nbytes / (mbps * BYTES_PER_MBPS)


def test_log_grid() -> None:
    grid = log_grid(0.125, 8.0, 2)
    assert len(grid) == 13 and grid[-1] == pytest.approx(8.0)
    assert grid[:4] == pytest.approx([0.125, 0.1767767, 0.25, 0.3535534])


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
# The synthetic model by hand (no link overhead, RTT 0; transfer = bytes / (Mbps * 2^20 / 8)):
#   scheme     edge ms  bytes (codes + 8 per channel)     cloud ms
#   0,8,8       1       32*32*8*8/8 + 8*8   = 8256         1
#   4,16,2      5       8*8*16*2/8  + 16*8  = 384          1
#   10,16,1    11       2*2*16*1/8  + 16*8  = 136          1
#   all-cloud   0       raw input             1024         1
#   all-edge   20       -                                  -
# Total ms at 0.5 / 1 / 2 Mbps (transfer 15.625 us a byte at 0.5 Mbps):
#   0,8,8 128.0 / 65.0 / 33.5;  4,16,2 11.86 / 8.93 / 7.47;  10,16,1 14.07 / 13.04 / 12.52;
#   all-cloud 16.63 / 8.81 / 4.91;  all-edge 20 / 20 / 20
# so the fastest is all-cloud at 1 and 2 Mbps (crossover with 4,16,2 at 0.977 Mbps), 4,16,2 at 0.5;
# the slowest stage at 1 Mbps: 0,8,8 63.0 (transfer), 4,16,2 5.0 (edge), 10,16,1 11.0 (edge),
# all-cloud 7.81 (transfer), all-edge 20 (edge): 4,16,2.
EXPECTED_TOTAL_MS = {0.5: [127.977, 11.859, 14.075, 16.625, 20.0], 1.0: [64.988, 8.930, 13.038, 8.812, 20.0],
                     2.0: [33.494, 7.465, 12.519, 4.906, 20.0]}


def test_synthetic_model_is_what_the_tests_assume() -> None:
    model = synthetic_model()
    for mbps, totals in EXPECTED_TOTAL_MS.items():
        assert [model.breakdown(s, mbps).total * 1e3 for s in CANDIDATES] == pytest.approx(totals, abs=1e-3)


def test_adapter_switches_within_three_requests_of_a_rate_step() -> None:
    model = synthetic_model()
    at_fast, at_slow = Scheme.ALL_CLOUD, Scheme(4, 16, 2)  # the fastest at 2 and 0.5 Mbps (table above)
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
    assert adapter.choose(1.0) == Scheme.ALL_CLOUD  # 8.81 ms; 4,16,2 8.93 ms
    for mbps in (0.97, 1.03, 0.96, 0.98, 1.02):  # 4,16,2 ahead below 0.977 Mbps, by less than 20 %
        assert adapter.choose(mbps) == Scheme.ALL_CLOUD
    assert adapter.switches == []
    assert adapter.choose(0.5, 7) == Scheme(4, 16, 2)  # 11.86 ms vs 16.63 ms: a gain of 29 %
    assert adapter.switches == [(7, Scheme(4, 16, 2), 0.5)]


def test_throughput_scheme_minimises_the_slowest_stage() -> None:
    model = synthetic_model()
    assert throughput_scheme(model, CANDIDATES, 1.0) == Scheme(4, 16, 2)  # slowest stage 5 ms (table above)
    assert throughput_scheme(model, [Scheme(0, 8, 8), Scheme(10, 16, 1), Scheme.ALL_EDGE], 1.0) == Scheme(10, 16, 1)
    assert throughput_scheme(model, [Scheme(0, 8, 8), Scheme.ALL_EDGE], 1.0) == Scheme.ALL_EDGE  # 20 ms < 63 ms


@pytest.mark.skipif(not APP.checkpoint.is_file(), reason="vgg16_digits checkpoint not trained")
def test_adaptation_over_loopback_with_a_rate_step() -> None:
    """A real server and client on loopback, the uplink shaped by the client's token bucket, whose
    rate steps from 2 to 0.5 Mbps: the estimate follows and the scheme switches. (How fast it
    switches is a timing target for bench.adaptivity, not for a test on a shared CI machine.)"""
    from compress.scheme import ALL_CLOUD
    from models.build import load_base_model
    from runtime.client import ClientConfig, EdgeClient

    model = synthetic_model()
    candidates = [Scheme.ALL_CLOUD, Scheme(4, 16, 2)]  # the model's crossover is at 0.977 Mbps (table above)
    base = load_base_model(APP)
    x = torch.rand(1, 1, 32, 32)

    async def run() -> list[str]:
        async with serving(APP, base=base) as server:
            shaper = TokenBucket(2.0, burst=0)
            client = EdgeClient(APP, ALL_CLOUD, ClientConfig(port=server.port, k=1), base=base, shaper=shaper,
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
        return used

    used = asyncio.run(run())
    assert used[7] == "all-cloud", used
    assert used[-3:] == ["4,16,2"] * 3, used
