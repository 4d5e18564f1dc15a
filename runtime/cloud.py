"""Cloud side: an asyncio TCP server that hosts the tail of every scheme of one app.

    python -m runtime.cloud --app vgg16_digits --host 127.0.0.1 --port 5000 [--token T]
                            [--tls-cert F --tls-key F] [--read-timeout S] [--no-finetuned] [--json]

Once it listens it prints ONE JSON line on stdout, `{"ready": true, "host": ..., "port": ..., "app": ...}`
(`runtime.ready`; `--port 0` picks a free port, announced there); logs go to stderr, and the final
stats to stdout when it stops.

The base checkpoint is loaded once; the tail for a scheme is built on first use and kept in a
bounded LRU. By default it carries the scheme's fine-tuned weights (`runtime.weights`: loaded from
checkpoints/schemes/, fine-tuned and saved there first when missing), so a split scheme is as
accurate as the accuracy database says; `--no-finetuned` serves the pruned base weights instead. Requests are decoded
and computed in a worker thread (`asyncio.to_thread`, at most `--workers` at a time) so the event
loop keeps serving other clients.

Connection rules: a frame must arrive within `--read-timeout` seconds of its first byte (a client
dripping bytes is dropped) and a connection idle for `--idle-timeout` seconds is closed. A malformed
frame gets an ERROR reply and the connection is closed; a well-formed request for an unknown app or
scheme, or with the wrong shape, gets an ERROR reply and the connection stays open. With `--token`
the first frame must be a HELLO carrying the token (compared in constant time) and must start within
`--read-timeout`, otherwise ERROR, close and a log line. SIGTERM / SIGINT stop accepting, let
requests in flight finish, then exit.

In Python: `CloudServer(app, ServerConfig(token=..., workers=2))`, `await server.start(host, port)`;
or `await serve(app, config, host, port)` until a signal. `ServerConfig` holds every setting and
checks them once (a bad value is one CoInferError line); the CLI builds it from its arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import signal
import ssl
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from apps import DEFAULT_APP, App, load_app
from apps.errors import ArgParser, CoInferError, run_cli
from compress.model import SchemeModel
from compress.prune import check_scheme
from compress.quant import dequantize
from compress.scheme import Scheme
from models.build import load_base_model
from models.vgg import VGG
from runtime.protocol import (
    DEFAULT_LIMITS,
    Error,
    ErrorCode,
    Hello,
    Limits,
    Message,
    ProtocolError,
    Reply,
    Request,
    decode_activation,
    encode,
    read_frame,
)
from runtime.ready import announce

log = logging.getLogger("coinfer.cloud")
# Errors about a well-formed frame's content: reply and keep the connection. Every other error closes it.
RECOVERABLE = frozenset({ErrorCode.UNKNOWN_APP, ErrorCode.UNKNOWN_SCHEME, ErrorCode.BAD_SHAPE})


def limits_for(model: VGG, max_batch: int) -> Limits:
    """Protocol limits tightened to the largest tensor this model can legitimately receive."""
    points = model.partition_points()
    max_channels = max([model.in_channels] + [pt.channels for pt in points])
    per_sample = max([model.in_channels * model.input_size ** 2] + [pt.channels * pt.height * pt.width
                                                                     for pt in points])
    elements = max_batch * per_sample
    body = 8 * max_batch * max_channels + elements  # worst case: 8-bit codes
    return Limits(max_body=min(body, DEFAULT_LIMITS.max_body), max_elements=min(elements, DEFAULT_LIMITS.max_elements),
                  max_batch=max_batch, max_channels=max_channels)


class TailCache:
    """Tails per scheme, built on first use; at most `size` kept (LRU). Thread-safe.

    With `finetuned` (the CLI default) the tail of a scheme carries its fine-tuned weights
    (`runtime.weights.scheme_model`, the same file the edge loads its head from) and is keyed by
    the scheme; otherwise it is the pruned base model, keyed by the scheme at 8 bits (b only
    affects the edge's quantiser). `weights_root` overrides where fine-tuned weights live.
    """

    def __init__(self, base: VGG, size: int = 16, *, app: App | None = None, finetuned: bool = False,
                 weights_root: str | None = None) -> None:
        if finetuned and app is None:
            raise ValueError("finetuned tails need the app")
        self.base, self.size, self.app, self.finetuned, self.weights_root = base, size, app, finetuned, weights_root
        self._tails: OrderedDict[Scheme, nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()

    def check(self, scheme: Scheme, shape: tuple[int, int, int, int]) -> None:
        """Raise ProtocolError (UNKNOWN_SCHEME / BAD_SHAPE) unless the base model has this scheme and shape."""
        if scheme.is_all_cloud:
            expected = (self.base.in_channels, self.base.input_size, self.base.input_size)
        else:
            try:
                check_scheme(self.base, *scheme)
            except CoInferError as exc:
                raise ProtocolError(ErrorCode.UNKNOWN_SCHEME, str(exc)) from None
            point = self.base.partition_points()[scheme.p]
            expected = (scheme.c, point.height, point.width)
        if tuple(shape[1:]) != expected:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"shape {shape[1:]} for scheme {scheme} should be {expected}")

    def _build(self, scheme: Scheme) -> nn.Module:
        if not self.finetuned:
            return SchemeModel(self.base, scheme).eval()
        from runtime.weights import scheme_model
        assert self.app is not None
        return scheme_model(self.app, scheme, base=self.base, root=self.weights_root)

    def get(self, scheme: Scheme) -> Callable[[torch.Tensor], torch.Tensor]:
        """The tail of a scheme: activation -> logits (all-cloud: the whole base model)."""
        if scheme.is_all_cloud:
            return self.base.forward
        key = scheme if self.finetuned else Scheme(scheme.p, scheme.c, 8)
        with self._lock:
            model = self._tails.pop(key, None)
            if model is not None:
                self._tails[key] = model
        if model is None:
            with self._build_lock:  # a fine-tune can take seconds: build outside the LRU lock, once
                with self._lock:
                    model = self._tails.get(key)
                if model is None:
                    model = self._build(key)
            with self._lock:
                self._tails[key] = model
                self._tails.move_to_end(key)
                while len(self._tails) > self.size:
                    self._tails.popitem(last=False)
        return model.tail


@dataclass(frozen=True)
class ServerConfig:
    """How a CloudServer serves (see the module doc); checked once here.

    `token`: the shared secret a client's first frame (HELLO) must carry; `tls_cert` / `tls_key`:
    PEM files for TLS (both or neither). `read_timeout`: seconds to receive one frame once started;
    `idle_timeout`: seconds a connection may wait between frames; `write_timeout`: seconds to hand
    one reply to the socket. `max_clients` connections at once, `max_batch` images per request,
    `cache_size` tails kept (LRU), `workers` requests computed at the same time. `finetuned`: tails
    with each scheme's fine-tuned weights (`runtime.weights`, under `weights_root` when given)
    rather than the pruned base (the CLI's default is fine-tuned).
    """

    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    read_timeout: float = 10.0
    idle_timeout: float = 300.0
    write_timeout: float = 10.0
    max_clients: int = 64
    max_batch: int = 64
    cache_size: int = 16
    workers: int = 1
    finetuned: bool = False
    weights_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("read_timeout", "idle_timeout", "write_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise CoInferError(f"{name} must be a positive number of seconds, got {value!r}")
        for name in ("max_clients", "max_batch", "cache_size", "workers"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise CoInferError(f"{name} must be an integer of at least 1, got {value!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CoInferError("tls_cert and tls_key go together")
        if self.token == "":
            raise CoInferError("token must not be empty")


@dataclass
class _Conn:
    peer: str
    busy: bool = False


class CloudServer:
    """The server as an object: `await start(host, port)`, `.port`, `await close()`. See the module doc.

    `base` is the app's base model when already loaded (else loaded here); the TLS certificate, when
    configured, is loaded here (CoInferError when it cannot be).
    """

    def __init__(self, app: App, config: ServerConfig = ServerConfig(), base: VGG | None = None) -> None:
        self.app, self.config = app, config
        self.base = base if base is not None else load_base_model(app)
        self.tails = TailCache(self.base, config.cache_size, app=app, finetuned=config.finetuned,
                               weights_root=config.weights_root)
        self.limits = limits_for(self.base, config.max_batch)
        self.token = config.token.encode() if config.token is not None else None
        self.ssl_ctx = tls_context(config.tls_cert, config.tls_key)
        self.read_timeout, self.idle_timeout = config.read_timeout, config.idle_timeout
        self.write_timeout, self.max_clients = config.write_timeout, config.max_clients
        self.stats: Counter[str] = Counter()
        self._workers = asyncio.Semaphore(config.workers)
        self._conns: dict[asyncio.Task, _Conn] = {}
        self._server: asyncio.Server | None = None
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on (the port the OS picked, for port 0)."""
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[:2]

    @property
    def port(self) -> int:
        return self.address[1]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self.ssl_ctx,
                                                  ssl_handshake_timeout=self.read_timeout if self.ssl_ctx else None)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting; idle connections close now, requests in flight get `grace` seconds to finish."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, conn in list(self._conns.items()):
            if not conn.busy:
                task.cancel()
        tasks = list(self._conns)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------------------ connection
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        host, port = writer.get_extra_info("peername", ("?", "?"))[:2]
        peer = f"{host}:{port}"
        self.stats["connections"] += 1
        if len(self._conns) >= self.max_clients or self._closing:
            self.stats["refused_busy"] += 1
            log.warning("refused %s: %d clients connected", peer, len(self._conns))
            await self._send(writer, Error(0, ErrorCode.BUSY, "server busy", self.app.name))
            await self._close(writer)
            return
        conn = self._conns[task] = _Conn(peer)
        try:
            await self._serve_connection(conn, reader, writer)
        except (OSError, asyncio.CancelledError) as exc:  # abrupt disconnect, or shutdown while idle
            log.info("connection %s ended: %s", peer, type(exc).__name__)
        finally:
            del self._conns[task]
            await self._close(writer)

    async def _serve_connection(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        authed = self.token is None
        while not self._closing:
            try:
                idle = self.idle_timeout if authed else self.read_timeout  # unauthenticated: no idling
                msg = await read_frame(reader, self.limits, timeout=self.read_timeout, idle_timeout=idle)
            except ProtocolError as exc:
                await self._refuse(writer, conn, 0, exc)
                return
            if msg is None:
                return
            if not authed:
                authed = await self._authenticate(writer, conn, msg)
                if not authed:
                    return
                continue
            if isinstance(msg, Hello):  # no token configured, or a repeated HELLO: acknowledge
                await self._send(writer, Hello(self.app.name, request_id=msg.request_id))
                continue
            if not isinstance(msg, Request):
                unexpected = ProtocolError(ErrorCode.UNEXPECTED, f"unexpected {type(msg).__name__} from a client")
                await self._refuse(writer, conn, 0, unexpected)
                return
            conn.busy = True
            try:
                answer = await self._answer(msg, conn)
                await self._send(writer, answer)
            finally:
                conn.busy = False
            if isinstance(answer, Error) and answer.code not in RECOVERABLE:
                return

    async def _authenticate(self, writer: asyncio.StreamWriter, conn: _Conn, msg: Message) -> bool:
        assert self.token is not None
        if not isinstance(msg, Hello):
            self.stats["auth_failed"] += 1
            await self._refuse(writer, conn, 0, ProtocolError(ErrorCode.AUTH_REQUIRED, "authentication required"))
            return False
        if not hmac.compare_digest(msg.token, self.token):
            self.stats["auth_failed"] += 1
            await self._refuse(writer, conn, msg.request_id, ProtocolError(ErrorCode.AUTH_FAILED, "wrong token"))
            return False
        await self._send(writer, Hello(self.app.name, request_id=msg.request_id))
        return True

    async def _refuse(self, writer: asyncio.StreamWriter, conn: _Conn, request_id: int, exc: ProtocolError) -> None:
        self.stats[f"error_{exc.code.name.lower()}"] += 1
        log.warning("%s from %s: %s", exc.code.name, conn.peer, exc.message)
        await self._send(writer, Error(request_id, exc.code, exc.message, self.app.name))

    async def _send(self, writer: asyncio.StreamWriter, msg: Message) -> None:
        with contextlib.suppress(OSError, TimeoutError):  # the peer may be gone; the caller closes
            writer.write(encode(msg))
            await asyncio.wait_for(writer.drain(), self.write_timeout)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)

    # ------------------------------------------------------------------------------- requests
    async def _answer(self, req: Request, conn: _Conn) -> Reply | Error:
        self.stats["requests"] += 1
        t0 = time.perf_counter()
        try:
            if req.app != self.app.name:
                raise ProtocolError(ErrorCode.UNKNOWN_APP, f"this server hosts {self.app.name!r}, not {req.app!r}")
            self.tails.check(req.scheme, req.shape)
            async with self._workers:
                waited = time.perf_counter() - t0
                reply = await asyncio.to_thread(self._compute, req)
        except ProtocolError as exc:
            self.stats[f"error_{exc.code.name.lower()}"] += 1
            log.warning("%s from %s, request %d: %s", exc.code.name, conn.peer, req.request_id, exc.message)
            return Error(req.request_id, exc.code, exc.message, self.app.name)
        except Exception:  # a bug on this side: tell the client, keep the server up
            self.stats["error_internal"] += 1
            log.exception("request %d from %s failed", req.request_id, conn.peer)
            return Error(req.request_id, ErrorCode.INTERNAL, "internal error", self.app.name)
        self.stats["replies"] += 1
        log.info("request %d from %s scheme=%s n=%d body=%dB queue=%.2fms unpack=%.2fms compute=%.2fms",
                 req.request_id, conn.peer, req.scheme, req.shape[0], len(req.body), waited * 1e3,
                 reply.unpack_s * 1e3, reply.compute_s * 1e3)
        return reply

    def _compute(self, req: Request) -> Reply:
        """Runs in a worker thread: decode, dequantise, tail forward, top-k (a tail built now is not timed)."""
        tail = self.tails.get(req.scheme)
        t0 = time.perf_counter()
        codes, lo, scale = decode_activation(req.body, req.shape, req.bits)  # the checks of activation.from_bytes
        a = dequantize(torch.from_numpy(codes), torch.from_numpy(lo), torch.from_numpy(scale))
        t1 = time.perf_counter()
        with torch.inference_mode():
            probs = torch.softmax(tail(a).float(), dim=1)
            scores, classes = probs.topk(min(req.k, probs.shape[1]), dim=1)
        t2 = time.perf_counter()
        return Reply(req.request_id, self.app.name, req.p, req.c, req.bits,
                     tuple(tuple(row) for row in classes.tolist()), tuple(tuple(row) for row in scores.tolist()),
                     t1 - t0, t2 - t1)


# ------------------------------------------------------------------------------------------ CLI
def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, None without them; CoInferError when they cannot be loaded."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CoInferError("tls_cert and tls_key go together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CoInferError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return ctx


async def serve(app: App, config: ServerConfig = ServerConfig(), host: str = "127.0.0.1", port: int = 0, *,
                base: VGG | None = None, stop: asyncio.Event | None = None,
                on_ready: Callable[[CloudServer], None] | None = None) -> CloudServer:
    """Run a CloudServer until SIGTERM / SIGINT or `stop` is set; returns it (with its stats) once closed.

    `on_ready(server)` is called once it listens (the CLI prints the readiness line there).
    """
    server = CloudServer(app, config, base)
    await server.start(host, port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / not on this OS
            loop.add_signal_handler(sig, stop.set)
    log.info("serving app %s on %s:%d%s%s", app.name, host, server.port, " with TLS" if server.ssl_ctx else "",
             " with token" if config.token else "")
    if on_ready is not None:
        on_ready(server)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.close()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return server


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": record.created, "level": record.levelname, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m runtime.cloud", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000, help="0 picks a free port (announced on stdout)")
    ap.add_argument("--token", help="shared secret the client must send first (HELLO)")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--read-timeout", type=float, default=10.0, help="seconds to receive one frame once started")
    ap.add_argument("--idle-timeout", type=float, default=300.0, help="seconds a connection may wait between frames")
    ap.add_argument("--max-clients", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=64, help="largest N accepted in one request")
    ap.add_argument("--cache-size", type=int, default=16, help="tails kept in memory (LRU)")
    ap.add_argument("--workers", type=int, default=1, help="requests computed at the same time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per computation")
    ap.add_argument("--finetuned", action=argparse.BooleanOptionalAction, default=True,
                    help="tails with each scheme's fine-tuned weights (runtime.weights; default) or the pruned base")
    ap.add_argument("--json", action="store_true", help="log lines as JSON objects; final stats as JSON")
    args = ap.parse_args(argv)
    config = ServerConfig(token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          read_timeout=args.read_timeout, idle_timeout=args.idle_timeout, max_clients=args.max_clients,
                          max_batch=args.max_batch, cache_size=args.cache_size, workers=args.workers,
                          finetuned=args.finetuned)
    if args.threads < 1:
        raise CoInferError("--threads must be at least 1")
    if not 0 <= args.port <= 65535:
        raise CoInferError(f"--port {args.port} outside 0..65535")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if args.json else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    torch.set_num_threads(args.threads)
    app = load_app(args.app)
    ready = lambda server: announce(*server.address, app=app.name)
    try:
        server = asyncio.run(serve(app, config, args.host, args.port, on_ready=ready))
    except OSError as exc:
        raise CoInferError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    stats = dict(sorted(server.stats.items()))
    print(json.dumps(stats) if args.json else " ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
