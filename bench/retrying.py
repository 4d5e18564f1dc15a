"""Measurements that survive a lost cloud: an edge worker started again, the measurement done again.

    measure = RetryingWorker(lambda: EdgeWorker(tb, schemes, ...), tb, retries=2)
    rows = measure.run("4,12,3", n=10, warmup=2)    # a scheme's rows, retried up to 2 times
    measure.retried, measure.failed                  # measurements redone, attempts that failed

A measurement (one scheme, `warmup` + `n` requests) fails when the edge worker loses the cloud or
cannot reach it (`Unreachable`: refused, reset, closed, or no reply within the client's timeout) or
exits. The worker is then closed and a new one started (it connects again, and comes up at the
testbed's current edge speed: COINFER_SPEED or the cgroup quota), and the measurement is done again,
at most `retries` times. When the last attempt fails too, `Unreachable` (exit 3) says so with the
counts. Bad input (a `CoInferError` that is not `Unreachable`) is not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cli.errors import Unreachable

T = TypeVar("T")
# a lost or unreachable cloud (Unreachable), a worker that exited (RuntimeError) or whose pipe broke
# (OSError), a line that is not JSON (ValueError)
RETRIED = (Unreachable, RuntimeError, OSError, ValueError)


class RetryingWorker:
    """An `EdgeWorker` from `start()` that is started again when a measurement fails (module doc)."""

    def __init__(self, start: Callable[[], object], tb, retries: int = 2) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.start, self.tb, self.retries = start, tb, retries
        self.retried = 0  # measurements that needed at least one more attempt
        self.failed = 0  # attempts that failed (each one retried, or the end of the run)
        self.worker = None
        self._attempt(self._restart, "starting the edge worker", restart=False)

    @property
    def pid(self) -> int | None:
        return None if self.worker is None else self.worker.proc.pid

    def _restart(self) -> None:
        """Close the worker (when there is one) and start a new one."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        self.worker = self.start()

    def _attempt(self, fn: Callable[[], T], what: str, restart: bool = True) -> T:
        """fn() with up to `retries` more attempts, each after a new worker (`restart`)."""
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                if attempt:
                    self.retried += attempt == 1
                    if restart:
                        self._restart()
                return fn()
            except RETRIED as exc:
                self.failed += 1
                last = exc
        text = str(last).splitlines()[0] if str(last) else type(last).__name__
        raise Unreachable(f"{what} failed {self.retries + 1} times (--retries {self.retries}); {self.retried} "
                          f"measurements retried, {self.failed} attempts failed; the last: {text}") from None

    def run(self, scheme: str, n: int, warmup: int) -> list[dict]:
        """`scheme`'s `n` measured rows after `warmup`, as `EdgeWorker.run` gives them."""
        return self._attempt(lambda: self.worker.run([scheme], n, warmup)[scheme], f"measuring {scheme}")

    def set_edge_speed(self, speed: float) -> None:
        """Slow the edge to `speed` (`EdgeWorker.set_edge_speed`); a worker that died meanwhile is started
        again, at the new speed."""
        self._attempt(lambda: self.worker.set_edge_speed(self.tb, speed), f"setting the edge's speed to {speed:g}")

    def probe(self, repeats: int = 5) -> dict:
        return self._attempt(lambda: self.worker.probe(repeats), "probing the link")

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def __enter__(self) -> RetryingWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
