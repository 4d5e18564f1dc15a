"""The emulated slow edge device (database.slowdown) and the profiler and edge client that use it."""

from __future__ import annotations

import time

import pytest

from database.slowdown import SlowCPU, check_speed


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
