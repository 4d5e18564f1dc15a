"""bench.retrying: a failed measurement is done again with a new worker, and counted."""

from __future__ import annotations

import pytest

from bench.retrying import RetryingWorker
from cli.errors import CoInferError, Unreachable


class FakeWorker:
    """Fails its runs while `failures` (shared by all workers) is positive; counts starts and closes."""

    def __init__(self, log: dict) -> None:
        self.log = log
        log["starts"] += 1
        self.proc = type("P", (), {"pid": 1000 + log["starts"]})()

    def run(self, schemes, n, warmup):
        if self.log["failures"] > 0:
            self.log["failures"] -= 1
            raise Unreachable("edge worker: connection to 127.0.0.1:1 lost")
        if self.log.get("bad"):
            raise CoInferError("edge worker: bad scheme")
        return {schemes[0]: [{"total_s": 0.01}] * n}

    def close(self) -> None:
        self.log["closes"] += 1


def make(failures: int, retries: int) -> tuple[RetryingWorker, dict]:
    log = {"starts": 0, "closes": 0, "failures": failures}
    return RetryingWorker(lambda: FakeWorker(log), None, retries), log


def test_no_failure_no_retry() -> None:
    measure, log = make(0, 2)
    assert measure.run("4,12,3", 3, 0) == [{"total_s": 0.01}] * 3
    assert (measure.retried, measure.failed, log["starts"]) == (0, 0, 1)


def test_a_failure_is_retried_with_a_new_worker() -> None:
    measure, log = make(2, 2)
    first = measure.pid
    assert len(measure.run("4,12,3", 2, 0)) == 2
    assert (measure.retried, measure.failed) == (1, 2)  # one measurement, done again twice
    assert log["starts"] == 3 and log["closes"] == 2 and measure.pid != first
    assert len(measure.run("all-cloud", 1, 0)) == 1 and measure.retried == 1  # the next one needed none


def test_still_failing_after_the_retries_is_unreachable() -> None:
    measure, log = make(5, 1)
    with pytest.raises(Unreachable, match=r"^measuring 4,12,3 failed 2 times \(--retries 1\); 1 measurements "
                                          r"retried, 2 attempts failed; the last: edge worker: connection"):
        measure.run("4,12,3", 1, 0)


def test_bad_input_is_not_retried() -> None:
    measure, log = make(0, 2)
    log["bad"] = True
    with pytest.raises(CoInferError, match="edge worker: bad scheme"):
        measure.run("4,12,3", 1, 0)
    assert (measure.retried, measure.failed, log["starts"]) == (0, 0, 1)
