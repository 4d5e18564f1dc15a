"""A long-lived edge process for the runtime benchmarks, driven over stdin/stdout with JSON lines.

The benchmark starts it in the testbed's edge namespace (`EdgeWorker(tb)`), at full speed; the
worker loads torch, the base model and the schemes' fine-tuned weights, connects, warms up, says
ready, and only then slows down to the edge device: it emulates it itself from COINFER_SPEED
(`dilate`), or the benchmark moves it into the testbed's CPU-quota cgroup (`quota`), so start-up
costs are not paid at 1/8 of a core. The benchmark can change the edge's speed
(`EdgeWorker.set_edge_speed`) and the link's rate between (or during) commands.

Commands (one JSON object a line):
    {"op": "run", "schemes": ["4,12,3", "all-edge", ...], "n": 30, "warmup": 3, "gap_s": 0.0}
        -> {"scheme": ..., "rows": [Timings as dicts]} per scheme, then {"done": true}
    {"op": "adapt", "n": 40, "frontier": [...], "accuracy_loss": 0.01, "storage": URL, "rtt_s": 0.001,
     "pause_at": 20}
        -> {"i": i, "scheme": ..., "total_s": ..., "estimate": ...} per request, then {"done": true, ...};
        before request `pause_at` it says {"paused": i} and waits for a line on stdin
    {"op": "infer", "scheme": "4,12,3", "index": 7}
        -> {"index": 7, "label": y, "classes": [top-1 class], "timings": Timings as a dict}: test image 7 of the
        app's test split (index 0.. as `data.load_splits` orders it) as one request (runtime.vnv_testbed)
    {"op": "probe", "repeats": 5, "images": 16}
        -> {"mbps": ..., "floor_s": ...}: the uplink measured by `EdgeClient.probe` `repeats` times (a cloud
        the benchmark does not shape)
    {"op": "speed", "speed": 0.125}   (dilate: emulate a device at this fraction of this CPU) -> {"speed": ...}
    {"op": "quit"}
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import asdict

import torch

from compress.scheme import Scheme


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _serve(app_name: str, server: str, schemes: list[str], finetuned: bool, options: dict) -> None:
    from apps import load_app
    from data import load_splits
    from devices.slowdown import SlowCPU
    from runtime.client import ClientConfig, EdgeClient
    from runtime.edge import parse_server, tls_context
    from runtime.monitor import BandwidthEstimator, TokenBucket
    from runtime.secret import resolve_token
    from runtime.testbed import SPEED_ENV

    app = load_app(app_name)
    test = load_splits(app)[1]
    images = torch.stack([test[i][0] for i in range(64)])
    host, port = parse_server(server)
    rate = os.environ.get("COINFER_RATE_LIMIT")
    config = ClientConfig(host, port, resolve_token(), options.get("timeout", 30.0), k=1, finetuned=finetuned,
                          ssl_ctx=tls_context(options.get("tls_ca")))
    client = EdgeClient(app, Scheme.ALL_CLOUD, config,
                        shaper=TokenBucket(float(rate)) if rate else None, monitor=BandwidthEstimator())
    for s in schemes:  # build every model now (fine-tuned weights are loaded here, unthrottled)
        client.model_for(Scheme.parse(s))
    await client.connect(force=True)
    for s in schemes:  # warm the cloud's tails too
        client.use(Scheme.parse(s))
        await client.infer(images[:1])
    speed = os.environ.get(SPEED_ENV)
    client.device = SlowCPU(float(speed)) if speed else None
    # with a quota the parent now moves this process into the edge cgroup
    _emit({"ready": True, "test_images": len(test)})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "speed":
            client.device = SlowCPU(cmd["speed"])
            _emit({"speed": cmd["speed"]})
        if cmd["op"] == "run":
            for s in cmd["schemes"]:
                client.use(Scheme.parse(s))
                rows = []
                for i in range(cmd.get("warmup", 3) + cmd["n"]):
                    if cmd.get("gap_s"):
                        await asyncio.sleep(cmd["gap_s"])
                    pred = await client.infer(images[i % len(images):i % len(images) + 1])
                    if i >= cmd.get("warmup", 3):
                        rows.append(asdict(pred.timings))
                _emit({"scheme": s, "rows": rows})
            _emit({"done": True})
        elif cmd["op"] == "infer":
            client.use(Scheme.parse(cmd["scheme"]))
            x, y = test[cmd["index"]]
            pred = await client.infer(x.unsqueeze(0))
            _emit({"index": cmd["index"], "label": int(y), "classes": pred.classes[0],
                   "timings": asdict(pred.timings)})
        elif cmd["op"] == "probe":
            client.monitor = BandwidthEstimator()
            for _ in range(cmd.get("repeats", 5)):
                await client.probe(cmd.get("images", 16))
            _emit({"mbps": client.monitor.mbps, "floor_s": client.monitor.floor_s})
        elif cmd["op"] == "adapt":
            await _adapt(client, images, cmd)
    await client.close()


async def _adapt(client, images: torch.Tensor, cmd: dict) -> None:
    from database.store import Store
    from runtime.advisor import Adapter, Frontier
    from runtime.monitor import BandwidthEstimator
    from search.latency import LatencyModel
    model = LatencyModel.from_store(Store(cmd.get("storage"), create=False), client.app, rtt_s=cmd.get("rtt_s"))
    schemes = [Scheme.from_json(s) for s in cmd["frontier"]]
    frontier = Frontier(cmd.get("accuracy_loss", 0.01), [0.0] * len(schemes), schemes)
    client.monitor = BandwidthEstimator(alpha=cmd.get("alpha", 0.8), initial_mbps=cmd.get("initial_mbps"),
                                        probe_after_s=cmd.get("probe_after_s", 2.0))
    adapter = Adapter(model, frontier, cmd.get("hysteresis", 0.05))
    loop = asyncio.get_running_loop()
    for i in range(cmd["n"]):
        if i == cmd.get("pause_at"):  # let the benchmark change the link between two requests
            _emit({"paused": i})
            await loop.run_in_executor(None, sys.stdin.readline)
        probed = False
        if client.monitor.needs_probe():
            await client.probe(cmd.get("probe_images"))  # None: sized by the monitor's probe budget
            probed = True
        client.use(adapter.choose(client.monitor.mbps, i))
        pred = await client.infer(images[i % len(images):i % len(images) + 1])
        _emit({"i": i, "scheme": str(client.scheme), "total_s": pred.timings.total_s, "probed": probed,
               "bytes_up": pred.timings.bytes_up, "transfer_s": pred.timings.transfer_s,
               "estimate": client.monitor.mbps, "floor_s": client.monitor.floor_s})
    _emit({"done": True, "switches": [[i, str(s), m] for i, s, m in adapter.switches],
           "link": client.monitor.stats()})


class EdgeWorker:
    """Parent side: start the worker in a testbed's edge namespace and talk to it."""

    def __init__(self, tb, schemes: list[str], app: str = "vgg16_digits", finetuned: bool = True,
                 connection=None) -> None:
        """`connection`: a `runtime.edge.Connection` (token, TLS CA, timeout); None: no token, plain TCP, 30 s.
        The token goes to the worker in its environment, never on its command line."""
        options = {} if connection is None else {"tls_ca": connection.tls_ca, "timeout": connection.timeout}
        argv = [sys.executable, "-m", "runtime.edgeworker", app, tb.server, json.dumps(schemes),
                "1" if finetuned else "0", json.dumps(options)]
        env = tb.edge_env()
        if connection is not None and connection.token is not None:
            env["COINFER_TOKEN"] = connection.token
        self.proc = subprocess.Popen(tb.edge_command(argv, throttle=False), env=env, cwd=tb_root(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self.read()  # loaded, connected, warmed up: {"ready": true, "test_images": n}
        self.throttled = tb.throttle(self.proc.pid)  # `ip netns exec` execs: the pid is the worker's

    def read(self) -> dict:
        """The worker's next line. Its one-line error ({"error", "exit_status"}) is raised here as the same
        kind: `Unreachable` (exit 3) when it could not reach or lost the cloud, else `CoInferError`."""
        from cli.errors import CoInferError, Unreachable
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"edge worker exited with status {self.proc.wait()}")
        msg = json.loads(line)
        if "error" in msg:
            self.proc.wait()
            raise (Unreachable if msg.get("exit_status") == Unreachable.exit_status else CoInferError)(
                f"edge worker: {msg['error']}")
        return msg

    def set_edge_speed(self, tb, speed: float) -> None:
        """Slow the edge to `speed` of this CPU: the testbed's cgroup quota, or (dilate) tell the worker."""
        tb.set_edge_speed(speed)
        if tb.edge.dilated:
            self.send({"op": "speed", "speed": speed})
            self.read()

    def send(self, cmd: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def run(self, schemes: list[str], n: int, warmup: int = 3, gap_s: float = 0.0) -> dict[str, list[dict]]:
        self.send({"op": "run", "schemes": schemes, "n": n, "warmup": warmup, "gap_s": gap_s})
        out = {}
        while True:
            msg = self.read()
            if msg.get("done"):
                return out
            out[msg["scheme"]] = msg["rows"]

    def probe(self, repeats: int = 5, images: int = 16) -> dict:
        """The uplink as `EdgeClient.probe` measures it, `repeats` times: {"mbps", "floor_s"}."""
        self.send({"op": "probe", "repeats": repeats, "images": images})
        return self.read()

    def infer(self, scheme: str, index: int) -> dict:
        """Test image `index` as one request of `scheme`: its label, top-1 class and `Timings` (a dict)."""
        self.send({"op": "infer", "scheme": scheme, "index": index})
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "quit"})
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EdgeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tb_root() -> str:
    from apps import REPO_ROOT
    return str(REPO_ROOT)


def main(argv: list[str]) -> int:
    """Serve the parent's commands; a `CoInferError` (a lost cloud: `Unreachable`) goes to the parent as one
    JSON line {"error", "exit_status"}, and the worker exits with that status."""
    from cli.errors import CoInferError
    torch.set_num_threads(1)
    app_name, server, schemes, finetuned = argv[:4]
    options = json.loads(argv[4]) if len(argv) > 4 else {}
    try:
        asyncio.run(_serve(app_name, server, json.loads(schemes), finetuned == "1", options))
    except CoInferError as exc:
        _emit({"error": str(exc), "exit_status": exc.exit_status})
        return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
