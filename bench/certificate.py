"""Samplers against the minimum certificate: how many evaluations a search makes, against the
fewest that could prove its answer.

    python -m bench.certificate [--samplers coinfer,exhaustive] [--table PATH --base 0.98] [--quick] [--json]

For a complete accuracy table (the default app's shipped table, or `--table` CSV / Opt-CoInfer
text, with the app's latency model) and bench.search's queries (latency queries: accuracy loss
x bandwidth; accuracy queries: latency ratio x bandwidth), the minimum certificate is the
fewest evaluated schemes that let the search's own status (`Problem.status`, monotone bounds
within the tolerance) declare the exhaustive optimum proven: an integer program solved by
HiGHS (search/mincert.py), every minimum re-checked with `Problem.status` on those schemes
alone. Each sampler then searches the query with the table replayed as its evaluator
(search.runner.run_search, nothing stored beforehand); its new evaluations over the minimum is
the ratio. Synthetic suites (bench.search's: saturating / linear / cliff surfaces, noise 0 and
0.002, 13 points) run at 0.5 and 2 Mbps. Queries whose minimum is 0 (the single end is proven
by latency alone) have no ratio; they are counted apart. Writes bench/out/certificate.png
(the ratios per query kind).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field

from apps import DEFAULT_APP, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.progress import progress
from cli.run import run_cli
from reports.figure import OUT, plain_log_axis, save_figure
from search.samplers import sampler_spec

KINDS = ("latency", "accuracy")


@dataclass(frozen=True)
class Row:
    """One query of one suite: its minimum certificate and each sampler's search."""

    suite: str
    query: str
    kind: str
    minimum: int
    could_beat: int  # schemes the certificate has to rule out
    verified: bool  # Problem.status on the minimum alone is done with the optimum as incumbent
    solve_s: float
    evaluations: dict[str, int] = field(default_factory=dict)
    certified: dict[str, bool] = field(default_factory=dict)
    optimal: dict[str, bool] = field(default_factory=dict)
    decision_ms: dict[str, float] = field(default_factory=dict)  # the sampler's own time per evaluation

    def ratio(self, sampler: str) -> float | None:
        return self.evaluations[sampler] / self.minimum if self.minimum else None

    def to_json(self) -> dict:
        return {"suite": self.suite, "query": self.query, "kind": self.kind, "minimum": self.minimum,
                "could_beat": self.could_beat, "verified": self.verified, "solve_s": self.solve_s,
                "evaluations": self.evaluations, "certified": self.certified, "optimal": self.optimal,
                "decision_ms": self.decision_ms}


@dataclass(frozen=True)
class Suite:
    """A complete table with its latency model and base top-1, and the queries asked on it."""

    name: str
    model: object  # search.latency.LatencyModel
    table: dict
    base: float
    queries: tuple


@dataclass(frozen=True)
class CertConfig:
    """The samplers compared (ours: they stop by themselves), the certificate's tolerance, the samplers' knobs."""

    samplers: tuple[str, ...] = ("coinfer", "exhaustive")
    tolerance: float = 0.005
    knobs: tuple[tuple[str, object], ...] = (("restarts", 1),)

    def __post_init__(self) -> None:
        for s in self.samplers:
            if not sampler_spec(s).ours:
                raise CoInferError(f"sampler {s} runs on a budget and never stops by itself; bench.certificate "
                                   f"compares ours (coinfer, optcoinfer, exhaustive)")
        if not (self.tolerance >= 0):
            raise CoInferError(f"--tolerance must be >= 0, got {self.tolerance}")


def measure(suite: Suite, config: CertConfig, on_query=None) -> list[Row]:
    """The minimum certificate of every query of `suite` and each sampler's evaluations on its table."""
    from search.evaluators import TableEvaluator
    from search.mincert import minimum_certificate, verify
    from search.problem import Problem
    from search.runner import SearchConfig, run_search
    rows = []
    table, tol, knobs = suite.table, config.tolerance, dict(config.knobs)
    for q in suite.queries:
        pr = Problem(q, suite.model, suite.base)
        cert = minimum_certificate(pr, table, tol)
        row = Row(suite.name, str(q), q.name, cert.size, cert.could_beat, verify(pr, table, cert, tol),
                  cert.solve_s)
        for s in config.samplers:
            spec = sampler_spec(s)
            res = run_search(pr, TableEvaluator(table), SearchConfig(s, tol if spec.uses_tolerance else 0.0, 0,
                                                                    spec.own_knobs(knobs)))
            optimal = res.feasible and abs(q.objective(res.breakdown.total, res.accuracy) - cert.value) < 1e-12
            if cert.answer is None:
                optimal = not res.feasible
            row.evaluations[s] = res.new_evaluations
            row.certified[s] = res.certified
            row.optimal[s] = bool(optimal)
            row.decision_ms[s] = 1e3 * res.sampler_s / max(1, res.new_evaluations)
        rows.append(row)
        if on_query is not None:
            on_query()
    return rows


