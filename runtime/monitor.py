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
  The estimate goes stale three ways, and each makes the edge probe (`needs_probe`; an all-cloud
  request of a few images, `runtime.client.EdgeClient.probe`): no informative sample for
  `probe_after_s` (`age`), a reply later than the estimate predicts (`late`: a message's time over
  `late_factor` times floor + nbytes / estimate, twice in a row; a small message is how a link that
  fell shows itself when every request is below `min_bytes`), or no estimate at all (`none`).
  Probes are bounded (`ProbeBudget`): at most `max_share` of the link's estimated capacity over the run
  (5 %), at least `min_interval_s` apart (1 s), each of about `probe_s` of link time at the estimate
  (50 ms, at least `min_bytes`); `stats()` says how many were sent, why, and their share of the link.
- `TokenBucket`: an application-level rate limit for loopback runs without root (no tc).

Bandwidths are in Mbps with the latency model's convention 1 Mbps = 2^20 / 8 bytes/s.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from apps.units import BYTES_PER_MBPS, bytes_per_second, mbps_of


@dataclass(frozen=True)
class ProbeBudget:
    """How much of the link the edge's probes may take: `max_share` of its estimated capacity over the run,
    probes at least `min_interval_s` apart, each about `probe_s` of link time (at least `min_bytes`,
    at most `max_bytes`)."""

    max_share: float = 0.05
    min_interval_s: float = 1.0
    probe_s: float = 0.05
    max_bytes: int = 64 * 1024


class BandwidthEstimator:
    """EWMA (`alpha` on the newest) of the running median of nbytes / (seconds - floor) (Mbps)."""

    def __init__(self, alpha: float = 0.8, initial_mbps: float | None = None, min_bytes: int = 1000,
                 probe_after_s: float = 2.0, window: int = 3, clock: Callable[[], float] = time.monotonic,
                 late_factor: float = 2.0, budget: ProbeBudget = ProbeBudget()) -> None:
        if not 0 < alpha <= 1 or window < 1 or late_factor <= 1:
            raise ValueError("alpha must be in (0, 1], window >= 1, late_factor > 1")
        self.alpha, self.min_bytes, self.probe_after_s, self.clock = alpha, min_bytes, probe_after_s, clock
        self.late_factor, self.budget = late_factor, budget
        self._recent: deque[float] = deque(maxlen=window)
        self.mbps = initial_mbps
        self.floor_s = 0.0
        self.floor_samples = 0
        self.samples = 0
        self.last_sample_at = -math.inf
        self.started_at = clock()
        self._late = 0  # replies in a row later than the estimate predicts
        self.last_probe_at = -math.inf
        self.probes: Counter[str] = Counter()  # probes sent, by reason
        self.probe_bytes = 0
        self.skipped = 0  # probes wanted but held back by the budget

    def predicted_s(self, nbytes: int) -> float | None:
        """A message's network time at the estimate: floor + nbytes / rate (None without an estimate)."""
        return None if not self.mbps else self.floor_s + nbytes / (self.mbps * BYTES_PER_MBPS)

    def observe(self, nbytes: int, seconds: float, probe: bool = False) -> float | None:
        """Fold one transfer in; returns the new estimate (unchanged by a small message). A request's small
        message later than predicted is not folded into the floor (a fallen link would hide there): it counts
        towards `late`, and the probe it brings (`probe=True` for its transfers) measures floor and rate."""
        if seconds <= 0:
            return self.mbps
        predicted = self.predicted_s(nbytes)
        late = (not probe and self.floor_samples > 0 and predicted is not None  # the floor known: a prediction
                and seconds > self.late_factor * predicted)
        self._late = self._late + 1 if late else 0
        if nbytes < self.min_bytes:  # t = floor + nbytes / rate: what is left at the current estimate
            if late:
                return self.mbps
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

    def stale(self) -> str | None:
        """Why the estimate is stale (`none`, `late`, `age`), None when it is not."""
        if self.mbps is None:
            return "none"
        if self._late >= 2:
            return "late"
        if self.clock() - self.last_sample_at > self.probe_after_s:
            return "age"
        return None

    def needs_probe(self) -> bool:
        """True when the estimate is stale and the probe budget allows one now (a first estimate always may)."""
        why = self.stale()
        if why is None:
            return False
        if why != "none" and not self._affordable():
            self.skipped += 1
            return False
        return True

    def _affordable(self) -> bool:
        now = self.clock()
        if now - self.last_probe_at < self.budget.min_interval_s:
            return False
        capacity = (now - self.started_at) * self.mbps * BYTES_PER_MBPS  # bytes the link could carry so far
        return self.probe_bytes + self.probe_size() <= self.budget.max_share * capacity

    def probe_size(self) -> int:
        """Bytes a probe should send: `probe_s` of link time at the estimate, within [min_bytes, max_bytes]."""
        want = self.budget.probe_s * self.mbps * BYTES_PER_MBPS if self.mbps else self.budget.max_bytes / 4
        return int(min(self.budget.max_bytes, max(2 * self.min_bytes, want)))

    def probed(self, nbytes: int) -> None:
        """Count a probe of `nbytes` (its transfer is fed to `observe` like any other)."""
        self.probes[self.stale() or "asked"] += 1
        self.probe_bytes += nbytes
        self.last_probe_at = self.clock()
        self._late = 0

    def stats(self) -> dict:
        """The probes: how many, why, their bytes and share of the link's estimated capacity over the run."""
        elapsed = self.clock() - self.started_at
        capacity = elapsed * (self.mbps or 0) * BYTES_PER_MBPS
        return {"probes": sum(self.probes.values()), "by_reason": dict(self.probes), "probe_bytes": self.probe_bytes,
                "share_of_link": self.probe_bytes / capacity if capacity > 0 else None, "held_back": self.skipped,
                "budget": {"max_share": self.budget.max_share, "min_interval_s": self.budget.min_interval_s,
                           "probe_s": self.budget.probe_s}}


def describe_probes(stats: dict) -> str:
    """`BandwidthEstimator.stats()` in one phrase: how many probes, why, their bytes and share of the link."""
    share = stats["share_of_link"]
    budget = stats["budget"]
    return (f"probes: {stats['probes']} ({', '.join(f'{k} {v}' for k, v in stats['by_reason'].items())}), "
            f"{stats['probe_bytes']} bytes = " + (f"{share:.1%}" if share is not None else "?")
            + f" of the link's estimated capacity over the run (budget {budget['max_share']:.0%}, at least "
            f"{budget['min_interval_s']:g} s apart); {stats['held_back']} held back")


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
