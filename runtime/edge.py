"""Edge side: run the head, quantise and pack the cut, send it, receive the prediction.

    python -m runtime.edge --app vgg16_digits --server 127.0.0.1:5000 --scheme 4,12,3 [--n 50] [--token T] [--json]

`--scheme p,c,b` splits at point p with c channels at b bits; `all-cloud` sends the raw input
quantised to 8 bits per channel (p = -1 on the wire, the cloud runs the whole base model);
`all-edge` runs the whole base model here and uses no network. Each of the first n test images is
one request; the report gives the median time of each stage (edge compute, quantise + pack,
transfer + wait, cloud unpack, cloud compute), the bytes on the wire and the accuracy of the
predictions that came back. `EdgeClient` is the same thing as a class for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from apps import DEFAULT_APP, App, load_app
from apps.errors import CoInferError, run_cli
from compress.prune import check_scheme
from compress.quant import quantize
from compress.scheme import SchemeModel, parse_scheme
from models.build import load_base_model
from models.vgg import VGG
from runtime.protocol import ALL_CLOUD_P, MAX_TOPK, Error, Hello, Reply, Request, encode, encode_activation, read_frame

SPLIT, ALL_CLOUD, ALL_EDGE = "split", "all-cloud", "all-edge"


@dataclass(frozen=True)
class Scheme:
    """Where the model is cut: a split (p, c, b), or one of the two single-end schemes."""

    kind: str
    p: int = ALL_CLOUD_P
    c: int = 0
    b: int = 8

    def __str__(self) -> str:
        return f"{self.p},{self.c},{self.b}" if self.kind == SPLIT else self.kind


def parse_edge_scheme(text: str) -> Scheme:
    """'p,c,b', 'all-cloud' or 'all-edge'."""
    if text in (ALL_CLOUD, ALL_EDGE):
        return Scheme(text)
    return Scheme(SPLIT, *parse_scheme(text))


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
    """One connection to a cloud server running one scheme. `async with EdgeClient(...) as c: await c.infer(x)`."""

    def __init__(self, app: App, scheme: Scheme, base: VGG | None = None, *, host: str = "127.0.0.1",
                 port: int = 5000, token: str | None = None, ssl_ctx: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, k: int = 5, timeout: float = 30.0) -> None:
        self._model: nn.Module | None = None  # all-cloud needs no model on the edge
        if scheme.kind != ALL_CLOUD:
            base = base if base is not None else load_base_model(app)
            if scheme.kind == SPLIT:
                check_scheme(base, scheme.p, scheme.c, scheme.b)
                self._model = SchemeModel(base, scheme.p, scheme.c, scheme.b).eval()
            else:
                self._model = base.eval()
        if not 1 <= k <= MAX_TOPK:
            raise CoInferError(f"top-k {k} outside 1..{MAX_TOPK}")
        self.app, self.scheme, self.k = app, scheme, k
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self.ssl_ctx, self.server_hostname = ssl_ctx, server_hostname
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 1

    async def __aenter__(self) -> EdgeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (and authenticate when a token is set); no-op for all-edge."""
        if self.scheme.kind == ALL_EDGE or self._writer is not None:
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

    async def infer(self, x: torch.Tensor) -> Prediction:
        """Prediction for a batch x (N, C, H, W) of inputs, with the time of each stage."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            if isinstance(self._model, SchemeModel):
                a = self._model.head(x)
            elif self._model is not None:  # all-edge
                probs = torch.softmax(self._model(x).float(), dim=1)
                scores, classes = probs.topk(min(self.k, probs.shape[1]), dim=1)
                edge = time.perf_counter() - t0
                return Prediction(classes.tolist(), scores.tolist(), Timings(edge, total_s=edge))
            else:  # all-cloud: the input itself goes to the cloud
                a = x
        t1 = time.perf_counter()
        codes, lo, scale = quantize(a, self.scheme.b)
        request = Request(self._take_id(), self.app.name, self.scheme.p, a.shape[1], self.scheme.b, self.k,
                          tuple(a.shape), encode_activation(codes, lo, scale, self.scheme.b))
        frame = encode(request)
        t2 = time.perf_counter()
        reply = await self._roundtrip(frame)
        t3 = time.perf_counter()
        if not isinstance(reply, Reply) or reply.request_id != request.request_id:
            raise CoInferError(f"reply does not answer request {request.request_id}")
        timings = Timings(t1 - t0, t2 - t1, t3 - t2 - reply.unpack_s - reply.compute_s, reply.unpack_s,
                          reply.compute_s, t3 - t0, len(frame), len(encode(reply)))
        return Prediction([list(row) for row in reply.classes], [list(row) for row in reply.scores], timings)


# ------------------------------------------------------------------------------------------ CLI
def resolve_scheme(args: argparse.Namespace, app: App) -> Scheme:
    """The scheme to run. Extension point: the search package's `--auto -accuracy_loss` picks it here."""
    return parse_edge_scheme(args.scheme)


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
    shown = ["edge_s", "total_s"] if scheme.kind == ALL_EDGE else list(names)
    lines += [f"{names[s]:<18}{summary['median_s'][s] * 1e3:>10.3f}" for s in shown]
    if scheme.kind == ALL_EDGE:
        lines.append("no network: the whole model ran here")
    else:
        lines.append(f"bytes per request: {summary['bytes_up']:.0f} up, {summary['bytes_down']:.0f} down")
    lines.append(f"accuracy of the predictions that came back: {summary['accuracy'] * 100:.2f} %")
    return "\n".join(lines)


async def run_requests(client: EdgeClient, images: torch.Tensor) -> list[Prediction]:
    async with client:
        return [await client.infer(images[i:i + 1]) for i in range(len(images))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.edge", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--server", help="HOST:PORT of the cloud (not needed for all-edge)")
    ap.add_argument("--scheme", required=True, help="p,c,b | all-cloud | all-edge")
    ap.add_argument("--n", type=int, default=50, help="requests: the first n test images")
    ap.add_argument("--k", type=int, default=5, help="top-k classes returned")
    ap.add_argument("--token")
    ap.add_argument("--tls-ca", help="use TLS and trust this CA / self-signed certificate")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the head")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    app = load_app(args.app)
    scheme = resolve_scheme(args, app)
    if scheme.kind == ALL_EDGE:
        host, port = "", 0
    elif not args.server:
        raise CoInferError("--server HOST:PORT is required unless --scheme all-edge")
    else:
        host, port = parse_server(args.server)
    if args.n < 1 or args.threads < 1 or args.timeout <= 0:
        raise CoInferError("--n and --threads must be at least 1, --timeout positive")
    torch.set_num_threads(args.threads)
    ssl_ctx = None
    if args.tls_ca:
        try:
            ssl_ctx = ssl.create_default_context(cafile=args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CoInferError(f"cannot load --tls-ca {args.tls_ca}: {exc}") from None
    from data import load_splits
    test = load_splits(app)[1]
    if args.n > len(test):
        raise CoInferError(f"--n {args.n} > {len(test)} test images")
    images = torch.stack([test[i][0] for i in range(args.n)])
    labels = [int(test[i][1]) for i in range(args.n)]
    client = EdgeClient(app, scheme, host=host, port=port, token=args.token, ssl_ctx=ssl_ctx, k=args.k,
                        timeout=args.timeout)
    summary = summarise(asyncio.run(run_requests(client, images)), labels)
    if args.json:
        print(json.dumps({"app": app.name, "scheme": str(scheme), **summary}))
    else:
        print(format_report(summary, scheme))
    return 0


if __name__ == "__main__":
    run_cli(main)
