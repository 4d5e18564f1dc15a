"""Training co-run: the accuracy database's fine-tune loop beside serving, kept off inference's CPU.

    corun = TrainingCorun(TrainConfig("vgg16_digits", nice=19, threads=1, progress="train.csv"))
    corun.start(); ...; progress = corun.stop()      # TrainProgress(samples, finetunes, seconds)

The loop is `database.finetune.SchemeFinetuner.finetune` (the app's protocol: prune + quantise,
SGD for the protocol's epochs) over the app's split schemes (each point, all its channels, 8 bits),
round and round, its models thrown away. It runs in a child process
(`python -m runtime.training`), so its CPU share is the kernel's to arbitrate. The setting that
protects inference latency, the default: `sched="idle"` puts the child in Linux's SCHED_IDLE class
(it runs only on CPU time no normal thread wants, whatever their nice values), at `nice` 19, with
`threads` torch threads (1). `sched="normal"` keeps the ordinary class at `nice` (19: about 1/70 of
a nice-0 thread's CPU under contention, but only 1/7 of a nice-10 one's; `nice` 0 competes
evenly).

Progress: the child counts the training samples its data loader hands out (no hook in the loop)
and appends `time,samples,finetunes` (Unix seconds; cumulative) to the `progress` CSV every
`interval` seconds and when it stops (SIGTERM), so a reader gets samples per second over any
window. The child exits by itself when the process that started it is gone.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEADER = "time,samples,finetunes"
SCHEDS = ("idle", "normal")


@dataclass(frozen=True)
class TrainConfig:
    """The co-run's app (name or YAML path), its priority and threads, and where progress goes
    (None: a temporary file the server removes when it stops)."""

    app: str
    nice: int = 19
    threads: int = 1
    progress: str | None = None
    interval: float = 0.5
    sched: str = "idle"

    def __post_init__(self) -> None:
        if not self.app:
            raise CoInferError("the training app must be named")
        if not (isinstance(self.nice, int) and 0 <= self.nice <= 19):
            raise CoInferError(f"training nice must be an integer in 0..19, got {self.nice!r}")
        if not (isinstance(self.threads, int) and not isinstance(self.threads, bool) and self.threads >= 1):
            raise CoInferError(f"training threads must be an integer of at least 1, got {self.threads!r}")
        if self.sched not in SCHEDS:
            raise CoInferError(f"training sched must be one of {', '.join(SCHEDS)}, got {self.sched!r}")
        if not (isinstance(self.interval, (int, float)) and math.isfinite(self.interval) and self.interval > 0):
            raise CoInferError(f"training progress interval must be positive, got {self.interval!r}")


@dataclass(frozen=True)
class TrainProgress:
    """Cumulative training samples and fine-tunes, and the seconds they took (first to last line)."""

    samples: int = 0
    finetunes: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Training samples per second (0 before two progress lines)."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def read_progress(path: str | Path) -> list[tuple[float, int, int]]:
    """The (time, samples, finetunes) lines of a progress CSV; a torn last line is skipped."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines[1:]:
        parts = line.split(",")
        if len(parts) == 3:
            try:
                rows.append((float(parts[0]), int(parts[1]), int(parts[2])))
            except ValueError:
                continue
    return rows


def summarize(rows: list[tuple[float, int, int]]) -> TrainProgress:
    if len(rows) < 2:
        return TrainProgress()
    return TrainProgress(rows[-1][1] - rows[0][1], rows[-1][2] - rows[0][2], rows[-1][0] - rows[0][0])


class TrainingCorun:
    """The child process running the loop (see the module doc): `start()`, `progress()`, `stop()`."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._tmp: str | None = None
        self.path = config.progress
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self.path is None:
            fd, self._tmp = tempfile.mkstemp(prefix="coinfer-train-", suffix=".csv")
            os.close(fd)
            self.path = self._tmp
        cfg = self.config
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.training", "--app", cfg.app, "--nice",
                                      str(cfg.nice), "--threads", str(cfg.threads), "--progress", self.path,
                                      "--interval", str(cfg.interval), "--sched", cfg.sched,
                                      "--parent", str(os.getpid())],
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def progress(self) -> TrainProgress:
        return summarize(read_progress(self.path)) if self.path else TrainProgress()

    def stop(self) -> TrainProgress:
        """SIGTERM the child (it writes its last line), wait, and return its progress."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        progress = self.progress()
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)
        return progress


# ------------------------------------------------------------------------------------- the child
class _Counting:
    """A dataset that counts the items handed out (the loop's samples), in one int."""

    def __init__(self, data) -> None:
        self.data, self.count = data, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        self.count += 1
        return self.data[i]


def run_loop(config: TrainConfig, parent: int | None = None) -> None:
    """The child's body: lower priority, fine-tune round and round, write progress until SIGTERM."""
    current = os.nice(0)
    if config.nice > current:
        os.nice(config.nice - current)
    if config.sched == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    import torch
    torch.set_num_threads(config.threads)
    from apps import load_app
    from compress.scheme import Scheme
    from database.finetune import SchemeFinetuner
    from models.build import app_points
    app = load_app(config.app)
    evaluator = SchemeFinetuner(app)
    counting = _Counting(evaluator.train)
    evaluator.train = counting
    schemes = [Scheme(pt.index, pt.channels, 8) for pt in app_points(app)]
    stop = threading.Event()
    finetunes = 0
    out = open(config.progress, "w", buffering=1)  # noqa: SIM115  # the child's whole life
    out.write(HEADER + "\n")

    def write() -> None:
        out.write(f"{time.time():.3f},{counting.count},{finetunes}\n")

    def writer() -> None:
        while not stop.wait(config.interval):
            write()
            if parent is not None and os.getppid() != parent:  # the server is gone
                os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), write(), out.flush(), os._exit(0)))
    write()
    threading.Thread(target=writer, daemon=True).start()
    i = 0
    while not stop.is_set():
        evaluator.finetune(schemes[i % len(schemes)])
        finetunes += 1
        i += 1


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m runtime.training", description=__doc__.splitlines()[0])
    ap.add_argument("--app", required=True)
    ap.add_argument("--nice", type=int, default=19)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", required=True, help="CSV of time,samples,finetunes")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--sched", default="idle", help="idle (SCHED_IDLE: only CPU time nothing else wants) or normal")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = ap.parse_args(argv)
    config = TrainConfig(args.app, args.nice, args.threads, args.progress, args.interval, args.sched)
    if args.parent is not None and args.parent != os.getppid():
        raise CoInferError(f"--parent {args.parent} is not this process's parent ({os.getppid()})")
    from apps import load_app
    from cli.files import check_output
    check_output(config.progress, "progress", (load_app(config.app).source,))
    run_loop(config, args.parent)
    return 0


if __name__ == "__main__":
    run_cli(main)
