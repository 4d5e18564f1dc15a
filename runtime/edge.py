"""Edge side: run the head, quantise and pack the cut, send it, receive the prediction.

    python -m runtime.edge --app vgg16_digits --server 127.0.0.1:5000 --scheme 4,12,3 [--n 50] [--token T] [--json]
    python -m runtime.edge --server HOST:PORT --auto -accuracy_loss 0.01 [--adapt] [--queue] [--rate-limit MBPS]

`--scheme p,c,b` splits at point p with c channels at b bits; `all-cloud` sends the raw input
quantised to 8 bits per channel (p = -1 on the wire, the cloud runs the whole base model);
`all-edge` runs the whole base model here and uses no network. Split schemes run with their
fine-tuned weights (`runtime.weights`; `--no-finetuned`: pruned base weights, and the cloud must
match). Each of the first n test images is one request; the report gives the median time of each
stage (edge compute, quantise + pack, transfer + wait, cloud unpack, cloud compute), the bytes on
the wire and the accuracy of the predictions that came back. `EdgeClient` is the same thing as a
class for tests and benchmarks.

`--auto` probes the uplink (or starts from `--bandwidth`), then picks the scheme with the search
(a latency query at the estimate, `search.runner.run_search` over the app's accuracy database).
`--adapt` precomputes the optimal scheme on a log grid of 0.125..8 Mbps and, before every
request, runs the frontier scheme the latency model predicts fastest at the current estimate
(`runtime.monitor`). `--queue` pipelines the requests (Neurosurgeon's queue mode; with `--auto`
the scheme minimises the slowest stage instead of the sum).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from apps import DEFAULT_APP, App, load_app
from apps.errors import CoInferError, run_cli
from compress import activation
from compress.model import SchemeModel
from compress.prune import check_scheme
from compress.scheme import ALL_CLOUD, Scheme
from database.slowdown import SlowCPU
from models.build import load_base_model
from models.vgg import VGG
from runtime.monitor import BandwidthEstimator, TokenBucket
from runtime.protocol import MAX_TOPK, Error, Hello, Reply, Request, encode, read_frame


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
    classes: list[list[int]]  # N x k, best first
    scores: list[list[float]]
    timings: Timings = field(default_factory=lambda: Timings(0.0))


class EdgeClient:
    """A connection to a cloud server. `async with EdgeClient(...) as c: await c.infer(x)`.

    `finetuned` runs each split scheme's head with its fine-tuned weights (`runtime.weights`, the
    same file the cloud's tail comes from); otherwise the pruned base weights. `use(scheme)`
    switches scheme between requests (the protocol names the scheme in every request). With a
    `shaper` (TokenBucket) each request frame waits for the bucket first: loopback emulation of a
    slow link when tc is unavailable. With a `monitor` (BandwidthEstimator) each transfer feeds it.
    With a `device` (database.slowdown.SlowCPU) the head and quantise + pack stages take as long as
    on that slower device: the emulated edge of the testbed (`COINFER_EDGE_SPEED`).
    """

    def __init__(self, app: App, scheme: Scheme, base: VGG | None = None, *, host: str = "127.0.0.1",
                 port: int = 5000, token: str | None = None, ssl_ctx: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, k: int = 5, timeout: float = 30.0, finetuned: bool = False,
                 weights_root: str | None = None, shaper: TokenBucket | None = None,
                 monitor: BandwidthEstimator | None = None, device: SlowCPU | None = None) -> None:
        if not 1 <= k <= MAX_TOPK:
            raise CoInferError(f"top-k {k} outside 1..{MAX_TOPK}")
        self.app, self.k = app, k
        self._base = base
        self.finetuned, self.weights_root = finetuned, weights_root
        self._models: dict[Scheme, nn.Module | None] = {}
        self.use(scheme)
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self.ssl_ctx, self.server_hostname = ssl_ctx, server_hostname
        self.shaper, self.monitor, self.device = shaper, monitor, device
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 1

    @property
    def base(self) -> VGG:
        if self._base is None:
            self._base = load_base_model(self.app)
        return self._base

    def model_for(self, scheme: Scheme) -> nn.Module | None:
        """The edge's model of a scheme (built once): SchemeModel, the base model, or None (all-cloud)."""
        if scheme not in self._models:
            if scheme.is_all_cloud:
                model = None
            elif scheme.is_split:
                check_scheme(self.base, *scheme)
                if self.finetuned:
                    from runtime.weights import scheme_model
                    model = scheme_model(self.app, scheme, base=self.base, root=self.weights_root)
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
        """Open the connection (and authenticate when a token is set); no-op for all-edge unless `force`."""
        if (self.scheme.is_all_edge and not force) or self._writer is not None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl_ctx,
                    server_hostname=self.server_hostname if self.ssl_ctx else None)
        except (OSError, TimeoutError) as exc:
            raise CoInferError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        if self.token is not None:
            answer = await self._roundtrip(encode(Hello(self.app.name, self.token.encode(), self._take_id())))
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
            answer = await read_frame(self._reader, timeout=self.timeout, idle_timeout=self.timeout)
        except OSError as exc:
            raise CoInferError(f"connection to {self.host}:{self.port} lost: {exc}") from None
        if answer is None:
            raise CoInferError("server closed the connection")
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
            if isinstance(self._model, SchemeModel):
                return self._model.head(x)
            if self._model is not None:  # all-edge
                probs = torch.softmax(self._model(x).float(), dim=1)
                scores, classes = probs.topk(min(self.k, probs.shape[1]), dim=1)
                return Prediction(classes.tolist(), scores.tolist())
            return x  # all-cloud: the input itself goes to the cloud

    def _edge_work(self, x: torch.Tensor) -> tuple[torch.Tensor | Prediction, bytes | None, float, float]:
        """What the edge device computes for one request: the head's output (all-edge: the prediction),
        the activation's bytes (quantise + pack), and the CPU seconds of each part."""
        c0 = time.thread_time()
        out = self._compute_head(x)
        c1 = time.thread_time()
        body = None if isinstance(out, Prediction) else activation.to_bytes(out, self.scheme.wire(out.shape[1])[2])
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
        request = Request(self._take_id(), self.app.name, p, c, bits, self.k,
                          tuple(a.shape), activation.to_bytes(a, bits) if body is None else body)
        return request, encode(request)

    def _finish(self, request: Request, reply: Reply | Hello, frame: bytes, edge_s: float, pack_s: float,
                wire_s: float) -> Prediction:
        if not isinstance(reply, Reply) or reply.request_id != request.request_id:
            raise CoInferError(f"reply does not answer request {request.request_id}")
        transfer = wire_s - reply.unpack_s - reply.compute_s
        if self.monitor is not None:
            self.monitor.observe(len(frame), transfer)
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

    async def probe(self, images: int = 16) -> float | None:
        """Measure the uplink: a HELLO round trip (no body, no compute: the size-independent floor), then
        an all-cloud request of `images` blank inputs (about 1 KiB each at 8 bits); both feed the monitor.
        Returns its estimate (Mbps)."""
        seconds, size = await self.ping()
        if self.monitor is not None:
            self.monitor.observe(size, seconds)
        x = torch.zeros(images, self.app.in_channels, self.app.input_size, self.app.input_size)
        x[:, :, 0, 0] = 1.0  # a non-constant channel: scale > 0
        request, frame = self._request(x, ALL_CLOUD)
        t0 = time.perf_counter()
        reply = await self._roundtrip(frame)
        self._finish(request, reply, frame, 0.0, 0.0, time.perf_counter() - t0)
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
                answer = await read_frame(reader, timeout=self.timeout, idle_timeout=self.timeout)
                if answer is None:
                    raise CoInferError("server closed the connection")
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
            raise CoInferError(f"connection to {self.host}:{self.port} lost: {exc}") from None
        finally:
            if not receiver.done():
                receiver.cancel()
        return out


