"""Edge CLI: run the first n test images through a cloud server, one request each, and report.

    python -m runtime.edge --app vgg16_digits --server 127.0.0.1:5000 --scheme 4,12,3 [--n 50] [--json]
                           [--token-file F | --token T | $COINFER_TOKEN]
    python -m runtime.edge --server HOST:PORT --auto -accuracy_loss 0.01 [--adapt] [--queue] [--rate-limit MBPS]

`--scheme p,c,b` splits at point p with c channels at b bits; `all-cloud` sends the raw input
quantised to 8 bits per channel (p = -1 on the wire, the cloud runs the whole base model);
`all-edge` runs the whole base model here and uses no network. Split schemes run with their
fine-tuned weights, the ones the build kept (`runtime.weights`); a scheme without them is one line
naming the build command that makes them, unless `--finetune-missing` fine-tunes it here (`--no-finetuned`:
pruned base weights, and the cloud must match). Each of the first n test images is one request; the
report gives the median time of each stage (edge compute, quantise + pack, transfer + wait, cloud
unpack, cloud compute), the bytes on the wire and the accuracy of the predictions that came back. The
server's token, when it has one, comes from `--token-file`, `--token` or $COINFER_TOKEN
(`runtime.secret`) and is never printed. The connection is `runtime.client.EdgeClient`, which tests and
benchmarks use directly.

This process can be a slower edge device (`devices.slowdown`, dilation): `--device NAME` emulates a device
of the devices file or the app (its speed), `--speed S` (default $COINFER_SPEED, which the testbed sets)
a device S times as fast as this CPU.

`--auto` probes the uplink (or starts from `--bandwidth`), then picks the scheme with the search
(a latency query at the estimate over the app's accuracy database, `runtime.advisor`); a profile it
uses that was emulated on another machine is a warning line on stderr, and `profiles` in --json says
where each was measured (database/provenance.py).
`--adapt` precomputes the optimal scheme on a log grid of 0.125..8 Mbps and, before every
request, runs the frontier scheme the latency model predicts fastest at the current estimate
(`runtime.advisor.Adapter`). `--queue` pipelines the requests (Neurosurgeon's queue mode; with
`--auto` the scheme minimises the slowest stage instead of the sum).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import ssl
import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from apps import DEFAULT_APP, App, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from compress.scheme import Scheme
from devices.slowdown import SlowCPU
from runtime.advisor import Adapter, SchemeAdvisor
from runtime.monitor import BandwidthEstimator, TokenBucket, describe_probes
from runtime.secret import resolve_token

if TYPE_CHECKING:  # torch loads on first use, so --help answers at once; pydantic (devices.spec) too
    import torch

    from devices.spec import Device
    from runtime.client import ClientConfig, EdgeClient, Prediction


@dataclass(frozen=True)
class AutoConfig:
    """What `--auto` does (`run_auto`): keep the top-1 loss within `accuracy_loss` (fraction);
    `adapt`: re-pick the scheme before every request from the frontier; `depth`: queue mode with up
    to this many requests in flight (None: one request at a time)."""

    accuracy_loss: float = 0.01
    adapt: bool = False
    depth: int | None = None


def parse_server(text: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 hosts in brackets) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CoInferError(f"bad --server {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def load_images(app: App, n: int) -> tuple[torch.Tensor, list[int]]:
    """The first n test images of the app and their labels."""
    import torch

    from data import load_splits
    test = load_splits(app)[1]
    if n > len(test):
        raise CoInferError(f"--n {n} > {len(test)} test images")
    return torch.stack([test[i][0] for i in range(n)]), [int(test[i][1]) for i in range(n)]


def summarise(preds: list[Prediction], labels: list[int]) -> dict:
    """Median stage times and bytes, accuracy, and every request's timings."""
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


def format_auto(info: dict, accuracy_loss: float) -> list[str]:
    """The lines `--auto` adds to the text report: schemes used, final estimate, switches."""
    lines = []
    if info.get("schemes"):
        lines.append(f"auto: accuracy loss <= {accuracy_loss:g}; bandwidth estimate {info['estimates'][-1]:.3f} Mbps "
                     f"at the end; schemes used: {', '.join(dict.fromkeys(info['schemes']))}")
    lines += [f"  switched to {s} before request {i} (estimate {m:.3f} Mbps)" for i, s, m in info.get("switches", [])]
    if info.get("link"):
        lines.append("  link " + describe_probes(info["link"]))
    if info.get("profiles"):
        lines.append("  profiles: " + "; ".join(f"{d['device']} ({d['side']}) measured on {d['machine']}"
                                                + (", not this machine" if d["foreign"] else "")
                                                for d in info["profiles"]))
    return lines


