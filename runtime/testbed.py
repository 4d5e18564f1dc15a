"""Testbed: an emulated edge device and cloud on one machine, joined by a shaped link.

    python -m runtime.testbed --rate 1mbit [--edge-cpu 0.125] [--reverse-rate R] -- python -m runtime.edge \
        --server {server} --scheme 4,12,3
    python -m runtime.testbed --rate 8 --verify          # 1 MiB edge -> cloud should take ~1.0 s
    python -m runtime.testbed --cleanup                  # remove leftovers of crashed testbeds

With root, `ip netns` and `tc`: two network namespaces (`coinfer-tb-<pid>-edge`, `-cloud`) joined by a
veth pair (`cftb<pid>e` / `cftb<pid>c`) with addresses 10.231.<n>.1 (edge) and 10.231.<n>.2
(cloud); the edge -> cloud direction is shaped by `tc qdisc ... root tbf` (optionally the reverse
too). The cloud server (`python -m runtime.cloud`) runs in the cloud namespace unthrottled; edge
commands run in the edge namespace, slowed to `--edge-cpu` of this CPU by the app's edge emulation
(and, unless `--no-keep-warm`, every CPU is kept out of idle: `database.slowdown.KeepWarm`):
- `dilate` (default): COINFER_EDGE_SPEED is exported and the edge client stretches its edge
  stage (head + quantise/pack) to its CPU time / speed (`database.slowdown`, which also says why this is the default);
- `quota`: the edge runs inside the cgroup `coinfer-tb-<pid>` with a CFS CPU quota.
In the edge command `{server}` becomes HOST:PORT of the cloud (also exported as COINFER_SERVER).

Rates are Mbps in the latency model's convention (1 Mbps = 2^20 / 8 bytes/s; `1mbit` means the
same); tc is always given the exact rate in bytes per second. The token bucket holds one
packet (`burst` = 1600 bytes, or 1 ms of the rate when larger), so a message after idle leaves at
the rate except for its first packet; the queue holds `latency` 2 s of traffic, so nothing is dropped.
A token bucket passes a message that fits in its bucket without delay when the link was idle (a
real link would take bytes / rate to serialise it), so small messages see almost no transfer
time. `--link paced` keeps the bucket empty instead: a strict-priority child under the tbf
(`pfifo_fast`: socket priority 0 -> band 1, the filler's priority 2 -> band 2; `prio` is not
built into every kernel) and a low-priority UDP filler in the edge namespace that keeps a few
minimal frames (43 bytes) queued, so each message of ours waits bytes / rate for tokens (less at
most 43 bytes' worth) like on a serialising link, and the filler only gets what is left.

Without root (or without ip / tc / cgroup v1) the cloud server listens on 127.0.0.1 and edge
processes get COINFER_RATE_LIMIT: the edge client then shapes its own uplink with a token bucket,
unthrottled CPU; the testbed says so. Setup and teardown are idempotent; teardown also runs at
exit and on SIGTERM / SIGINT, and every setup first removes what crashed testbeds left behind
(namespaces, links and cgroups whose owning pid is gone, by name prefix).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from apps import DEFAULT_APP, EDGE_EMULATIONS, REPO_ROOT
from apps.errors import CoInferError, run_cli
from apps.units import BYTES_PER_MBPS
from database.slowdown import KeepWarm, check_speed

PREFIX = "coinfer-tb-"
LINK_PREFIX = "cftb"
CLOUD_PORT = 5000
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
    rate = int(round(mbps * BYTES_PER_MBPS))
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


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise CoInferError(f"{' '.join(cmd)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str, prefix: str) -> int | None:
    m = re.match(re.escape(prefix) + r"(\d+)", name)
    return int(m.group(1)) if m else None


def cleanup_leftovers(everything: bool = False) -> list[str]:
    """Remove testbed namespaces / links / cgroups whose owner pid is dead (all of them with `everything`)."""
    removed: list[str] = []
    if shutil.which("ip") is None or os.geteuid() != 0:
        return removed

    def stale(pid: int | None) -> bool:
        return pid is not None and (everything or not _pid_alive(pid))

    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX) and stale(_owner(name, PREFIX)):
            _run("ip", "netns", "pids", name, check=False)
            for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(LINK_PREFIX) and stale(_owner(name, LINK_PREFIX)):
                _run("ip", "link", "del", name, check=False)
                removed.append(f"link {name}")
    from database.cpuquota import CPU_ROOT, remove_group
    if CPU_ROOT.is_dir():
        for path in CPU_ROOT.glob(PREFIX + "*"):
            if path.is_dir() and stale(_owner(path.name, PREFIX)):
                remove_group(path.name)
                removed.append(f"cgroup {path.name}")
    return removed


class Testbed:
    """`with Testbed(1.0, 0.125) as tb: tb.run_edge([...])`. See the module doc.

    `rate_mbps` None leaves the link unshaped; `edge_cpu_quota` None leaves the edge unthrottled;
    `edge_emulation` says how the edge is slowed to it ("dilate" or "quota", see the module doc).
    `cloud_args` are extra arguments for `python -m runtime.cloud`; `start_cloud=False` skips it.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, rate_mbps: float | None, edge_cpu_quota: float | None = 0.125, *,
                 reverse_mbps: float | None = None, app: str = DEFAULT_APP, cloud_args: list[str] | None = None,
                 start_cloud: bool = True, force_loopback: bool = False, log_path: str | None = None,
                 link: str = "tbf", edge_emulation: str = "dilate", keep_warm: bool = True) -> None:
        if link not in LINKS:
            raise CoInferError(f"unknown link {link!r} (known: {', '.join(LINKS)})")
        if edge_emulation not in EDGE_EMULATIONS:
            raise CoInferError(f"unknown edge emulation {edge_emulation!r} (known: {', '.join(EDGE_EMULATIONS)})")
        if edge_emulation == "dilate" and edge_cpu_quota is not None:
            _speed(edge_cpu_quota)
        self.edge_emulation = edge_emulation
        self.warm = KeepWarm() if keep_warm else None
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        # the edge gets the first CPU to itself (but for idle-priority work); the cloud and helpers like the
        # filler (at idle priority) the last
        self.edge_cpu = cpus[0] if len(cpus) > 1 and shutil.which("taskset") else None
        self.cloud_cpu = cpus[-1] if self.edge_cpu is not None else None
        self.helper_cpu = cpus[-1] if cpus else 0
        self.link = link
        self._fillers: list[subprocess.Popen] = []
        self.rate_mbps, self.reverse_mbps, self.edge_cpu_quota = rate_mbps, reverse_mbps, edge_cpu_quota
        self.app, self.cloud_args, self.start_cloud = app, list(cloud_args or []), start_cloud
        self.pid = os.getpid()
        self.tag = f"{PREFIX}{self.pid}-{id(self) % 10000}"
        self.ns_edge, self.ns_cloud = f"{self.tag}-edge", f"{self.tag}-cloud"
        n = self.pid % 250 + 1
        self.link_edge, self.link_cloud = f"{LINK_PREFIX}{self.pid}e", f"{LINK_PREFIX}{self.pid}c"
        self.edge_ip, self.cloud_ip = f"10.231.{n}.1", f"10.231.{n}.2"
        self.group = f"{PREFIX}{self.pid}"
        reason = "forced" if force_loopback else netns_support()
        self.mode = "loopback" if reason else "netns"
        self.notes: list[str] = []
        if reason:
            self.notes.append(f"no network namespaces ({reason}): cloud on 127.0.0.1, uplink shaped by the edge "
                              "client's own token bucket (COINFER_RATE_LIMIT)")
        from database.cpuquota import quota_support
        self.cpu_reason = quota_support() if edge_cpu_quota is not None and edge_emulation == "quota" else None
        if self.cpu_reason:
            self.notes.append(f"edge CPU quota {edge_cpu_quota} not applied ({self.cpu_reason}): edge unthrottled")
        self.host, self.port = ("127.0.0.1", 0) if self.mode == "loopback" else (self.cloud_ip, CLOUD_PORT)
        self.cloud: subprocess.Popen | None = None
        self.log_path = log_path
        self._up = False
        self._lock = threading.Lock()
        self._old_handlers: dict[int, object] = {}

    # ------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Testbed:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        """Create the namespaces, link, shaping, cgroup and cloud server (idempotent)."""
        with self._lock:
            if self._up:
                return
            self._up = True
        atexit.register(self.teardown)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            if self.mode == "netns":
                cleanup_leftovers()
                self._setup_netns()
            if self.uses_cgroup:
                from database.cpuquota import set_group_quota
                set_group_quota(self.group, self.edge_cpu_quota)
            if self.warm is not None:
                self.warm.start()
                if self.warm.reason:
                    self.notes.append(f"CPUs not kept out of idle ({self.warm.reason})")
            if self.start_cloud:
                self._start_cloud()
        except BaseException:
            self.teardown()
            raise

    def _setup_netns(self) -> None:
        for ns in (self.ns_edge, self.ns_cloud):
            _run("ip", "netns", "del", ns, check=False)
            _run("ip", "netns", "add", ns)
        _run("ip", "link", "del", self.link_edge, check=False)
        _run("ip", "link", "add", self.link_edge, "type", "veth", "peer", "name", self.link_cloud)
        for ns, link, ip in ((self.ns_edge, self.link_edge, self.edge_ip), (self.ns_cloud, self.link_cloud,
                                                                            self.cloud_ip)):
            _run("ip", "link", "set", link, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", link)
            _run("ip", "-n", ns, "link", "set", link, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        if self.rate_mbps is not None:
            _run("ip", "netns", "exec", self.ns_edge, "tc", "qdisc", "add", "dev", self.link_edge, "root", "handle",
                 "1:", "tbf", *tbf_args(self.rate_mbps))
            if self.link == "paced":
                self._start_filler()
        if self.reverse_mbps is not None:
            _run("ip", "netns", "exec", self.ns_cloud, "tc", "qdisc", "add", "dev", self.link_cloud, "root",
                 "tbf", *tbf_args(self.reverse_mbps))

    def set_rate(self, mbps: float) -> None:
        """Change the edge -> cloud rate now (`tc qdisc change`; loopback: exported for new edge processes).

        `tc qdisc change` keeps the tbf's child and its queue, and a paced link's filler keeps running (it
        sends as fast as the link drains, at any rate), so the bucket stays empty across the change."""
        self.rate_mbps = mbps
        if self.mode != "netns":
            return
        _run("ip", "netns", "exec", self.ns_edge, "tc", "qdisc", "change", "dev", self.link_edge, "root",
             "handle", "1:", "tbf", *tbf_args(mbps))

    def _start_filler(self) -> None:
        """`paced` link: a strict-priority child under the tbf, and a low-priority UDP filler that keeps a
        few minimal frames queued behind it, so the bucket is always empty and every message waits
        bytes / rate."""
        assert self.rate_mbps is not None
        _run("ip", "netns", "exec", self.ns_edge, "tc", "qdisc", "add", "dev", self.link_edge, "parent", "1:1",
             "handle", "10:", "pfifo_fast")
        cpu = str(self.helper_cpu)
        self._fillers.append(self.run_cloud_side([sys.executable, "-c", _FILLER_SINK, self.cloud_ip, str(FILLER_PORT),
                                                  cpu]))
        self._fillers.append(subprocess.Popen(["ip", "netns", "exec", self.ns_edge, sys.executable, "-c", _FILLER,
                                               self.cloud_ip, str(FILLER_PORT), cpu]))

    def qdisc(self) -> str:
        if self.mode != "netns":
            return "(loopback: no qdisc)"
        return _run("ip", "netns", "exec", self.ns_edge, "tc", "qdisc", "show", "dev", self.link_edge).stdout.strip()

    def _start_cloud(self) -> None:
        cmd = [sys.executable, "-m", "runtime.cloud", "--app", self.app, "--host", self.host, "--port",
               str(self.port), "--json", *self.cloud_args]
        if self.cloud_cpu is not None:  # edge and cloud are two machines: they do not share a core's caches
            cmd = ["taskset", "-c", str(self.cloud_cpu), *cmd]
        if self.mode == "netns":
            cmd = ["ip", "netns", "exec", self.ns_cloud, *cmd]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.cloud = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        assert self.cloud.stderr is not None
        for line in self.cloud.stderr:
            with contextlib.suppress(ValueError, KeyError):
                msg = json.loads(line)["msg"]
                if msg.startswith("serving app"):
                    self.port = int(msg.split(":")[-1].split()[0])
                    break
            if time.monotonic() > deadline:
                break
        else:
            raise CoInferError("the cloud server did not start (exit status "
                               f"{self.cloud.poll()}); run python -m runtime.cloud by hand to see why")
        # keep draining its log so the pipe never fills up
        sink = open(self.log_path, "a") if self.log_path else open(os.devnull, "w")
        threading.Thread(target=_drain, args=(self.cloud.stderr, sink), daemon=True).start()

    def teardown(self) -> None:
        """Stop the cloud, delete namespaces, link and cgroup (idempotent, safe after a partial setup)."""
        with self._lock:
            if not self._up:
                return
            self._up = False
        if self.cloud is not None and self.cloud.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.cloud.pid, signal.SIGTERM)
            try:
                self.cloud.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.cloud.pid, signal.SIGKILL)
                self.cloud.wait()
        for proc in self._fillers:
            _kill(proc)
        self._fillers.clear()
        if self.warm is not None:
            self.warm.stop()
        if self.mode == "netns":
            for ns in (self.ns_edge, self.ns_cloud):
                for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                _run("ip", "netns", "del", ns, check=False)
            _run("ip", "link", "del", self.link_edge, check=False)
        if self.uses_cgroup:
            from database.cpuquota import remove_group
            remove_group(self.group)
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame) -> None:
        self.teardown()
        old = self._old_handlers.get(signum)
        if callable(old):
            old(signum, frame)
        raise SystemExit(128 + signum)

    # ------------------------------------------------------------------------------- edge side
    @property
    def uses_cgroup(self) -> bool:
        return self.edge_emulation == "quota" and self.edge_cpu_quota is not None and not self.cpu_reason

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def edge_env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COINFER_SERVER": self.server}
        if self.mode == "loopback" and self.rate_mbps is not None:
            env["COINFER_RATE_LIMIT"] = repr(self.rate_mbps)
        env.pop("COINFER_EDGE_SPEED", None)
        if self.edge_emulation == "dilate" and self.edge_cpu_quota is not None:
            env["COINFER_EDGE_SPEED"] = repr(self.edge_cpu_quota)
        return env

    def edge_command(self, argv: list[str], throttle: bool = True) -> list[str]:
        """argv with {server} filled in, run in the edge namespace, pinned to the edge's CPU (when there are
        two or more and `taskset` exists), inside the edge cgroup (with `quota`). The cgroup is
        joined before entering the namespace (`ip netns exec` mounts its own /sys, without cgroups). With
        `throttle` False the caller moves the process later: `tb.throttle(pid)`."""
        argv = [a.replace("{server}", self.server) for a in argv]
        if self.edge_cpu is not None:
            argv = ["taskset", "-c", str(self.edge_cpu), *argv]
        if self.mode == "netns":
            argv = ["ip", "netns", "exec", self.ns_edge, *argv]
        if throttle and self.uses_cgroup:
            from database.cpuquota import group_path
            procs = group_path(self.group) / "cgroup.procs"
            argv = ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv]
        return argv

    def throttle(self, pid: int) -> bool:
        """Put a running process under the edge CPU quota; False when there is none here (no quota, or the
        edge is emulated by `dilate`: its processes slow themselves down, from COINFER_EDGE_SPEED)."""
        if not self.uses_cgroup:
            return False
        from database.cpuquota import move_pid
        move_pid(self.group, pid)
        return True

    def set_edge_cpu(self, cpus: float) -> None:
        """Change the edge's CPU share now: the cgroup's quota (processes in it included), or with `dilate`
        the speed exported to edge processes started from now on (running ones are told by their owner,
        e.g. `EdgeWorker.set_edge_cpu`)."""
        if self.edge_cpu_quota is None or self.cpu_reason:
            raise CoInferError("this testbed has no edge CPU quota")
        if self.edge_emulation == "dilate":
            self.edge_cpu_quota = _speed(cpus)
            return
        from database.cpuquota import set_group_quota
        self.edge_cpu_quota = cpus
        set_group_quota(self.group, cpus)

    def popen_edge(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.edge_command(argv), cwd=REPO_ROOT, env=self.edge_env(), **kwargs)

    def run_edge(self, argv: list[str], timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.edge_command(argv), cwd=REPO_ROOT, env=self.edge_env(), timeout=timeout,
                              **kwargs)

    def run_cloud_side(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """A helper process in the cloud namespace (unthrottled), e.g. a sink for `verify`."""
        cmd = ["ip", "netns", "exec", self.ns_cloud, *argv] if self.mode == "netns" else argv
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, **kwargs)

    def verify(self, nbytes: int = 1 << 20) -> dict:
        """Send `nbytes` edge -> cloud over TCP; seconds until the cloud has them all, vs nbytes / rate."""
        if self.mode != "netns":
            raise CoInferError("verify needs the namespace testbed (root, ip, tc)")
        sink = self.run_cloud_side([sys.executable, "-c", _SINK, self.cloud_ip, str(SINK_PORT), str(nbytes)],
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        out = subprocess.run(["ip", "netns", "exec", self.ns_edge, sys.executable, "-c", _SOURCE, self.cloud_ip,
                              str(SINK_PORT), str(nbytes)], capture_output=True, text=True, timeout=600)
        sink.wait(30)
        if out.returncode != 0:
            raise CoInferError(f"verify failed: {out.stderr.strip()}")
        seconds = float(out.stdout.strip())
        expected = nbytes / (self.rate_mbps * BYTES_PER_MBPS) if self.rate_mbps else None
        return {"bytes": nbytes, "rate_mbps": self.rate_mbps, "seconds": seconds, "expected_s": expected,
                "error": None if expected is None else (seconds - expected) / expected}


def _speed(cpus: float) -> float:
    """A dilated edge's speed, checked (database.slowdown) with the error as one CoInferError line."""
    try:
        return check_speed(cpus)
    except ValueError as exc:
        raise CoInferError(str(exc)) from None


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _drain(stream, sink) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            sink.write(line)
            sink.flush()


# source: connect, send nbytes, wait for the sink's one-byte ack; prints seconds from first byte to ack
_SOURCE = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=600)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
t = time.perf_counter(); s.sendall(bytes(n)); s.recv(1); print(time.perf_counter() - t)
"""
# filler: minimal UDP frames (43 bytes on the wire) at priority 2 (pfifo_fast's lowest band), as fast as the
# link drains them: its send buffer holds a few dozen, so sendto blocks until the tbf lets one go. It runs
# at idle priority on a CPU other than the edge's: at 2 Mbps it moves 6,000 frames a second, and the
# kernel charges network processing to whichever task it interrupts.
_FILLER = """
import os, socket, sys, time
host, port, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 2)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
payload = b"f"
while True:
    try:
        s.sendto(payload, (host, port))
    except OSError:
        time.sleep(0.001)
