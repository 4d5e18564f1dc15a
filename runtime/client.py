"""The edge's connection to a cloud server: run the head, quantise and pack the cut, send it, receive
the prediction.

    config = ClientConfig(host="127.0.0.1", port=5000, k=1)
    async with EdgeClient(app, Scheme(4, 12, 3), config) as client:
        prediction = await client.infer(x)        # classes, scores, Timings of every stage

`ClientConfig` says where the cloud is and how to talk to it (built once, e.g. by `runtime.edge`'s
CLI); `EdgeClient` adds what changes while it runs: the scheme (`use`), and optionally an uplink
shaper, a bandwidth monitor and an emulated edge device. A split scheme runs its head here and
its tail in the cloud; all-cloud sends the input quantised to 8 bits per channel; all-edge runs the
whole base model here and uses no network.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

import codec as codecs
from cli.errors import CoInferError, Unreachable
from compress import activation
from compress.model import SchemeModel
from compress.prune import check_scheme
from compress.scheme import ALL_CLOUD, Scheme
from devices.slowdown import SlowCPU
from runtime.monitor import BandwidthEstimator, TokenBucket
from runtime.protocol import MAX_TOPK, Error, ErrorCode, Hello, ProtocolError, Reply, Request, encode, read_frame

if TYPE_CHECKING:  # an edge running an exported artifact (runtime/artifact.py) has neither apps nor models
    from apps import App
    from models.splittable import Splittable

# a reply that never came or stopped mid-frame: the link or the server is gone, not a bad frame
_LINK_FAILURES = (ErrorCode.TIMEOUT, ErrorCode.TRUNCATED)


class RemoteError(CoInferError):
    """The cloud answered with an ERROR frame."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code = code


@dataclass
class Timings:
    """Seconds per stage of one request, and bytes on the wire (request frame up, reply frame down)."""

    edge_s: float
    pack_s: float = 0.0  # quantise + pack + frame
    transfer_s: float = 0.0  # round trip minus the cloud's unpack and compute: network, queueing, framing
    cloud_unpack_s: float = 0.0
    cloud_compute_s: float = 0.0
    total_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class Prediction:
    """The answer to one request: the top-k classes and their scores per input, and the stages' times."""

    classes: list[list[int]]  # N x k, best first
    scores: list[list[float]]
    timings: Timings = field(default_factory=lambda: Timings(0.0))


