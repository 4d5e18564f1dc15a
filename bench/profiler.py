"""Sample CPU and memory per process, and GPU utilisation and memory when there is a GPU, once a second.

    python -m bench.profiler --interval 1 --out FILE [--pid PID ...] [--duration S]

Which processes: each `--pid` and all its descendants, found again at every sample (default: the
process that started the profiler and its descendants, i.e. the benchmark run that launched it).
Per process and sample: CPU percent since the previous sample (100 = one core busy; psutil's
`cpu_percent`), resident memory, and what it runs (its `-m` module, else its executable name).
GPUs (NVML through nvidia-ml-py): utilisation percent and memory used per device; without
nvidia-ml-py, a driver or a device, the GPU rows are left out with one line on stderr. Machine-wide
CPU percent (100 = every core busy) is a row of its own (`pid` 0, name `machine`).

The CSV (`time,kind,pid,name,cpu_percent,rss_mb,gpu_util,gpu_mem_mb`; kind `proc`, `machine` or
`gpu`) is appended to and flushed at every sample, so it is whole up to the last second whatever
stops the profiler. It starts and stops with the run: it ends on SIGTERM / SIGINT, after
`--duration`, or when every process it watches is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

COLUMNS = ("time", "kind", "pid", "name", "cpu_percent", "rss_mb", "gpu_util", "gpu_mem_mb")


@dataclass(frozen=True)
class ProfilerConfig:
    """What to sample (`roots` and their descendants), how often, for how long (None: until stopped)."""

    out: str
    roots: tuple[int, ...]
    interval: float = 1.0
    duration: float | None = None

    def __post_init__(self) -> None:
        if not (self.interval > 0 and self.interval < 3600):
            raise CoInferError(f"--interval must be a positive number of seconds, got {self.interval}")
        if self.duration is not None and not self.duration > 0:
            raise CoInferError(f"--duration must be positive, got {self.duration}")
        if not self.roots:
            raise CoInferError("no process to watch")
        import psutil
        if gone := [pid for pid in self.roots if pid < 1 or not psutil.pid_exists(pid)]:
            raise CoInferError(f"--pid {gone[0]}: no such process")


def process_name(proc) -> str:
    """What a process runs: `python -m X`'s X (with a `client`/`run`/`report` subcommand), else its name."""
    import psutil
    try:
        cmd = proc.cmdline()
    except psutil.Error:  # gone, or not ours to read: its executable's name if that can still be read
        try:
            return proc.name() or "?"
        except psutil.Error:
            return "?"
    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd):
        module = cmd[cmd.index("-m") + 1]
        rest = cmd[cmd.index("-m") + 2:]
        return f"{module} {rest[0]}" if rest and not rest[0].startswith("-") else module
    if len(cmd) > 1 and "multiprocessing" in " ".join(cmd):
        return "spawned worker"  # bench.corun's client processes
    if cmd:
        return Path(cmd[0]).name
    try:  # a zombie or a kernel thread: no command line, but a name
        return proc.name() or "?"
    except psutil.Error:
        return "?"


class Gpus:
    """NVML handles when a GPU is there; `available` False otherwise (why in `reason`)."""

    def __init__(self) -> None:
        self.handles: list = []
        self.reason = ""
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
            return
        try:
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError as exc:
            self.reason = f"NVML: {exc}"
            return
        self._nvml = pynvml
        if not self.handles:
            self.reason = "NVML sees no GPU"

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def sample(self) -> list[tuple[int, float, float]]:
        """(index, utilisation %, memory used MB) per GPU."""
        out = []
        for i, handle in enumerate(self.handles):
            util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append((i, float(util.gpu), mem.used / 2**20))
        return out


class Profiler:
    """Samples into the CSV (see the module doc); `run(stop)` until `stop` is set or nothing is left."""

    def __init__(self, config: ProfilerConfig) -> None:
        import psutil
        self.config, self._psutil = config, psutil
        self._procs: dict[int, object] = {}
        self.gpus = Gpus()
        self.samples = 0

    def _watched(self) -> list:
        psutil = self._psutil
        found = []
        for pid in self.config.roots:
            try:
                root = psutil.Process(pid)
                found += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        live = {}
        for proc in found:
            known = self._procs.get(proc.pid)
            live[proc.pid] = known if known is not None else proc
            if known is None:
                try:
                    proc.cpu_percent(None)  # the first call starts its interval
                except psutil.Error:
                    pass
        self._procs = live
        return list(live.values())

    def sample(self, out) -> int:
        """One sample written to `out`; returns how many processes were alive."""
        psutil = self._psutil
        now = time.time()
        rows = [(now, "machine", 0, "machine", psutil.cpu_percent(None), psutil.virtual_memory().used / 2**20, "", "")]
        procs = self._watched()
        for proc in procs:
            try:
                with proc.oneshot():
                    rows.append((now, "proc", proc.pid, process_name(proc), proc.cpu_percent(None),
                                 proc.memory_info().rss / 2**20, "", ""))
            except psutil.Error:
                continue
        if self.gpus.available:
            for index, util, mem in self.gpus.sample():
                rows.append((now, "gpu", index, f"gpu{index}", "", "", util, mem))
        for row in rows:
            out.write(",".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + "\n")
        out.flush()
        self.samples += 1
        return len(procs)

    def run(self, stop: threading.Event) -> int:
        """Sample every `interval` until `stop`, `duration` or no watched process; returns the samples."""
        cfg = self.config
        path = Path(cfg.out)
        end = time.monotonic() + cfg.duration if cfg.duration is not None else float("inf")
        self._psutil.cpu_percent(None)
        self._watched()
        with open(path, "w") as out:
            out.write(",".join(COLUMNS) + "\n")
            out.flush()
            next_at = time.monotonic() + cfg.interval
            while not stop.wait(max(0.0, next_at - time.monotonic())):
                alive = self.sample(out)
                next_at += cfg.interval
                if not alive or time.monotonic() >= end:
                    break
        return self.samples


def read_samples(path: str | Path) -> list[dict[str, str]]:
    """The profiler's CSV as dicts (a torn last line is skipped)."""
    import csv
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("gpu_mem_mb") is not None]


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.profiler", description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--out", required=True, help="CSV to write")
    ap.add_argument("--pid", type=int, action="append", help="watch this process and its descendants "
                                                             "(repeatable; default: the parent process)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = ap.parse_args(argv)
    from cli.files import check_output
    roots = tuple(args.pid) if args.pid else (os.getppid(),)
    config = ProfilerConfig(args.out, roots, args.interval, args.duration)
    check_output(args.out)
    profiler = Profiler(config)
    if not profiler.gpus.available:
        print(f"bench.profiler: no GPU rows ({profiler.gpus.reason})", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    samples = profiler.run(stop)
    print(f"{samples} samples of {len(roots)} process tree(s) in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
