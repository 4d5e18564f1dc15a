"""Testbed: an emulated edge device and cloud on one machine, joined by a shaped link.

    python -m runtime.testbed --rate 1mbit [--speed 0.125] [--reverse-rate R] -- python -m runtime.edge \
        --server {server} --scheme 4,12,3
    python -m runtime.testbed --rate 8 --verify          # 1 MiB edge -> cloud should take ~1.0 s
    python -m runtime.testbed --cleanup                  # remove leftovers of crashed testbeds

With root, `ip netns` and `tc`, edge and cloud live in two network namespaces joined by a veth
pair whose edge -> cloud direction is shaped by tc tbf, or kept paced by a filler (`runtime.netns`
says how). This module runs the processes: the cloud server (`python -m runtime.cloud`) runs in
the cloud namespace unthrottled and says on stdout when it listens, and where (`runtime.ready`);
edge commands run in the edge namespace as the edge `Device` (apps.schema): slowed to its `speed` of
this CPU by its `emulation` (and, unless `keep_warm` is off, every CPU is kept out of idle:
`devices.slowdown.KeepWarm`):
- `dilate` (default): COINFER_SPEED is exported and the edge client (`runtime.edge --speed`) stretches its
  edge stage (head + quantise/pack) to its CPU time / speed (`devices.slowdown`, which also says why this is the
  default);
- `quota`: the edge runs inside the cgroup `coinfer-tb-<pid>` with a CFS CPU quota of `speed` CPUs.
With `mem_limit` (`--mem-limit 512M`) edge processes are born in the memory cgroup `coinfer-tb-<pid>`
limited to that many bytes (`devices.memlimit`), and with `mem_stress` (`--mem-stress 0.5`) a memory hog
(`devices.memhog`) beside them in the same group holds that share of the limit and keeps writing it;
`memory_mark` / `memory_report` say what the edge and the group used (peaks, failcnt, OOM kills).
With `server` (HOST:PORT) the cloud is elsewhere: no namespaces, no cloud started here and no shaping of
any kind (the link is what it is); the edge's CPU and memory are emulated as above.
In the edge command `{server}` becomes HOST:PORT of the cloud (also exported as COINFER_SERVER).

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
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from apps import DEFAULT_APP, EMULATIONS, REPO_ROOT, Device
from apps.units import bytes_per_second
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from devices.memlimit import parse_size
from devices.slowdown import KeepWarm
from runtime import netns
from runtime.netns import LINKS, PREFIX, Netns, parse_rate
from runtime.ready import wait_ready

CLOUD_PORT = 5000
SPEED_ENV = "COINFER_SPEED"  # the dilated edge's speed, read by runtime.edge (--speed) and runtime.edgeworker
DEFAULT_EDGE = Device(name="cpu-edge", side="edge", speed=0.125)  # the shipped apps' edge device


@dataclass(frozen=True)
class TestbedConfig:
    """What a testbed emulates; checked once here (a bad value is one CoInferError line).

    `rate_mbps` None leaves the link unshaped (`reverse_mbps`: the cloud -> edge direction);
    `edge` is the edge device: its speed (None: unthrottled) as a fraction of this CPU, emulated by
    its emulation ("dilate" or "quota", see the module doc). `link` is
    "tbf" or "paced" (`runtime.netns`). `cloud_args` are extra arguments for `python -m runtime.cloud`;
    `start_cloud=False` skips it, `log_path` appends its log there. `force_loopback` skips the
    namespaces even where they are possible.
    """

    __test__ = False  # not a pytest test class

    rate_mbps: float | None = None
    edge: Device = DEFAULT_EDGE
    _: dataclasses.KW_ONLY
    reverse_mbps: float | None = None
    link: str = "tbf"
    keep_warm: bool = True
    cloud_args: tuple[str, ...] = ()
    start_cloud: bool = True
    force_loopback: bool = False
    log_path: str | None = None
    mem_limit: int | None = None
    mem_stress: float = 0.0
    server: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cloud_args", tuple(self.cloud_args))
        check_memory(self.mem_limit, self.mem_stress)
        if self.server is not None:
            from runtime.edge import parse_server
            parse_server(self.server)
            if self.rate_mbps is not None or self.reverse_mbps is not None or self.start_cloud:
                raise CoInferError("a testbed with a remote cloud (server) shapes no link and starts no cloud")
        for rate in (self.rate_mbps, self.reverse_mbps):
            if rate is not None:
                bytes_per_second(rate)
        if self.link not in LINKS:
            raise CoInferError(f"unknown link {self.link!r} (known: {', '.join(LINKS)})")
        if not isinstance(self.edge, Device):
            raise CoInferError(f"a testbed's edge is a Device (apps.schema), got {self.edge!r}")


def check_memory(limit: int | None, stress: float) -> None:
    """A memory limit is a positive number of bytes; the hog's share of it is in [0, 1) and needs a limit."""
    if limit is not None and not (isinstance(limit, int) and limit > 0):
        raise CoInferError(f"--mem-limit must be a positive size (e.g. 512M), got {limit!r}")
    if not (isinstance(stress, (int, float)) and 0 <= stress < 1):
        raise CoInferError(f"--mem-stress is a share of the memory limit in [0, 1), got {stress!r}")
    if stress and limit is None:
        raise CoInferError("--mem-stress is a share of --mem-limit: give --mem-limit too")


