"""What a trial costs in each Optuna study storage, next to the CoInfer sampler's own decision time.

    python -m bench.studystorage [--repeats 3] [--postgres URL] [--out PNG] [--json]

One CoInfer search (a latency query on a synthetic 13-point table whose search takes 104
trials, evaluations replayed from the table: no fine-tune) runs as `study.optimize` in each
storage: in memory, a journal file, SQLite and PostgreSQL through Optuna's RDB storage. Per
trial it reports the wall time, the sampler's decision time (choosing the scheme from what the
study holds) and the rest: the storage's bookkeeping (creating the trial, parameters, user
attributes, constraint, state) plus Optuna's own loop. Storages run in turns, `--repeats`
times; medians over the repeats. PostgreSQL runs when `--postgres` or $COINFER_TEST_POSTGRES
gives a URL. Writes bench/out/studystorage.png (`--out`): the two parts side by side per storage.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

POINTS = [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]


def one_search(storage: str | None, name: str) -> dict[str, float]:
    from search.evaluators import TableEvaluator
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.samplers.coinfer import CoInferSampler
    from search.study import Objective, open_study
    from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table
    points = synthetic_points(POINTS)
    problem = Problem(LatencyQuery(0.01, 0.5), synthetic_latency(points), 0.9)
    sampler = CoInferSampler(problem)
    study = open_study(name, storage, problem, sampler)
    objective = Objective(problem, TableEvaluator(synthetic_table(points, 0.9, 0.0, 7, "saturating")))
    t0 = time.perf_counter()
    study.optimize(objective)
    wall = time.perf_counter() - t0
    n = len(study.trials)
    return {"trials": n, "wall_ms": 1e3 * wall / n, "decision_ms": 1e3 * sampler.decision_s / n,
            "evaluate_ms": 1e3 * objective.evaluate_s / n,
            "bookkeeping_ms": 1e3 * (wall - sampler.decision_s - objective.evaluate_s) / n}


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.studystorage", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--postgres", default=os.environ.get("COINFER_TEST_POSTGRES"),
                    help="SQLAlchemy URL of a PostgreSQL database to use (default: $COINFER_TEST_POSTGRES)")
    ap.add_argument("--out", default=None, help="the PNG (default: bench/out/studystorage.png)")
    ap.add_argument("--json", action="store_true", help="the medians per storage as one JSON object on stdout")
    args = ap.parse_args(argv)
    if not 1 <= args.repeats <= 100:
        raise CoInferError(f"--repeats must be in 1..100, got {args.repeats}")
    if args.out:
        from reports.figure import check_plot_path
        check_plot_path(args.out)
    if args.postgres:
        from search.study import make_storage
        make_storage(args.postgres)  # a bad URL fails here, not after the other storages' rounds
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = tempfile.mkdtemp(prefix="coinfer-studystorage-")
    storages = {"memory": None, "journal": f"{folder}/studies.journal", "sqlite": f"sqlite:///{folder}/studies.db"}
    if args.postgres:
        storages["postgresql"] = args.postgres
    print(f"bench.studystorage: one CoInfer search ({len(POINTS)} points, saturating table, latency query 1 % at "
          f"0.5 Mbps) as study.optimize per storage, {args.repeats} rounds with the storages in turn; "
          f"per-trial medians over rounds; temp folder {folder}", flush=True,
          file=sys.stderr if args.json else sys.stdout)
    rows: dict[str, list[dict]] = {k: [] for k in storages}
    stamp = int(time.time())
    for r in range(args.repeats):
        for kind, url in storages.items():
            rows[kind].append(one_search(url, f"bench-{stamp}-{r}"))
    medians = {kind: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for kind, rs in rows.items()}
    from reports import figure
    path = plot(medians, Path(args.out) if args.out else figure.OUT / "studystorage.png")
    if args.json:
        print(json.dumps({"repeats": args.repeats, "medians": medians, "plot": str(path)}))
        return 0
    print(f"{'storage':<11} {'trials':>6} {'wall ms/trial':>13} {'decision ms':>11} {'bookkeeping ms':>14}")
    for kind, med in medians.items():
        print(f"{kind:<11} {med['trials']:>6.0f} {med['wall_ms']:>13.2f} {med['decision_ms']:>11.2f} "
              f"{med['bookkeeping_ms']:>14.2f}")
    print(f"plot: {path}")
    return 0


def plot(medians: dict[str, dict[str, float]], path: Path) -> Path:
    """Grouped bars per storage, side by side: the sampler's decision and the storage's bookkeeping, ms per trial,
    on a log axis (the storages differ by orders of magnitude; side by side, each bar reads on its own)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from reports.figure import plain_log_axis, save_figure
    fig, ax = plt.subplots(figsize=(6, 3.5))
    kinds = list(medians)
    x = np.arange(len(kinds))
    parts = ((-0.2, "decision_ms", "sampler decision"), (0.2, "bookkeeping_ms", "storage bookkeeping"))
    for offset, key, label in parts:
        values = [max(medians[k][key], 1e-3) for k in kinds]  # a log axis has no 0
        bars = ax.bar(x + offset, values, 0.4, label=label)
        ax.bar_label(bars, [f"{v:.3g}" for v in values], fontsize=7)
    ax.set_xticks(x, kinds)
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    ax.margins(y=0.15)
    ax.set_ylabel("ms per trial (median over rounds)")
    ax.set_title("One CoInfer search as study.optimize, per Optuna storage", fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
