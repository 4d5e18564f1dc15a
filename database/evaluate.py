"""Accuracy database builder: prune + quantise + fine-tune each scheme, test, store.

    python -m database.evaluate --app vgg16_digits --schemes all --workers 2
    python -m database.evaluate --app vgg16_digits --schemes all --storage postgresql://u@db/coinfer  # every host

Workers on any number of hosts share one build (database/distributed.py: an Optuna study in RDB
storage, heartbeats, retries of dead workers' schemes): each scheme is fine-tuned once across all
of them and stored once. `--workers N` runs N of them here. Resumable: schemes already stored
(same app, protocol, seed) are skipped; each result is written in its own transaction as soon as
it is done, and writes are idempotent, so Ctrl-C or kill -9 and a rerun lose nothing and
duplicate nothing (a killed worker's scheme is retried once its heartbeat is `--grace` old).
`--evaluator synthetic:SECONDS` replaces fine-tuning by a formula and a sleep
(database/synthetic_finetuner.py) to try the coordination; `--torch-device cuda` fine-tunes on a GPU
(models/accel.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apps import DEFAULT_APP, App, load_app
from cli.args import ArgParser
from cli.errors import CoInferError, disk_full, disk_full_error
from cli.run import run_cli
from compress.scheme import Scheme, all_schemes
from database.buildjob import BuildJob, make_finetuner
from database.storage import Storage, app_flags
from devices.torch_device import add_torch_device_argument, check_torch_device
from models.accel import AMP_CHOICES, COMPILE_CHOICES, Accel

if TYPE_CHECKING:  # torch, the data and the database load on first use (--help stays fast)
    from database.distributed import WorkerReport
    from database.finetuner import Finetuner
    from database.store import Store


def select_schemes(app: App, widths: list[int], spec: list[str]) -> list[Scheme]:
    """'all', 'point:P' (every scheme at point P), 'none' (only the base model), or 'p,c,b' items."""
    out: list[Scheme] = []
    for item in spec:
        if item == "none":
            continue
        if item == "all":
            out += all_schemes(widths)
        elif item.startswith("point:"):
            try:
                p = int(item.split(":", 1)[1])
            except ValueError:
                raise CoInferError(f"bad scheme selector {item!r}: expected point:P") from None
            if not 0 <= p < len(widths):
                raise CoInferError(f"partition point {p} outside 0..{len(widths) - 1}")
            out += [s for s in all_schemes(widths) if s.p == p]
        else:
            for part in item.replace(";", " ").split():
                out.append(Scheme.parse(part))
    return list(dict.fromkeys(out))




def build_worker(job: BuildJob, progress: bool = False, app: App | None = None, store: Store | None = None,
                 finetuner: Finetuner | None = None) -> WorkerReport:
    """One worker of the build: works until every scheme of the job is stored (or failed for good)
    and nothing is left running anywhere. The same on every host and in every `--workers` process.
    `app`, `store` and `finetuner`: the caller's, loaded and open already in this process (the CLI's);
    a worker process loads the app, opens the store and makes its finetuner here, once."""
    from database.distributed import run_worker
    from database.store import Store
    app = app if app is not None else load_app(job.app_ref)
    own = store is None
    store = Store(job.storage) if store is None else store
    try:
        return run_worker(job, app, store, finetuner if finetuner is not None else make_finetuner(job, app),
                          progress=progress)
    finally:
        if own:
            store.close()


def _pool_worker(job: BuildJob) -> WorkerReport:
    try:
        return build_worker(job)
    except CoInferError as exc:  # a pool re-raises it in the parent: keep it one line (and its exit status)
        raise type(exc)(f"build worker: {exc}") from None
    except Exception as exc:  # a full disk: the pool would lose the chain that says so
        if not disk_full(exc):
            raise
        raise disk_full_error(exc) from None


def build(job: BuildJob, app: App, store: Store, workers: int = 1, progress: bool = True,
          finetuner: Finetuner | None = None) -> list[WorkerReport]:
    """Run `workers` build workers here (1: in this process, on `app`, `store` and `finetuner` as they
    are); with several, each process opens its own and a bar in this process follows the accuracy table."""
    if workers <= 1:
        return [build_worker(job, progress, app, store, finetuner)]
    from cli.progress import progress as progress_bar
    protocol, wanted = job.protocol(app), set(job.schemes)
    ctx = mp.get_context("spawn")
    bar = progress_bar(total=len(wanted), desc=f"build {app.name} ({workers} workers)", unit="scheme",
                       enabled=progress)
    try:
        with ctx.Pool(workers) as pool:
            result = pool.map_async(_pool_worker, [job] * workers, chunksize=1)
            while not result.ready():
                result.wait(1.0)
                bar.n = len(wanted & set(store.accuracy_table(app.name, protocol, job.seed)))
                bar.refresh()
            return result.get()
    finally:
        bar.close()


def _parser() -> ArgParser:
    ap = ArgParser(description="Fill the accuracy database of an app: one worker here, or one per host "
                               "against a shared --storage (resumable, each scheme once).")
    ap.add_argument("--app", default=DEFAULT_APP, help="app name or YAML path")
    ap.add_argument("--schemes", nargs="+", default=["all"],
                    help="'all', 'point:P', 'none' (base model only), or schemes 'p,c,b' (several allowed)")
    ap.add_argument("--workers", type=int, default=1, help="build workers on this host (processes)")
    ap.add_argument("--seed", type=int, default=None, help="fine-tune seed (default: the protocol's)")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: database/coinfer.sqlite)")
    ap.add_argument("--queue", default=None, metavar="URL",
                    help="the build study's Optuna RDB storage (default: the --storage database; "
                         "X.queue.sqlite beside an SQLite file X.sqlite)")
    ap.add_argument("--evaluator", default="finetune",
                    help="finetune (the app's protocol) or synthetic[:SECONDS] (a formula after a sleep: "
                         "tries the coordination without fine-tuning; rows under protocol synthetic-...)")
    add_torch_device_argument(ap, "fine-tune on this torch device")
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)  # renamed: one line naming --torch-device
    ap.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                    help="mixed precision on CUDA (auto: bf16 where supported, else fp16 with a scaler)")
    ap.add_argument("--compile", default="auto", choices=COMPILE_CHOICES,
                    help="torch.compile on CUDA (auto: for fine-tunes of at least 2000 steps)")
    ap.add_argument("--loader-workers", type=int, default=None,
                    help="DataLoader workers on CUDA (default: min(8, CPUs))")
    ap.add_argument("--heartbeat", type=float, default=10.0, metavar="S", help="heartbeat interval (default: 10 s)")
    ap.add_argument("--grace", type=float, default=60.0, metavar="S",
                    help="a scheme whose worker has not beaten for this long is retried elsewhere (default: 60 s)")
    ap.add_argument("--max-retry", type=int, default=3, help="retries of a scheme whose worker died (default: 3)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress bar on stderr (default: when stderr is a terminal)")
    ap.add_argument("--weights", action="store_true",
                    help="also fine-tune, here, the selected schemes stored without kept weights (the rows stay; "
                         "the weights' own top-1 is kept beside them: database/scheme_weights.py)")
    ap.add_argument("--json", action="store_true", help="print one JSON line: counts, time, per-worker reports")
    return ap


def job_of(args: argparse.Namespace) -> tuple[BuildJob, App, Store]:
    """The parsed command line as a frozen `BuildJob`, with its app loaded and its store open and
    writable; every check (flags, schemes in the space, the checkpoint, the database) before any
    fine-tuning."""
    if args.device is not None:
        raise CoInferError("--device names a profiled device: the torch device to fine-tune on is --torch-device "
                           "cpu|cuda|cuda:N")
    if args.workers < 1:
        raise CoInferError("--workers must be at least 1")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise CoInferError(f"--seed must be in 0..{2**32 - 1}, got {args.seed}")
    if args.loader_workers is not None and args.loader_workers < 0:
        raise CoInferError("--loader-workers must be >= 0")
    if not (args.evaluator == "finetune" or args.evaluator == "synthetic" or args.evaluator.startswith("synthetic:")):
        raise CoInferError(f"unknown evaluator {args.evaluator!r} (use finetune or synthetic[:SECONDS])")
    app = load_app(args.app)
    from compress.prune import check_in_space
    from database.distributed import QueueConfig
    from database.store import Store
    from database.synthetic_finetuner import parse_delay
    from models.build import app_points
    synthetic = args.evaluator != "finetune"
    if synthetic:
        parse_delay(args.evaluator)
        if args.torch_device != "cpu":
            raise CoInferError("--evaluator synthetic does not fine-tune: drop --torch-device")
    torch_device = check_torch_device(args.torch_device)
    accel = Accel.for_device(torch_device, args.amp, args.compile, args.loader_workers) if \
        torch_device.startswith("cuda") else Accel.for_device(torch_device, args.amp, args.compile)
    check_torch_device(torch_device, available=True)
    widths = [pt.channels for pt in app_points(app)]
    schemes = select_schemes(app, widths, args.schemes)
    for p, c, b in schemes:
        check_in_space(widths, p, c, b)
    if not synthetic:
        from models.build import load_base_model
        load_base_model(app)  # the checkpoint exists and fits the app, before any database or worker
    storage = Storage.parse(args.storage)
    queue = QueueConfig(Storage.parse(args.queue).url if args.queue is not None else storage.queue,
                        args.heartbeat, args.grace, args.max_retry)
    store = Store(storage)
    store.check_writable()  # before minutes of fine-tuning whose results could not be stored
    seed = app.protocol.seed if args.seed is None else args.seed
    threads = None
    if args.workers > 1 and not synthetic:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
    job = BuildJob(args.app, storage, queue, tuple(schemes), seed, tuple(widths), args.evaluator, accel, threads)
    return job, app, store


@dataclass(frozen=True)
class BuildSummary:
    """What a build here did: new rows, rows stored for the job's protocol and seed, schemes of the job
    still missing (failed for good), wall time, each worker's report, and the base model's top-1 when this
    build measured and stored it (None: it was stored already, or the evaluator is synthetic)."""

    app: str
    protocol: str
    seed: int
    study: str
    new: int
    stored: int
    missing: int
    wall_s: float
    reports: list[WorkerReport]
    base_stored: float | None = None
    flags: str = ""  # `--app REF [--storage URL]` as the user named them, for the command the line hints at
    weights_made: int = 0

    def to_json(self) -> dict:
        return {"app": self.app, "protocol": self.protocol, "seed": self.seed, "study": self.study, "new": self.new,
                "stored": self.stored, "missing": self.missing, "wall_s": self.wall_s, "base_stored": self.base_stored,
                "weights_made": self.weights_made,
                "workers": [{k: v for k, v in r.to_json().items() if not isinstance(v, list)} for r in self.reports]}

    def line(self) -> str:
        base = "" if self.base_stored is None else f"base model top-1 {100 * self.base_stored:.2f} % stored; "
        return (f"{self.app}: {base}{self.new} new evaluations in {self.wall_s:.1f} s; {self.stored} schemes "
                f"stored for protocol {self.protocol} seed {self.seed}"
                + (f"; {self.missing} could not be evaluated (see python -m reports.build_status {self.flags})"
                   if self.missing else "")
                + (f"; weights made for {self.weights_made} stored schemes" if self.weights_made else ""))


def evaluate_job(job: BuildJob, app: App, store: Store, workers: int = 1, progress: bool = False,
                 weights: bool = False) -> BuildSummary:
    """Store the base accuracy if it is missing (fine-tuned protocols), then build `job` with `workers`
    workers here; count what the accuracy table gained. With `weights`, then fine-tune here the job's
    stored split schemes whose weights were not kept (the rows stay as they are)."""
    from database.distributed import study_name
    protocol = job.protocol(app)
    finetuner = None  # made once, here, when this process fine-tunes (the base model, or one worker)
    base_stored = None
    if not job.synthetic and store.base(app.name, protocol) is None:
        from database.finetune import SchemeFinetuner
        finetuner = SchemeFinetuner(app, accel=job.accel)  # this process's torch threads: as they are
        top1, top5 = finetuner.base_accuracy()
        store.put_base(app.name, protocol, top1, top5, len(finetuner.test), f"checkpoint {app.checkpoint.name}")
        base_stored = top1
    before = set(store.accuracy_table(app.name, protocol, job.seed))
    start = time.perf_counter()
    reports = build(job, app, store, workers, progress, finetuner) if job.schemes else []
    after = set(store.accuracy_table(app.name, protocol, job.seed))
    made = make_missing_weights(job, app, after, finetuner, progress) if weights and not job.synthetic else 0
    wall = time.perf_counter() - start
    return BuildSummary(app.name, protocol, job.seed, study_name(app.name, protocol, job.seed), len(after - before),
                        len(after), len(set(job.schemes) - after), wall, reports, base_stored,
                        app_flags(app, job.storage), made)


def make_missing_weights(job: BuildJob, app: App, stored: set[Scheme], finetuner: Finetuner | None,
                         progress: bool) -> int:
    """Fine-tune the job's stored split schemes that have no kept weights (the protocol's seed only: the
    runtime runs that one); how many were made."""
    from cli.progress import progress as progress_bar
    from database.scheme_weights import has_weights
    if job.seed != app.protocol.seed:
        raise CoInferError(f"--weights keeps the weights of the protocol's seed {app.protocol.seed}, not {job.seed}")
    todo = [s for s in job.schemes if s.is_split and s in stored and not has_weights(app, s)]
    if todo and finetuner is None:
        from database.finetune import SchemeFinetuner
        finetuner = SchemeFinetuner(app, accel=job.accel)
    for scheme in progress_bar(todo, desc=f"weights of {app.name}", unit="scheme", enabled=progress):
        finetuner.finetune_row(scheme)  # SchemeFinetuner keeps the weights of what it fine-tunes
    return len(todo)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    job, app, store = job_of(args)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    summary = evaluate_job(job, app, store, args.workers, progress, args.weights)
    print(json.dumps(summary.to_json(), separators=(",", ":")) if args.json else summary.line())
    return 1 if summary.missing else 0


if __name__ == "__main__":
    run_cli(main)