class Testbed:
    """`with Testbed("vgg16_digits", TestbedConfig(1.0, 0.125)) as tb: tb.run_edge([...])`.

    `app` (a name or a YAML path) is what the cloud serves; `config` says what to emulate. The rate
    and the edge's speed start as configured and change with `set_rate` / `set_edge_speed`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: str = DEFAULT_APP, config: TestbedConfig = TestbedConfig()) -> None:
        self.app, self.config = app, config
        self.rate_mbps, self.edge = config.rate_mbps, config.edge
        self.warm = KeepWarm() if config.keep_warm else None
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        # the edge gets the first CPU to itself (but for idle-priority work); the cloud and helpers like the
        # filler (at idle priority) the last
        self.edge_cpu = cpus[0] if len(cpus) > 1 and shutil.which("taskset") else None
        self.cloud_cpu = cpus[-1] if self.edge_cpu is not None else None
        self.pid = os.getpid()
        self.group = f"{PREFIX}{self.pid}"
        reason = ("remote" if config.server else "forced" if config.force_loopback
                  else netns.netns_support())
        self.mode = "remote" if config.server else "loopback" if reason else "netns"
        self.net = None if reason else Netns(f"{PREFIX}{self.pid}-{id(self) % 10000}", self.pid,
                                             cpus[-1] if cpus else 0)
        self.notes: list[str] = []
        if config.server:
            self.notes.append(f"cloud at {config.server}, elsewhere: no namespaces, no cloud started here and no "
                              "link shaping by this testbed (the link is what it is)")
        elif reason:
            self.notes.append(f"no network namespaces ({reason}): cloud on 127.0.0.1, uplink shaped by the edge "
                              "client's own token bucket (COINFER_RATE_LIMIT)")
        from devices.cpuquota import quota_support
        self.cpu_reason = quota_support() if config.edge.emulation == "quota" else None
        if self.cpu_reason:
            self.notes.append(f"edge CPU quota {config.edge.speed} not applied ({self.cpu_reason}): "
                              "edge unthrottled")
        self.host, self.port = ("127.0.0.1", 0) if self.net is None else (self.net.cloud_ip, CLOUD_PORT)
        if config.server:
            from runtime.edge import parse_server
            self.host, self.port = parse_server(config.server)
        self.mem_limit = config.mem_limit
        if self.mem_limit is not None:
            from devices.memlimit import memory_support
            why = memory_support()
            if why:
                raise CoInferError(f"--mem-limit needs root and the cgroup v1 memory controller ({why})")
        self.hog = None  # devices.memhog.MemHog while mem_stress > 0
        self.cloud: subprocess.Popen | None = None
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
            if self.net is not None:
                cleanup_leftovers()
                self.net.create(self.rate_mbps, self.config.reverse_mbps, paced=self.config.link == "paced")
            if self.uses_cgroup:
                from devices.cpuquota import set_group_quota
                set_group_quota(self.group, self.edge.speed)
            if self.mem_limit is not None:
                self.set_memory_limit(self.mem_limit)
            if self.warm is not None:
                self.warm.start()
                if self.warm.reason:
                    self.notes.append(f"CPUs not kept out of idle ({self.warm.reason})")
            if self.config.start_cloud:
                self._start_cloud()
        except BaseException:
            self.teardown()
            raise

    def _start_cloud(self) -> None:
        cmd = [sys.executable, "-m", "runtime.cloud", "--app", self.app, "--host", self.host, "--port",
               str(self.port), "--json", *self.config.cloud_args]
        if self.cloud_cpu is not None:  # edge and cloud are two machines: they do not share a core's caches
            cmd = ["taskset", "-c", str(self.cloud_cpu), *cmd]
        if self.net is not None:  # the veth address is reachable only from the edge's namespace
            cmd = self.net.in_cloud([*cmd, "--insecure"])
        self.cloud = subprocess.Popen(cmd, cwd=REPO_ROOT, env=netns.helper_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
        # keep draining its log so the pipe never fills up
        log = open(self.config.log_path, "a") if self.config.log_path else open(os.devnull, "w")
        threading.Thread(target=_drain, args=(self.cloud.stderr, log), daemon=True).start()
        try:
            self.port = wait_ready(self.cloud, 60, "the cloud server")["port"]
        except CoInferError as exc:
            raise CoInferError(f"{exc}; run python -m runtime.cloud by hand to see why") from None

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
        if self.net is not None:
            self.net.delete()
        if self.warm is not None:
            self.warm.stop()
        if self.uses_cgroup:
            from devices.cpuquota import remove_group
            remove_group(self.group)
        if self.hog is not None:
            self.hog.stop()
        if self.config.mem_limit is not None:
            from devices.memlimit import remove_group as remove_memory_group
            remove_memory_group(self.group)
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

    # ------------------------------------------------------------------------------------ link
    def set_rate(self, mbps: float) -> None:
        """Change the edge -> cloud rate now (`Netns.set_rate`; loopback: exported for new edge processes)."""
        self.rate_mbps = mbps
        if self.net is not None:
            self.net.set_rate(mbps)

    def qdisc(self) -> str:
        """The edge end's queueing discipline, as `tc` shows it."""
        return "(loopback: no qdisc)" if self.net is None else self.net.qdisc()

    def verify(self, nbytes: int = 1 << 20) -> dict:
        """Send `nbytes` edge -> cloud over TCP; seconds until the cloud has them all, vs nbytes / rate."""
        if self.net is None:
            raise CoInferError("verify needs the namespace testbed (root, ip, tc)")
        seconds = self.net.transfer_seconds(nbytes)
        expected = nbytes / bytes_per_second(self.rate_mbps) if self.rate_mbps else None
        return {"bytes": nbytes, "rate_mbps": self.rate_mbps, "seconds": seconds, "expected_s": expected,
                "error": None if expected is None else (seconds - expected) / expected}

    # ------------------------------------------------------------------------------- edge side
    @property
    def uses_cgroup(self) -> bool:
        return self.edge.emulation == "quota" and not self.cpu_reason

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def edge_env(self) -> dict[str, str]:
        """The environment of an edge process: COINFER_SERVER, and the rate / speed it must emulate itself."""
        env = {**netns.helper_env(), "COINFER_SERVER": self.server}
        if self.net is None and self.rate_mbps is not None:
            env["COINFER_RATE_LIMIT"] = repr(self.rate_mbps)
        env.pop(SPEED_ENV, None)
        if self.edge.dilated:
            env[SPEED_ENV] = repr(self.edge.speed)
        return env

    def edge_command(self, argv: list[str], throttle: bool = True) -> list[str]:
        """argv with {server} filled in, run in the edge namespace, pinned to the edge's CPU (when there are
        two or more and `taskset` exists), inside the edge cgroup (with `quota`). The cgroup is
        joined before entering the namespace (`ip netns exec` mounts its own /sys, without cgroups). With
        `throttle` False the caller moves the process later: `tb.throttle(pid)`."""
        argv = [a.replace("{server}", self.server) for a in argv]
        if self.edge_cpu is not None:
            argv = ["taskset", "-c", str(self.edge_cpu), *argv]
        if self.net is not None:
            argv = self.net.in_edge(argv)
        procs = []
        if throttle and self.uses_cgroup:
            from devices.cpuquota import group_path
            procs.append(group_path(self.group) / "cgroup.procs")
        if self.config.mem_limit is not None:  # the memory limit holds from the start, start-up included
            from devices.memlimit import procs_file
            procs.append(procs_file(self.group))
        if procs:
            joins = " && ".join(f"echo $$ > {p}" for p in procs)
            argv = ["sh", "-c", f'{joins} && exec "$@"', "sh", *argv]
        return argv

    def throttle(self, pid: int) -> bool:
        """Put a running process under the edge CPU quota; False when there is none here (no quota, or the
        edge is emulated by `dilate`: its processes slow themselves down, from COINFER_SPEED)."""
        if not self.uses_cgroup:
            return False
        from devices.cpuquota import move_pid
        move_pid(self.group, pid)
        return True

    def set_edge_speed(self, speed: float) -> None:
        """Change the edge's speed now: the cgroup's quota (processes in it included), or with `dilate`
        the speed exported to edge processes started from now on (running ones are told by their owner,
        e.g. `EdgeWorker.set_edge_speed`)."""
        if not self.edge.slowed or self.cpu_reason:
            raise CoInferError("this testbed's edge is not slowed (no speed, or its CPU quota was not applied)")
        self.edge = self.edge.with_speed(speed)
        if self.uses_cgroup:
            from devices.cpuquota import set_group_quota
            set_group_quota(self.group, speed)

    # ----------------------------------------------------------------------------- edge memory
    def set_memory_limit(self, nbytes: int | None) -> None:
        """Limit the edge's memory group to `nbytes` now (None: no limit and no hog, the group still
        measured); the hog (with `mem_stress`) is started again at its share of the new limit."""
        from devices.memhog import MemHog
        from devices.memlimit import set_group_limit
        if nbytes is not None:
            check_memory(nbytes, self.config.mem_stress)
        if self.config.mem_limit is None:
            raise CoInferError("this testbed has no memory group (mem_limit) to change")
        if self.hog is not None:
            self.hog.stop()
        set_group_limit(self.group, nbytes)
        self.mem_limit = nbytes
        if self.config.mem_stress and nbytes is not None:
            starts = self.hog.starts if self.hog is not None else 0
            self.hog = MemHog(int(self.config.mem_stress * nbytes), self.group, self.edge_cpu)
            self.hog.starts = starts
            self.hog.start()

    def memory_mark(self, pid: int | None = None):
        """Start measuring the edge's memory: the group's peak and the peak RSS of process `pid` start again
        from now, then a hog the OOM killer took is started again (so a hog that cannot fit beside the edge
        shows in the report as an OOM kill and the group's peak at the limit); what `memory_report`
        subtracts."""
        from devices.memlimit import reset_peak, reset_peak_rss, stats
        if self.config.mem_limit is None:
            return None
        if pid is not None:
            reset_peak_rss(pid)
        reset_peak(self.group)
        mark = stats(self.group)
        if self.hog is not None and self.mem_limit is not None and not self.hog.alive():
            self.hog.start()
        return mark

    def memory_report(self, mark, pid: int | None = None) -> dict | None:
        """Since `mark`: the limit, the hog's share / size / RSS now / starts / alive, the edge process's peak
        RSS, the group's peak (edge + hog), failcnt, OOM kills, major faults and file refaults (bytes; None
        without a memory limit)."""
        from devices.memlimit import peak_rss, rss, stats
        if self.config.mem_limit is None or mark is None:
            return None
        now = stats(self.group).since(mark)
        hog = self.hog if self.mem_limit is not None else None
        return {"limit": self.mem_limit, "hog_share": self.config.mem_stress if hog is not None else 0.0,
                "hog_bytes": int(self.config.mem_stress * self.mem_limit) if hog is not None else 0,
                "hog_rss": rss(hog.pid) if hog is not None and hog.alive() else 0,
                "hog_starts": hog.starts if hog is not None else 0,
                "hog_alive": hog is not None and hog.alive(),
                "edge_peak_rss": peak_rss(pid) if pid is not None else None,
                "group_peak": now.peak, "failcnt": now.failcnt, "oom_kills": now.oom_kills,
                "majfaults": now.majfaults, "refaults": now.refaults}

    def run_edge(self, argv: list[str], timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Run an edge command (`edge_command`) to completion; `kwargs` go to `subprocess.run`."""
        return subprocess.run(self.edge_command(argv), cwd=REPO_ROOT, env=self.edge_env(), timeout=timeout,
                              **kwargs)


def cleanup_leftovers(everything: bool = False) -> list[str]:
    """Remove testbed namespaces / links / cgroups whose owner pid is dead (all of them with `everything`)."""
    removed = netns.cleanup_leftovers(everything)
    if os.geteuid() != 0:
        return removed
    from devices import cpuquota, memlimit
    for root, remove, kind in ((cpuquota.CPU_ROOT, cpuquota.remove_group, "cgroup"),
                               (memlimit.own_root(), memlimit.remove_group, "memory cgroup")):
        if root.is_dir():
            for path in root.glob(PREFIX + "*"):
                if path.is_dir() and netns.stale(path.name, PREFIX, everything):
                    remove(path.name)
                    removed.append(f"{kind} {path.name}")
    return removed


def _drain(stream, sink) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            sink.write(line)
            sink.flush()


# ------------------------------------------------------------------------------------------ CLI
@dataclass(frozen=True)
class TestbedCommand:
    """The CLI's job: remove leftovers (`cleanup`), or bring up a testbed of `config` for `app` and, in it,
    time the link (`verify`) and/or run `edge_cmd`."""

    __test__ = False  # not a pytest test class

    app: str = DEFAULT_APP
    config: TestbedConfig = TestbedConfig()
    edge_cmd: tuple[str, ...] = ()
    verify: bool = False
    cleanup: bool = False


def run_testbed(command: TestbedCommand, show: Callable[[str, dict], None]) -> int:
    """Bring the testbed up; `show("testbed", info)` once it is, `show("verify", timing)` after the link
    is timed; then run the edge command: its exit status (0 without one)."""
    config = command.config
    with Testbed(command.app, config) as tb:
        show("testbed", {"mode": tb.mode, "server": tb.server, "rate_mbps": config.rate_mbps,
                         "reverse_mbps": config.reverse_mbps, "edge": config.edge.model_dump(), "qdisc": tb.qdisc(),
                         "notes": tb.notes})
        if command.verify:
            show("verify", tb.verify())
        if not command.edge_cmd:
            return 0
        mark = tb.memory_mark()
        status = tb.run_edge(list(command.edge_cmd)).returncode
        memory = tb.memory_report(mark)
        if memory is not None:  # the edge command has exited: its peak is the largest waited-for child's
            import resource
            memory["edge_peak_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            show("memory", memory)
        return status


def describe(what: str, info: dict, config: TestbedConfig) -> str:
    """The text line(s) of what `run_testbed` shows."""
    if what == "memory":
        return "memory: " + memory_line(info)
    if what == "verify":
        return (f"verify: {info['bytes']} bytes in {info['seconds']:.3f} s"
                + (f", expected {info['expected_s']:.3f} s ({info['error'] * 100:+.1f} %)" if info['expected_s']
                   else ""))
    edge = f"{config.edge.speed:g} of this CPU ({config.edge.emulation})" if config.edge.slowed else "unthrottled"
    memory = "" if config.mem_limit is None else (f", edge memory limit {config.mem_limit / 2**20:g} MiB"
                                                   f" with a hog of {config.mem_stress:g} of it")
    return (f"testbed: {info['mode']}, cloud at {info['server']}, edge->cloud {config.rate_mbps or 'unshaped'} Mbps, "
            f"edge CPU {edge}{memory}\n  {info['qdisc']}" + "".join(f"\n  note: {n}" for n in info["notes"]))


def memory_line(m: dict) -> str:
    """One line of `Testbed.memory_report`'s numbers (MiB)."""
    mib = 2**20
    if m["limit"] is None:
        return (f"no limit, no hog, edge peak RSS {m['edge_peak_rss'] / mib:.0f} MiB, group peak "
                f"{m['group_peak'] / mib:.0f} MiB, major faults {m['majfaults']}")
    edge = "?" if m.get("edge_peak_rss") is None else f"{m['edge_peak_rss'] / mib:.0f}"
    oom = "?" if m["oom_kills"] is None else m["oom_kills"]
    return (f"limit {m['limit'] / mib:.0f} MiB, hog {m['hog_share']:g} = {m['hog_bytes'] / mib:.0f} MiB "
            f"(RSS {m['hog_rss'] / mib:.0f} MiB, {'alive' if m['hog_alive'] else 'dead'}, started "
            f"{m['hog_starts']}x), edge peak RSS {edge} MiB, group peak {m['group_peak'] / mib:.0f} MiB, "
            f"failcnt {m['failcnt']}, OOM kills {oom}, major faults {m['majfaults']}, refaults {m['refaults']}")


def parse_args(argv: list[str] | None) -> tuple[TestbedCommand, bool]:
    """The command line (before `--`; the edge command after it) as (command, --json)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    edge_cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, edge_cmd = argv[:i], argv[i + 1:]
    ap = ArgParser(prog="python -m runtime.testbed", description=__doc__.splitlines()[0],
                   epilog="then: -- EDGE COMMAND ({server} = HOST:PORT of the cloud)")
    ap.add_argument("--rate", type=parse_rate, help="edge -> cloud rate: 1mbit, 512kbit or Mbps (2^20 bits per Mbit)")
    ap.add_argument("--reverse-rate", type=parse_rate, help="cloud -> edge rate (default unshaped)")
    ap.add_argument("--speed", type=float, default=None,
                    help="the edge's speed as a fraction of this CPU, in (0, 1] (default: the app's edge device's)")
    ap.add_argument("--emulation", choices=EMULATIONS, default=None,
                    help="how the edge's speed is made: dilate (stretched time) or quota (cgroup CFS quota); "
                         "default: the app's edge device's")
    ap.add_argument("--full-speed", action="store_true", help="the edge at this CPU's speed (no emulation)")
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--cloud-arg", action="append", default=[], help="extra argument for runtime.cloud")
    ap.add_argument("--link", choices=LINKS, default="tbf", help="tbf alone, or tbf kept busy by a filler (paced)")
    ap.add_argument("--keep-warm", action=argparse.BooleanOptionalAction, default=True,
                    help="keep every CPU busy at SCHED_IDLE priority while the testbed is up (devices.slowdown)")
    ap.add_argument("--mem-limit", type=parse_size, default=None, metavar="SIZE",
                    help="limit the edge's memory (cgroup v1, RAM and RAM + swap) to SIZE: 512M, 1G, bytes")
    ap.add_argument("--mem-stress", type=float, default=0.0, metavar="SHARE",
                    help="a memory hog beside the edge, in its memory group, holding and writing this share of "
                         "--mem-limit, in [0, 1) (devices.memhog)")
    ap.add_argument("--verify", action="store_true", help="time 1 MiB edge -> cloud against the rate")
    ap.add_argument("--cleanup", action="store_true", help="remove every testbed namespace, link and cgroup")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cleanup:
        return TestbedCommand(cleanup=True), args.json
    if not edge_cmd and not args.verify:
        raise CoInferError("nothing to run: give --verify or -- EDGE COMMAND")
    from apps import load_app
    from devices.spec import with_flags
    app = load_app(args.app)
    if args.full_speed and (args.speed is not None or args.emulation is not None):
        raise CoInferError("--full-speed is the edge at this CPU's speed: drop --speed / --emulation")
    edge = app.edge.with_speed(None) if args.full_speed else with_flags(app.edge, None, args.speed, args.emulation)
    config = TestbedConfig(args.rate, edge, reverse_mbps=args.reverse_rate, link=args.link, keep_warm=args.keep_warm,
                           cloud_args=args.cloud_arg, start_cloud=bool(edge_cmd), mem_limit=args.mem_limit,
                           mem_stress=args.mem_stress)
    return TestbedCommand(args.app, config, tuple(edge_cmd), args.verify), args.json


def main(argv: list[str] | None = None) -> int:
    command, as_json = parse_args(argv)
    if command.cleanup:
        removed = cleanup_leftovers(everything=True)
        print(json.dumps(removed) if as_json else ("\n".join(removed) or "nothing to remove"))
        return 0

    def show(what: str, info: dict) -> None:
        print(json.dumps(info) if as_json else describe(what, info, command.config), flush=True)

    return run_testbed(command, show)


if __name__ == "__main__":
    run_cli(main)