async def run_fixed(client: EdgeClient, images: torch.Tensor, depth: int | None = None) -> list[Prediction]:
    """One request per image with the client's scheme: one at a time, or queue mode with `depth` in flight."""
    async with client:
        if depth is not None:
            return await client.infer_queue(images, depth)
        return [await client.infer(images[i:i + 1]) for i in range(len(images))]


async def run_auto(client: EdgeClient, images: torch.Tensor, advisor: SchemeAdvisor,
                   auto: AutoConfig = AutoConfig()) -> tuple[list[Prediction], dict]:
    """Probe (unless the client's monitor has an estimate), pick the scheme at the estimate; with
    `auto.adapt` re-pick before every request from the precomputed frontier (probing when the
    estimate is stale); with `auto.depth` run queue mode. Returns the predictions and what was
    chosen: {"schemes", "estimates"} per request, with adapt also "frontier" and "switches"."""
    monitor = client.monitor
    if monitor is None:
        raise CoInferError("--auto needs a bandwidth monitor on the client")
    info: dict = {"schemes": [], "estimates": []}
    await client.connect(force=True)
    try:
        if monitor.mbps is None:
            await client.probe()
        if auto.depth is not None:
            client.use(advisor.choose(monitor.mbps, auto.accuracy_loss, queue=True))
            info["schemes"].append(str(client.scheme))
            info["estimates"].append(monitor.mbps)
            return await client.infer_queue(images, auto.depth), info
        adapter = None
        if auto.adapt:
            frontier = advisor.frontier(auto.accuracy_loss)
            for scheme in frontier.candidates:  # every head now: a missing one is an error before any request
                client.model_for(scheme)
            info["frontier"] = [[g, s.to_json()] for g, s in zip(frontier.grid, frontier.schemes)]
            adapter = Adapter(advisor.model, frontier)
        else:
            client.use(advisor.choose(monitor.mbps, auto.accuracy_loss))
        preds = []
        for i in range(len(images)):
            if adapter is not None:
                if monitor.needs_probe():
                    await client.probe()
                client.use(adapter.choose(monitor.mbps, i))
            preds.append(await client.infer(images[i:i + 1]))
            info["schemes"].append(str(client.scheme))
            info["estimates"].append(monitor.mbps)
        if adapter is not None:
            info["switches"] = [[i, str(s), m] for i, s, m in adapter.switches]
        info["link"] = monitor.stats()  # the probes: how many, why, their share of the link
        return preds, info
    finally:
        await client.close()


def notes(rate_limit: float | None, edge: Device | None, depth: int | None) -> list[str]:
    """What the report should say about how the run was emulated or pipelined."""
    out = []
    if rate_limit:
        out.append(f"uplink shaped in this process by a token bucket at {rate_limit:g} Mbps (no tc)")
    if edge is not None and edge.slowed:
        out.append(f"edge {edge.name} emulated at {edge.speed:g} x this CPU's speed (devices.slowdown)")
    if depth is not None:
        out.append(f"queue mode: up to {depth} requests in flight; total_s includes queueing")
    return out


# ------------------------------------------------------------------------------------------ CLI
def add_connection_args(ap: ArgParser) -> None:
    """How a client reaches the cloud server: its token (`--token`, `--token-file`, $COINFER_TOKEN;
    `runtime.secret`), TLS (`--tls-ca`, `tls_context`) and `--timeout`; runtime.edge's and the benchmarks'."""
    ap.add_argument("--token", help="the server's token (visible in ps: prefer --token-file or $COINFER_TOKEN)")
    ap.add_argument("--token-file", help="read the server's token from the first line of this file")
    ap.add_argument("--tls-ca", help="use TLS and trust this CA / self-signed certificate")
    ap.add_argument("--timeout", type=float, default=30.0, metavar="S",
                    help="seconds for connecting and for each reply; past it: one line, exit 3 (default: 30)")


@dataclass(frozen=True)
class Connection:
    """How a client reaches the cloud, as `add_connection_args`' flags say: the token (None: none; never
    printed, not even by repr), the CA file of TLS (None: plain TCP) and the timeout (seconds)."""

    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    timeout: float = 30.0


def connection_of(args: argparse.Namespace) -> Connection:
    """The flags of `add_connection_args` checked: the token resolved, the CA file loaded once, the timeout
    positive and finite."""
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise CoInferError(f"--timeout must be a positive finite number of seconds, got {args.timeout}")
    tls_context(args.tls_ca)
    return Connection(resolve_token(args.token, args.token_file), args.tls_ca, args.timeout)


def tls_context(cafile: str | None) -> ssl.SSLContext | None:
    """The client's TLS context trusting `cafile` (None: plain TCP); an unreadable file is one line."""
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CoInferError(f"cannot load --tls-ca {cafile}: {exc}") from None


