"""The testbed's link: two network namespaces joined by a veth pair, edge -> cloud shaped by tc.

With root, `ip netns` and `tc`, `Netns(tag, pid)` names two namespaces (`<tag>-edge`, `<tag>-cloud`)
and a veth pair (`cftb<pid>e` / `cftb<pid>c`) with addresses 10.231.<n>.1 (edge) and 10.231.<n>.2
(cloud); `create` makes them and shapes the edge -> cloud direction with `tc qdisc ... root tbf`
(optionally the reverse too), `set_rate` changes the rate in place, `delete` removes it all.

Rates are Mbps in the latency model's convention (`apps.units`: 1 Mbps = 2^20 / 8 bytes/s; `1mbit`
means the same); tc is always given the exact rate in bytes per second. The token bucket holds one
packet (`burst` = 1600 bytes, or 1 ms of the rate when larger), so a message after idle leaves at
the rate except for its first packet; the queue holds `latency` 2 s of traffic, so nothing is dropped.

A token bucket passes a message that fits in its bucket without delay when the link was idle (a
real link would take bytes / rate to serialise it), so small messages see almost no transfer
time. The `paced` link keeps the bucket empty instead: a strict-priority child under the tbf
(`pfifo_fast`: socket priority 0 -> band 1, the filler's priority 2 -> band 2; `prio` is not
built into every kernel) and a low-priority UDP filler in the edge namespace
(`python -m runtime.linkprobe filler`) that keeps a few minimal frames (43 bytes) queued, so each
message of ours waits bytes / rate for tokens (less at most 43 bytes' worth) like on a
serialising link, and the filler only gets what is left.

Names carry the owning pid, so `cleanup_leftovers` can remove what crashed testbeds left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys

from apps import REPO_ROOT
from apps.units import bytes_per_second
from cli.errors import CoInferError
from runtime.ready import wait_ready

PREFIX = "coinfer-tb-"  # namespaces (and the testbed's cgroups): coinfer-tb-<pid>...
LINK_PREFIX = "cftb"  # veth ends: cftb<pid>e / cftb<pid>c (interface names are at most 15 characters)
SINK_PORT = 5001
FILLER_PORT = 5002
LINKS = ("tbf", "paced")


def parse_rate(text: str) -> float:
    """'1mbit', '512kbit' or a number of Mbps -> Mbps (2^20 bits per Mbit, the latency model's unit)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(mbit|kbit|mbps|kbps)?\s*", text.lower())
    if not m:
        raise CoInferError(f"bad rate {text!r}: expected e.g. 1mbit, 512kbit or 0.5 (Mbps)")
    value = float(m.group(1)) / (1024 if m.group(2) in ("kbit", "kbps") else 1)
    if not value > 0:
        raise CoInferError(f"rate must be positive, got {text!r}")
    return value


def tbf_args(mbps: float) -> list[str]:
    """The `tc ... tbf` arguments for `mbps`: exact rate in bytes/s, a one-packet bucket, 2 s of queue."""
    rate = int(round(bytes_per_second(mbps)))
    burst = max(1600, rate // 1000)
    return ["rate", f"{rate}bps", "burst", str(burst), "latency", "2s"]


def netns_support() -> str | None:
    """None when namespaces + tc shaping can be set up here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found"
    return None


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, output captured; with `check`, a failure is a CoInferError naming it."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise CoInferError(f"{' '.join(cmd)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out


def helper_env() -> dict[str, str]:
    """The environment of a Python process of this repository started in a namespace."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def stale(name: str, prefix: str, everything: bool = False) -> bool:
    """Whether `name` (prefix + owner pid + ...) belongs to a dead process (to any, with `everything`)."""
    m = re.match(re.escape(prefix) + r"(\d+)", name)
    if not m:
        return False
    if everything:
        return True
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def kill_namespace(ns: str) -> None:
    """SIGKILL every process in namespace `ns`, then delete it (no error when it is gone already)."""
    for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run("ip", "netns", "del", ns, check=False)


def cleanup_leftovers(everything: bool = False) -> list[str]:
    """Remove testbed namespaces and veth links whose owner pid is dead (all of them with `everything`)."""
    removed: list[str] = []
    if shutil.which("ip") is None or os.geteuid() != 0:
        return removed
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX) and stale(name, PREFIX, everything):
            kill_namespace(name)
            removed.append(f"netns {name}")
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(LINK_PREFIX) and stale(name, LINK_PREFIX, everything):
                run("ip", "link", "del", name, check=False)
                removed.append(f"link {name}")
    return removed


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class Netns:
    """Two namespaces and a shaped veth link between them; see the module doc.

    `tag` names the namespaces (it starts with PREFIX and the owner pid), `pid` the veth ends and
    the subnet; `helper_cpu` is where the paced link's filler runs (not the edge's CPU).
    """

    def __init__(self, tag: str, pid: int, helper_cpu: int = 0) -> None:
        self.ns_edge, self.ns_cloud = f"{tag}-edge", f"{tag}-cloud"
        self.link_edge, self.link_cloud = f"{LINK_PREFIX}{pid}e", f"{LINK_PREFIX}{pid}c"
        n = pid % 250 + 1
        self.edge_ip, self.cloud_ip = f"10.231.{n}.1", f"10.231.{n}.2"
        self.helper_cpu = helper_cpu
        self.fillers: list[subprocess.Popen] = []

    def in_edge(self, argv: list[str]) -> list[str]:
        """`argv` run in the edge namespace."""
        return ["ip", "netns", "exec", self.ns_edge, *argv]

    def in_cloud(self, argv: list[str]) -> list[str]:
        """`argv` run in the cloud namespace."""
        return ["ip", "netns", "exec", self.ns_cloud, *argv]

    def create(self, rate_mbps: float | None, reverse_mbps: float | None = None, paced: bool = False) -> None:
        """Namespaces, veth pair, addresses; tbf edge -> cloud at `rate_mbps` (None: unshaped) and
        cloud -> edge at `reverse_mbps`; `paced` adds the filler. Replaces namesakes left behind."""
        for ns in (self.ns_edge, self.ns_cloud):
            run("ip", "netns", "del", ns, check=False)
            run("ip", "netns", "add", ns)
        run("ip", "link", "del", self.link_edge, check=False)
        run("ip", "link", "add", self.link_edge, "type", "veth", "peer", "name", self.link_cloud)
        for ns, link, ip in ((self.ns_edge, self.link_edge, self.edge_ip),
                             (self.ns_cloud, self.link_cloud, self.cloud_ip)):
            run("ip", "link", "set", link, "netns", ns)
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", link)
            run("ip", "-n", ns, "link", "set", link, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        if rate_mbps is not None:
            run(*self.in_edge(["tc", "qdisc", "add", "dev", self.link_edge, "root", "handle", "1:", "tbf",
                               *tbf_args(rate_mbps)]))
            if paced:
                self._start_filler()
        if reverse_mbps is not None:
            run(*self.in_cloud(["tc", "qdisc", "add", "dev", self.link_cloud, "root", "tbf", *tbf_args(reverse_mbps)]))

    def _start_filler(self) -> None:
        """A strict-priority child under the tbf, and a low-priority UDP filler that keeps a few minimal
        frames queued behind it, so the bucket is always empty and every message waits bytes / rate."""
        run(*self.in_edge(["tc", "qdisc", "add", "dev", self.link_edge, "parent", "1:1", "handle", "10:",
                           "pfifo_fast"]))
        probe = [sys.executable, "-m", "runtime.linkprobe"]
        where = [self.cloud_ip, str(FILLER_PORT), "--cpu", str(self.helper_cpu)]
        sink = subprocess.Popen(self.in_cloud([*probe, "filler-sink", *where]), cwd=REPO_ROOT, env=helper_env(),
                                stdout=subprocess.PIPE, text=True)
        self.fillers.append(sink)
        wait_ready(sink, 30, "the filler sink")
        filler = subprocess.Popen(self.in_edge([*probe, "filler", *where]), cwd=REPO_ROOT, env=helper_env(),
                                  stdout=subprocess.PIPE, text=True)
        self.fillers.append(filler)
        wait_ready(filler, 30, "the filler")  # the bucket is empty from now on

    def set_rate(self, mbps: float) -> None:
        """Change the edge -> cloud rate now (`tc qdisc change`).

        It keeps the tbf's child and its queue, and a paced link's filler keeps running (it sends as
        fast as the link drains, at any rate), so the bucket stays empty across the change."""
        run(*self.in_edge(["tc", "qdisc", "change", "dev", self.link_edge, "root", "handle", "1:", "tbf",
                           *tbf_args(mbps)]))

    def qdisc(self) -> str:
        """`tc qdisc show` of the edge's end of the link."""
        return run(*self.in_edge(["tc", "qdisc", "show", "dev", self.link_edge])).stdout.strip()

    def transfer_seconds(self, nbytes: int) -> float:
        """Send `nbytes` edge -> cloud over TCP (`runtime.linkprobe`); seconds until the cloud has them all."""
        probe = [sys.executable, "-m", "runtime.linkprobe"]
        sink = subprocess.Popen(self.in_cloud([*probe, "sink", self.cloud_ip, str(SINK_PORT), str(nbytes)]),
                                cwd=REPO_ROOT, env=helper_env(), stdout=subprocess.PIPE, text=True)
        try:
            wait_ready(sink, 30, "the link probe's sink")
            out = subprocess.run(self.in_edge([*probe, "source", self.cloud_ip, str(SINK_PORT), str(nbytes)]),
                                 cwd=REPO_ROOT, env=helper_env(), capture_output=True, text=True, timeout=600)
            sink.wait(30)
        finally:
            _kill(sink)
        if out.returncode != 0:
            raise CoInferError(f"link probe failed: {out.stderr.strip()}")
        return float(out.stdout.strip())

    def delete(self) -> None:
        """Stop the filler, kill what runs in the namespaces, delete them and the link (idempotent)."""
        for proc in self.fillers:
            _kill(proc)
        self.fillers.clear()
        for ns in (self.ns_edge, self.ns_cloud):
            kill_namespace(ns)
        run("ip", "link", "del", self.link_edge, check=False)