@dataclass(frozen=True)
class ClientConfig:
    """How the edge talks to the cloud; built once (the CLI builds it from its flags).

    `host`, `port`: the cloud server. `token`: sent in the HELLO after connecting (None: an empty one).
    `ssl_ctx`: use TLS with this context, checking the certificate against `server_hostname` (None:
    `host`). `timeout`: seconds for connecting and for each reply. `k`: classes per prediction
    (1..MAX_TOPK). `codec`: the codec of every request body (`codec.names()`). `finetuned`: each split
    scheme's head runs with its fine-tuned weights (`runtime.weights` under `weights_root`, the same
    file the cloud's tail comes from), otherwise with the pruned base weights; the cloud must do the same.
    """

    host: str = "127.0.0.1"
    port: int = 5000
    token: str | None = None
    timeout: float = 30.0
    k: int = 5
    finetuned: bool = False
    weights_root: str | None = None
    finetune_missing: bool = False  # a split scheme with no stored weights is fine-tuned here (else MissingWeights)
    ssl_ctx: ssl.SSLContext | None = None
    server_hostname: str | None = None
    codec: str = "bitpack"  # how the activation is written (`codec`; the cloud decodes any registered one)

    def __post_init__(self) -> None:
        codecs.get(self.codec)  # CoInferError naming the known codecs
        if not 1 <= self.k <= MAX_TOPK:
            raise CoInferError(f"top-k {self.k} outside 1..{MAX_TOPK}")
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout) and self.timeout > 0):
            raise CoInferError(f"timeout must be a positive finite number of seconds, got {self.timeout!r}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class EdgeClient:
    """A connection to a cloud server. `async with EdgeClient(app, scheme, config) as c: await c.infer(x)`.

    `base`: the app's base model (loaded on first use when None). `use(scheme)` switches scheme
    between requests (the protocol names the scheme in every request). With a `shaper`
    (TokenBucket) each request frame waits for the bucket first: loopback emulation of a slow link
    when tc is unavailable. With a `monitor` (BandwidthEstimator) each transfer feeds it. With a
    `device` (devices.slowdown.SlowCPU) the head and quantise + pack stages take as long as on that
    slower device: the emulated edge of the testbed (`COINFER_SPEED`). The three may be
    replaced between requests.
    """

    def __init__(self, app: App, scheme: Scheme, config: ClientConfig = ClientConfig(), *,
                 base: Splittable | None = None, shaper: TokenBucket | None = None,
                 monitor: BandwidthEstimator | None = None, device: SlowCPU | None = None,
                 models: dict[Scheme, nn.Module | None] | None = None) -> None:
        self.app, self.config = app, config
        self._codec = codecs.get(config.codec)
        self._base = base
        self._models: dict[Scheme, nn.Module | None] = dict(models or {})  # given: an exported split's
        self.use(scheme)
        self.shaper, self.monitor, self.device = shaper, monitor, device
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 1

    @property
    def base(self) -> Splittable:
        if self._base is None:
            from models.build import load_base_model
            self._base = load_base_model(self.app)
        return self._base

    def model_for(self, scheme: Scheme) -> nn.Module | None:
        """The edge's model of a scheme (built once): SchemeModel, the base model, or None (all-cloud)."""
        if scheme not in self._models:
            if scheme.is_all_cloud:
                model = None
            elif scheme.is_split:
                check_scheme(self.base, *scheme)
                if self.config.finetuned:
                    from runtime.weights import scheme_model
                    model = scheme_model(self.app, scheme, base=self.base, root=self.config.weights_root,
                                         train=self.config.finetune_missing)
                else:
                    model = SchemeModel(self.base, scheme).eval()
            else:
                model = self.base.eval()
            self._models[scheme] = model
        return self._models[scheme]

    def use(self, scheme: Scheme) -> None:
        """Run `scheme` from the next request on (its model is built now)."""
        self._model = self.model_for(scheme)
        self.scheme = scheme

    async def __aenter__(self) -> EdgeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, force: bool = False) -> None:
        """Open the connection and say HELLO (with the token when set); no-op for all-edge unless `force`."""
        if (self.scheme.is_all_edge and not force) or self._writer is not None:
            return
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    cfg.host, cfg.port, ssl=cfg.ssl_ctx, server_hostname=cfg.server_hostname if cfg.ssl_ctx else None)
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"cannot connect to {cfg.address}: {exc or type(exc).__name__}") from None
        # always a HELLO first (empty without a token): the server admits a connection only once it has
        # spoken, within its pre-auth deadline, however long this side waits before its first request
        token = cfg.token.encode() if cfg.token is not None else b""
        answer = await self._roundtrip(encode(Hello(self.app.name, token, self._take_id())))
        if not isinstance(answer, Hello):
            raise CoInferError(f"expected a HELLO acknowledgement, got {type(answer).__name__}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            except (OSError, TimeoutError):
                pass
            self._reader = self._writer = None

    def lost(self, why: object) -> Unreachable:
        """The one-line error (exit status 3) for a connection that broke or went silent mid-run."""
        return Unreachable(f"connection to {self.config.address} lost: {why or type(why).__name__}")

    def _take_id(self) -> int:
        rid, self._next_id = self._next_id, (self._next_id + 1) & 0xFFFFFFFF
        return rid

    async def _roundtrip(self, frame: bytes) -> Reply | Hello:
        if self._reader is None or self._writer is None:
            raise CoInferError("not connected")
        if self.shaper is not None:
            await self.shaper.send(len(frame))
        try:
            self._writer.write(frame)
            await self._writer.drain()
            answer = await read_frame(self._reader, timeout=self.config.timeout, idle_timeout=self.config.timeout)
        except OSError as exc:
            raise self.lost(exc) from None
        except ProtocolError as exc:
            if exc.code in _LINK_FAILURES:
                raise self.lost(exc) from None
            raise
        if answer is None:
            raise self.lost("the server closed it")
        if isinstance(answer, Error):
            raise RemoteError(answer.code, answer.message)
        if not isinstance(answer, Reply | Hello):
            raise CoInferError(f"unexpected {type(answer).__name__} from the server")
        return answer

    def _on_device(self, fn, *args):
        """(fn(*args), seconds): this CPU's wall time, or the emulated device's when there is one."""
        if self.device is not None:
            return self.device.call(fn, *args)
        t0 = time.perf_counter()
        result = fn(*args)
        return result, time.perf_counter() - t0

    def _compute_head(self, x: torch.Tensor) -> torch.Tensor | Prediction:
        with torch.inference_mode():
            if self.scheme.is_split:  # a SchemeModel, or an exported split (runtime/artifact.py)
                return self._model.head(x)
            if self._model is not None:  # all-edge
                probs = torch.softmax(self._model(x).float(), dim=1)
                scores, classes = probs.topk(min(self.config.k, probs.shape[1]), dim=1)
                return Prediction(classes.tolist(), scores.tolist())
            return x  # all-cloud: the input itself goes to the cloud

    def _edge_work(self, x: torch.Tensor) -> tuple[torch.Tensor | Prediction, bytes | None, float, float]:
        """What the edge device computes for one request: the head's output (all-edge: the prediction),
        the activation's bytes (quantise + pack), and the CPU seconds of each part."""
        c0 = time.thread_time()
        out = self._compute_head(x)
        c1 = time.thread_time()
        body = None if isinstance(out, Prediction) else activation.to_bytes(out, self.scheme.wire(out.shape[1])[2],
                                                                            self._codec)
        return out, body, c1 - c0, time.thread_time() - c1

    def _edge(self, x: torch.Tensor) -> tuple[torch.Tensor | Prediction, bytes | None, float, float]:
        """The edge stage as one piece of device work (as the profiler times it): (head output, body,
        edge seconds, quantise + pack seconds), its time split between the two by their CPU time."""
        (out, body, cpu_head, cpu_pack), seconds = self._on_device(self._edge_work, x)
        head_share = cpu_head / (cpu_head + cpu_pack) if cpu_head + cpu_pack > 0 else 1.0
        if isinstance(out, Prediction):
            out.timings = Timings(seconds, total_s=seconds)
        return out, body, seconds * head_share, seconds * (1 - head_share)

    def _request(self, a: torch.Tensor, scheme: Scheme, body: bytes | None = None) -> tuple[Request, bytes]:
        """The REQUEST and its frame (header + CRC; at full speed, not part of the emulated device's work)."""
        p, c, bits = scheme.wire(a.shape[1])
        request = Request(self._take_id(), self.app.name, p, c, bits, self.config.k, tuple(a.shape),
                          activation.to_bytes(a, bits, self._codec) if body is None else body, self._codec.wire_id)
        return request, encode(request)

    def _finish(self, request: Request, reply: Reply | Hello, frame: bytes, edge_s: float, pack_s: float,
                wire_s: float, probe: bool = False) -> Prediction:
        if not isinstance(reply, Reply) or reply.request_id != request.request_id:
            raise CoInferError(f"reply does not answer request {request.request_id}")
        transfer = wire_s - reply.unpack_s - reply.compute_s
        if self.monitor is not None:
            self.monitor.observe(len(frame), transfer, probe)
        timings = Timings(edge_s, pack_s, transfer, reply.unpack_s, reply.compute_s, edge_s + pack_s + wire_s,
                          len(frame), len(encode(reply)))
        return Prediction([list(row) for row in reply.classes], [list(row) for row in reply.scores], timings)

    async def infer(self, x: torch.Tensor) -> Prediction:
        """Prediction for a batch x (N, C, H, W) of inputs, with the time of each stage."""
        a, body, edge_s, pack_s = self._edge(x)
        if isinstance(a, Prediction):
            return a
        t1 = time.perf_counter()
        request, frame = self._request(a, self.scheme, body)
        t2 = time.perf_counter()
        pack_s += t2 - t1
        reply = await self._roundtrip(frame)
        return self._finish(request, reply, frame, edge_s, pack_s, time.perf_counter() - t2)

    async def ping(self) -> tuple[float, int]:
        """One HELLO round trip (no body, no compute): (seconds, bytes of the frame sent)."""
        await self.connect(force=True)
        hello = encode(Hello(self.app.name, b"", self._take_id()))
        t0 = time.perf_counter()
        await self._roundtrip(hello)
        return time.perf_counter() - t0, len(hello)

    async def probe(self, images: int | None = None) -> float | None:
        """Measure the uplink: a HELLO round trip (no body, no compute: the size-independent floor), then
        an all-cloud request of `images` blank inputs (about C*H*W bytes each at 8 bits; None: as many as the
        monitor's probe size, `BandwidthEstimator.probe_size`, at least one); both feed the monitor, which
        counts the probe. Returns its estimate (Mbps)."""
        seconds, size = await self.ping()
        if self.monitor is not None:
            self.monitor.observe(size, seconds, probe=True)
        per_image = self.app.in_channels * (self.app.input_size ** 2 + 8)
        if images is None:
            images = max(1, self.monitor.probe_size() // per_image) if self.monitor is not None else 16
        if self.monitor is not None:
            self.monitor.probed(size + images * per_image)
        x = torch.zeros(images, self.app.in_channels, self.app.input_size, self.app.input_size)
        x[:, :, 0, 0] = 1.0  # a non-constant channel: scale > 0
        request, frame = self._request(x, ALL_CLOUD)
        t0 = time.perf_counter()
        reply = await self._roundtrip(frame)
        self._finish(request, reply, frame, 0.0, 0.0, time.perf_counter() - t0, probe=True)
        return None if self.monitor is None else self.monitor.mbps

    async def infer_queue(self, images: torch.Tensor, depth: int = 2) -> list[Prediction]:
        """Queue mode (Neurosurgeon): one image per request, the head of the next task computed while
        up to `depth` requests are in flight; replies come back in order on the one connection.
        `total_s` of each prediction is from its head's start to its reply."""
        if self.scheme.is_all_edge:
            return [self._edge(images[i:i + 1])[0] for i in range(len(images))]
        if self._reader is None or self._writer is None:
            raise CoInferError("not connected")
        reader, writer = self._reader, self._writer
        inflight: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(depth)
        out: list[Prediction] = []

        async def receive() -> None:
            for _ in range(len(images)):
                request, frame, t0, edge_s, pack_s, t_sent = await inflight.get()
                try:
                    answer = await read_frame(reader, timeout=self.config.timeout, idle_timeout=self.config.timeout)
                except ProtocolError as exc:
                    if exc.code in _LINK_FAILURES:
                        raise self.lost(exc) from None
                    raise
                if answer is None:
                    raise self.lost("the server closed it")
                if isinstance(answer, Error):
                    raise RemoteError(answer.code, answer.message)
                now = time.perf_counter()
                pred = self._finish(request, answer, frame, edge_s, pack_s, now - t_sent)
                pred.timings.total_s = now - t0
                out.append(pred)
                slots.release()

        receiver = asyncio.create_task(receive())
        try:
            for i in range(len(images)):
                await slots.acquire()
                if receiver.done():
                    break
                t0 = time.perf_counter()
                a, body, edge_s, pack_s = await asyncio.to_thread(self._edge, images[i:i + 1])
                t1 = time.perf_counter()
                request, frame = self._request(a, self.scheme, body)
                t_sent = time.perf_counter()
                pack_s += t_sent - t1
                if self.shaper is not None:
                    await self.shaper.send(len(frame))
                writer.write(frame)
                await writer.drain()
                inflight.put_nowait((request, frame, t0, edge_s, pack_s, t_sent))
            await receiver
        except OSError as exc:
            raise self.lost(exc) from None
        finally:
            if not receiver.done():
                receiver.cancel()
        return out
