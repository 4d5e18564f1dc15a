"""The emulated slow edge device (database.slowdown) and the profiler and edge client that use it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from database.slowdown import KeepWarm, SlowCPU, check_speed

ROOT = Path(__file__).resolve().parents[1]


def burn(cpu_s: float) -> str:
    t = time.thread_time()
    while time.thread_time() - t < cpu_s:
        pass
    return "done"


def test_call_takes_cpu_time_over_speed_and_returns_the_result() -> None:
    device = SlowCPU(0.25)
    result, seconds = device.call(burn, 0.004)
    assert result == "done"
    assert seconds >= 0.004 / 0.25  # slept until start + CPU time / speed
    assert device.seconds(0.002) == pytest.approx(0.008)


def test_full_speed_device_does_not_wait() -> None:
    _, seconds = SlowCPU(1.0).call(burn, 0.002)
    assert seconds >= 0.002


@pytest.mark.parametrize("speed", [0, -0.5, 1.5, "fast", None])
def test_bad_speed_is_refused(speed) -> None:
    with pytest.raises(ValueError, match="speed"):
        check_speed(speed)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_keep_warm_loops_run_and_never_outlive_their_owner() -> None:
    warm = KeepWarm()
    if warm.reason:
        pytest.skip(warm.reason)
    with warm:
        assert warm.procs and all(p.poll() is None for p in warm.procs)
    assert not warm.procs
    # an owner gone right after starting them (before they even ran): they exit on their own
    script = ("from database.slowdown import KeepWarm; import os; k = KeepWarm().start(); "
              "print(' '.join(str(p.pid) for p in k.procs), flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    pids = [int(p) for p in out.stdout.split()]
    assert pids, out.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if running(p)]