def _parser() -> ArgParser:
    ap = ArgParser(prog="python -m runtime.edge", description=__doc__.splitlines()[0])
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
    ap.add_argument("--latency-profile", default=None, metavar="EDGE,CLOUD",
                    help="--auto: the profiled devices whose latency the choice uses (default: the app's; "
                         "python -m reports.show lists them)")
    ap.add_argument("--evaluate-missing", action="store_true",
                    help="--auto: let the search fine-tune schemes missing from the database (default: answer from it)")
    ap.add_argument("--finetuned", action=argparse.BooleanOptionalAction, default=True,
                    help="heads with each scheme's fine-tuned weights (runtime.weights; default) or the pruned base")
    ap.add_argument("--artifact", default=None, metavar="DIR",
                    help="run an exported split (python -m runtime.export): its programs and samples, importing only "
                         "torch and numpy; --app, --scheme and the database are not used")
    ap.add_argument("--inputs", default=None, metavar="X.npy",
                    help="with --artifact: images (N, C, H, W) float32, transformed as its manifest says")
    ap.add_argument("--labels", default=None, metavar="Y.npy", help="with --inputs: their N labels")
    ap.add_argument("--finetune-missing", action="store_true",
                    help="fine-tune here a scheme whose weights the build did not keep (default: refuse, naming the "
                         "command that makes them)")
    ap.add_argument("--n", type=int, default=50, help="requests: the first n test images")
    ap.add_argument("--k", type=int, default=5, help="top-k classes returned")
    ap.add_argument("--codec", default="bitpack", help="how the activation is written on the wire: bitpack (exact "
                    "size) or zstd (entropy coded, fewer bytes, same accuracy); default %(default)s")
    add_connection_args(ap)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the head")
    ap.add_argument("--device", default=None, metavar="NAME",
                    help="emulate this edge device (devices.yml or the app's) at its speed (default: this CPU)")
    ap.add_argument("--devices", default=None, metavar="FILE", help="devices file (default: devices.yml)")
    ap.add_argument("--speed", type=float, default=os.environ.get("COINFER_SPEED"),
                    help="emulate an edge device this fraction of this CPU's speed, in (0, 1] (devices.slowdown; "
                         "default: --device's, else $COINFER_SPEED, set by the testbed)")
    ap.add_argument("--edge-speed", default=None, help=argparse.SUPPRESS)  # renamed: one line naming --speed
    ap.add_argument("--json", action="store_true")
    return ap


def _check(args: argparse.Namespace) -> None:
    if args.auto == bool(args.scheme):
        raise CoInferError("give exactly one of --scheme and --auto")
    if (args.adapt or args.bandwidth is not None) and not args.auto:
        raise CoInferError("--adapt and --bandwidth go with --auto")
    if args.latency_profile and not args.auto:
        raise CoInferError("--latency-profile goes with --auto (the devices the choice is made for)")
    if not 0 <= args.accuracy_loss < 1:
        raise CoInferError("-accuracy_loss must be in [0, 1)")
    if args.bandwidth is not None and not args.bandwidth > 0 or args.rate_limit is not None and not args.rate_limit > 0:
        raise CoInferError("--bandwidth and --rate-limit must be positive (Mbps)")
    if args.depth < 1:
        raise CoInferError("--depth must be at least 1")
    if args.n < 1 or args.threads < 1:
        raise CoInferError("--n and --threads must be at least 1")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise CoInferError(f"--timeout must be a positive finite number of seconds, got {args.timeout}")


def _client_config(args: argparse.Namespace, scheme: Scheme | None) -> ClientConfig:
    """The connection's settings; `scheme` None: --auto."""
    from runtime.client import ClientConfig
    if scheme is not None and scheme.is_all_edge:
        host, port = "", 0
    elif not args.server:
        raise CoInferError("--server HOST:PORT is required unless --scheme all-edge")
    else:
        host, port = parse_server(args.server)
    conn = connection_of(args)
    return ClientConfig(host, port, conn.token, conn.timeout, args.k, args.finetuned, ssl_ctx=tls_context(conn.tls_ca),
                        finetune_missing=args.finetune_missing, codec=args.codec)


def edge_device(args: argparse.Namespace, app: App) -> Device | None:
    """The edge device this process emulates: `--device` (the devices file's or the app's) at `--speed` when
    given; `--speed` alone is an unnamed edge; neither, None (this CPU as it is)."""
    if args.edge_speed is not None:
        raise CoInferError("--edge-speed is now --speed (the edge device's speed, a fraction of this CPU)")
    from devices.spec import make_device
    if args.device is None:
        return None if args.speed is None else make_device({"name": "edge", "side": "edge", "speed": args.speed},
                                                           "--speed")
    from database.registry import find_device
    device = find_device(args.device, args.devices, (app,), args.storage)
    if args.speed is not None:
        device = device.with_speed(args.speed)
    if device.emulation == "quota":
        raise CoInferError(f"device {device.name} is emulated by a cgroup CPU quota, which this process cannot "
                           "apply to itself: run it under python -m runtime.testbed --emulation quota")
    return device


