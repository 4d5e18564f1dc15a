"""Trace-driven arrivals: per-minute invocation counts in the Azure Functions 2019 format, replayed open loop.

    trace = read_trace("invocations_per_function_md.anon.d01.csv", TraceWindow(functions=5, start=1, minutes=10))
    replay = trace.replay(rate=20.0, minute_seconds=6.0)   # 10 trace minutes in 60 s, 20 req/s per client on average
    times = replay.times(rng)                              # one client's send times, seconds from the start

The format (Azure Functions Trace 2019, `invocations_per_function_md.anon.dNN.csv`, one file per day):
a header `HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440`, then one row per function: three
hashes, its trigger (http, timer, queue, event, ...) and its invocation count in each minute of the
day. The file is streamed (`cli.files.read_lines`: at most `MAX_BYTES`, a line at most
`MAX_LINE_BYTES`, at most `MAX_ROWS` functions); every row must have the header's fields, and the
counts of the replayed minutes must be non-negative integers (other minutes are not parsed). Any
fault is one line naming the file's line.

A `TraceWindow` picks `functions` functions, uniformly at random from `seed` among those invoked at
least once in minutes `start .. start + minutes - 1` (reservoir sampling, so memory holds only the
chosen rows), and adds their counts minute by minute. `Trace.replay` scales that shape to a mean of
`rate` requests per second per client and replays each trace minute in `minute_seconds` seconds; within
a minute the arrivals are a Poisson process at that minute's rate (`Replay.times`). The load generator
sends them as its Poisson mode does (`bench.corun.load`): pipelined, latency from the scheduled time.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli.errors import CoInferError
from cli.files import read_lines

HEADER = ("HashOwner", "HashApp", "HashFunction", "Trigger")
MINUTES_PER_DAY = 1440
MAX_BYTES = 2**31  # a day of the public trace is about 150 MB
MAX_LINE_BYTES = 64 * 2**10  # four hashes and 1,440 counts: about 12 KiB in the public trace
MAX_ROWS = 1_000_000  # the public trace has tens of thousands of functions a day
MAX_COUNT_DIGITS = 12


@dataclass(frozen=True)
class TraceWindow:
    """Which part of a trace to replay: `functions` functions picked by `seed`, minutes `start` (1 = the
    file's first minute column) to `start + minutes - 1`."""

    functions: int = 5
    start: int = 1
    minutes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.functions < 1:
            raise CoInferError(f"--trace-functions must be at least 1, got {self.functions}")
        if not 1 <= self.start <= MINUTES_PER_DAY:
            raise CoInferError(f"--trace-start must be a minute in 1..{MINUTES_PER_DAY}, got {self.start}")
        if not 1 <= self.minutes <= MINUTES_PER_DAY:
            raise CoInferError(f"--trace-minutes must be in 1..{MINUTES_PER_DAY}, got {self.minutes}")


@dataclass(frozen=True)
class TraceFunction:
    """One function of the trace: the line it was read from, its hashes and trigger, its counts in the window."""

    line: int
    owner: str
    app: str
    function: str
    trigger: str
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Replay:
    """What the load generator replays: `rates[m]` requests per second (per client) during replay minute m,
    each minute lasting `minute_seconds` seconds."""

    rates: tuple[float, ...]
    minute_seconds: float

    def __post_init__(self) -> None:
        if not self.rates or any(not (math.isfinite(r) and r >= 0) for r in self.rates) or not sum(self.rates) > 0:
            raise CoInferError("a trace replay needs non-negative per-minute rates, not all zero")
        if not (math.isfinite(self.minute_seconds) and self.minute_seconds > 0):
            raise CoInferError(f"--minute-seconds must be positive, got {self.minute_seconds:g}")

    @property
    def duration(self) -> float:
        return len(self.rates) * self.minute_seconds

    def times(self, rng: np.random.Generator) -> np.ndarray:
        """Send times in seconds from the start: in minute m a Poisson process of rate `rates[m]` (a Poisson
        count, placed uniformly in the minute), sorted."""
        parts = []
        for m, rate in enumerate(self.rates):
            n = rng.poisson(rate * self.minute_seconds)
            parts.append(m * self.minute_seconds + np.sort(rng.uniform(0.0, self.minute_seconds, n)))
        return np.concatenate(parts)


@dataclass(frozen=True)
class Trace:
    """The functions a `TraceWindow` picked from a file, and their summed counts per minute."""

    path: str
    window: TraceWindow
    functions: tuple[TraceFunction, ...]
    eligible: int  # functions invoked at least once in the window

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(int(sum(col)) for col in zip(*(f.counts for f in self.functions)))

    def replay(self, rate: float, minute_seconds: float) -> Replay:
        """The per-minute shape scaled to a mean of `rate` requests per second (per client)."""
        if not (math.isfinite(rate) and rate > 0):
            raise CoInferError(f"--rate must be a positive number of requests per second per client, got {rate:g}")
        counts = self.counts
        mean = sum(counts) / len(counts)
        return Replay(tuple(rate * c / mean for c in counts), minute_seconds)

    def describe(self) -> str:
        w = self.window
        triggers = ", ".join(sorted({f.trigger for f in self.functions}))
        return (f"{len(self.functions)} of {self.eligible} functions invoked in minutes {w.start}.."
                f"{w.start + w.minutes - 1} of {self.path} (seed {w.seed}; triggers: {triggers}): "
                f"{sum(self.counts)} invocations")


def _fields(text: str) -> list[str]:
    return next(csv.reader([text]))


def _header(path: Path, text: str, window: TraceWindow) -> int:
    """The header's field count, once it is the format's and has the window's minutes."""
    fields = _fields(text)
    if tuple(fields[:4]) != HEADER:
        raise CoInferError(f"trace {path} line 1: the header must start with {','.join(HEADER)} "
                           "(the Azure Functions 2019 invocations_per_function format)")
    minutes = fields[4:]
    if not minutes or len(minutes) > MINUTES_PER_DAY or minutes != [str(i) for i in range(1, len(minutes) + 1)]:
        raise CoInferError(f"trace {path} line 1: after {HEADER[-1]} the columns must be the minutes 1, 2, ... "
                           f"(at most {MINUTES_PER_DAY})")
    last = window.start + window.minutes - 1
    if last > len(minutes):
        raise CoInferError(f"trace {path} has minutes 1..{len(minutes)}: --trace-start {window.start} "
                           f"--trace-minutes {window.minutes} needs minute {last}")
    return len(fields)


def _counts(path: Path, number: int, fields: list[str], window: TraceWindow) -> tuple[int, ...]:
    first = len(HEADER) + window.start - 1
    out = []
    for i, text in enumerate(fields[first:first + window.minutes]):
        if not (text.isascii() and text.isdigit() and len(text) <= MAX_COUNT_DIGITS):
            raise CoInferError(f"trace {path} line {number}: minute {window.start + i} is {text[:20]!r}, not a "
                               f"non-negative integer of at most {MAX_COUNT_DIGITS} digits")
        out.append(int(text))
    return tuple(out)


def read_trace(path: Path | str, window: TraceWindow) -> Trace:
    """Stream `path` and pick the window's functions (see the module doc)."""
    path = Path(path)
    rng = random.Random(window.seed)
    chosen: list[TraceFunction] = []
    eligible = 0
    width = None
    for number, text in read_lines(path, "trace", MAX_BYTES, MAX_LINE_BYTES):
        if width is None:
            width = _header(path, text, window)
            continue
        if not text:
            continue
        if number - 1 > MAX_ROWS:
            raise CoInferError(f"trace {path} has more than {MAX_ROWS} functions (at line {number})")
        try:
            fields = _fields(text)
        except csv.Error as exc:
            raise CoInferError(f"trace {path} line {number}: {exc}") from None
        if len(fields) != width:
            raise CoInferError(f"trace {path} line {number}: {len(fields)} fields, the header has {width}")
        counts = _counts(path, number, fields, window)
        if not any(counts):
            continue
        eligible += 1  # reservoir sampling (Algorithm R): each eligible function kept with equal chance
        if len(chosen) < window.functions:
            chosen.append(TraceFunction(number, *fields[:4], counts))
        elif (j := rng.randrange(eligible)) < window.functions:
            chosen[j] = TraceFunction(number, *fields[:4], counts)
    if width is None:
        raise CoInferError(f"trace {path} is empty")
    if eligible < window.functions:
        raise CoInferError(f"trace {path}: only {eligible} function(s) are invoked in minutes {window.start}.."
                           f"{window.start + window.minutes - 1}, --trace-functions asks for {window.functions}")
    return Trace(str(path), window, tuple(sorted(chosen, key=lambda f: f.line)), eligible)
