"""The load generator: client processes sending real test images to cloud servers, every request logged.

    cells = run_load(LoadConfig(targets, clients=(1, 2, 4, 8), mode="closed", duration=10, out="RUN_DIR"))

A `Target` is one app under one scheme at one server. For each client count n, n client processes
per target run together (`multiprocessing`, spawn; they import no torch). Each client holds one
connection (HELLO with the token first) and sends one image per request, taken in turn from the
target's `Payload`: the edge head's quantised, packed output for a split scheme, the whole image at 8
bits for all-cloud, computed once by the parent from the app's test images (`bench.corun.payloads`)
so the clients spend no CPU on the head.

- closed loop: a client sends its next request when the last one returns.
- poisson (open loop): a client's send times are a Poisson process of `rate` per second, drawn from
  `seed` (and the target's and client's numbers); requests are pipelined on the connection (sent at
  their time whatever is still unanswered) and latency counts from the SCHEDULED send time, so a
  slow server's queueing shows in the latency (no coordinated omission).
- trace (open loop): as poisson, but the rate changes every trace minute (`replay`, a
  `bench.corun.trace.Replay`: the Azure Functions trace's per-minute shape, scaled to a mean of `rate`
  per client, each minute replayed in `minute_seconds`); within a minute a Poisson process.

Every request is a row of the cell's CSV log, written and flushed as it finishes (a killed run keeps
its rows): `LOG_COLUMNS`. status `ok`, an ERROR code's name (`UNKNOWN_APP`, `BUSY`, ...),
`conn_lost` (the server went away with the request in flight), `timeout` (no reply within
`timeout`), `not_sent` (open loop: scheduled after the connection was lost). Times are Unix
seconds; `latency_s` = received - scheduled (closed loop: scheduled == sent).

Each cell appends one JSON line to RUN_DIR/cells.jsonl: tag, mode, clients, rate, duration, start,
end and its log folder; `bench.corun.report` reads them.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import multiprocessing as mp
import os
import queue
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.corun.trace import Replay
from cli.errors import CoInferError, Unreachable
from runtime.protocol import Error, ErrorCode, Hello, ProtocolError, Reply, Request, encode, read_frame

LOG_COLUMNS = ("app", "scheme", "target", "client", "clients", "mode", "tag", "request_id", "scheduled", "sent",
               "received", "latency_s", "status")
MODES = ("closed", "poisson", "trace")
OK = "ok"


@dataclass(frozen=True)
class Payload:
    """One target's request bodies: wire fields (p, c, bits), the shape of one image's tensor, and one
    body per test image."""

    p: int
    c: int
    bits: int
    shape: tuple[int, int, int, int]
    bodies: tuple[bytes, ...]


@dataclass(frozen=True)
class Target:
    """An app under a scheme at a server: `app` the name the server knows, `scheme` its text."""

    app: str
    scheme: str
    host: str
    port: int
    payload: Payload

    @property
    def label(self) -> str:
        return f"{self.app}@{self.scheme}"


@dataclass(frozen=True)
class LoadConfig:
    """A sweep: `clients` per target at each step, `mode`, `rate` (requests per second per client, open
    loop; trace: the mean), `duration` seconds per step, `seed`, `tag` (the run's cell: e.g. base, train,
    batch), `token`, reply `timeout`, `out` the run folder, and `replay` the trace mode's per-minute rates
    (its duration is the replay's)."""

    targets: tuple[Target, ...]
    clients: tuple[int, ...]
    mode: str = "closed"
    rate: float = 10.0
    duration: float = 10.0
    seed: int = 0
    tag: str = "base"
    token: str | None = None
    timeout: float = 10.0
    out: str = "bench/out/corun"
    replay: Replay | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CoInferError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (self.mode == "trace") != (self.replay is not None):
            raise CoInferError("the trace mode, and only it, replays a trace")
        if self.replay is not None and not math.isclose(self.duration, self.replay.duration):
            raise CoInferError(f"a trace replay lasts {self.replay.duration:g} s (minutes x minute seconds), "
                               f"not {self.duration:g}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise CoInferError(f"rate must be a positive number of requests per second, got {self.rate:g}")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise CoInferError(f"duration must be a positive number of seconds, got {self.duration:g}")
        if not self.clients or any(n < 1 for n in self.clients):
            raise CoInferError(f"client counts must be at least 1, got {list(self.clients)}")
        if not self.targets:
            raise CoInferError("no app to load")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise CoInferError(f"timeout must be positive, got {self.timeout:g}")
        if not self.tag.replace("+", "").replace("-", "").replace("_", "").isalnum():
            raise CoInferError(f"tag must be letters, digits, + - _: {self.tag!r}")


@dataclass(frozen=True)
class ClientSpec:
    """What one client process does (built by `run_cell`)."""

    target: Target
    target_index: int
    client: int
    clients: int
    mode: str
    rate: float
    duration: float
    seed: int
    tag: str
    token: str | None
    timeout: float
    log: str
    replay: Replay | None = None


@dataclass
class CellResult:
    tag: str
    mode: str
    clients: int
    rate: float
    duration: float
    start: float
    end: float
    folder: str
    requests: int
    failed: int
    minute_seconds: float = 0.0  # trace mode: the replay's minute, and its per-client rate each minute
    minute_rates: list[float] | None = None

    def line(self) -> str:
        return json.dumps(asdict(self))


# --------------------------------------------------------------------------------- one client
class _Log:
    """The client's CSV, one flushed row per request."""

    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.file = open(spec.log, "w", newline="", buffering=1)  # noqa: SIM115  # closed by close()
        self.writer = csv.writer(self.file)
        self.writer.writerow(LOG_COLUMNS)
        self.failed = self.rows = 0

    def row(self, rid: int, scheduled: float, sent: float | None, received: float | None, status: str) -> None:
        s, t = self.spec, self.spec.target
        latency = "" if received is None else f"{received - scheduled:.6f}"
        self.writer.writerow((t.app, t.scheme, s.target_index, s.client, s.clients, s.mode, s.tag, rid,
                              f"{scheduled:.6f}", "" if sent is None else f"{sent:.6f}",
                              "" if received is None else f"{received:.6f}", latency, status))
        self.rows += 1
        self.failed += status != OK

    def close(self) -> None:
        self.file.flush()
        self.file.close()


class _Connection:
    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 1

    async def open(self) -> None:
        t = self.spec.target
        async with asyncio.timeout(self.spec.timeout):
            self.reader, self.writer = await asyncio.open_connection(t.host, t.port)
        token = self.spec.token.encode() if self.spec.token else b""
        self.writer.write(encode(Hello(t.app, token, 0)))
        answer = await read_frame(self.reader, timeout=self.spec.timeout, idle_timeout=self.spec.timeout)
        if isinstance(answer, Error):
            raise CoInferError(f"server {t.host}:{t.port} refused the connection: {ErrorCode(answer.code).name}: "
                               f"{answer.message}")
        if not isinstance(answer, Hello):
            raise CoInferError(f"server {t.host}:{t.port} did not acknowledge the HELLO")

    def frame(self, index: int) -> tuple[int, bytes]:
        t, p = self.spec.target, self.spec.target.payload
        rid, self.next_id = self.next_id, (self.next_id + 1) & 0xFFFFFFFF or 1
        body = p.bodies[index % len(p.bodies)]
        return rid, encode(Request(rid, t.app, p.p, p.c, p.bits, 1, p.shape, body))

    async def receive(self) -> Reply | Error | None:
        assert self.reader is not None
        msg = await read_frame(self.reader, timeout=self.spec.timeout, idle_timeout=self.spec.timeout)
        if msg is not None and not isinstance(msg, Reply | Error):
            raise ProtocolError(ErrorCode.UNEXPECTED, f"unexpected {type(msg).__name__}")
        return msg

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


def _failure(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError) and exc.code is ErrorCode.TIMEOUT:
        return "timeout"
    return "conn_lost"


async def _closed(spec: ClientSpec, conn: _Connection, log: _Log, start: float) -> None:
    end = start + spec.duration
    i = spec.client
    while time.time() < end:
        rid, frame = conn.frame(i)
        i += 1
        sent = time.time()
        try:
            conn.writer.write(frame)
            answer = await conn.receive()
        except (OSError, ProtocolError) as exc:
            log.row(rid, sent, sent, None, _failure(exc))
            return
        received = time.time()
        if answer is None:
            log.row(rid, sent, sent, None, "conn_lost")
            return
        if isinstance(answer, Error):
            log.row(rid, sent, sent, received, ErrorCode(answer.code).name if answer.code in
                    ErrorCode._value2member_map_ else f"ERROR_{answer.code}")
            if answer.code not in (ErrorCode.UNKNOWN_SCHEME, ErrorCode.BAD_SHAPE, ErrorCode.BUSY):
                return
            continue
        log.row(rid, sent, sent, received, OK if answer.request_id == rid else "mismatch")


def schedule(spec: ClientSpec, start: float) -> np.ndarray:
    """The open loop's send times: a Poisson process of `rate` per second over `duration` (trace: of each
    minute's rate over that minute, `Replay.times`), from the seed."""
    rng = np.random.default_rng([spec.seed, spec.target_index, spec.client, spec.clients])
    if spec.replay is not None:
        return start + spec.replay.times(rng)
    expected = spec.rate * spec.duration
    gaps = rng.exponential(1.0 / spec.rate, int(expected + 10 * math.sqrt(expected) + 20))
    times = np.cumsum(gaps)
    return start + times[times < spec.duration]


async def _poisson(spec: ClientSpec, conn: _Connection, log: _Log, start: float) -> None:
    times = schedule(spec, start)
    inflight: asyncio.Queue[tuple[int, float, float] | None] = asyncio.Queue()
    lost: list[str] = []

    async def receiver() -> None:
        while True:
            item = await inflight.get()
            if item is None:
                return
            rid, scheduled, sent = item
            try:
                answer = await conn.receive()
            except (OSError, ProtocolError) as exc:
                answer, why = None, _failure(exc)
            else:
                why = "conn_lost"
            if answer is None:
                lost.append(why)
                log.row(rid, scheduled, sent, None, why)
                while True:  # everything else in flight is lost with it
                    item = await inflight.get()
                    if item is None:
                        return
                    log.row(item[0], item[1], item[2], None, why)
            received = time.time()
            if isinstance(answer, Error):
                status = ErrorCode(answer.code).name if answer.code in ErrorCode._value2member_map_ else "ERROR"
            else:
                status = OK if answer.request_id == rid else "mismatch"
            log.row(rid, scheduled, sent, received, status)

    task = asyncio.create_task(receiver())
    for i, at in enumerate(times):
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if lost or task.done():
            for j in range(i, len(times)):
                log.row(0, float(times[j]), None, None, "not_sent")
            break
        rid, frame = conn.frame(spec.client + i)
        try:
            conn.writer.write(frame)
        except OSError:
            log.row(rid, float(at), None, None, "conn_lost")
            continue
        inflight.put_nowait((rid, float(at), time.time()))
    inflight.put_nowait(None)
    await task


async def _client(spec: ClientSpec, ready, go) -> None:
    log = _Log(spec)
    conn = _Connection(spec)
    try:
        try:
            await conn.open()
        except (OSError, TimeoutError, ProtocolError, CoInferError) as exc:
            ready.put(f"client {spec.client} of {spec.target.label}: {exc}")
            return
        ready.put("")
        parent = os.getppid()
        while not go.value:  # the parent sets the common start time once every client is connected
            if os.getppid() != parent:  # the parent is gone: nothing will start this client
                return
            await asyncio.sleep(0.005)
        start = go.value
        await asyncio.sleep(max(0.0, start - time.time()))
        await (_closed if spec.mode == "closed" else _poisson)(spec, conn, log, start)
    finally:
        conn.close()
        log.close()


def client_process(spec: ClientSpec, ready, go) -> None:
    """A client process's body (spawned): connect, say ready, wait for the start, load, log."""
    asyncio.run(_client(spec, ready, go))


# ---------------------------------------------------------------------------------------- cells
def run_cell(config: LoadConfig, clients: int, progress=None) -> CellResult:
    """`clients` processes per target for `duration` seconds; their logs in one folder of the run."""
    ctx = mp.get_context("spawn")
    folder = Path(config.out) / "requests" / f"{config.tag}-{config.mode}-n{clients}"
    folder.mkdir(parents=True, exist_ok=True)
    ready, go = ctx.Queue(), ctx.Value("d", 0.0, lock=False)
    procs = []
    for ti, target in enumerate(config.targets):
        for ci in range(clients):
            spec = ClientSpec(target, ti, ci, clients, config.mode, config.rate, config.duration, config.seed,
                              config.tag, config.token, config.timeout, str(folder / f"t{ti}-c{ci}.csv"),
                              config.replay)
            proc = ctx.Process(target=client_process, args=(spec, ready, go), daemon=True)
            proc.start()
            procs.append(proc)
    try:
        problems = [ready.get(timeout=60 + config.timeout) for _ in procs]
    except queue.Empty:  # a client that never reported; any other error is a bug and propagates
        for proc in procs:
            proc.kill()
        raise CoInferError("client processes did not start within a minute") from None
    problems = [p for p in problems if p]
    if problems:
        go.value = time.time()
        for proc in procs:
            proc.join(config.timeout + 5)
        raise Unreachable(f"{len(problems)} client(s) could not connect: {problems[0]}")
    start = time.time() + 0.2
    go.value = start
    deadline = start + config.duration + config.timeout + 10
    for proc in procs:
        proc.join(max(0.1, deadline - time.time()))
        if proc.is_alive():
            proc.kill()
            proc.join()
    end = max(time.time(), start + config.duration)
    requests = failed = 0
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                requests += 1
                failed += row["status"] != OK
    replay = config.replay
    result = CellResult(config.tag, config.mode, clients, config.rate if config.mode != "closed" else 0.0,
                        config.duration, start, end, str(folder.relative_to(config.out)), requests, failed,
                        replay.minute_seconds if replay else 0.0, list(replay.rates) if replay else None)
    with open(Path(config.out) / "cells.jsonl", "a") as f:
        f.write(result.line() + "\n")
    if progress is not None:
        progress(result)
    return result


def run_load(config: LoadConfig, progress=None) -> list[CellResult]:
    """Every client count of the sweep, one cell after the other (see the module doc)."""
    return [run_cell(config, n, progress) for n in config.clients]


async def _preflight(target: Target, token: str | None, timeout: float) -> None:
    spec = ClientSpec(target, 0, 0, 1, "closed", 1.0, 1.0, 0, "preflight", token, timeout, "")
    conn = _Connection(spec)
    try:
        await conn.open()
        rid, frame = conn.frame(0)
        conn.writer.write(frame)
        answer = await conn.receive()
    finally:
        conn.close()
    where = f"server {target.host}:{target.port}"
    if answer is None:
        raise Unreachable(f"{where} closed the connection on a request for {target.label}")
    if isinstance(answer, Error):
        code = ErrorCode(answer.code) if answer.code in ErrorCode._value2member_map_ else answer.code
        if code is ErrorCode.UNKNOWN_APP:
            raise CoInferError(f"{where} does not host app {target.app!r}: {answer.message}")
        raise CoInferError(f"{where} refused a request for {target.label}: {getattr(code, 'name', code)}: "
                           f"{answer.message}")


def preflight(target: Target, token: str | None = None, timeout: float = 30.0) -> None:
    """One request to `target` before any load, one line when it fails: `Unreachable` (exit 3) when the
    server is not there or drops the connection, `CoInferError` (exit 2) when it refuses the token or does
    not host the app or scheme. It also builds the server's tail."""
    try:
        asyncio.run(_preflight(target, token, timeout))
    except (OSError, TimeoutError) as exc:
        raise Unreachable(f"cannot connect to {target.host}:{target.port}: {exc or type(exc).__name__}") from None
    except ProtocolError as exc:
        kind = Unreachable if exc.code in (ErrorCode.TIMEOUT, ErrorCode.TRUNCATED) else CoInferError
        raise kind(f"server {target.host}:{target.port}: {exc.message}") from None
