"""Samplers against the exhaustive optimum, on the complete default table and on synthetic tables.

    python -m bench.search [--seeds 5] [--budget 100] [--quick] [--json]

For every query (latency_search with accuracy_loss in {0.005, 0.01, 0.02, 0.05}, accuracy_search
with latency in {0.5, 0.6, 0.7, 0.8}, each at 0.25 / 0.5 / 1 / 2 / 4 Mbps) and every sampler
(stochastic ones over several seeds), the complete accuracy table is replayed as the evaluator
(each first look-up of a scheme = one evaluation), and the answer is compared with the
exhaustive optimum over the table (same latency for latency queries, same accuracy for
accuracy queries). Reported per sampler: % of runs returning the optimum, % certified, median
and max evaluations, median decision overhead per evaluation (the sampler's own time, not the
evaluation's). Runs go through a pool of worker processes, so overheads are measured on a
loaded machine. Writes bench/out/search.png (evaluations vs optimality per sampler).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apps import DEFAULT_APP, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.progress import on_terminal, progress
from cli.run import run_cli
from reports.figure import OUT, save_figure
from search.samplers import sampler_spec

if TYPE_CHECKING:  # the search (torch, optuna) loads after parsing, so --help answers at once
    from search.latency import LatencyModel
    from search.query import Query

LOSSES = (0.005, 0.01, 0.02, 0.05)
RATIOS = (0.5, 0.6, 0.7, 0.8)
BANDWIDTHS = (0.25, 0.5, 1, 2, 4)


@dataclass
class Run:
    suite: str
    sampler: str
    seed: int
    query: Query
    optimal: bool
    certified: bool
    evaluations: int
    overhead_s: float
    wall_s: float


# the worker's problem set, shared through fork
_SUITES: dict[str, tuple[LatencyModel, dict, float]] = {}


def _run(task: tuple[str, str, int, Query, float, int, dict]) -> Run:
    from search.evaluators import TableEvaluator
    from search.problem import Problem
    from search.runner import SearchConfig, run_search
    suite, sampler, seed, query, tol, budget, knobs = task
    model, table, base = _SUITES[suite]
    problem = Problem(query, model, base)
    best, best_value = problem.exhaustive(table)
    spec = sampler_spec(sampler)
    config = SearchConfig(sampler, tol if spec.uses_tolerance else 0.0, seed, spec.own_knobs(knobs),
                          max_evaluations=budget if spec.budget is not None else None)
    start = time.perf_counter()
    res = run_search(problem, TableEvaluator(table), config)
    wall = time.perf_counter() - start
    optimal = res.feasible and abs(query.objective(res.breakdown.total, res.accuracy) - best_value) < 1e-12
    if best is None:  # infeasible query: right when the sampler says so too
        optimal = not res.feasible
    return Run(suite, sampler, seed, query, optimal, res.certified, res.new_evaluations,
               res.sampler_s / max(1, res.new_evaluations), wall)


def queries() -> list[Query]:
    from search.query import AccuracyQuery, LatencyQuery
    return ([LatencyQuery(e, bw) for e in LOSSES for bw in BANDWIDTHS]
            + [AccuracyQuery(r, bw) for r in RATIOS for bw in BANDWIDTHS])


def summary_rows(runs: list[Run], space_size: int) -> list[dict]:
    """Per sampler (in order of first run): runs, % optimal, % certified, median and max new
    evaluations, the median as % of the space, median decision overhead per evaluation (ms)."""
    rows = []
    for sampler in dict.fromkeys(r.sampler for r in runs):
        rs = [r for r in runs if r.sampler == sampler]
        evals = [r.evaluations for r in rs]
        rows.append({"sampler": sampler, "runs": len(rs), "optimum_pct": 100 * float(np.mean([r.optimal for r in rs])),
                     "certified_pct": 100 * float(np.mean([r.certified for r in rs])),
                     "median_evaluations": float(statistics.median(evals)), "max_evaluations": max(evals),
                     "space_pct": 100 * statistics.median(evals) / space_size,
                     "overhead_ms": 1e3 * statistics.median(r.overhead_s for r in rs if r.evaluations)})
    return rows


def summarise(runs: list[Run], space_size: int) -> list[str]:
    lines = [f"{'sampler':<11} {'runs':>5} {'optimum %':>9} {'certified %':>11} {'median evals':>12} "
             f"{'max evals':>9} {'% of space':>10} {'overhead ms/eval':>16}"]
    for row in summary_rows(runs, space_size):
        lines.append(f"{row['sampler']:<11} {row['runs']:>5} {row['optimum_pct']:>9.1f} "
                     f"{row['certified_pct']:>11.1f} {row['median_evaluations']:>12.1f} "
                     f"{row['max_evaluations']:>9d} {row['space_pct']:>10.2f} {row['overhead_ms']:>16.2f}")
    return lines


def plot(runs: list[Run], path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, sampler in enumerate(dict.fromkeys(r.sampler for r in runs)):
        rs = [r for r in runs if r.sampler == sampler]
        color = plt.cm.tab10(k)
        ax.scatter([statistics.median(r.evaluations for r in rs)], [100 * np.mean([r.optimal for r in rs])],
                   s=80, color=color, label=sampler, zorder=3)
        ax.scatter([r.evaluations for r in rs], [100 if r.optimal else 0 for r in rs], s=6, alpha=0.25, color=color)
    ax.set_xscale("symlog")
    ax.set_xlabel("new evaluations per query (small dots: runs; large: median)")
    ax.set_ylabel("% of runs returning the exhaustive optimum")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


@dataclass(frozen=True)
class SearchBenchConfig:
    """What `run_bench` runs (the CLI's flags; module docstring)."""
    app: str = DEFAULT_APP
    storage: str | None = None
    samplers: tuple[str, ...] = ("coinfer", "optcoinfer", "tpe", "gp", "random", "exhaustive")
    seeds: int = 5
    gp_seeds: int = 1
    gp_bandwidths: tuple[float, ...] = (1.0,)
    optcoinfer_seeds: int = 2
    synthetic_samplers: tuple[str, ...] = ("coinfer", "exhaustive", "tpe", "random")
    budget: int = 100
    n_restarts: int = 1
    tolerance: float | None = None  # None: search.bounds.DEFAULT_TOLERANCE
    workers: int = os.cpu_count() or 1
    synthetic: bool = True
    quick: bool = False


@dataclass(frozen=True)
class SuiteRuns:
    """One suite's runs: the complete table ("default") or a synthetic table ("shape/noiseN")."""
    name: str
    space_size: int
    queries: int
    runs: list[Run]


@dataclass(frozen=True)
class SearchBenchResult:
    app: str
    suites: list[SuiteRuns]  # the default suite first
    wall_s: float
    plot: Path

    @property
    def misses(self) -> list[Run]:
        """The default suite's coinfer runs that missed the optimum."""
        return [r for r in self.suites[0].runs if r.sampler == "coinfer" and not r.optimal]

    def lines(self) -> list[str]:
        default, synthetic = self.suites[0], self.suites[1:]
        out = [f"\ncomplete {self.app} table ({default.queries} queries):",
               *summarise(default.runs, default.space_size)]
        for suite in synthetic:
            out += [f"\nsynthetic {suite.name} (13 points, {suite.space_size} schemes, {suite.queries} queries):",
                    *summarise(suite.runs, suite.space_size)]
        out += [f"coinfer missed: {r.query}" for r in self.misses]
        out.append(f"\nwall {self.wall_s:.0f} s; plot: {self.plot}")
        return out

    def to_json(self) -> dict:
        return {"app": self.app,
                "suites": [{"suite": s.name, "space_size": s.space_size, "queries": s.queries,
                            "samplers": summary_rows(s.runs, s.space_size)} for s in self.suites],
                "coinfer_missed": [str(r.query) for r in self.misses],
                "wall_s": self.wall_s, "plot": str(self.plot)}


def run_bench(config: SearchBenchConfig, note: Callable[[str], None] = print) -> SearchBenchResult:
    """Run every sampler on every query of the complete table of `config.app` and of the synthetic
    tables, in a pool of `config.workers` processes; `note` gets the header and, off a terminal, a
    line every 50 runs. Raises CoInferError when the table is incomplete or a sampler is unknown."""
    from database.storage import Storage, app_flags
    from database.store import Store
    from search.bounds import DEFAULT_TOLERANCE
    from search.latency import LatencyModel
    from search.synthetic_problems import synthetic_suites
    app = load_app(config.app)
    store = Store(Storage.parse(config.storage), create=False, readonly=True)  # a reader: creates nothing
    model = LatencyModel.from_store(store, app)
    table = store.accuracy_table(app.name, app.protocol.name, app.protocol.seed)
    base = store.base(app.name, app.protocol.name)
    size = model.space.size
    if len(table) < size or base is None:
        raise CoInferError(f"the accuracy table of {app.name} is incomplete ({len(table)}/{size} schemes); "
                           f"complete it: python -m database.evaluate {app_flags(app, store.storage)} --schemes all")
    tol = DEFAULT_TOLERANCE if config.tolerance is None else config.tolerance
    for name in [*config.samplers, *config.synthetic_samplers]:
        sampler_spec(name)  # an unknown name: one line, before any work
    knobs = {"restarts": config.n_restarts}
    qs = queries()
    seeds = 1 if config.quick else config.seeds
    if config.quick:
        qs = [q for q in qs if q.bandwidth in (0.5, 2)]
    _SUITES["default"] = (model, table, base)
    synthetic = synthetic_suites() if config.synthetic else []
    for name, syn_model, syn_table, syn_base in synthetic:
        _SUITES[name] = (syn_model, syn_table, syn_base)

    gp_bws = set(config.gp_bandwidths)
    n_seeds = {"gp": min(seeds, config.gp_seeds), "optcoinfer": min(seeds, config.optcoinfer_seeds)}

    def tasks(suite: str, qlist: list[Query], names: tuple[str, ...], nseeds: int) -> list:
        out = []
        for s in names:
            n = min(nseeds, n_seeds.get(s, nseeds)) if sampler_spec(s).stochastic else 1
            qs_s = [q for q in qlist if q.bandwidth in gp_bws] if s == "gp" else qlist
            out += [(suite, s, seed, q, tol, config.budget, knobs) for seed in range(n) for q in qs_s]
        return out

    all_tasks = tasks("default", qs, config.samplers, seeds)
    syn_queries = [q for q in qs if q.bandwidth in (0.5, 2)]
    for name, *_ in synthetic:
        all_tasks += tasks(name, syn_queries, config.synthetic_samplers, 1 if config.quick else 2)
    note(f"bench.search: {app.name}, space {size} schemes, base top-1 {base:.4f}, latency devices "
         f"{model.devices[0]} -> {model.devices[1]}; {len(qs)} queries; coinfer tolerance {tol:.4f}; "
         f"tpe/random over {seeds} seeds, optcoinfer over {n_seeds['optcoinfer']} (GP restarts {config.n_restarts}), "
         f"Optuna gp over {n_seeds['gp']} on the queries at {sorted(gp_bws)} Mbps only (about 1 s a trial); "
         f"tpe/gp/random budget {config.budget} evaluations; synthetic suites: {','.join(config.synthetic_samplers)}; "
         f"{config.workers} worker processes; {len(all_tasks)} runs")
    start = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(config.workers) as pool:
        runs = []
        done = pool.imap_unordered(_run, all_tasks, chunksize=1)
        for i, run in enumerate(progress(done, total=len(all_tasks), desc="bench.search", unit="run"), 1):
            runs.append(run)
            if i % 50 == 0 and not on_terminal():  # a log: a line now and then, with the ETA
                elapsed = time.perf_counter() - start
                note(f"  {i}/{len(all_tasks)} runs, {elapsed:.0f} s, ETA {elapsed / i * (len(all_tasks) - i):.0f} s")
    default = [r for r in runs if r.suite == "default"]
    suites = [SuiteRuns("default", size, len(qs), default)]
    suites += [SuiteRuns(name, _SUITES[name][0].space.size, len(syn_queries), [r for r in runs if r.suite == name])
               for name in dict.fromkeys(r.suite for r in runs if r.suite != "default")]
    path = plot(default, OUT / "search.png", f"{app.name}: evaluations vs optimality ({len(qs)} queries)")
    return SearchBenchResult(app.name, suites, time.perf_counter() - start, path)


def parse_bandwidths(text: str) -> tuple[float, ...]:
    """--gp-bandwidths: positive finite Mbps separated by commas; else one CoInferError line."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise CoInferError(f"--gp-bandwidths must be positive numbers (Mbps) separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> tuple[SearchBenchConfig, bool]:
    """The command line as (config, --json)."""
    ap = ArgParser(description="Benchmark the samplers against the exhaustive optimum.")
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--samplers", default="coinfer,optcoinfer,tpe,gp,random,exhaustive")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the stochastic samplers")
    ap.add_argument("--gp-seeds", type=int, default=1, help="seeds of Optuna's GP (about 1 s a trial)")
    ap.add_argument("--gp-bandwidths", default="1", help="bandwidths whose queries Optuna's GP runs (cost)")
    ap.add_argument("--optcoinfer-seeds", type=int, default=2, help="seeds of optcoinfer (its GP: ~0.4 s/eval)")
    ap.add_argument("--synthetic-samplers", default="coinfer,exhaustive,tpe,random")
    ap.add_argument("--budget", type=int, default=100, help="evaluation budget of tpe / gp / random")
    ap.add_argument("--n-restarts", type=int, default=1, help="GP optimiser restarts of optcoinfer (paper: 100)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="coinfer's tolerance (default: search.bounds.DEFAULT_TOLERANCE)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 seed, bandwidths 0.5 and 2 only")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object (per suite and sampler: the table's columns); notes go to stderr")
    args = ap.parse_args(argv)
    config = SearchBenchConfig(
        app=args.app, storage=args.storage, samplers=tuple(args.samplers.split(",")), seeds=args.seeds,
        gp_seeds=args.gp_seeds, gp_bandwidths=parse_bandwidths(args.gp_bandwidths),
        optcoinfer_seeds=args.optcoinfer_seeds, synthetic_samplers=tuple(args.synthetic_samplers.split(",")),
        budget=args.budget, n_restarts=args.n_restarts, tolerance=args.tolerance, workers=args.workers,
        synthetic=not args.no_synthetic, quick=args.quick)
    return config, args.json


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    note_stream = sys.stderr if as_json else sys.stdout
    result = run_bench(config, note=lambda line: print(line, file=note_stream, flush=True))
    print(json.dumps(result.to_json()) if as_json else "\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    run_cli(main)
