"""How the distributed build's coordination scales, and what it costs per scheme, on SQLite and PostgreSQL.

    python -m bench.scale [--workers 1,2,4,8] [--per-worker 8] [--delay 1.0] [--postgres URL] [--out PNG] [--json]

For each storage and each worker count N, a fresh build of N x `--per-worker` schemes of the
default app runs with N worker processes (forked here, as `--workers N` would spawn them) and the
synthetic evaluator sleeping `--delay` seconds per scheme (database/synthetic_finetuner.py): all of the time
that is not the sleep is coordination. Throughput is completed schemes over the span from the first
trial's start to the last trial's completion (the study's own timestamps: process start-up and
storage opening are excluded); the target is >= 0.9 x N x the 1-worker throughput. The sustained
ratio sums each worker's rate over its own span instead, which leaves out the skew of N processes
starting on shared cores (their first trials start up to a few hundred ms apart).

Overhead per scheme, from each worker's own clock: a trial's wall time (from one objective call
to the next) minus the evaluator's time, split into the claim (`BuildSampler.before_trial`: one
read of the unfinished trials, the claim write), the accuracy-table write, and the rest, Optuna's
own bookkeeping (fail_stale_trials, ask: popping the retry queue, creating the trial, reading it
back; tell: value and state, reading it back). Heartbeats run on Optuna's heartbeat thread, beside
the trial; their time is reported per scheme but is not part of the trial's wall time. Medians and
p95 over all schemes at N = 1 (uncontended) and at the largest N. The target is <= 60 ms (5 % of
the default app's fine-tune, about 1.2 s). PostgreSQL runs when `--postgres` or
$COINFER_TEST_POSTGRES gives a server URL: a fresh database is created (and dropped) per run.
Writes bench/out/scale.png (`--out`), with `--json` too.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cli.args import ArgParser
from cli.errors import CoInferError, mask_url
from cli.run import run_cli
from database.storage import Storage

HEARTBEAT_S, GRACE_S = 5.0, 30.0


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))] if xs else float("nan")


def check_server(server: str) -> Storage:
    """The `--postgres` server as a Storage: one CoInferError line (the password masked) unless it is
    a PostgreSQL URL, `Unreachable` (exit 3) unless this process can reach it."""
    try:
        storage = Storage.parse(server)
    except CoInferError:
        raise CoInferError(f"--postgres {mask_url(server)!r}: not a SQLAlchemy URL") from None
    if storage.backend != "postgresql":
        raise CoInferError(f"--postgres {storage.display!r}: not a PostgreSQL URL")
    storage.check_reachable()
    return storage


def fresh_postgres(server: Storage) -> tuple[Storage, callable]:
    """A new database on the server: (its storage, a function that drops it)."""
    import sqlalchemy as sa
    name = f"coinfer_scale_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT", connect_args=server.connect_args())
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    return server.with_database(name), drop


def one_run(kind: str, workers: int, per_worker: int, delay: float, server: Storage | None) -> dict:
    """A fresh build with `workers` processes; returns throughput and the per-scheme costs."""
    from apps import load_app
    from compress.scheme import all_schemes
    from database.buildjob import BuildJob
    from database.distributed import QueueConfig, open_build, study_name
    from database.evaluate import build_worker
    from database.store import Store
    from database.synthetic_finetuner import synthetic_protocol
    from models.build import app_points
    app = load_app("vgg16_digits")
    widths = tuple(pt.channels for pt in app_points(app))
    schemes = tuple(all_schemes(list(widths))[:workers * per_worker])
    drop = None
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="coinfer-scale-")
        storage = Storage.parse(f"{folder}/acc.sqlite")
    else:
        storage, drop = fresh_postgres(server)
    try:
        config = QueueConfig(storage.queue, HEARTBEAT_S, GRACE_S, poll_s=0.2)
        job = BuildJob("vgg16_digits", storage, config, schemes, 0, widths, f"synthetic:{delay}")
        name = study_name(app.name, synthetic_protocol(app), 0)
        Store(storage).close()  # the tables, before the workers race to create them
        study = open_build(config, name)
        study._storage._backend.engine.dispose()  # the forked workers inherit no connection
        with mp.get_context("fork").Pool(workers) as pool:
            reports = pool.map(build_worker, [job] * workers, chunksize=1)
        from optuna.trial import TrialState
        trials = [t for t in open_build(config, name).get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        sustained = sustained_rate(trials)
    finally:
        if drop is not None:
            drop()
    overhead, claim, write, evaluate = [], [], [], []
    heartbeat_total = 0.0
    for r in reports:
        for j, trial in enumerate(r.trial_s[:len(r.evaluate_s)]):
            overhead.append(trial - r.evaluate_s[j])
        claim += r.claim_s[:len(r.evaluate_s)]
        write += r.write_s
        evaluate += r.evaluate_s
        heartbeat_total += sum(r.heartbeat_s)
    n = sum(r.evaluated for r in reports)
    return {"storage": kind, "workers": workers, "schemes": len(schemes), "evaluations": n, "span_s": span,
            "per_s": len(trials) / span, "sustained_per_s": sustained,
            "overhead_ms": [1e3 * x for x in overhead], "claim_ms": [1e3 * x for x in claim],
            "write_ms": [1e3 * x for x in write], "heartbeat_ms_per_scheme": 1e3 * heartbeat_total / max(1, n)}


def sustained_rate(trials) -> float:
    """The sum over workers of each one's completed schemes over its own span (its first trial's
    start to its last one's completion): the rate the workers kept up once started, without the
    start-up skew of N processes opening the storage on shared cores."""
    from database.rdb import BUILD_CLAIM_KEY
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.system_attrs[BUILD_CLAIM_KEY].split(" ", 1)[1], []).append(t)
    return sum(len(ts) / (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
               for ts in by_worker.values())


def summary(run: dict) -> dict:
    o, c, w = run["overhead_ms"], run["claim_ms"], run["write_ms"]
    med = statistics.median
    return {"overhead_median_ms": med(o), "overhead_p95_ms": p95(o), "claim_median_ms": med(c),
            "claim_p95_ms": p95(c), "write_median_ms": med(w), "write_p95_ms": p95(w),
            "optuna_median_ms": med(o) - med(c) - med(w), "heartbeat_ms_per_scheme": run["heartbeat_ms_per_scheme"]}


@dataclass(frozen=True)
class ScaleConfig:
    """What `run_scale` measures: builds of N x `per_worker` schemes for each N in `counts`, the
    synthetic evaluator sleeping `delay` s a scheme, on SQLite (unless not `sqlite`) and on a fresh
    database of the PostgreSQL `server` (checked reachable) when given; the PNG at `out`."""

    counts: tuple[int, ...] = (1, 2, 4, 8)
    per_worker: int = 8
    delay: float = 1.0
    server: Storage | None = None
    sqlite: bool = True
    out: Path | None = None  # None: bench/out/scale.png

    def __post_init__(self) -> None:
        if not self.counts or self.counts[0] < 1 or self.counts[-1] > 64 or not 1 <= self.per_worker <= 1000 \
                or not 0 <= self.delay <= 60:
            raise CoInferError("worker counts must be in 1..64, --per-worker in 1..1000, --delay in 0..60 seconds")
        if not self.kinds:
            raise CoInferError("nothing to measure: --no-sqlite without --postgres")

    @property
    def kinds(self) -> list[str]:
        return (["sqlite"] if self.sqlite else []) + (["postgresql"] if self.server is not None else [])


@dataclass(frozen=True)
class ScaleResult:
    table: list[dict]  # per storage and N: throughput, both ratios, the overhead split (`summary`)
    delay_s: float
    load_average: float  # at the end
    plot: Path

    def to_json(self) -> dict:
        return {"table": self.table, "delay_s": self.delay_s, "load_average": self.load_average,
                "plot": str(self.plot)}

    def lines(self) -> list[str]:
        out = [f"{'storage':<11}{'N':>3} {'schemes/s':>9} {'/(N x 1-worker)':>15} {'sustained':>9} "
               f"{'overhead med':>12} {'p95':>7} {'claim':>6} {'write':>6} {'optuna':>7} {'heartbeat':>9}   "
               "(ms per scheme)"]
        for t in self.table:
            out.append(f"{t['storage']:<11}{t['workers']:>3} {t['per_s']:>9.2f} {t['ratio']:>15.2f} "
                       f"{t['sustained_ratio']:>9.2f} {t['overhead_median_ms']:>12.1f} {t['overhead_p95_ms']:>7.1f} "
                       f"{t['claim_median_ms']:>6.1f} {t['write_median_ms']:>6.1f} {t['optuna_median_ms']:>7.1f} "
                       f"{t['heartbeat_ms_per_scheme']:>9.1f}")
        out.append(f"load average at the end {self.load_average:.1f}; targets: ratio >= 0.9, overhead <= 60 ms "
                   f"(sustained: each worker's schemes over its own span, summed; without the start-up skew)")
        out.append(f"plot: {self.plot}")
        return out


def run_scale(config: ScaleConfig, note: Callable[[str], None] | None = print) -> ScaleResult:
    """Every run of `config`, one after another; `note` (None: silent) gets the header and a line per run."""
    say = note or (lambda line: None)
    counts, kinds = list(config.counts), config.kinds
    say(f"bench.scale: builds of N x {config.per_worker} schemes with N in {counts} forked workers, the synthetic "
        f"evaluator sleeping {config.delay:g} s a scheme, heartbeat {HEARTBEAT_S:g} s; storages {kinds} "
        f"(a fresh database per run); {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the start")
    runs = []
    for kind in kinds:
        for n in counts:
            run = one_run(kind, n, config.per_worker, config.delay, config.server)
            runs.append(run)
            say(f"  {kind:<10} N={n}: {run['schemes']} schemes ({run['evaluations']} evaluations) in "
                f"{run['span_s']:.2f} s")
    table = []
    for kind in kinds:
        base = next(r for r in runs if r["storage"] == kind and r["workers"] == counts[0])
        one, one_sustained = base["per_s"] / base["workers"], base["sustained_per_s"] / base["workers"]
        for r in (r for r in runs if r["storage"] == kind):
            table.append({"storage": kind, "workers": r["workers"], "per_s": r["per_s"],
                          "evaluations": r["evaluations"], "schemes": r["schemes"],
                          "ratio": r["per_s"] / (r["workers"] * one),
                          "sustained_ratio": r["sustained_per_s"] / (r["workers"] * one_sustained), **summary(r)})
    from reports import figure
    path = plot(table, config.delay, config.out if config.out else figure.OUT / "scale.png")
    return ScaleResult(table, config.delay, os.getloadavg()[0], path)


def parse_args(argv: list[str] | None) -> tuple[ScaleConfig, bool]:
    """The command line as (config, --json); the --postgres server is checked here, before any run (a bad
    URL fails in a second, not after the SQLite runs)."""
    ap = ArgParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4,8", help="worker counts (default: 1,2,4,8)")
    ap.add_argument("--per-worker", type=int, default=8, help="schemes per worker in each run (default: 8)")
    ap.add_argument("--delay", type=float, default=1.0, help="seconds the synthetic evaluator sleeps per scheme")
    ap.add_argument("--postgres", default=os.environ.get("COINFER_TEST_POSTGRES"),
                    help="SQLAlchemy URL of a PostgreSQL server to create databases on (default: "
                         "$COINFER_TEST_POSTGRES)")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    ap.add_argument("--out", default=None, help="the PNG (default: bench/out/scale.png)")
    ap.add_argument("--json", action="store_true", help="one JSON line with every run")
    args = ap.parse_args(argv)
    try:
        counts = tuple(sorted({int(x) for x in args.workers.split(",")}))
    except ValueError:
        raise CoInferError(f"--workers {args.workers!r}: expected counts like 1,2,4,8") from None
    ScaleConfig(counts, args.per_worker, args.delay, None, True)  # the ranges, before the server is reached
    if args.no_sqlite and not args.postgres:
        raise CoInferError("nothing to measure: --no-sqlite without --postgres")
    if args.out:
        from reports.figure import check_plot_path
        check_plot_path(args.out)
    server = check_server(args.postgres) if args.postgres else None
    return (ScaleConfig(counts, args.per_worker, args.delay, server, not args.no_sqlite,
                        Path(args.out) if args.out else None), args.json)


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    result = run_scale(config, None if as_json else (lambda line: print(line, flush=True)))
    print(json.dumps(result.to_json(), separators=(",", ":")) if as_json else "\n".join(result.lines()))
    return 0


def plot(table: list[dict], delay: float, path: Path) -> Path:
    """Throughput against N (with 0.9 N x the 1-worker rate), and the overhead split per storage; `delay`: the
    synthetic evaluator's seconds per scheme in these runs (the title says it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figure import save_figure
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in dict.fromkeys(t["storage"] for t in table):
        rows = [t for t in table if t["storage"] == kind]
        ns = [t["workers"] for t in rows]
        one = rows[0]["per_s"] / rows[0]["workers"]
        line, = ax.plot(ns, [t["per_s"] for t in rows], "o-", label=f"{kind}")
        ax.plot(ns, [0.9 * n * one for n in ns], ":", color=line.get_color(), label=f"{kind} 0.9 N x 1-worker")
    ax.set_xticks(sorted({t["workers"] for t in table}))  # worker counts are whole numbers
    ax.set_xlabel("workers")
    ax.set_ylabel("schemes per second")
    ax.set_title(f"Build throughput, {delay:g} s per scheme (synthetic evaluator)")
    ax.legend(fontsize=7)
    labels, bottom = [], []
    for t in table:
        labels.append(f"{t['storage'][:6]} N={t['workers']}")
    parts = [("claim", "claim_median_ms"), ("accuracy write", "write_median_ms"), ("Optuna", "optuna_median_ms")]
    bottom = [0.0] * len(table)
    for label, key in parts:
        vals = [max(0.0, t[key]) for t in table]
        bx.bar(labels, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    bx.axhline(60, color="k", ls="--", lw=0.8, label="target 60 ms")
    bx.set_ylabel("ms per scheme (median)")
    bx.set_title("Coordination overhead per scheme")
    bx.tick_params(axis="x", rotation=60, labelsize=7)
    bx.legend(fontsize=7)
    return save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