"""
_FILLER_SINK = """
import os, socket, sys, time
os.sched_setaffinity(0, {int(sys.argv[3])})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
time.sleep(1e9)
"""
_SINK = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); srv.bind((host, port)); srv.listen(1)
c, _ = srv.accept(); got = 0
while got < n:
    b = c.recv(1 << 16)
    if not b: break
    got += len(b)
c.sendall(b"k"); c.close()
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    edge_cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, edge_cmd = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m runtime.testbed", description=__doc__.splitlines()[0],
                                 epilog="then: -- EDGE COMMAND ({server} = HOST:PORT of the cloud)")
    ap.add_argument("--rate", help="edge -> cloud rate: 1mbit, 512kbit or Mbps (2^20 bits per Mbit)")
    ap.add_argument("--reverse-rate", help="cloud -> edge rate (default unshaped)")
    ap.add_argument("--edge-cpu", type=float, default=None,
                    help="edge speed as a fraction of this CPU (0: full speed; default: the app's edge cpu_quota)")
    ap.add_argument("--edge-emulation", choices=EDGE_EMULATIONS, default=None,
                    help="dilate (stretched time) or quota (cgroup CFS quota); default: the app's")
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--cloud-arg", action="append", default=[], help="extra argument for runtime.cloud")
    ap.add_argument("--link", choices=LINKS, default="tbf", help="tbf alone, or tbf kept busy by a filler (paced)")
    ap.add_argument("--keep-warm", action=argparse.BooleanOptionalAction, default=True,
                    help="keep every CPU busy at SCHED_IDLE priority while the testbed is up (database.slowdown)")
    ap.add_argument("--verify", action="store_true", help="time 1 MiB edge -> cloud against the rate")
    ap.add_argument("--cleanup", action="store_true", help="remove every testbed namespace, link and cgroup")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cleanup:
        removed = cleanup_leftovers(everything=True)
        print(json.dumps(removed) if args.json else ("\n".join(removed) or "nothing to remove"))
        return 0
    from apps import load_app
    app = load_app(args.app)
    edge_cpu = app.edge_cpu_quota if args.edge_cpu is None else args.edge_cpu
    emulation = args.edge_emulation or app.edge_emulation
    if edge_cpu is not None and edge_cpu < 0:
        raise CoInferError("--edge-cpu must be >= 0")
    rate = parse_rate(args.rate) if args.rate else None
    reverse = parse_rate(args.reverse_rate) if args.reverse_rate else None
    if not edge_cmd and not args.verify:
        raise CoInferError("nothing to run: give --verify or -- EDGE COMMAND")
    with Testbed(rate, edge_cpu or None, reverse_mbps=reverse, app=args.app, cloud_args=args.cloud_arg,
                 start_cloud=bool(edge_cmd), link=args.link, edge_emulation=emulation, keep_warm=args.keep_warm) as tb:
        info = {"mode": tb.mode, "server": tb.server, "rate_mbps": rate, "reverse_mbps": reverse,
                "edge_cpu": edge_cpu or None, "edge_emulation": emulation, "qdisc": tb.qdisc(), "notes": tb.notes}
        edge = f"{edge_cpu:g} of this CPU ({emulation})" if edge_cpu else "unthrottled"
        print(json.dumps(info) if args.json else
              f"testbed: {tb.mode}, cloud at {tb.server}, edge->cloud {rate or 'unshaped'} Mbps, edge CPU {edge}\n"
              f"  {info['qdisc']}" + "".join(f"\n  note: {n}" for n in tb.notes), flush=True)
        if args.verify:
            v = tb.verify()
            print(json.dumps(v) if args.json else
                  f"verify: {v['bytes']} bytes in {v['seconds']:.3f} s"
                  + (f", expected {v['expected_s']:.3f} s ({v['error'] * 100:+.1f} %)" if v['expected_s'] else ""),
                  flush=True)
        rc = tb.run_edge(edge_cmd).returncode if edge_cmd else 0
    return rc


if __name__ == "__main__":
    run_cli(main)