# ------------------------------------------------------------------------------------------ CLI
class Planner:
    """What `--auto` needs: the latency model and accuracy database of the app (read only)."""

    def __init__(self, app: App, storage: str | None = None, evaluate_missing: bool = False) -> None:
        from database.store import Store
        from search.evaluators import DatabaseEvaluator
        from search.latency import LatencyModel
        self.store = Store(storage, create=False)
        self.model = LatencyModel.from_store(self.store, app)
        self.evaluator = DatabaseEvaluator(app, self.store)
        base = self.evaluator.base_accuracy()
        if base is None:
            raise CoInferError(f"the accuracy database has no base accuracy for {app.name}: "
                               "fill it with python -m database.evaluate")
        self.base_accuracy = base
        self.offline = not evaluate_missing

    def best(self, mbps: float, accuracy_loss: float) -> Scheme:
        from runtime.monitor import search_scheme
        return search_scheme(self.model, self.evaluator, self.base_accuracy, mbps, accuracy_loss, self.offline).scheme

    def frontier(self, accuracy_loss: float, per_octave: int = 2):
        from runtime.monitor import build_frontier, log_grid
        return build_frontier(self.model, self.evaluator, self.base_accuracy, accuracy_loss,
                              log_grid(0.125, 8.0, per_octave), self.offline)

    def feasible(self, accuracy_loss: float) -> list[Scheme]:
        """Every stored scheme within the accuracy loss, plus the two single-end schemes."""
        ok = [s for s, a in self.evaluator.known().items() if a >= self.base_accuracy - accuracy_loss - 1e-9]
        return ok + [Scheme.ALL_EDGE, ALL_CLOUD]