def _slow_cpu(device: Device | None, threads: int) -> SlowCPU | None:
    if device is None or not device.slowed:
        return None
    if threads != 1:
        raise CoInferError("an emulated edge (--speed) times thread CPU time: --threads must be 1")
    return SlowCPU(device.speed)


def run_artifact(args: argparse.Namespace) -> int:
    """`--artifact DIR`: the exported split's head here, its samples (or --inputs) one request each."""
    from pathlib import Path

    from runtime.artifact import load_artifact, load_inputs
    from runtime.client import EdgeClient
    if args.auto or args.scheme or args.device is not None or args.speed is not None:
        raise CoInferError("--artifact runs the exported scheme as it is: drop --scheme, --auto, --device and --speed")
    if args.n < 1 or args.depth < 1:
        raise CoInferError("--n and --depth must be at least 1")
    if (args.inputs is None) != (args.labels is None):
        raise CoInferError("--inputs and --labels go together")
    artifact = load_artifact(args.artifact)
    images, labels = (artifact.samples() if args.inputs is None
                      else load_inputs(Path(args.inputs), Path(args.labels), artifact.app))
    if args.n < len(images):
        images, labels = images[:args.n], labels[:args.n]
    import torch
    torch.set_num_threads(args.threads)
    config = _client_config(args, artifact.scheme)
    client = EdgeClient(artifact.app, artifact.scheme, config, models={artifact.scheme: (
        None if artifact.scheme.is_all_cloud else artifact.split)},
                        shaper=TokenBucket(args.rate_limit) if args.rate_limit else None)
    preds = asyncio.run(run_fixed(client, images, args.depth if args.queue else None))
    summary = summarise(preds, labels)
    said = notes(args.rate_limit, None, args.depth if args.queue else None)
    if args.json:
        print(json.dumps({"app": artifact.app.name, "scheme": str(artifact.scheme), "artifact": str(args.artifact),
                          "notes": said, **summary}))
    else:
        print("\n".join([format_report(summary, artifact.scheme), *said]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.artifact is not None:  # the deployable edge: no app YAML, no database, no pydantic
        return run_artifact(args)
    app = load_app(args.app)
    _check(args)
    scheme = None if args.auto else Scheme.parse(args.scheme)
    config = _client_config(args, scheme)
    edge = edge_device(args, app)
    device = _slow_cpu(edge, args.threads)
    import torch

    from runtime.client import EdgeClient
    torch.set_num_threads(args.threads)
    from devices.spec import parse_device_pair
    edge_name, cloud_name = parse_device_pair(args.latency_profile)
    advisor = None
    if args.auto:
        from database.storage import Storage
        advisor = SchemeAdvisor(app, Storage.parse(args.storage), args.evaluate_missing, edge_name, cloud_name)
        from database.provenance import model_uses
        profiles = model_uses(advisor.store, app, advisor.model.devices)
    images, labels = load_images(app, args.n)
    depth = args.depth if args.queue else None
    client = EdgeClient(app, scheme or Scheme.ALL_CLOUD, config, device=device,
                        shaper=TokenBucket(args.rate_limit) if args.rate_limit else None,
                        monitor=BandwidthEstimator(initial_mbps=args.bandwidth))
    if scheme is not None:
        client.model_for(scheme)  # its weights exist (or --finetune-missing makes them) before any connection
    info: dict = {}
    if advisor is not None:
        preds, info = asyncio.run(run_auto(client, images, advisor, AutoConfig(args.accuracy_loss, args.adapt, depth)))
        info["profiles"] = [u.to_json() for u in profiles]
    else:
        preds = asyncio.run(run_fixed(client, images, depth))
    summary = summarise(preds, labels)
    said = notes(args.rate_limit, edge, depth)
    if advisor is not None:  # the choice rested on latencies of another machine: said with the result, so that
        from database.provenance import warn_foreign  # a failure before it (no server) stays one line
        warn_foreign(profiles)
    if args.json:
        print(json.dumps({"app": app.name, "scheme": str(client.scheme), **info, "notes": said, **summary}))
    else:
        print("\n".join([format_report(summary, client.scheme), *format_auto(info, args.accuracy_loss), *said]))
    return 0


if __name__ == "__main__":
    run_cli(main)
