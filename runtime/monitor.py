"""Bandwidth monitoring and scheme adaptation on the edge.

- `BandwidthEstimator`: the edge's own estimate of the uplink, from its own transfers: each
  request of `nbytes` whose network time (round trip minus the cloud's reported unpack and
  compute) was `seconds` is a sample nbytes / (seconds - floor), folded into an EWMA. Messages
  smaller than `min_bytes` give no rate sample (they leave in one packet, and a token bucket or a
  TCP send buffer passes them without their serialisation time); they measure the floor instead:
  the per-request time that does not depend on size (RTT, framing, wake-ups; EWMA of their
  times less nbytes / estimate), which is subtracted from the larger messages' times. Each rate
  sample is first the median of the last `window` (3) raw samples: a throttled edge (CPU quota)
  sometimes stalls a whole quota period inside a round trip, and a token bucket sometimes passes a
  message at once; a median of three ignores one such outlier and still follows a step in two.
  When no informative sample arrived for `probe_after_s` the edge sends a probe (an all-cloud
  request of a few images, see `EdgeClient.probe`).
- `TokenBucket`: an application-level rate limit for loopback runs without root (no tc).
- `Frontier`: the optimal scheme of a latency query on a log grid of bandwidths (one search per
  grid point, `search.runner.run_search`), and `Adapter`, which picks among the frontier's
  schemes by the latency model at the current estimate, with hysteresis.
- `throughput_scheme`: Neurosurgeon's queue mode: with a queue of tasks the head of task i+1
  overlaps the transfer of task i and the cloud work of task i-1, so the rate is set by the
  slowest stage; it picks the feasible scheme whose slowest stage is fastest.

Bandwidths are in Mbps with the latency model's convention 1 Mbps = 2^20 / 8 bytes/s.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from apps.units import BYTES_PER_MBPS, bytes_per_second, mbps_of
from compress.scheme import Scheme
from search.latency import LatencyModel


class BandwidthEstimator:
    """EWMA (`alpha` on the newest) of the running median of nbytes / (seconds - floor) (Mbps)."""

    def __init__(self, alpha: float = 0.8, initial_mbps: float | None = None, min_bytes: int = 1000,
                 probe_after_s: float = 2.0, window: int = 3, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < alpha <= 1 or window < 1:
            raise ValueError("alpha must be in (0, 1], window >= 1")
        self.alpha, self.min_bytes, self.probe_after_s, self.clock = alpha, min_bytes, probe_after_s, clock
        self._recent: deque[float] = deque(maxlen=window)
        self.mbps = initial_mbps
        self.floor_s = 0.0
        self.floor_samples = 0
        self.samples = 0
        self.last_sample_at = -math.inf

    def observe(self, nbytes: int, seconds: float) -> float | None:
        """Fold one transfer in; returns the new estimate (unchanged by a small message)."""
        if seconds <= 0:
            return self.mbps
        if nbytes < self.min_bytes:  # t = floor + nbytes / rate: what is left at the current estimate
            floor = max(0.0, seconds - (nbytes / (self.mbps * BYTES_PER_MBPS) if self.mbps else 0.0))
            self.floor_s = self.alpha * floor + (1 - self.alpha) * self.floor_s if self.floor_samples else floor
            self.floor_samples += 1
            return self.mbps
        self._recent.append(mbps_of(nbytes, max(seconds - self.floor_s, 0.5 * seconds)))
        sample = statistics.median(self._recent)
        self.mbps = sample if self.mbps is None else self.alpha * sample + (1 - self.alpha) * self.mbps
        self.samples += 1
        self.last_sample_at = self.clock()
        return self.mbps

    def needs_probe(self) -> bool:
        """True when the estimate is missing or stale (no informative sample for probe_after_s)."""
        return self.mbps is None or self.clock() - self.last_sample_at > self.probe_after_s


class TokenBucket:
    """Application-level shaping for loopback (no tc): `await bucket.send(nbytes)` waits until the
    bytes would have left a link of `mbps` (bucket of `burst` bytes, which starts empty)."""

    def __init__(self, mbps: float, burst: int = 1514) -> None:
        self.burst = burst
        self.set_rate(mbps)
        self._tokens = 0.0
        self._at = time.monotonic()

    def set_rate(self, mbps: float) -> None:
        self.rate = bytes_per_second(mbps)

    def delay(self, nbytes: int) -> float:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate) - nbytes
        self._at = now
        return max(0.0, -self._tokens / self.rate)

    async def send(self, nbytes: int) -> None:
        wait = self.delay(nbytes)
        if wait > 0:
            await asyncio.sleep(wait)


def log_grid(lo: float = 0.125, hi: float = 8.0, per_octave: int = 2) -> list[float]:
    """Bandwidths lo .. hi Mbps, `per_octave` points per doubling (0.125, 0.177, 0.25, ...)."""
    n = round(math.log2(hi / lo) * per_octave)
    return [lo * 2 ** (i / per_octave) for i in range(n + 1)]


@dataclass
class Frontier:
    """The optimal scheme per grid bandwidth for one accuracy-loss bound."""

    accuracy_loss: float
    grid: list[float]
    schemes: list[Scheme]
    accuracies: list[float | None] = field(default_factory=list)

    @property
    def candidates(self) -> list[Scheme]:
        return list(dict.fromkeys(self.schemes))

    def at(self, mbps: float) -> Scheme:
        """The grid's answer for the largest grid bandwidth <= mbps (the conservative cell)."""
        i = max([0] + [j for j, g in enumerate(self.grid) if g <= mbps * (1 + 1e-9)])
        return self.schemes[i]


