"""Flood the cloud server: idle connections plus a reconnect flood, while an authenticated edge client
keeps sending requests. Every one of its requests must succeed, its median latency must stay
within 2x of the quiet median, and the server's memory must stay bounded.

    python -m bench.flood [--idle 1000] [--flood-s 20] [--flooders 16] [--flood-rate 200] [--tls-stall 1000] [--json]

How it is measured (all on loopback, toward 127.0.0.1 only):

1. The server is `python -m runtime.cloud --port 0 --token-file F --no-finetuned --threads 1` in a
   subprocess, with its default admission settings (`runtime.admission`). This process raises its
   open-file limit first (`resource.setrlimit`; the server inherits it).
2. Quiet phase: the edge client (`runtime.client.EdgeClient`, the token, scheme 4,12,3, one image
   per request, a request every `--interval` s, a fresh connection + HELLO every `--reconnect-every`
   requests) runs alone for `--quiet-s` seconds: the quiet median.
3. Attack phase, `--flood-s` seconds, from two more processes (so the attackers do not share the
   client's event loop, nor each other's): `--idle` connections that send nothing, spread over `--idle-peers` source
   addresses 127.0.0.2, 127.0.0.3, ... (each reconnects 50 ms after the server drops it), and
   `--flooders` loops that connect and disconnect from their own source addresses, every other
   time after a HELLO with a wrong token, `--flood-rate` connections per second together (200 by
   default, about the 180/s of the reconnecting client in issue 10; 0: as fast as they can). The
   edge client keeps going, from 127.0.0.1, reconnecting as in the quiet phase (so it must get
   through admission mid-flood). The attacker processes run at nice 19: on one machine they
   compete with the server for CPU, which attackers on other machines would not; niced, they still
   get all the CPU the server and the client leave (the connection counts say how much they made).
   With `--tls-stall N` the server runs with TLS (a throwaway self-signed certificate made with
   `openssl`; the edge client trusts it) and a third attacker process holds N stalled TLS handshakes
   from `--idle-peers` addresses 127.0.2.2, ...: each opens TCP and either never sends its ClientHello
   or sends the first 11 bytes of one and stops (every other one), and reconnects 50 ms after the
   server drops it. The idle connections and the flood above run too (on a TLS server the idle ones are
   stalled handshakes as well, and the flood's plaintext HELLOs fail their handshake).
4. After phase: 3 s more of requests once the attackers stop; then the server's RSS is read again
   `--settle-s` (30) seconds after the attack ended.

The server's RSS (psutil) is sampled every 0.2 s: before (end of the quiet phase: the baseline), the
peak during the attack, at the end of the after phase and `--settle-s` after the attack. Its final
counters come from its stats line at SIGTERM. Latency is the round trip from sending a request to
reading its reply (`Timings.total_s` less the edge's head and packing, which the server's load does
not touch); infer()'s wall time is reported beside it. Targets: every authenticated request succeeds,
the median during the attack within 1.5x of the quiet one, RSS growth under 200 MB, and RSS back
within 10 % of the baseline `--settle-s` after the attack. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import psutil

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "flood-bench-token"  # a throwaway secret for the benchmark's own server


@dataclass(frozen=True)
class FloodConfig:
    """The load (see the module doc)."""

    idle: int = 1000
    idle_peers: int = 50
    flooders: int = 16
    flood_s: float = 20.0
    flood_rate: float = 200.0  # connections per second of all reconnect loops together; 0: as fast as they can
    quiet_s: float = 5.0
    after_s: float = 3.0
    interval: float = 0.02
    reconnect_every: int = 10
    attacker_nice: int = 19
    tls_stall: int = 0  # stalled TLS handshakes (the server then runs with TLS); 0: no TLS
    settle_s: float = 30.0  # the RSS is read this long after the attack ended


@dataclass
class AttackCounts:
    idle_connects: int = 0
    idle_open_peak: int = 0
    tls_stall_connects: int = 0
    flood_connects: int = 0
    connect_errors: int = 0
    seconds: float = 0.0


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)  # round trips: request sent -> reply read
    totals: list[float] = field(default_factory=list)  # infer() wall time, edge head included
    connects: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        return {"requests": len(lat) + len(self.failures), "ok": len(lat), "failures": len(self.failures),
                "median_ms": statistics.median(lat) * 1e3 if lat else None,
                "p95_ms": lat[int(0.95 * (len(lat) - 1))] * 1e3 if lat else None,
                "total_median_ms": statistics.median(self.totals) * 1e3 if self.totals else None,
                "reconnects": len(self.connects),
                "connect_median_ms": statistics.median(self.connects) * 1e3 if self.connects else None,
                "connect_max_ms": max(self.connects) * 1e3 if self.connects else None,
                "first_failures": self.failures[:3]}


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft open-file limit to `needed` (up to the hard limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------------------------- attackers
# the first bytes of a TLS record carrying a ClientHello (handshake type, record version, length), cut short
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


async def _attack(port: int, cfg: FloodConfig, wrong_hello: bytes, started: multiprocessing.Queue | None = None,
                  roles: tuple[str, ...] = ("idle", "flood")) -> AttackCounts:
    counts = AttackCounts()
    end = time.monotonic() + cfg.flood_s
    open_now = 0
    if started is not None:
        started.put("started")

    async def idle(ip: str, stall: str = "") -> None:
        """Hold a connection that sends nothing (`stall` "partial": the start of a TLS ClientHello) until the
        server drops it; again 50 ms later."""
        nonlocal open_now
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
            except OSError:
                counts.connect_errors += 1
                await asyncio.sleep(0.05)
                continue
            if stall:
                counts.tls_stall_connects += 1
                if stall == "partial":
                    writer.write(PARTIAL_CLIENT_HELLO)
            else:
                counts.idle_connects += 1
            open_now += 1
            counts.idle_open_peak = max(counts.idle_open_peak, open_now)
            try:
                await asyncio.wait_for(reader.read(), max(0.01, end - time.monotonic()))  # until dropped
            except (TimeoutError, OSError):
                pass
            open_now -= 1
            writer.close()
            await asyncio.sleep(0.05)

    async def flood(ip: str) -> None:
        n = 0
        gap = cfg.flooders / cfg.flood_rate if cfg.flood_rate else 0.0
        next_at = time.monotonic()
        while time.monotonic() < end:
            if gap:
                next_at += gap
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
            except OSError:
                counts.connect_errors += 1
                await asyncio.sleep(0.01)
                continue
            counts.flood_connects += 1
            n += 1
            if n % 2:
                writer.write(wrong_hello)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (TimeoutError, OSError):
                pass

    t0 = time.monotonic()
    await asyncio.gather(*(idle(f"127.0.0.{2 + i % cfg.idle_peers}") for i in range(cfg.idle) if "idle" in roles),
                         *(idle(f"127.0.2.{2 + i % cfg.idle_peers}", "partial" if i % 2 else "silent")
                           for i in range(cfg.tls_stall) if "tls" in roles),
                         *(flood(f"127.0.{1 + i // 250}.{2 + i % 250}") for i in range(cfg.flooders)
                           if "flood" in roles))
    counts.seconds = time.monotonic() - t0
    return counts


def attack_process(port: int, cfg: FloodConfig, wrong_hello: bytes, out: multiprocessing.Queue, role: str) -> None:
    """An attackers' process ("idle", "flood" or "tls"): puts "started", then its AttackCounts (as a dict) on
    `out`."""
    raise_fd_limit(cfg.idle + cfg.flooders + cfg.tls_stall + 256)
    os.nice(cfg.attacker_nice)  # remote attackers would not take the server's CPU: here they get what is left
    out.put(asdict(asyncio.run(_attack(port, cfg, wrong_hello, out, (role,)))))


# ---------------------------------------------------------------------------------- edge client
async def _client_phase(client, image, cfg: FloodConfig, until: float, phase: Phase) -> None:
    from cli.errors import CoInferError as Failure
    n, broken = 0, False
    while time.monotonic() < until:
        try:
            if n % cfg.reconnect_every == 0 or broken:
                broken = False
                await client.close()
                t0 = time.perf_counter()
                await client.connect()
                phase.connects.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pred = await client.infer(image)
            phase.totals.append(time.perf_counter() - t0)
            t = pred.timings  # send -> reply: what the server's load changes (not the edge's own head)
            phase.latencies.append(t.total_s - t.edge_s - t.pack_s)
        except (Failure, OSError) as exc:
            phase.failures.append(f"{type(exc).__name__}: {exc}")
            await client.close()
            broken = True  # the next request reconnects
        n += 1
        await asyncio.sleep(cfg.interval)


async def _sample_rss(proc: psutil.Process, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            samples.append((time.monotonic(), proc.memory_info().rss))
        except psutil.Error:
            return
        await asyncio.sleep(0.2)


async def _run(port: int, pid: int, cfg: FloodConfig, ssl_ctx=None) -> dict:
    import torch

    from apps import load_app
    from compress.scheme import Scheme
    from data import load_splits
    from runtime.client import ClientConfig, EdgeClient
    from runtime.protocol import Hello, encode
    torch.set_num_threads(1)
    app = load_app("vgg16_digits")
    image = load_splits(app)[1][0][0].unsqueeze(0)
    client = EdgeClient(app, Scheme(4, 12, 3), ClientConfig(port=port, token=TOKEN, timeout=10, k=1, ssl_ctx=ssl_ctx))
    await client.connect()
    await client.infer(image)  # warm: the tail is built, the first request is not timed
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_rss(psutil.Process(pid), samples, stop))
    quiet, during, after = Phase(), Phase(), Phase()
    await _client_phase(client, image, cfg, time.monotonic() + cfg.quiet_s, quiet)
    rss_before = psutil.Process(pid).memory_info().rss
    ctx = multiprocessing.get_context("spawn")
    roles = ("idle", "flood", "tls") if cfg.tls_stall else ("idle", "flood")
    queues = {role: ctx.Queue() for role in roles}  # one process each: none starves the others
    wrong_hello = encode(Hello("vgg16_digits", b"not-the-token"))  # built here: the attackers never import torch
    attackers = [ctx.Process(target=attack_process, args=(port, cfg, wrong_hello, q, role), daemon=True)
                 for role, q in queues.items()]
    for attacker in attackers:
        attacker.start()
    try:
        for q in queues.values():
            await asyncio.to_thread(q.get, True, 120)  # its interpreter has started; its attack starts now
        t_attack = time.monotonic()
        await _client_phase(client, image, cfg, t_attack + cfg.flood_s, during)
        parts = [await asyncio.to_thread(q.get, True, cfg.flood_s + 60) for q in queues.values()]
        counts = {k: max(p[k] for p in parts) if k == "seconds" else sum(p[k] for p in parts) for k in parts[0]}
    finally:
        for attacker in attackers:
            attacker.join(10)
            if attacker.is_alive():
                attacker.kill()
    t_end = time.monotonic()
    rss_during = max((rss for t, rss in samples if t_attack <= t <= t_end), default=rss_before)
    await _client_phase(client, image, cfg, time.monotonic() + cfg.after_s, after)
    rss_after = psutil.Process(pid).memory_info().rss
    await client.close()
    await asyncio.sleep(max(0.0, t_end + cfg.settle_s - time.monotonic()))
    rss_settled = psutil.Process(pid).memory_info().rss
    stop.set()
    await sampler
    return {"quiet": quiet.summary(), "during": during.summary(), "after": after.summary(), "attack": counts,
            "rss_mb": {"before": rss_before / 2**20, "during_peak": rss_during / 2**20, "after": rss_after / 2**20,
                       "settled": rss_settled / 2**20}}


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CoInferError(f"--tls-stall needs the openssl command to make a test certificate: {exc}") from None
    return cert, key


def run_flood(cfg: FloodConfig = FloodConfig(), server_args: tuple[str, ...] = ()) -> dict:
    """Start the server, run the three phases, stop the server; the measurements as a dict."""
    fd_limit = raise_fd_limit(2 * (cfg.idle + cfg.flooders) + 1024)
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        cmd = [sys.executable, "-m", "runtime.cloud", "--port", "0", "--token-file", str(token_file),
               "--no-finetuned", "--threads", "1", "--json", *server_args]
        ssl_ctx = None
        if cfg.tls_stall:
            import ssl
            cert, key = self_signed(Path(tmp))
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
            ssl_ctx = ssl.create_default_context(cafile=str(cert))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("COINFER_TOKEN", None)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            from runtime.ready import wait_ready
            port = wait_ready(proc, 120, "the cloud server")["port"]
            result = asyncio.run(_run(port, proc.pid, cfg, ssl_ctx))
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            result["server_stats"] = json.loads(out.strip().splitlines()[-1])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    result["config"] = asdict(cfg)
    result["fd_limit"] = fd_limit
    result["server_cmd"] = " ".join(["python", *cmd[1:4], "F", *cmd[6:]])
    return result


def verdicts(result: dict, rss_growth_mb: float = 200.0) -> dict[str, bool]:
    """The benchmark's targets, each True when met."""
    during, quiet, rss = result["during"], result["quiet"], result["rss_mb"]
    settle = result["config"]["settle_s"]
    return {"every authenticated request succeeded": during["failures"] == 0 and result["after"]["failures"] == 0
            and during["ok"] > 0,
            "median within 1.5x of quiet": during["median_ms"] is not None and quiet["median_ms"] is not None
            and during["median_ms"] <= 1.5 * quiet["median_ms"],
            f"RSS grew less than {rss_growth_mb:g} MB": rss["during_peak"] - rss["before"] < rss_growth_mb
            and rss["after"] - rss["before"] < rss_growth_mb,
            f"RSS within 10 % of before, {settle:g} s after the attack": rss["settled"] <= 1.1 * rss["before"]}


