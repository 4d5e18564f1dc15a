"""Bandwidth monitoring and shaping on the edge (which scheme to run: `runtime.advisor`).

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
  request of a few images, see `runtime.client.EdgeClient.probe`).
- `TokenBucket`: an application-level rate limit for loopback runs without root (no tc).

Bandwidths are in Mbps with the latency model's convention 1 Mbps = 2^20 / 8 bytes/s.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from collections.abc import Callable

from apps.units import BYTES_PER_MBPS, bytes_per_second, mbps_of


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
