"""Emulate an edge device `speed` times as fast as this CPU by stretching time.

    device = SlowCPU(0.125)
    result, seconds = device.call(fn, *args)   # fn runs at full speed, then waits to 8x its CPU time

Each piece of edge work runs at full speed here (torch on one thread, so the calling thread does
all of it) and its thread CPU time t is measured; the emulated device takes t / speed, and `call`
sleeps until start + t / speed before it returns. The edge client runs its edge stage (head, then
quantise + pack) as one such call, and the profiler times the same calls, so the latency
database and the runtime see the same device. Time spent off the CPU (preemption by other
processes on a shared machine) does not count, the way it would not on a real device.

This is the default emulation (`emulation: dilate` in an app's edge device). The alternative,
`quota`, puts the edge process under a cgroup v1 CPU quota (`devices.cpuquota`). It emulates a
slow device only over many quota periods: measured on this machine (kernel HZ = 250, 1/8 CPU =
1 ms of quota per 8 ms period), a busy loop runs in bursts of 2.4 ms (the kernel enforces the
quota at its 4 ms tick) followed by 13.6 or 21.6 ms stalls; 2 ms of work takes 16.0 ms back to
back but 3.9 ms after 20 ms idle, and 12.95 ms after 3 ms idle. The latency of a
millisecond-scale inference then depends on the phase of the request against the period and
tick timers rather than on the work, which no per-layer latency profile can predict.

`KeepWarm` keeps every CPU out of its idle state while it is open: one SCHED_IDLE busy loop per
CPU, which runs only when nothing else wants that CPU. On this VM (no cpuidle driver, so an idle
vCPU halts) work that follows an idle stretch otherwise takes up to 40 % more CPU time than the
same work back to back (measured: the default model's head to point 1, 0.48 ms after 5 ms idle,
0.75 ms after 20 ms, 0.34 ms back to back), which the emulation would multiply by 1 / speed.
With the loops: 2.98 ms emulated against 2.75 ms from back-to-back CPU times. Bare-metal
benchmarks get the same with `idle=poll` or /dev/cpu_dma_latency; neither works in this VM.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

PR_SET_TIMERSLACK = 29
T = TypeVar("T")


def check_speed(speed: float) -> float:
    if not isinstance(speed, (int, float)) or not 0 < speed <= 1:
        raise ValueError(f"an emulated device's speed must be in (0, 1] of this CPU, got {speed!r}")
    return float(speed)


def _tighten_timer_slack() -> None:
    """Ask Linux to wake sleeps within 1 us instead of the default 50 us (measured: median oversleep
    of a 4 ms sleep 71 us -> 23 us). Best effort: elsewhere the default slack stays."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
        except (OSError, AttributeError):
            pass


class SlowCPU:
    """An edge device `speed` (0 < speed <= 1) times as fast as this CPU."""

    def __init__(self, speed: float) -> None:
        self.speed = check_speed(speed)
        _tighten_timer_slack()

    def seconds(self, cpu_s: float) -> float:
        """Time the device takes for work that took `cpu_s` of CPU time here."""
        return cpu_s / self.speed

    def call(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        """Run fn(*args), wait until the device would have finished it; (result, emulated seconds)."""
        start, cpu0 = time.perf_counter(), time.thread_time()
        result = fn(*args)
        deadline = start + self.seconds(time.thread_time() - cpu0)
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        return result, time.perf_counter() - start


# a SCHED_IDLE busy loop pinned to one CPU; it exits when its parent does (never outlives a crash)
_SPIN = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
parent = int(sys.argv[2])  # the spawner's pid, passed in: it may be gone before this line runs
while os.getppid() == parent:
    for _ in range(200000):
        pass
"""


class KeepWarm:
    """`with KeepWarm(): ...`: every CPU busy at the lowest priority (see the module doc).

    Linux only (SCHED_IDLE); elsewhere `reason` says why nothing runs. Idempotent start/stop."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.reason = None if hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_getaffinity") else \
            "no SCHED_IDLE / CPU affinity on this platform"

    def start(self) -> KeepWarm:
        if self.reason is None and not self.procs:
            self.procs = [subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu), str(os.getpid())])
                          for cpu in sorted(os.sched_getaffinity(0))]
            atexit.register(self.stop)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self.procs = []
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> KeepWarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