def report(result: dict) -> list[str]:
    cfg, a, q, d, af, rss = (result["config"], result["attack"], result["quiet"], result["during"], result["after"],
                             result["rss_mb"])
    stats = result["server_stats"]
    lines = [
        f"server: {result['server_cmd']} (default admission: runtime.admission), in a subprocess; "
        f"open-file limit raised to {result['fd_limit']}",
        f"edge client: token, scheme 4,12,3, 1 image per request every {cfg['interval'] * 1e3:g} ms, "
        f"a new connection + HELLO every {cfg['reconnect_every']} requests, from 127.0.0.1",
        "latency: the round trip from sending a request to reading its reply (the edge's own head excluded; "
        "infer() wall time in brackets)",
        f"quiet ({cfg['quiet_s']:g} s): {q['ok']}/{q['requests']} ok, median {q['median_ms']:.2f} ms "
        f"[{q['total_median_ms']:.2f}], p95 {q['p95_ms']:.2f} ms, connect+HELLO median "
        f"{q['connect_median_ms']:.2f} ms",
        f"attack ({a['seconds']:.1f} s, two other processes at nice {cfg['attacker_nice']}): {cfg['idle']} idle "
        f"connections from {cfg['idle_peers']} "
        f"addresses ({a['idle_connects']} connects, at most {a['idle_open_peak']} open at once, each reconnecting "
        f"50 ms after being dropped) + {cfg['flooders']} reconnect loops (paced at {cfg['flood_rate']:g}/s, "
        f"0 = unpaced: {a['flood_connects']} connects, "
        f"{a['flood_connects'] / max(a['seconds'], 1e-9):.0f}/s, every other one a wrong-token HELLO); "
        f"{a['connect_errors']} connect errors" + (
            f"; {cfg['tls_stall']} stalled TLS handshakes from {cfg['idle_peers']} addresses (half silent, half a "
            f"partial ClientHello; {a['tls_stall_connects']} connects)" if cfg["tls_stall"] else ""),
    ]
    if d["ok"]:
        lines.append(f"during: {d['ok']}/{d['requests']} ok, median {d['median_ms']:.2f} ms "
                     f"({d['median_ms'] / q['median_ms']:.2f}x quiet) [{d['total_median_ms']:.2f}], "
                     f"p95 {d['p95_ms']:.2f} ms; "
                     f"{d['reconnects']} reconnects, connect+HELLO median {d['connect_median_ms']:.2f} ms, "
                     f"max {d['connect_max_ms']:.2f} ms")
    else:
        lines.append(f"during: 0/{d['requests']} ok")
    lines += [f"after ({cfg['after_s']:g} s): {af['ok']}/{af['requests']} ok"
              + (f", median {af['median_ms']:.2f} ms" if af["ok"] else ""),
              f"server RSS: before {rss['before']:.0f} MB, peak during {rss['during_peak']:.0f} MB, "
              f"after {rss['after']:.0f} MB, {cfg['settle_s']:g} s after the attack {rss['settled']:.0f} MB",
              "server counters: " + " ".join(f"{k}={v}" for k, v in sorted(stats.items())),
              *(f"  failure: {f}" for f in d["first_failures"] + af["first_failures"])]
    lines += [f"{'PASS' if ok else 'FAIL'}  {what}" for what, ok in verdicts(result).items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.flood", description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, help="idle connections held open")
    ap.add_argument("--idle-peers", type=int, help="source addresses they come from (127.0.0.2..)")
    ap.add_argument("--flooders", type=int, help="reconnect loops")
    ap.add_argument("--flood-s", type=float, help="seconds of attack")
    ap.add_argument("--flood-rate", type=float,
                    help="reconnects per second, all loops together (0: as fast as they can)")
    ap.add_argument("--quiet-s", type=float, help="seconds of the quiet phase")
    ap.add_argument("--interval", type=float, help="seconds between the edge client's requests")
    ap.add_argument("--tls-stall", type=int, help="stalled TLS handshakes held open (0: none, and no TLS)")
    ap.add_argument("--settle-s", type=float, help="seconds after the attack at which RSS is read again")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(**asdict(FloodConfig()))  # one place for the defaults: FloodConfig's
    args = ap.parse_args(argv)
    if not (1 <= args.idle <= 20000 and 1 <= args.idle_peers <= 250 and 0 <= args.flooders <= 1000):
        raise CoInferError("--idle 1..20000, --idle-peers 1..250, --flooders 0..1000")
    if not (0 < args.flood_s <= 600 and 0 < args.quiet_s <= 600 and 0 < args.interval <= 10):
        raise CoInferError("--flood-s and --quiet-s in (0, 600], --interval in (0, 10]")
    if not (0 <= args.tls_stall <= 20000 and 0 <= args.settle_s <= 600):
        raise CoInferError("--tls-stall 0..20000, --settle-s in [0, 600]")
    if not (math.isfinite(args.flood_rate) and 0 <= args.flood_rate <= 1e6):
        raise CoInferError("--flood-rate in [0, 1e6] connections per second")
    cfg = FloodConfig(**{f.name: getattr(args, f.name) for f in fields(FloodConfig)})
    result = run_flood(cfg)
    print(json.dumps(result) if args.json else "\n".join(report(result)))
    return 0 if all(verdicts(result).values()) else 1


if __name__ == "__main__":
    run_cli(main)