def search_scheme(model: LatencyModel, evaluator, base_accuracy: float, mbps: float, accuracy_loss: float,
                  offline: bool = True):
    """One latency query at `mbps` (CoInfer's sampler); returns the SearchResult."""
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.runner import run_search
    problem = Problem(LatencyQuery(accuracy_loss, mbps), model, base_accuracy)
    return run_search(problem, evaluator, "coinfer", offline=offline)


def build_frontier(model: LatencyModel, evaluator, base_accuracy: float, accuracy_loss: float,
                   grid: list[float] | None = None, offline: bool = True) -> Frontier:
    grid = grid or log_grid()
    results = [search_scheme(model, evaluator, base_accuracy, g, accuracy_loss, offline) for g in grid]
    return Frontier(accuracy_loss, grid, [r.scheme for r in results], [r.accuracy for r in results])


class Adapter:
    """Which frontier scheme to run at the current estimate: the lowest predicted latency among the
    frontier's schemes; a switch needs a predicted gain of more than `hysteresis` (fraction)."""

    def __init__(self, model: LatencyModel, frontier: Frontier, hysteresis: float = 0.05) -> None:
        self.model, self.frontier, self.hysteresis = model, frontier, hysteresis
        self.current: Scheme | None = None
        self.switches: list[tuple[int, Scheme, float]] = []  # (request index, new scheme, estimate)

    def predicted(self, scheme: Scheme, mbps: float) -> float:
        return self.model.breakdown(scheme, mbps).total

    def choose(self, mbps: float, request_index: int = 0) -> Scheme:
        best = min(self.frontier.candidates, key=lambda s: self.predicted(s, mbps))
        if self.current is None:
            self.current = best
        elif best != self.current:
            now, new = self.predicted(self.current, mbps), self.predicted(best, mbps)
            if new < now * (1 - self.hysteresis):
                self.current = best
                self.switches.append((request_index, best, mbps))
        return self.current


def throughput_scheme(model: LatencyModel, feasible: list[Scheme], mbps: float) -> Scheme:
    """Queue mode: the scheme whose slowest pipeline stage (edge, transfer, cloud) is fastest."""
    def bottleneck(s: Scheme) -> float:
        bd = model.breakdown(s, mbps)
        return max(bd.edge, bd.transfer, bd.cloud)
    return min(feasible, key=bottleneck)