def summarise(rows: list[Row], samplers: list[str]) -> list[str]:
    """Per query kind and sampler: queries, those with a minimum > 0, the sums, the ratio of the sums,
    median and max ratio, % of queries at the minimum, % optimal and certified."""
    head = (f"{'kind':<9} {'sampler':<11} {'queries':>7} {'min>0':>5} {'sum min':>7} {'sum evals':>9} "
            f"{'sum ratio':>9} {'median':>6} {'max':>6} {'at min %':>8} {'optimal %':>9} {'certified %':>11}")
    lines = [head]
    for kind in KINDS:
        rs = [r for r in rows if r.kind == kind]
        if not rs:
            continue
        for s in samplers:
            ratios = [r.ratio(s) for r in rs if r.minimum]
            mins, evals = sum(r.minimum for r in rs), sum(r.evaluations[s] for r in rs)
            lines.append(
                f"{kind:<9} {s:<11} {len(rs):>7} {len(ratios):>5} {mins:>7} {evals:>9} "
                f"{evals / mins if mins else float('nan'):>9.2f} "
                f"{statistics.median(ratios) if ratios else float('nan'):>6.2f} "
                f"{max(ratios) if ratios else float('nan'):>6.2f} "
                f"{100 * sum(r.evaluations[s] == r.minimum for r in rs) / len(rs):>8.1f} "
                f"{100 * sum(r.optimal[s] for r in rs) / len(rs):>9.1f} "
                f"{100 * sum(r.certified[s] for r in rs) / len(rs):>11.1f}")
    return lines


def plot(rows: list[Row], samplers: list[str], path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    suites = list(dict.fromkeys(r.suite for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes, KINDS):
        for k, s in enumerate(samplers):
            for x, suite in enumerate(suites):
                ratios = [r.ratio(s) for r in rows if r.kind == kind and r.suite == suite and r.minimum]
                if not ratios:
                    continue
                xs = x + (k - (len(samplers) - 1) / 2) * 0.25 + rng.uniform(-0.06, 0.06, len(ratios))
                ax.scatter(xs, ratios, s=10, alpha=0.5, color=plt.cm.tab10(k), label=s)
                ax.plot([x + (k - (len(samplers) - 1) / 2) * 0.25] * 2, [statistics.median(ratios)] * 2, "_",
                        ms=18, mew=2, color=plt.cm.tab10(k))
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(suites)), suites, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_title(f"{kind} queries")
    axes[0].set_ylabel("evaluations / minimum certificate (bar: median)")
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    axes[0].legend(seen.values(), seen.keys(), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _parser() -> ArgParser:
    ap = ArgParser(description="Samplers' evaluations against the minimum certificate of each query.")
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--table", default=None, help="a complete accuracy table (CSV or Opt-CoInfer text) "
                                                  "instead of the app's stored one")
    ap.add_argument("--base", type=float, default=None, help="base top-1 of --table (default: the app's stored one)")
    ap.add_argument("--samplers", default="coinfer,exhaustive",
                    help="ours only: they stop by themselves (optcoinfer: about 10 s a query here)")
    ap.add_argument("--restarts", type=int, default=1, help="GP optimiser restarts of optcoinfer")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="the certificate's tolerance (default: search.bounds.DEFAULT_TOLERANCE)")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--quick", action="store_true", help="bandwidths 0.5 and 2 only")
    ap.add_argument("--json", action="store_true")
    return ap


