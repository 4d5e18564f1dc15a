"""The scheme space as a picture: latency against accuracy of every stored scheme at one bandwidth.

    python -m reports.show --plot space.png --bandwidth 1 [--accuracy-loss 0.01 | --latency 0.6]

Every scheme of the app's accuracy database is a dot at (predicted latency at the bandwidth,
measured top-1); the Pareto frontier (no other stored scheme is both faster and at least as
accurate) is a staircase; all-edge and all-cloud, which run the unmodified model, are marked at
the base accuracy. With a query, its bound is drawn (the accuracy threshold, or the latency
budget) and its answer from the stored values (`search.runner.run_search`, offline, the
`coinfer` sampler, no study kept) is a star.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apps import App
    from compress.scheme import Scheme
    from search.latency import LatencyModel


@dataclass(frozen=True)
class PlotQuery:
    """What to draw: the bandwidth (Mbps) and at most one bound (a latency or an accuracy query)."""

    bandwidth: float
    accuracy_loss: float | None = None
    latency_ratio: float | None = None


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both (faster and at least as accurate,
    or as fast and more accurate), by increasing latency."""
    front: list[tuple[float, float]] = []
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((lat, acc))
    return front


def plot_space(app: App, model: LatencyModel, table: dict[Scheme, float], base: float, query: PlotQuery,
               path: Path | str, tolerance: float = 0.0) -> Path:
    """Write the picture (PNG) of `table` under `model` at `query.bandwidth`; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figure import save_figure
    bw = query.bandwidth
    pts = [(1e3 * model.breakdown(s, bw).total, 100 * a) for s, a in table.items()]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.35, color="tab:blue",
               label=f"stored schemes ({len(pts)})")
    front = pareto(pts)
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="tab:orange", lw=1.5, label=f"Pareto frontier ({len(front)})")
    edge, cloud = 1e3 * model.all_edge(bw), 1e3 * model.all_cloud(bw)
    ax.scatter([edge], [100 * base], marker="s", s=60, color="tab:green", zorder=4, label=f"all-edge {edge:.1f} ms")
    ax.scatter([cloud], [100 * base], marker="D", s=60, color="tab:purple", zorder=4, label=f"all-cloud {cloud:.1f} ms")
    title = f"{app.name} [{model.devices[0]} -> {model.devices[1]}] at {bw:g} Mbps"
    answer = _answer(model, table, base, query, tolerance)
    if answer is not None:
        result, label = answer
        if query.accuracy_loss is not None:
            ax.axhline(100 * (base - query.accuracy_loss), color="grey", ls="--", lw=1,
                       label=f"accuracy threshold (loss {100 * query.accuracy_loss:g} %)")
        else:
            ax.axvline(1e3 * result.problem.budget, color="grey", ls="--", lw=1,
                       label=f"latency budget ({query.latency_ratio:g} x best single end)")
        if result.feasible:
            acc = 100 * (result.accuracy if result.accuracy is not None else base)
            ax.scatter([1e3 * result.breakdown.total], [acc], marker="*", s=260, color="tab:red", zorder=5,
                       edgecolor="black", label=f"answer {result.scheme} ({1e3 * result.breakdown.total:.1f} ms)")
        title += f"; {label}"
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel(f"predicted latency at {bw:g} Mbps (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    low = min([p[1] for p in front] + [100 * base - 5]) if front else 100 * base - 5
    ax.set_ylim(max(0.0, low - 2), 100 * base + 2)
    hidden = sum(1 for p in pts if p[1] < max(0.0, low - 2))
    if hidden:
        ax.text(0.01, 0.01, f"{hidden} schemes below the axis (worse than the frontier's least accurate)",
                transform=ax.transAxes, fontsize=7, color="grey")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.tick_params(axis="x", which="minor", labelsize=7)
    return save_figure(fig, path)


def _answer(model: LatencyModel, table: dict[Scheme, float], base: float, query: PlotQuery, tolerance: float):
    """(the offline search's result, a caption) for the query, or None without one."""
    if query.accuracy_loss is None and query.latency_ratio is None:
        return None
    from search.evaluators import TableEvaluator
    from search.problem import Problem
    from search.query import AccuracyQuery, LatencyQuery
    from search.runner import SearchConfig, run_search
    if query.accuracy_loss is not None:
        q = LatencyQuery(query.accuracy_loss, query.bandwidth)
        label = f"fastest within {100 * query.accuracy_loss:g} % loss"
    else:
        q = AccuracyQuery(query.latency_ratio, query.bandwidth)
        label = f"most accurate within {query.latency_ratio:g} x"
    result = run_search(Problem(q, model, base), TableEvaluator(table, known=table),
                        SearchConfig("coinfer", tolerance, offline=True))
    return result, label
