"""A memory hog beside the edge: a child process that holds a share of the edge's memory and keeps touching it.

    python -m devices.memhog BYTES [--cpu N]     # child: hold BYTES of RSS, write every page, forever

    hog = MemHog(256 << 20, group="coinfer-tb-123", cpu=0)   # parent: started in that memory group
    hog.start(); ...; hog.alive(); hog.stop()

The child brings its resident set to BYTES: it reads its own RSS (the interpreter's), maps the rest
as anonymous memory, writes one byte of every page, says `{"ready": true, "bytes": ..., "rss": ...}`
on stdout, then writes one byte of every page again, page by page, in an endless loop, so the pages
stay charged and recently used (with no swap they cannot be reclaimed; with swap they keep coming
back). It competes for the memory only: it runs at SCHED_IDLE (the edge's work always preempts it),
pinned to `--cpu`, and with oom_score_adj 1000, so when the group runs out the OOM killer takes the
hog, not the edge (`MemHog.alive` then says False and `start` makes a new one).
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

PAGE = mmap.PAGESIZE


def _own_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def hog(nbytes: int, cpu: int | None = None) -> None:
    """Hold `nbytes` of resident memory (this process's RSS included) and touch it page by page forever."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    Path("/proc/self/oom_score_adj").write_text("1000")
    size = max(PAGE, (nbytes - _own_rss()) // PAGE * PAGE)
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages = range(0, size, PAGE)
    for off in pages:
        buf[off] = 1
    sys.stdout.write(json.dumps({"ready": True, "bytes": size, "rss": _own_rss()}) + "\n")
    sys.stdout.flush()
    n = 1
    while True:
        n = (n + 1) & 0xFF
        for off in pages:
            buf[off] = n


class MemHog:
    """Parent side: the hog as a child process of `nbytes`, born in memory group `group`
    (`devices.memlimit`; None: where this process is), pinned to `cpu`."""

    def __init__(self, nbytes: int, group: str | None = None, cpu: int | None = None) -> None:
        self.nbytes, self.group, self.cpu = nbytes, group, cpu
        self.proc: subprocess.Popen | None = None
        self.ready: dict = {}
        self.starts = 0

    def start(self) -> dict:
        """Start it (again, when one is running it is stopped first); its ready line once every page is
        written. A hog the OOM killer took before that (the group too small for it and the edge) gives
        {"ready": False, "status": -9} and is not alive (a measurement, not an error); any other early
        exit is a CoInferError."""
        from apps import REPO_ROOT
        self.stop()
        argv = [sys.executable, "-m", "devices.memhog", str(self.nbytes)]
        if self.cpu is not None:
            argv += ["--cpu", str(self.cpu)]
        if self.group is not None:
            from devices.memlimit import procs_file
            argv = ["sh", "-c", f'echo $$ > {procs_file(self.group)} && exec "$@"', "sh", *argv]
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        self.starts += 1
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            status = self.proc.wait()
            self.proc = None
            if status == -signal.SIGKILL:
                self.ready = {"ready": False, "status": status}
                return self.ready
            raise CoInferError(f"the memory hog of {self.nbytes} bytes exited with status {status} before it held "
                               "its memory")
        self.ready = json.loads(line)
        return self.ready

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m devices.memhog", description=__doc__.splitlines()[0])
    ap.add_argument("bytes", type=int, help="resident set to hold (this process's included)")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args(argv)
    if args.bytes <= 0:
        raise CoInferError("the hog's size must be positive (bytes)")
    hog(args.bytes, args.cpu)
    return 0


if __name__ == "__main__":
    run_cli(main)