def resolve_scheme(args: argparse.Namespace, app: App, mbps: float | None = None,
                   planner: Planner | None = None) -> Scheme:
    """The scheme to run: `--scheme`, or with `--auto` the search's answer at `mbps` (the estimate)."""
    if not getattr(args, "auto", False):
        return Scheme.parse(args.scheme)
    if mbps is None or planner is None:
        raise CoInferError("--auto needs a bandwidth estimate and the databases")
    if args.queue:
        from runtime.monitor import throughput_scheme
        return throughput_scheme(planner.model, planner.feasible(args.accuracy_loss), mbps)
    return planner.best(mbps, args.accuracy_loss)


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CoInferError(f"bad --server {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def summarise(preds: list[Prediction], labels: list[int]) -> dict:
    stages = ["edge_s", "pack_s", "transfer_s", "cloud_unpack_s", "cloud_compute_s", "total_s"]
    rows = [asdict(p.timings) for p in preds]
    correct = sum(p.classes[0][0] == y for p, y in zip(preds, labels))
    return {
        "requests": len(preds),
        "accuracy": correct / len(preds),
        "median_s": {s: statistics.median(r[s] for r in rows) for s in stages},
        "bytes_up": statistics.median(r["bytes_up"] for r in rows),
        "bytes_down": statistics.median(r["bytes_down"] for r in rows),
        "per_request": rows,
    }


def format_report(summary: dict, scheme: Scheme) -> str:
    names = {"edge_s": "edge compute", "pack_s": "quantise + pack", "transfer_s": "transfer + wait",
             "cloud_unpack_s": "cloud unpack", "cloud_compute_s": "cloud compute", "total_s": "total"}
    lines = [f"scheme {scheme}: {summary['requests']} requests, one image each",
             f"{'stage':<18}{'median ms':>10}"]
    shown = ["edge_s", "total_s"] if scheme.is_all_edge else list(names)
    lines += [f"{names[s]:<18}{summary['median_s'][s] * 1e3:>10.3f}" for s in shown]
    if scheme.is_all_edge:
        lines.append("no network: the whole model ran here")
    else:
        lines.append(f"bytes per request: {summary['bytes_up']:.0f} up, {summary['bytes_down']:.0f} down")
    lines.append(f"accuracy of the predictions that came back: {summary['accuracy'] * 100:.2f} %")
    return "\n".join(lines)


async def run_requests(client: EdgeClient, images: torch.Tensor) -> list[Prediction]:
    async with client:
        return [await client.infer(images[i:i + 1]) for i in range(len(images))]


async def run_auto(client: EdgeClient, images: torch.Tensor, args: argparse.Namespace, app: App,
                   planner: Planner) -> tuple[list[Prediction], dict]:
    """--auto: probe, pick the scheme at the estimate; with --adapt re-pick before every request from
    the precomputed frontier (probing when the estimate is stale); with --queue run queue mode."""
    from runtime.monitor import Adapter
    assert client.monitor is not None
    info: dict = {"schemes": [], "estimates": []}
    await client.connect(force=True)
    try:
        if client.monitor.mbps is None:
            await client.probe()
        mbps = client.monitor.mbps
        if args.queue:
            client.use(resolve_scheme(args, app, mbps, planner))
            info["schemes"].append(str(client.scheme))
            info["estimates"].append(mbps)
            return await client.infer_queue(images, args.depth), info
        adapter = None
        if args.adapt:
            frontier = planner.frontier(args.accuracy_loss)
            info["frontier"] = [[g, s.to_json()] for g, s in zip(frontier.grid, frontier.schemes)]
            adapter = Adapter(planner.model, frontier)
        else:
            client.use(resolve_scheme(args, app, mbps, planner))
        preds = []
        for i in range(len(images)):
            if adapter is not None:
                if client.monitor.needs_probe():
                    await client.probe()
                client.use(adapter.choose(client.monitor.mbps, i))
            preds.append(await client.infer(images[i:i + 1]))
            info["schemes"].append(str(client.scheme))
            info["estimates"].append(client.monitor.mbps)
        if adapter is not None:
            info["switches"] = [[i, str(s), m] for i, s, m in adapter.switches]
        return preds, info
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.edge", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--server", default=os.environ.get("COINFER_SERVER"),
                    help="HOST:PORT of the cloud (not needed for all-edge; default $COINFER_SERVER)")
    ap.add_argument("--scheme", help="p,c,b | all-cloud | all-edge (or --auto)")
    ap.add_argument("--auto", action="store_true", help="pick the scheme with the search at the estimated bandwidth")
    ap.add_argument("-accuracy_loss", "--accuracy-loss", dest="accuracy_loss", type=float, default=0.01,
                    help="--auto: largest top-1 loss allowed (fraction, default 0.01)")
    ap.add_argument("--adapt", action="store_true",
                    help="--auto: precompute the frontier over 0.125..8 Mbps and switch scheme as the estimate moves")
    ap.add_argument("--queue", action="store_true",
                    help="queue mode: pipeline the requests (throughput; --auto minimises the slowest stage)")
    ap.add_argument("--depth", type=int, default=2, help="queue mode: requests in flight")
    ap.add_argument("--bandwidth", type=float, help="initial bandwidth estimate in Mbps (default: probe)")
    ap.add_argument("--rate-limit", type=float, default=os.environ.get("COINFER_RATE_LIMIT"),
                    help="shape the uplink in this process to this many Mbps (token bucket; for loopback without "
                         "tc; default $COINFER_RATE_LIMIT, set by the loopback testbed)")
    ap.add_argument("--storage", default=None, help="database URL for --auto (default: database/coinfer.sqlite)")
    ap.add_argument("--evaluate-missing", action="store_true",
                    help="--auto: let the search fine-tune schemes missing from the database (default: answer from it)")
    ap.add_argument("--finetuned", action=argparse.BooleanOptionalAction, default=True,
                    help="heads with each scheme's fine-tuned weights (runtime.weights; default) or the pruned base")
    ap.add_argument("--n", type=int, default=50, help="requests: the first n test images")
    ap.add_argument("--k", type=int, default=5, help="top-k classes returned")
    ap.add_argument("--token")
    ap.add_argument("--tls-ca", help="use TLS and trust this CA / self-signed certificate")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the head")
    ap.add_argument("--edge-speed", type=float, default=os.environ.get("COINFER_EDGE_SPEED"),
                    help="emulate an edge device this fraction of this CPU's speed (database.slowdown; default "
                         "$COINFER_EDGE_SPEED, set by the testbed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    app = load_app(args.app)
    if args.auto == bool(args.scheme):
        raise CoInferError("give exactly one of --scheme and --auto")
    if (args.adapt or args.bandwidth is not None) and not args.auto:
        raise CoInferError("--adapt and --bandwidth go with --auto")
    if not 0 <= args.accuracy_loss < 1:
        raise CoInferError("-accuracy_loss must be in [0, 1)")
    if args.bandwidth is not None and not args.bandwidth > 0 or args.rate_limit is not None and not args.rate_limit > 0:
        raise CoInferError("--bandwidth and --rate-limit must be positive (Mbps)")
    if args.depth < 1:
        raise CoInferError("--depth must be at least 1")
    scheme = ALL_CLOUD if args.auto else resolve_scheme(args, app)
    if scheme.is_all_edge:
        host, port = "", 0
    elif not args.server:
        raise CoInferError("--server HOST:PORT is required unless --scheme all-edge")
    else:
        host, port = parse_server(args.server)
    if args.n < 1 or args.threads < 1 or args.timeout <= 0:
        raise CoInferError("--n and --threads must be at least 1, --timeout positive")
    try:
        device = SlowCPU(args.edge_speed) if args.edge_speed is not None else None
    except ValueError as exc:
        raise CoInferError(f"--edge-speed: {exc}") from None
    if device is not None and args.threads != 1:
        raise CoInferError("an emulated edge (--edge-speed) times thread CPU time: --threads must be 1")
    torch.set_num_threads(args.threads)
    ssl_ctx = None
    if args.tls_ca:
        try:
            ssl_ctx = ssl.create_default_context(cafile=args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CoInferError(f"cannot load --tls-ca {args.tls_ca}: {exc}") from None
    planner = Planner(app, args.storage, args.evaluate_missing) if args.auto else None
    from data import load_splits
    test = load_splits(app)[1]
    if args.n > len(test):
        raise CoInferError(f"--n {args.n} > {len(test)} test images")
    images = torch.stack([test[i][0] for i in range(args.n)])
    labels = [int(test[i][1]) for i in range(args.n)]
    shaper = TokenBucket(args.rate_limit) if args.rate_limit else None
    client = EdgeClient(app, scheme, host=host, port=port, token=args.token, ssl_ctx=ssl_ctx, k=args.k,
                        timeout=args.timeout, finetuned=args.finetuned, shaper=shaper,
                        monitor=BandwidthEstimator(initial_mbps=args.bandwidth),
                        device=device)
    info: dict = {}
    if planner is not None:
        preds, info = asyncio.run(run_auto(client, images, args, app, planner))
        scheme = client.scheme
    elif args.queue:
        async def queued() -> list[Prediction]:
            async with client:
                return await client.infer_queue(images, args.depth)
        preds = asyncio.run(queued())
    else:
        preds = asyncio.run(run_requests(client, images))
    summary = summarise(preds, labels)
    notes = []
    if shaper is not None:
        notes.append(f"uplink shaped in this process by a token bucket at {args.rate_limit:g} Mbps (no tc)")
    if args.edge_speed is not None:
        notes.append(f"edge emulated at {args.edge_speed:g} x this CPU's speed (database.slowdown)")
    if args.queue:
        notes.append(f"queue mode: up to {args.depth} requests in flight; total_s includes queueing")
    if args.json:
        print(json.dumps({"app": app.name, "scheme": str(scheme), **info, "notes": notes, **summary}))
    else:
        print(format_report(summary, scheme))
        if info.get("schemes"):
            est = info["estimates"][-1]
            print(f"auto: accuracy loss <= {args.accuracy_loss:g}; bandwidth estimate "
                  f"{est:.3f} Mbps at the end; schemes used: {', '.join(dict.fromkeys(info['schemes']))}")
        for i, s, m in info.get("switches", []):
            print(f"  switched to {s} before request {i} (estimate {m:.3f} Mbps)")
        for note in notes:
            print(note)
    return 0


if __name__ == "__main__":
    run_cli(main)
