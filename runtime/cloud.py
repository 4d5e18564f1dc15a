"""Cloud side: an asyncio TCP server that hosts the tail of every scheme of one app or several.

    python -m runtime.cloud --app vgg16_digits[,APP2...] --host 127.0.0.1 --port 5000
                            [--token-file F | --token T | $COINFER_TOKEN] [--insecure]
                            [--tls-cert F --tls-key F] [--no-finetuned | --finetune-on-request] [--json]
                            [--batch-images N [--batch-wait-ms MS]] [--train APP [--train-nice 19] [--train-threads 1]]

Once it listens it prints ONE JSON line on stdout, `{"ready": true, "host": ..., "port": ..., "app": ...}`
(`runtime.ready`; `--port 0` picks a free port, announced there); logs go to stderr, and the final
stats (the counters that moved) to stdout when it stops.

Access: it binds loopback by default. A non-loopback `--host` without a token is refused (one
line, exit 2) unless `--insecure`. The token comes from `--token`, `--token-file` or
$COINFER_TOKEN (`runtime.secret`) and is never printed.

Tails (`runtime.tails`): the base checkpoint is loaded once; the tail for a scheme is built on first
use and kept in an LRU bounded in count (`--cache-size`) and bytes (`--cache-mb`). By default it
carries the scheme's fine-tuned weights when `runtime.weights` has them on disk; nothing is
fine-tuned on request: a scheme without them gets the pruned base weights, with a WARNING log line
and the `tails_base_fallback` counter in the stats (`--strict-weights`: ERROR UNKNOWN_SCHEME
instead). `--finetune-on-request` (token required) fine-tunes a missing scheme, one at a time, at
most `--finetune-queue` waiting (then ERROR BUSY). `--no-finetuned` serves the pruned base weights.
Several apps (`--app A1,A2`): one process, one queue per app (`runtime.batching.AppQueue`), each
with `--workers` compute threads (`asyncio.to_thread`) so the event loop keeps serving other clients;
a request names its app, an app this server does not host is ERROR UNKNOWN_APP. `bench.corun`
measured one process for all apps against one process per app and kept this (README "Co-running").
Dynamic batching (`--batch-images N`, off by default) merges requests of one app and scheme for at most
`--batch-wait-ms` into one forward (`runtime.batching`). `--train APP` runs the accuracy database's
fine-tune loop beside serving, in a child process in the SCHED_IDLE class (`--train-sched idle`, the
default; `normal` at `--train-nice`) with `--train-threads` torch threads, so it takes only the CPU
inference leaves (`runtime.training`).

Connection rules (`runtime.admission` says why these): a new connection is *pending* from the accept
until it has authenticated (with a token: a HELLO carrying it, compared in constant time; without: any
valid first frame), which must happen within `--handshake-timeout` seconds (2) of the accept, the TLS
handshake included (with `--tls-cert`, the connection is admitted first and the handshake run under that
deadline: a stalled handshake is a pending connection like any other). Pending connections have their
own pool (`--max-pending`; when full, the oldest of the address holding the most is dropped for a
newcomer, and a newcomer from an address already holding `--max-pending-per-peer` is refused) and never
take one of the `--max-clients` slots, which are reserved for authenticated clients. Without a token an
address may hold at most `--max-clients-per-peer` established connections. A frame must arrive within `--read-timeout`
seconds of its first byte (a client dripping bytes is dropped) and an established connection idle
for `--idle-timeout` seconds is closed. A malformed frame gets an ERROR reply and the connection is
closed; a well-formed request for an unknown app or scheme, or with the wrong shape, gets an ERROR
reply and the connection stays open. SIGTERM / SIGINT stop accepting, let requests in flight
finish, then exit.

In Python: `CloudServer(app, ServerConfig(token=..., workers=2))`, `await server.start(host, port)`;
or `await serve(app, config, host, port)` until a signal. `ServerConfig` holds every setting and
checks them once (a bad value is one CoInferError line). The CLI is `parse(argv)` -> `Launch` (the apps,
address, threads, log format and that `ServerConfig`), then `run_server(launch)` -> the final stats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import ipaddress
import json
import logging
import math
import signal
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apps import DEFAULT_APP, App, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from runtime.admission import Admission, AdmissionLimits, Slot
from runtime.batching import AppQueue, BatchPolicy
from runtime.protocol import (
    DEFAULT_LIMITS,
    Error,
    ErrorCode,
    Hello,
    Limits,
    Message,
    MsgType,
    ProtocolError,
    Reply,
    Request,
    encode,
    read_frame,
)
from runtime.ready import announce
from runtime.secret import resolve_token
from runtime.training import TrainConfig, TrainingCorun

if TYPE_CHECKING:  # torch and the models load when a server is built (the CLI's --help stays fast)

    from models.splittable import Splittable
    from runtime.tails import TailCache, TailPolicy

log = logging.getLogger("coinfer.cloud")
# Errors about a well-formed frame's content: reply and keep the connection. Every other error closes it.
# BUSY here is a full fine-tune queue (a refused connection never gets this far).
RECOVERABLE = frozenset({ErrorCode.UNKNOWN_APP, ErrorCode.UNKNOWN_SCHEME, ErrorCode.UNKNOWN_CODEC, ErrorCode.BAD_SHAPE,
                         ErrorCode.BUSY})


def limits_for(model: Splittable, max_batch: int) -> Limits:
    """Protocol limits tightened to the largest tensor this model can legitimately receive."""
    points = model.partition_points()
    max_channels = max([model.in_channels] + [pt.channels for pt in points])
    per_sample = max([model.in_channels * model.input_size ** 2] + [pt.channels * pt.height * pt.width
                                                                     for pt in points])
    elements = max_batch * per_sample
    body = 8 * max_batch * max_channels + elements  # worst case: 8-bit codes
    return Limits(max_body=min(body, DEFAULT_LIMITS.max_body), max_elements=min(elements, DEFAULT_LIMITS.max_elements),
                  max_batch=max_batch, max_channels=max_channels)


def widest(limits: list[Limits]) -> Limits:
    """The limits a frame of any of several apps' models fits (its app's own shape is checked after)."""
    return Limits(max_body=max(x.max_body for x in limits), max_elements=max(x.max_elements for x in limits),
                  max_batch=max(x.max_batch for x in limits), max_channels=max(x.max_channels for x in limits))


@dataclass
class Hosted:
    """One app a server hosts: its base model, its tails and its queue."""

    app: App
    base: Splittable
    tails: TailCache
    queue: AppQueue


@dataclass(frozen=True)
class ServerConfig:
    """How a CloudServer serves (see the module doc); checked once here.

    `token`: the shared secret a client's first frame (HELLO) must carry; `tls_cert` / `tls_key`: PEM files for
    TLS (both or neither). `read_timeout`: seconds to receive one frame once started; `idle_timeout`: seconds an
    established connection may wait between frames; `write_timeout`: seconds to hand one reply to the socket;
    `handshake_timeout`: seconds from the accept until a connection must have authenticated (its first frame, a
    HELLO with the token; without a token any valid frame). Admission (`runtime.admission`): `max_clients`
    established connections, `max_pending` not yet authenticated ones (when full, one of the address holding the
    most is dropped for a newcomer), `max_pending_per_peer` of those per IP address, and without a token
    `max_clients_per_peer` established ones per IP address. `max_batch` images per request, `workers` batches
    computed at the same time per app; `batch`: dynamic batching (`runtime.batching`, off by default); `train`:
    a fine-tune loop beside serving (`runtime.training`, None: none). Tails (`runtime.tails`): `cache_size` kept
    and `cache_bytes` of their tensors at most; `finetuned` carries each scheme's fine-tuned weights when they
    exist (`runtime.weights`, under `weights_root`), else the pruned base, logged and counted (`strict_weights`:
    ERROR UNKNOWN_SCHEME instead); `finetune_on_request` fine-tunes a missing scheme (needs a token; at most
    `finetune_queue` waiting or running). `insecure`: allow a non-loopback address without a token
    (`check_bind`).
    """

    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    read_timeout: float = 10.0
    idle_timeout: float = 300.0
    write_timeout: float = 10.0
    handshake_timeout: float = 2.0
    max_clients: int = 64
    max_pending: int = 128
    max_pending_per_peer: int = 8
    max_clients_per_peer: int = 16
    max_batch: int = 64
    batch: BatchPolicy = BatchPolicy()
    train: TrainConfig | None = None
    cache_size: int = 16
    cache_bytes: int = 256 << 20
    workers: int = 1
    finetuned: bool = False
    strict_weights: bool = False
    finetune_on_request: bool = False
    finetune_queue: int = 2
    weights_root: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        for name in ("read_timeout", "idle_timeout", "write_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0):
                raise CoInferError(f"{name} must be a positive finite number of seconds, got {value!r}")
        for name in ("max_clients", "max_pending", "max_pending_per_peer", "max_clients_per_peer", "max_batch",
                     "cache_size", "cache_bytes", "workers", "finetune_queue"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise CoInferError(f"{name} must be an integer of at least 1, got {value!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CoInferError("tls_cert and tls_key go together")
        if self.token == "":
            raise CoInferError("token must not be empty")
        if self.finetune_on_request and self.token is None:
            raise CoInferError("fine-tuning on request needs a token: only authenticated clients may ask for it")
        if (self.finetune_on_request or self.strict_weights) and not self.finetuned:
            raise CoInferError("fine-tuning on request and strict weights need fine-tuned tails")

    @property
    def admission(self) -> AdmissionLimits:
        return AdmissionLimits(self.max_clients, self.max_pending, self.max_pending_per_peer,
                               None if self.token is not None else self.max_clients_per_peer)

    @property
    def tail_policy(self) -> TailPolicy:
        from runtime.tails import TailPolicy
        return TailPolicy(self.finetuned, self.finetune_on_request, self.strict_weights, self.cache_size,
                          self.cache_bytes, self.finetune_queue, self.weights_root)


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback one ("" and 0.0.0.0 / :: are every interface)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, config: ServerConfig) -> None:
    """CoInferError unless `host` is loopback, or the server has a token, or `config.insecure`."""
    if config.token is None and not config.insecure and not is_loopback(host):
        raise CoInferError(f"refusing to serve on non-loopback {host or 'every interface'} without a token "
                           "(give --token / --token-file / $COINFER_TOKEN, or --insecure)")


class CloudServer:
    """The server as an object: `await start(host, port)`, `.port`, `await close()`. See the module doc.

    `app`: the app it hosts, or several (distinct names; `app` is then the first, named in replies to
    frames that name none). `base` is the (first) app's base model when already loaded (else loaded
    here). `hosted` maps each app's name to its `Hosted` record, the one place its base model, tails
    and queue live. The TLS certificate, when configured, is loaded here (CoInferError when it cannot be).
    `stats` counts connections, refusals, requests, replies and errors by code; `snapshot()` adds the
    pools', the queues' and the tail caches' state.
    """

    def __init__(self, app: App | tuple[App, ...] | list[App], config: ServerConfig = ServerConfig(),
                 base: Splittable | None = None) -> None:
        apps = tuple(app) if isinstance(app, (tuple, list)) else (app,)
        if not apps:
            raise CoInferError("a server hosts at least one app")
        names = [a.name for a in apps]
        if len(set(names)) != len(names):
            raise CoInferError(f"apps hosted twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        self.app, self.config = apps[0], config
        from models.build import load_base_model
        from runtime.tails import TailCache
        self.hosted: dict[str, Hosted] = {}
        for i, a in enumerate(apps):
            model = base if base is not None and i == 0 else load_base_model(a)
            self.hosted[a.name] = Hosted(a, model, TailCache(model, config.tail_policy, app=a),
                                         AppQueue(a.name, config.batch, config.workers))
        self.limits = widest([limits_for(h.base, config.max_batch) for h in self.hosted.values()])
        self.token = config.token.encode() if config.token is not None else None
        self.ssl_ctx = tls_context(config.tls_cert, config.tls_key)
        self.read_timeout, self.idle_timeout = config.read_timeout, config.idle_timeout
        self.write_timeout, self.max_clients = config.write_timeout, config.max_clients
        self.stats: Counter[str] = Counter()
        self.admission = Admission(config.admission)
        self._log_quiet: dict[ErrorCode, tuple[float, int]] = {}  # code -> (quiet until, lines left out)
        self._server: asyncio.Server | None = None
        self._housekeeper: asyncio.Future | None = None
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on (the port the OS picked, for port 0)."""
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[:2]

    @property
    def port(self) -> int:
        return self.address[1]

    def snapshot(self) -> dict[str, int]:
        """`stats` plus the pools now, the queues (batches computed) and the tail caches (tails, bytes,
        fallbacks, fine-tunes; summed over the apps)."""
        tails: Counter[str] = Counter()
        for h in self.hosted.values():
            tails.update(h.tails.stats)
        hosted = self.hosted.values()
        return {**self.stats, **tails, "pending_now": len(self.admission.pending),
                "established_now": len(self.admission.established),
                "tails_cached": sum(len(h.tails) for h in hosted), "tails_bytes": sum(h.tails.nbytes for h in hosted),
                "batches": sum(h.queue.batches for h in hosted), "batched_images": sum(h.queue.images for h in hosted)}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (CoInferError for a non-loopback host without a token, see `check_bind`)."""
        check_bind(host, self.config)
        # a deep accept queue: under a connection flood a client's SYN is not dropped (a 1 s retransmit).
        # No ssl= here: asyncio would run the TLS handshake before `_handle`, outside admission; `_handle`
        # admits the connection first and runs the handshake under its deadline (`_start_tls`).
        self._server = await asyncio.start_server(self._handle, host, port, backlog=1024)
        self._housekeeper = asyncio.ensure_future(self._housekeeping())

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting; idle connections close now, requests in flight get `grace` seconds to finish."""
        self._closing = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        if self._server is not None:
            self._server.close()
        slots = self.admission.slots()
        for slot in slots:
            if not slot.busy and slot.task is not None:
                slot.task.cancel()
        tasks = [slot.task for slot in slots if slot.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for h in self.hosted.values():
            await h.queue.close()
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------------------ connection
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        host, port = writer.get_extra_info("peername", ("?", "?"))[:2]
        label = f"{host}:{port}"
        self.stats["connections"] += 1
        if self._closing:
            writer.transport.abort()
            return
        slot, why, evicted = self.admission.admit(str(host), label, task)
        if evicted is not None and evicted.task is not None:
            self.stats["evicted_pending"] += 1
            evicted.task.cancel()
        if slot is None:
            self.stats["refused_peer"] += 1
            log.debug("refused %s: %s", label, why)
            if self.ssl_ctx is None:  # with TLS, no frame: telling the refusal would cost a handshake
                await self._send(writer, Error(0, ErrorCode.BUSY, "too many connections from this address",
                                               self.app.name))
            writer.close()  # no wait: a flood's refusals must stay cheap
            return
        try:
            if self.ssl_ctx is not None and not await self._start_tls(slot, writer):
                return
            await self._serve_connection(slot, reader, writer)
        except (OSError, asyncio.CancelledError) as exc:  # abrupt disconnect, eviction, or shutdown while idle
            log.debug("connection %s ended: %s", label, type(exc).__name__)
        finally:
            self.admission.release(slot)
            if slot.established:
                await self._close(writer)
            else:  # never authenticated (dropped, timed out, refused): close without waiting for the peer
                writer.close()

    async def _start_tls(self, slot: Slot, writer: asyncio.StreamWriter) -> bool:
        """The TLS handshake of an admitted (pending) connection, complete within `handshake_timeout` of the
        accept, as the first frame must be after it; False (counted, the connection to be closed) when it
        stalls, fails or the peer goes."""
        remaining = slot.since + self.config.handshake_timeout - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await writer.start_tls(self.ssl_ctx, ssl_handshake_timeout=max(remaining, 0.0) + 1.0)
        except TimeoutError:
            self.stats["handshake_timeout"] += 1
            self.stats["tls_timeout"] += 1
            return False
        except (ssl.SSLError, OSError, EOFError) as exc:  # not TLS, a bad certificate, a reset
            self.stats["tls_failed"] += 1
            log.debug("TLS handshake with %s failed: %s", slot.label, exc)
            return False
        return True

    async def _housekeeping(self, every_s: float = 1.0, after: int = 256, quiet: int = 32) -> None:
        """Once an attack has passed (`after` connections since the last trim, then a second with fewer than
        `quiet` new ones and the pending pool under a quarter), collect the cycles its dropped connections left
        (cancelled tasks and their exceptions) and give the heap's free pages back to the OS
        (`runtime.memory.trim`), so RSS returns near its level before the attack."""
        from runtime.memory import trim
        at_trim = last = 0
        while True:
            await asyncio.sleep(every_s)
            now = self.stats["connections"]
            calm = now - last < quiet and len(self.admission.pending) <= self.config.max_pending // 4
            last = now
            if now - at_trim >= after and calm:
                at_trim = now
                gc.collect()
                await asyncio.to_thread(trim)
                self.stats["malloc_trims"] += 1

    async def _first_frame(self, reader: asyncio.StreamReader, slot: Slot) -> Message | None:
        """The first frame, complete within `handshake_timeout` of the accept; with a token only a HELLO
        is read (another type: AUTH_REQUIRED, its body unread when large)."""
        deadline = slot.since + self.config.handshake_timeout
        remaining = max(0.0, deadline - time.monotonic())
        expect = MsgType.HELLO if self.token is not None else None
        try:
            async with asyncio.timeout(remaining):
                return await read_frame(reader, self.limits, timeout=self.read_timeout, idle_timeout=None,
                                        expect=expect, refuse=ErrorCode.AUTH_REQUIRED)
        except TimeoutError:
            raise ProtocolError(ErrorCode.TIMEOUT, "not authenticated within "
                                f"{self.config.handshake_timeout:g} s of connecting") from None

    async def _serve_connection(self, slot: Slot, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self._closing:
            try:
                if slot.established:
                    msg = await read_frame(reader, self.limits, timeout=self.read_timeout,
                                           idle_timeout=self.idle_timeout)
                else:
                    msg = await self._first_frame(reader, slot)
            except ProtocolError as exc:
                if exc.code is ErrorCode.AUTH_REQUIRED:
                    self.stats["auth_failed"] += 1
                if exc.code is ErrorCode.TIMEOUT and not slot.established:
                    self.stats["handshake_timeout"] += 1
                await self._refuse(writer, slot, 0, exc, quiet=not slot.established)
                return
            if msg is None:
                return
            if not slot.established:
                if self.token is not None and not await self._authenticate(writer, slot, msg):
                    return
                why = self.admission.establish(slot)
                if why:
                    self.stats["refused_busy"] += 1
                    log.warning("refused %s: %s", slot.label, why)
                    await self._send(writer, Error(getattr(msg, "request_id", 0), ErrorCode.BUSY, "server busy",
                                                   self.app.name))
                    return
                if self.token is not None:
                    await self._send(writer, Hello(self.app.name, request_id=msg.request_id))
                    continue
            if isinstance(msg, Hello):  # no token configured, or a repeated HELLO: acknowledge
                await self._send(writer, Hello(self.app.name, request_id=msg.request_id))
                continue
            if not isinstance(msg, Request):
                unexpected = ProtocolError(ErrorCode.UNEXPECTED, f"unexpected {type(msg).__name__} from a client")
                await self._refuse(writer, slot, 0, unexpected)
                return
            slot.busy = True
            try:
                answer = await self._answer(msg, slot)
                await self._send(writer, answer)
            finally:
                slot.busy = False
            if isinstance(answer, Error) and answer.code not in RECOVERABLE:
                return

    async def _authenticate(self, writer: asyncio.StreamWriter, slot: Slot, msg: Message) -> bool:
        """Whether `msg` is a HELLO with the token (compared in constant time); else ERROR AUTH_REQUIRED
        (an empty token) or AUTH_FAILED."""
        assert self.token is not None and isinstance(msg, Hello)
        if not msg.token:  # a client configured without a token
            self.stats["auth_failed"] += 1
            await self._refuse(writer, slot, msg.request_id,
                               ProtocolError(ErrorCode.AUTH_REQUIRED, "authentication required: no token given"),
                               quiet=True)
            return False
        if not hmac.compare_digest(msg.token, self.token):
            self.stats["auth_failed"] += 1
            await self._refuse(writer, slot, msg.request_id, ProtocolError(ErrorCode.AUTH_FAILED, "wrong token"),
                               quiet=True)
            return False
        return True

    async def _refuse(self, writer: asyncio.StreamWriter, slot: Slot, request_id: int, exc: ProtocolError,
                      quiet: bool = False) -> None:
        """Count, log and send the ERROR. `quiet` (a connection that never authenticated): at most one
        log line per second per error code, saying how many it left out (a flood must not flood the log)."""
        self.stats[f"error_{exc.code.name.lower()}"] += 1
        if quiet:
            now = time.monotonic()
            until, left_out = self._log_quiet.get(exc.code, (0.0, 0))
            if now < until:
                self._log_quiet[exc.code] = (until, left_out + 1)
            else:
                self._log_quiet[exc.code] = (now + 1.0, 0)
                more = f" (and {left_out} more not logged)" if left_out else ""
                log.warning("%s from %s: %s%s", exc.code.name, slot.label, exc.message, more)
        else:
            log.warning("%s from %s: %s", exc.code.name, slot.label, exc.message)
        await self._send(writer, Error(request_id, exc.code, exc.message, self.app.name))

    async def _send(self, writer: asyncio.StreamWriter, msg: Message) -> None:
        with contextlib.suppress(OSError, TimeoutError):  # the peer may be gone; the caller closes
            writer.write(encode(msg))
            if writer.transport.get_write_buffer_size():  # the socket did not take it all at once
                await asyncio.wait_for(writer.drain(), self.write_timeout)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)

    # ------------------------------------------------------------------------------- requests
    async def _answer(self, req: Request, slot: Slot) -> Reply | Error:
        self.stats["requests"] += 1
        t0 = time.perf_counter()
        hosted = self.hosted.get(req.app)
        app_name = hosted.app.name if hosted is not None else self.app.name
        try:
            if hosted is None:
                raise ProtocolError(ErrorCode.UNKNOWN_APP, f"this server hosts {', '.join(map(repr, self.hosted))}, "
                                    f"not {req.app!r}")
            hosted.tails.check(req.scheme, req.shape)
            req.codec  # noqa: B018  # ERROR UNKNOWN_CODEC (recoverable) before any tail is loaded
            # the tail first, outside the queue: a load (or a fine-tune on request) does not hold up others
            tail = hosted.tails.cached(req.scheme) or await asyncio.to_thread(hosted.tails.get, req.scheme)
            t1 = time.perf_counter()
            reply, waited = await hosted.queue.submit(req, tail)
        except ProtocolError as exc:
            self.stats[f"error_{exc.code.name.lower()}"] += 1
            log.warning("%s from %s, request %d: %s", exc.code.name, slot.label, req.request_id, exc.message)
            return Error(req.request_id, exc.code, exc.message, app_name)
        except Exception:  # a bug on this side: tell the client, keep the server up
            self.stats["error_internal"] += 1
            log.exception("request %d from %s failed", req.request_id, slot.label)
            return Error(req.request_id, ErrorCode.INTERNAL, "internal error", app_name)
        self.stats["replies"] += 1
        log.info("request %d from %s scheme=%s n=%d body=%dB tail=%.2fms queue=%.2fms unpack=%.2fms compute=%.2fms",
                 req.request_id, slot.label, req.scheme, req.shape[0], len(req.body), (t1 - t0) * 1e3, waited * 1e3,
                 reply.unpack_s * 1e3, reply.compute_s * 1e3)
        return reply


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


def _tails_mode(config: ServerConfig) -> str:
    if not config.finetuned:
        return "pruned base weights"
    missing = (f"fine-tuned on request (queue {config.finetune_queue})" if config.finetune_on_request
               else "refused (UNKNOWN_SCHEME)" if config.strict_weights else "pruned base weights, logged")
    return f"fine-tuned weights where they exist, else {missing}"


async def serve(app: App | tuple[App, ...], config: ServerConfig = ServerConfig(), host: str = "127.0.0.1",
                port: int = 0, *, base: Splittable | None = None, stop: asyncio.Event | None = None,
                on_ready: Callable[[CloudServer], None] | None = None) -> CloudServer:
    """Run a CloudServer until SIGTERM / SIGINT or `stop` is set; returns it (with its stats) once closed.

    With `config.train` the training co-run starts before the server listens and stops after it has
    closed; its samples and fine-tunes join the stats (`train_samples`, `train_finetunes`,
    `train_samples_per_s`). `on_ready(server)` is called once it listens (the CLI prints the
    readiness line there).
    """
    server = CloudServer(app, config, base)
    training = TrainingCorun(config.train) if config.train is not None else None
    try:
        await server.start(host, port)
    except BaseException:
        await server.close()
        raise
    if training is not None:
        training.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / not on this OS
            loop.add_signal_handler(sig, stop.set)
    log.info("serving app %s on %s:%d%s%s; tails: %s; batching: %s; training: %s", ", ".join(server.hosted), host,
             server.port, " with TLS" if server.ssl_ctx else "", " with token" if config.token else "",
             _tails_mode(config), f"up to {config.batch.max_images} images, {config.batch.max_wait_s * 1e3:g} ms"
             if config.batch.enabled else "off", f"{config.train.app} ({config.train.sched}) at nice "
             f"{config.train.nice}, {config.train.threads} thread(s)" if config.train else "none")
    if on_ready is not None:
        on_ready(server)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.close()
        if training is not None:
            done = training.stop()
            server.stats.update(train_samples=done.samples, train_finetunes=done.finetunes,
                                train_samples_per_s=round(done.rate))
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


@dataclass(frozen=True)
class Launch:
    """One `python -m runtime.cloud` run, as the CLI parsed it: the apps to host (names or YAML paths), where
    to listen (`port` 0: a free one), torch threads per computation, JSON logs and stats, and the
    `ServerConfig`. Checked once here (a bad value is one CoInferError line)."""

    apps: tuple[str, ...]
    server: ServerConfig = ServerConfig()
    host: str = "127.0.0.1"
    port: int = 5000
    threads: int = 1
    json_logs: bool = False

    def __post_init__(self) -> None:
        if not self.apps or not all(self.apps):
            raise CoInferError(f"--app {','.join(self.apps)!r}: an empty app name")
        if not (isinstance(self.threads, int) and self.threads >= 1):
            raise CoInferError("--threads must be at least 1")
        if not 0 <= self.port <= 65535:
            raise CoInferError(f"--port {self.port} outside 0..65535")
        check_bind(self.host, self.server)


def run_server(launch: Launch, on_ready: Callable[[CloudServer], None] | None = None) -> dict[str, int]:
    """Log to stderr, load the apps, serve until SIGTERM / SIGINT (`serve`); the counters that moved.

    `on_ready(server)` once it listens (default: the readiness line on stdout, `runtime.ready`). A port
    that cannot be bound is one CoInferError line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if launch.json_logs
                         else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    import torch
    torch.set_num_threads(launch.threads)
    apps = tuple(load_app(ref) for ref in launch.apps)
    if launch.server.train is not None:
        load_app(launch.server.train.app)  # a bad name is one line now, not a dead child later
    def announce_ready(server: CloudServer) -> None:
        announce(*server.address, app=",".join(server.hosted))

    try:
        server = asyncio.run(serve(apps, launch.server, launch.host, launch.port, on_ready=on_ready or announce_ready))
    except OSError as exc:
        raise CoInferError(f"cannot serve on {launch.host}:{launch.port}: {exc.strerror or exc}") from None
    return {k: v for k, v in sorted(server.snapshot().items()) if v}


def _parser() -> ArgParser:
    ap = ArgParser(prog="python -m runtime.cloud", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP, help="app name or YAML path; several, comma-separated, share "
                                                      "this process (a queue each)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; another needs a token "
                                                        "or --insecure)")
    ap.add_argument("--port", type=int, default=5000, help="0 picks a free port (announced on stdout)")
    ap.add_argument("--token", help="shared secret the client must send first (HELLO); visible in ps: prefer "
                                    "--token-file or $COINFER_TOKEN")
    ap.add_argument("--token-file", help="read the token from the first line of this file")
    ap.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--read-timeout", type=float, default=10.0, help="seconds to receive one frame once started")
    ap.add_argument("--idle-timeout", type=float, default=300.0, help="seconds a connection may wait between frames")
    ap.add_argument("--handshake-timeout", type=float, default=2.0,
                    help="seconds from connecting until a client must have authenticated (its first frame)")
    ap.add_argument("--max-clients", type=int, default=64, help="authenticated connections at once")
    ap.add_argument("--max-pending", type=int, default=128, help="unauthenticated connections at once")
    ap.add_argument("--max-pending-per-peer", type=int, default=8, help="unauthenticated connections per address")
    ap.add_argument("--max-clients-per-peer", type=int, default=16,
                    help="connections per address once they have spoken (only without a token)")
    ap.add_argument("--max-batch", type=int, default=64, help="largest N accepted in one request")
    ap.add_argument("--batch-images", type=int, default=1,
                    help="dynamic batching: merge up to this many images of one app and scheme (1: off, the default)")
    ap.add_argument("--batch-wait-ms", type=float, default=2.0, help="longest a batch waits to fill, ms")
    ap.add_argument("--train", metavar="APP", help="run the accuracy database's fine-tune loop on APP beside serving")
    ap.add_argument("--train-nice", type=int, default=19, help="the training's nice value (0..19; 19 protects "
                                                               "inference latency)")
    ap.add_argument("--train-threads", type=int, default=1, help="torch threads of the training")
    ap.add_argument("--train-sched", default="idle", help="idle (SCHED_IDLE, the default: the training gets only "
                                                          "CPU time serving leaves) or normal (at --train-nice)")
    ap.add_argument("--train-progress", help="CSV the training appends time,samples,finetunes to")
    ap.add_argument("--cache-size", type=int, default=16, help="tails kept in memory (LRU)")
    ap.add_argument("--cache-mb", type=float, default=256.0, help="megabytes of tail tensors kept in memory (LRU)")
    ap.add_argument("--workers", type=int, default=1, help="requests computed at the same time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per computation")
    ap.add_argument("--finetuned", action=argparse.BooleanOptionalAction, default=True,
                    help="tails with each scheme's fine-tuned weights when they exist (runtime.weights; default; "
                         "else the pruned base, logged) or always the pruned base")
    ap.add_argument("--strict-weights", action="store_true",
                    help="a scheme without fine-tuned weights gets ERROR UNKNOWN_SCHEME instead of base weights")
    ap.add_argument("--finetune-on-request", action="store_true",
                    help="fine-tune a scheme whose weights are missing when a client asks (needs a token; bounded)")
    ap.add_argument("--finetune-queue", type=int, default=2, help="fine-tunes on request waiting or running at most")
    ap.add_argument("--json", action="store_true", help="log lines as JSON objects; final stats as JSON")
    return ap


def parse(argv: list[str] | None = None) -> Launch:
    """The command line as a checked `Launch` (its `ServerConfig` built here)."""
    args = _parser().parse_args(argv)
    if not (math.isfinite(args.cache_mb) and args.cache_mb > 0):
        raise CoInferError(f"--cache-mb must be a positive number, got {args.cache_mb}")
    if args.train_progress is not None:
        from cli.files import check_output
        named = [a.strip() for a in f"{args.app},{args.train or ''}".split(",")]
        yamls = [a for a in named if a.endswith((".yml", ".yaml"))]  # app YAML files (a name is no file)
        check_output(args.train_progress, "training progress", (args.token_file, args.tls_cert, args.tls_key, *yamls))
    train = (TrainConfig(args.train, args.train_nice, args.train_threads, args.train_progress,
                         sched=args.train_sched) if args.train is not None else None)
    config = ServerConfig(token=resolve_token(args.token, args.token_file), tls_cert=args.tls_cert,
                          tls_key=args.tls_key, read_timeout=args.read_timeout, idle_timeout=args.idle_timeout,
                          handshake_timeout=args.handshake_timeout, max_clients=args.max_clients,
                          max_pending=args.max_pending, max_pending_per_peer=args.max_pending_per_peer,
                          max_clients_per_peer=args.max_clients_per_peer, max_batch=args.max_batch,
                          batch=BatchPolicy(args.batch_images, args.batch_wait_ms / 1e3), train=train,
                          cache_size=args.cache_size, cache_bytes=max(1, int(args.cache_mb * (1 << 20))),
                          workers=args.workers, finetuned=args.finetuned, strict_weights=args.strict_weights,
                          finetune_on_request=args.finetune_on_request, finetune_queue=args.finetune_queue,
                          insecure=args.insecure)
    return Launch(tuple(a.strip() for a in args.app.split(",")), config, args.host, args.port, args.threads,
                  args.json)


def main(argv: list[str] | None = None) -> int:
    launch = parse(argv)
    stats = run_server(launch)
    print(json.dumps(stats) if launch.json_logs else " ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