def load_suites(app_ref: str, storage: str | None, table_path: str | None, base: float | None, quick: bool,
                synthetic: bool) -> list[Suite]:
    """The app's complete table (or `table_path`'s) under its latency model, then bench.search's synthetic suites."""
    from bench.search import queries
    from database.storage import Storage
    from database.store import Store
    from search.evaluators import TableEvaluator
    from search.latency import LatencyModel
    from search.synthetic_problems import synthetic_suites
    if base is not None and not (0 < base <= 1):
        raise CoInferError(f"--base must be a top-1 in (0, 1], got {base}")
    app = load_app(app_ref)
    store = Store(Storage.parse(storage), create=False, readonly=True)  # a reader: creates nothing
    model = LatencyModel.from_store(store, app)
    widths = [pt.channels for pt in model.space.points]
    if table_path:
        table = TableEvaluator.from_file(table_path, widths).table
    else:
        table = store.accuracy_table(app.name, app.protocol.name, app.protocol.seed)
    base = base if base is not None else store.base(app.name, app.protocol.name)
    size = model.space.size
    split = {s for s in table if s.is_split}
    if len(split) < size or base is None:
        where = table_path or f"the stored table of {app.name}"
        raise CoInferError(f"{where} is incomplete ({len(split)}/{size} schemes"
                           f"{'' if base is not None else ', no base accuracy'}); bench.certificate needs every scheme")
    qs = [q for q in queries() if not quick or q.bandwidth in (0.5, 2)]
    suites = [Suite("default" if not table_path else "table", model, table, base, tuple(qs))]
    if synthetic:
        syn_qs = tuple(q for q in qs if q.bandwidth in (0.5, 2))
        suites += [Suite(name, m, t, b, syn_qs) for name, m, t, b in synthetic_suites()]
    return suites


def run_certificate(suites: list[Suite], config: CertConfig, show_progress: bool = True) -> list[Row]:
    """Every suite measured (`measure`), with one progress tick per query."""
    bar = progress(total=sum(len(s.queries) for s in suites), desc="bench.certificate", unit="query",
                   enabled=show_progress)
    rows: list[Row] = []
    for suite in suites:
        rows += measure(suite, config, on_query=lambda: bar.update(1))
    bar.close()
    return rows


def describe(suites: list[Suite], rows: list[Row], config: CertConfig, wall: float, path) -> list[str]:
    """The text report after the runs: per suite the ratio table, the unverified minima, the solver's and
    the first sampler's times."""
    samplers, lines = list(config.samplers), []
    for suite in suites:
        rs = [r for r in rows if r.suite == suite.name]
        lines += [f"\n{suite.name} ({len(rs)} queries):", *summarise(rs, samplers)]
    lines += [f"minimum NOT verified by Problem.status: {r.suite} {r.query}" for r in rows if not r.verified]
    lines.append(f"\nminima verified: {sum(r.verified for r in rows)}/{len(rows)}; HiGHS median "
                 f"{1e3 * statistics.median(r.solve_s for r in rows):.1f} ms, "
                 f"max {1e3 * max(r.solve_s for r in rows):.1f} ms; "
                 f"decision median {statistics.median(r.decision_ms[samplers[0]] for r in rows):.2f}, "
                 f"max {max(r.decision_ms[samplers[0]] for r in rows):.2f} ms/evaluation "
                 f"({samplers[0]}); wall {wall:.0f} s; load average now {os.getloadavg()[0]:.2f}; plot: {path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from search.bounds import DEFAULT_TOLERANCE
    tol = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    config = CertConfig(tuple(args.samplers.split(",")), tol, (("restarts", args.restarts),))
    suites = load_suites(args.app, args.storage, args.table, args.base, args.quick, not args.no_synthetic)
    load = os.getloadavg()
    if not args.json:
        first = suites[0]
        print(f"bench.certificate: {first.name} ({first.model.space.size} schemes, base top-1 {first.base:.4f}) and "
              f"{len(suites) - 1} synthetic suites; {sum(len(s.queries) for s in suites)} queries; tolerance "
              f"{tol:.4f}; samplers {', '.join(config.samplers)} (each from nothing stored, table replayed); minimum "
              f"certificate by HiGHS, each verified with Problem.status; load average {load[0]:.2f} on "
              f"{os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()
    rows = run_certificate(suites, config, show_progress=not args.json)
    wall = time.perf_counter() - start
    path = plot(rows, list(config.samplers), OUT / "certificate.png",
                f"evaluations over the minimum certificate (tolerance {tol:g})")
    if args.json:
        print(json.dumps({"tolerance": tol, "samplers": list(config.samplers), "rows": [r.to_json() for r in rows],
                          "wall_s": wall, "load_average": load[0], "png": str(path)}))
    else:
        print("\n".join(describe(suites, rows, config, wall, path)))
    return 0 if all(r.verified for r in rows) else 1


if __name__ == "__main__":
    run_cli(main)
