"""Trace-driven arrivals (bench.corun.trace, `bench.corun client --mode trace`): the Azure Functions format read
against a plain csv oracle, the seeded choice and scaling, the per-minute Poisson schedule, every bad file as
one line naming its line, and a short replay against a real server whose per-minute counts match the schedule."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.corun.__main__ import main as corun_main
from bench.corun.load import ClientSpec, Target, schedule
from bench.corun.sampletrace import SAMPLE, sample_csv
from bench.corun.trace import MAX_LINE_BYTES, Replay, TraceWindow, read_trace
from cli.errors import CoInferError
from cli.files import read_lines
from tests.conftest import start_cloud_server

BURST = 1014  # minutes 1014..1016 of the sample: two minutes of a queue burst, then back to the background


def oracle_rows(path: Path, start: int, minutes: int) -> dict[int, tuple[str, list[int]]]:
    """{line: (HashFunction, counts of the window)} of every function invoked in the window, read plainly."""
    out = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        first = header.index(str(start))
        for line, row in enumerate(reader, start=2):
            counts = [int(v) for v in row[first:first + minutes]]
            if sum(counts):
                out[line] = (row[2], counts)
    return out


def test_sample_is_what_the_documented_script_writes() -> None:
    assert SAMPLE.read_text() == sample_csv(0)
    assert sample_csv(1) != sample_csv(0)
    with open(SAMPLE, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["HashOwner", "HashApp", "HashFunction", "Trigger"] and rows[0][4:] == [
        str(i) for i in range(1, 1441)]
    assert len(rows) == 13 and all(len(r) == 1444 for r in rows)
    assert {r[3] for r in rows[1:]} == {"http", "queue", "event", "timer"}


@pytest.mark.parametrize("start,minutes,k", [(1, 10, 5), (BURST, 3, 3), (1, 1440, 11)])
def test_read_trace_matches_a_plain_csv_reading(start, minutes, k) -> None:
    oracle = oracle_rows(SAMPLE, start, minutes)
    trace = read_trace(SAMPLE, TraceWindow(k, start, minutes, seed=4))
    assert trace.eligible == len(oracle) and len(trace.functions) == k
    for fn in trace.functions:
        assert oracle[fn.line] == (fn.function, list(fn.counts))
    expected = [sum(oracle[fn.line][1][m] for fn in trace.functions) for m in range(minutes)]
    assert list(trace.counts) == expected
    assert read_trace(SAMPLE, TraceWindow(k, start, minutes, seed=4)) == trace  # seeded


def test_choice_is_uniform_over_invoked_functions() -> None:
    """Reservoir sampling: over 300 seeds each of the 9 functions invoked in minutes 1..10 is picked ~5/9 of the
    time; the never-invoked and rare ones never."""
    eligible = oracle_rows(SAMPLE, 1, 10)
    picks = {line: 0 for line in eligible}
    for seed in range(300):
        for fn in read_trace(SAMPLE, TraceWindow(5, 1, 10, seed)).functions:
            picks[fn.line] += 1
    expected, sd = 300 * 5 / 9, math.sqrt(300 * 5 / 9 * 4 / 9)
    assert len(picks) == 9 and all(abs(n - expected) < 5 * sd for n in picks.values()), picks


def test_replay_scales_the_shape_to_the_mean_rate() -> None:
    trace = read_trace(SAMPLE, TraceWindow(3, BURST, 3, seed=0))
    counts = [sum(f.counts[m] for f in trace.functions) for m in range(3)]
    replay = trace.replay(15.0, 2.0)
    assert replay.rates == pytest.approx([15.0 * c / (sum(counts) / 3) for c in counts])
    assert sum(replay.rates) / 3 == pytest.approx(15.0) and replay.duration == 6.0
    with pytest.raises(CoInferError, match="--rate must be a positive"):
        trace.replay(0.0, 1.0)
    with pytest.raises(CoInferError, match="--minute-seconds must be positive"):
        trace.replay(1.0, 0.0)


def test_schedule_is_poisson_within_each_minute() -> None:
    replay = Replay((10.0, 0.0, 50.0, 5.0), 20.0)
    target = Target("a", "all-cloud", "127.0.0.1", 1, None)  # type: ignore[arg-type]
    spec = ClientSpec(target, 0, 1, 2, "trace", 16.25, replay.duration, 7, "base", None, 1.0, "", replay)
    times = schedule(spec, 1000.0)
    assert (schedule(spec, 1000.0) == times).all() and (np.diff(times) >= 0).all()
    assert times[0] >= 1000.0 and times[-1] < 1080.0
    per_minute = np.bincount(((times - 1000.0) // 20.0).astype(int), minlength=4)
    for n, rate in zip(per_minute, replay.rates):
        mean = rate * 20.0
        assert abs(n - mean) <= 5 * math.sqrt(mean) + 1e-9, (per_minute, replay.rates)
    gaps = np.diff(times[(times >= 1040.0) & (times < 1060.0)])  # minute 3: exponential gaps of mean 1/50 s
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.25) and gaps.std() == pytest.approx(1 / 50, rel=0.3)
    other = ClientSpec(target, 0, 0, 2, "trace", 16.25, replay.duration, 7, "base", None, 1.0, "", replay)
    assert not np.array_equal(schedule(other, 1000.0)[:10], times[:10])


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


HEAD = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, range(1, 6)))


@pytest.mark.parametrize("lines,message", [
    ([], "is empty"),
    (["Owner,HashApp,HashFunction,Trigger,1", "a,b,c,http,1"], "line 1: the header must start with HashOwner"),
    (["HashOwner,HashApp,HashFunction,Trigger,1,3", "a,b,c,http,1,1"], "line 1: after Trigger the columns must be"),
    ([HEAD, "a,b,c,http,1,2,3,4,5", "a,b,d,http,1,x,3,4,5"], "line 3: minute 2 is 'x', not a non-negative integer"),
    ([HEAD, "a,b,c,http,1,2,-3,4,5"], "line 2: minute 3 is '-3', not a non-negative integer"),
    ([HEAD, "a,b,c,http,1,2,3.5,4,5"], "line 2: minute 3 is '3.5', not a non-negative"),
    ([HEAD, "a,b,c,http,1,2,3,4,1" + "0" * 20], "line 2: minute 5 is '1000000000000000000"),
    ([HEAD, "a,b,c,http,1,2,3,4,5", "a,b,c,http,1,2,3,4"], "line 3: 8 fields, the header has 9"),
    ([HEAD, "a,b,c,http,1,2,3,4,5,6"], "line 2: 10 fields, the header has 9"),
    ([HEAD, "a,b,c,http," + "1," * MAX_LINE_BYTES + "1"], f"line 2 is longer than {MAX_LINE_BYTES} bytes"),
    ([HEAD, "a,b,c,http,1,2,3,4,5", "a,b,d,http,0,0,0,0,0"], "only 1 function"),
])
def test_bad_trace_is_one_line_naming_the_line(tmp_path, lines, message) -> None:
    path = _write(tmp_path, lines) if lines else tmp_path / "empty.csv"
    if not lines:
        path.write_text("")
    with pytest.raises(CoInferError, match=message) as err:
        read_trace(path, TraceWindow(2 if "only 1" in message else 1, 1, 5))
    assert "\n" not in str(err.value)


def test_trace_window_and_file_limits(tmp_path) -> None:
    path = _write(tmp_path, [HEAD, "a,b,c,http,1,2,3,4,5"])
    with pytest.raises(CoInferError, match=r"has minutes 1\.\.5: --trace-start 3 --trace-minutes 4 needs minute 6"):
        read_trace(path, TraceWindow(1, 3, 4))
    assert read_trace(path, TraceWindow(1, 3, 3)).counts == (3, 4, 5)  # only the window is parsed
    with pytest.raises(CoInferError, match="--trace-start must be a minute in 1..1440"):
        TraceWindow(1, 0, 1)
    with pytest.raises(CoInferError, match="--trace-functions must be at least 1"):
        TraceWindow(0)
    with pytest.raises(CoInferError, match="is not a regular file"):
        read_trace(tmp_path, TraceWindow())
    with pytest.raises(CoInferError, match="cannot read trace"):
        read_trace(tmp_path / "missing.csv", TraceWindow())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CoInferError, match="is not a regular file"):
        read_trace(fifo, TraceWindow())


def test_read_lines_is_bounded(tmp_path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"ab\r\n" + b"c" * 10 + b"\n" + b"\xff\n")
    lines = read_lines(path, "f", 100, 10)
    assert next(lines) == (1, "ab") and next(lines) == (2, "c" * 10)
    with pytest.raises(CoInferError, match="line 3 is not UTF-8"):
        next(lines)
    with pytest.raises(CoInferError, match="line 2 is longer than 9 bytes"):
        list(read_lines(path, "f", 100, 9))
    with pytest.raises(CoInferError, match="is 17 bytes, over the limit of 16"):
        list(read_lines(path, "f", 16, 10))


@pytest.mark.parametrize("args,message", [
    (["--mode", "poisson", "--trace", str(SAMPLE)], "--trace goes with --mode trace"),
    (["--minute-seconds", "1"], "--minute-seconds goes with --mode trace"),
    (["--mode", "trace"], "--mode trace needs --trace FILE"),
    (["--mode", "trace", "--trace", str(SAMPLE), "--duration", "5"], "the duration is --trace-minutes x"),
    (["--mode", "trace", "--trace", str(SAMPLE), "--trace-functions", "12"], "only 9 function"),
    (["--mode", "trace", "--trace", str(SAMPLE), "--minute-seconds", "-1"], "--minute-seconds must be positive"),
])
def test_client_trace_flags(tmp_path, args, message) -> None:
    """Refused before any app is loaded or server contacted, nothing written."""
    out = tmp_path / "run"
    with pytest.raises(CoInferError, match=message):
        corun_main(["client", "--server", "127.0.0.1:1", "--apps", "vgg16_digits", "--out", str(out), *args])
    assert not out.exists()


def test_trace_replay_against_a_server(tiny_app_path, tmp_path, capsys) -> None:
    """3 trace minutes in 3 s, 2 clients at 40 req/s each on average: the logged send times are the seeded
    schedule, each minute's scheduled count is the trace's rate (Poisson), and every request is answered within
    its minute."""
    proc, port = start_cloud_server("--app", tiny_app_path, "--no-finetuned", stderr=subprocess.DEVNULL)
    run = tmp_path / "run"
    try:
        assert corun_main(["client", "--server", f"127.0.0.1:{port}", "--apps", tiny_app_path, "--scheme", "4,2,4",
                           "--clients", "2", "--mode", "trace", "--trace", str(SAMPLE), "--trace-functions", "7",
                           "--trace-start", str(BURST), "--trace-minutes", "3", "--minute-seconds", "1",
                           "--rate", "40", "--seed", "2", "--out", str(run), "--json"]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    out = json.loads(capsys.readouterr().out)
    cell = json.loads((run / "cells.jsonl").read_text())
    oracle = oracle_rows(SAMPLE, BURST, 3)
    counts = [sum(oracle[f["line"]][1][m] for f in out["trace"]["functions"]) for m in range(3)]
    rates = [40.0 * c / (sum(counts) / 3) for c in counts]
    assert cell["mode"] == "trace" and cell["duration"] == 3.0 and cell["minute_rates"] == pytest.approx(rates)
    assert len(out["trace"]["functions"]) == len(oracle) == 7  # every function invoked: the burst's among them
    assert max(rates) > 2 * min(rates)  # the burst's two minutes and the quieter one after them

    rows = []
    for path in sorted((run / "requests").rglob("*.csv")):
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    payload = None
    target = Target("tiny_digits", "4,2,4", "127.0.0.1", port, payload)  # type: ignore[arg-type]
    logged, scheduled = [], np.zeros(3, dtype=int)
    for client in range(2):
        spec = ClientSpec(target, 0, client, 2, "trace", 40.0, 3.0, 2, "base", None, 10.0, "",
                          Replay(tuple(rates), 1.0))
        times = schedule(spec, cell["start"])
        scheduled += np.bincount(np.floor(times - cell["start"]).astype(int), minlength=3)
        mine = sorted(float(r["scheduled"]) for r in rows if r["client"] == str(client))
        assert mine == pytest.approx(list(times), abs=2e-6)
        logged += mine
    assert len(rows) == len(logged) == scheduled.sum() and all(r["status"] == "ok" for r in rows)
    for m in range(3):  # the schedule follows the trace: Poisson around 2 clients x rate (4 sd)
        assert abs(scheduled[m] - 2 * rates[m]) <= 4 * math.sqrt(2 * rates[m]) + 1

    minutes = out["minutes"]
    assert [m["minute"] for m in minutes] == [1, 2, 3]
    assert [m["scheduled"] for m in minutes] == list(scheduled)
    assert [m["trace_rate"] for m in minutes] == pytest.approx([2 * r for r in rates])
    for m in minutes:
        received = sum(1 for r in rows if m["minute"] - 1 <= float(r["received"]) - cell["start"] < m["minute"])
        assert m["ok"] == received  # the report's count, from the log
        assert abs(m["ok"] - m["scheduled"]) <= max(3, 0.1 * m["scheduled"]), minutes
