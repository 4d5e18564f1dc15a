"""The co-run report: tables and plots from a run folder's raw logs.

    lines, figures = report(Path("bench/out/corun/RUN"))

Reads RUN/cells.jsonl (one line per cell, `bench.corun.load`), every request CSV it names, the
training progress CSVs RUN/train-TAG.csv (`runtime.training`), RUN/profile.csv (`bench.profiler`),
and when present RUN/inprocess.json and RUN/layout.json (`bench.corun.run`). A cell's tag says how
the server ran: `base`, `train` (training co-run), `batch` (dynamic batching), `batch+train`.

Per target (app@scheme), tag, mode and client count:
- requests, ok, failed (any status but ok);
- throughput: ok replies / the cell's duration (req/s);
- p50 / p95 / p99 latency of the ok requests (numpy's linear percentile), ms;
- training rate: training samples per second over the cell's [start, end] (interpolated in the
  progress CSV), for tags with training.

A trace cell (`--mode trace`) is also reported per replay minute and target (`minute_stats`, RUN/minutes.json):
the rate the trace asks for (the replay's rate that minute x clients), the scheduled rate (the
requests the seeded schedule placed in the minute, whatever became of them), the rate sent in it, and
the achieved rate (ok replies received in it), each per second of the replay's minute.

Plots (PNG in RUN): latency CDFs (a panel per tag and mode, a line per target and client count),
throughput against client count (closed loop; a line per target and tag), and the profiler's CPU
utilisation over time (per process kind, plus the machine) with GPU utilisation when sampled; for
trace cells, the per-minute rates (trace.png).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.corun.load import OK
from cli.errors import CoInferError
from runtime.training import read_progress


@dataclass(frozen=True)
class CellStats:
    target: str
    tag: str
    mode: str
    clients: int
    rate: float  # per client, open loop (0: closed)
    requests: int
    ok: int
    failed: int
    throughput: float  # ok replies per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    train_rate: float | None  # training samples per second during the cell


@dataclass(frozen=True)
class MinuteStats:
    """One replay minute of one trace cell and target (see the module doc); rates in requests per second."""

    target: str
    tag: str
    clients: int
    minute: int  # from 1
    minute_seconds: float
    trace_rate: float
    scheduled: int
    sent: int
    ok: int

    @property
    def scheduled_rate(self) -> float:
        return self.scheduled / self.minute_seconds

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.minute_seconds

    @property
    def error(self) -> float | None:
        """(achieved - scheduled) / scheduled; None for a minute with nothing scheduled."""
        return (self.ok - self.scheduled) / self.scheduled if self.scheduled else None

    def to_json(self) -> dict:
        return {**asdict(self), "scheduled_rate": self.scheduled_rate, "achieved_rate": self.achieved_rate,
                "error": self.error}


TRACE_TOLERANCE = 0.05  # the target: achieved within 5 % of scheduled, every minute


def percentiles(latencies: list[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p95, p99 in ms (numpy's linear method); None without samples."""
    if not latencies:
        return None, None, None
    p = np.percentile(np.asarray(latencies) * 1e3, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def train_rate(rows: list[tuple[float, int, int]], start: float, end: float) -> float | None:
    """Samples per second between `start` and `end`, interpolated in the progress rows."""
    if len(rows) < 2 or end <= start:
        return None
    t = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float)
    if start < t[0] or end > t[-1] + 1.0:
        start, end = max(start, t[0]), min(end, t[-1])
        if end <= start:
            return None
    return float((np.interp(end, t, s) - np.interp(start, t, s)) / (end - start))


def read_cells(run: Path) -> list[dict]:
    path = run / "cells.jsonl"
    if not path.is_file():
        raise CoInferError(f"{run} is not a co-run folder: no cells.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_rows(folder: Path) -> list[dict[str, str]]:
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def cell_stats(run: Path) -> list[CellStats]:
    """Every cell's figures per target (see the module doc), in the order the cells ran."""
    out = []
    progress = {p.stem.removeprefix("train-"): read_progress(p) for p in run.glob("train-*.csv")}
    for cell in read_cells(run):
        by_target: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in read_rows(run / cell["folder"]):
            by_target[f"{row['app']}@{row['scheme']}"].append(row)
        rate = train_rate(progress[cell["tag"]], cell["start"], cell["end"]) if cell["tag"] in progress else None
        for target, rows in by_target.items():
            lat = [float(r["latency_s"]) for r in rows if r["status"] == OK]
            failed = sum(r["status"] != OK for r in rows)
            out.append(CellStats(target, cell["tag"], cell["mode"], cell["clients"], cell["rate"], len(rows), len(lat),
                                 failed, len(lat) / cell["duration"], *percentiles(lat), rate))
    return out


def _minute(text: str, start: float, span: float, minutes: int) -> int | None:
    """The replay minute (from 0) a logged time falls in; None for no time or one outside the replay."""
    if not text:
        return None
    m = math.floor((float(text) - start) / span)
    return m if 0 <= m < minutes else None


def minute_stats(run: Path) -> list[MinuteStats]:
    """Every trace cell's figures per target and replay minute (see the module doc)."""
    out = []
    for cell in read_cells(run):
        if cell["mode"] != "trace":
            continue
        rates, span = cell["minute_rates"], cell["minute_seconds"]
        by_target: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in read_rows(run / cell["folder"]):
            by_target[f"{row['app']}@{row['scheme']}"].append(row)

        for target, rows in by_target.items():
            scheduled, sent, ok = [0] * len(rates), [0] * len(rates), [0] * len(rates)
            for r in rows:
                if (m := _minute(r["scheduled"], cell["start"], span, len(rates))) is not None:
                    scheduled[m] += 1
                if (m := _minute(r["sent"], cell["start"], span, len(rates))) is not None:
                    sent[m] += 1
                if r["status"] == OK and (m := _minute(r["received"], cell["start"], span, len(rates))) is not None:
                    ok[m] += 1
            out += [MinuteStats(target, cell["tag"], cell["clients"], m + 1, span, rates[m] * cell["clients"],
                                scheduled[m], sent[m], ok[m]) for m in range(len(rates))]
    return out


def minute_table(minutes: list[MinuteStats]) -> list[str]:
    lines = ["| target | tag | clients | minute | trace req/s | scheduled req/s | sent req/s | achieved req/s | "
             "achieved / scheduled |", "|---|---|---|---|---|---|---|---|---|"]
    for m in minutes:
        err = "-" if m.error is None else f"{m.error:+.1%}"
        lines.append(f"| {m.target} | {m.tag} | {m.clients} | {m.minute} | {m.trace_rate:.1f} | "
                     f"{m.scheduled_rate:.1f} | {m.sent / m.minute_seconds:.1f} | {m.achieved_rate:.1f} | {err} |")
    return lines


def trace_check(minutes: list[MinuteStats]) -> list[str]:
    """Per trace cell and target: how many minutes achieved within `TRACE_TOLERANCE` of the schedule."""
    lines = []
    for key in dict.fromkeys((m.target, m.tag, m.clients) for m in minutes):
        mine = [m for m in minutes if (m.target, m.tag, m.clients) == key and m.error is not None]
        if not mine:
            continue
        good = sum(abs(m.error) <= TRACE_TOLERANCE for m in mine)
        worst = max(mine, key=lambda m: abs(m.error))
        lines.append(f"{key[0]} {key[1]} trace {key[2]} clients: achieved within {TRACE_TOLERANCE:.0%} of scheduled "
                     f"in {good} of {len(mine)} minutes (worst: minute {worst.minute}, {worst.achieved_rate:.1f} vs "
                     f"{worst.scheduled_rate:.1f} req/s, {worst.error:+.1%}): "
                     f"{'MET' if good == len(mine) else 'NOT MET'}")
    return lines


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(stats: list[CellStats]) -> list[str]:
    head = ("| target | tag | batching | training | mode | clients | rate/client | requests | failed | req/s | "
            "p50 ms | p95 ms | p99 ms | train samples/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in stats:
        parts = s.tag.split("+")
        lines.append(f"| {s.target} | {s.tag} | {'on' if 'batch' in parts else 'off'} | "
                     f"{'on' if 'train' in parts else 'off'} | {s.mode} | {s.clients} | "
                     f"{s.rate:.1f} | {s.requests} | {s.failed} | {s.throughput:.1f} | {_ms(s.p50_ms)} | "
                     f"{_ms(s.p95_ms)} | {_ms(s.p99_ms)} | "
                     f"{'-' if s.train_rate is None else f'{s.train_rate:.0f}'} |")
    return lines


def targets_check(stats: list[CellStats], inprocess: dict | None) -> list[str]:
    """The issue's targets, each with its numbers (those the run has cells for)."""
    lines = []
    for target in sorted({s.target for s in stats}):
        mine = [s for s in stats if s.target == target]
        for tag in ("base", "batch"):
            closed = [s for s in mine if s.tag == tag and s.mode == "closed"]
            if closed and inprocess and target in inprocess:
                sat = max(closed, key=lambda s: s.throughput)
                key = "batch1" if tag == "base" else "batchN"
                ref = inprocess[target].get(key)
                beside = inprocess[target].get("base_around") or []
                if tag == "base" and beside:  # measured right beside the sweep: the fairer reference
                    ref = float(np.mean(beside))
                if ref and tag == "base":
                    ok = sat.throughput >= 0.9 * ref
                    how = (f"mean of {', '.join(f'{x:.1f}' for x in beside)} measured beside the sweep" if beside
                           else "measured at the start")
                    lines.append(f"{target} {tag}: saturation {sat.throughput:.1f} req/s ({sat.clients} clients) = "
                                 f"{sat.throughput / ref:.0%} of in-process {ref:.1f} images/s at batch 1 ({how}): "
                                 f"{'MET' if ok else 'NOT MET'} (>= 90 %)")
                elif ref:  # a server batch holds at most the requests in flight: informational
                    lines.append(f"{target} {tag}: saturation {sat.throughput:.1f} req/s ({sat.clients} clients) = "
                                 f"{sat.throughput / ref:.0%} of in-process {ref:.1f} images/s at batch "
                                 f"{inprocess[target].get('batchN_size')} (informational: its batches hold at most "
                                 f"the {sat.clients} requests in flight)")
            train_tag = "train" if tag == "base" else "batch+train"
            for n in sorted({s.clients for s in mine if s.mode == "poisson"}):
                quiet = [s for s in mine if s.tag == tag and s.mode == "poisson" and s.clients == n]
                busy = [s for s in mine if s.tag == train_tag and s.mode == "poisson" and s.clients == n]
                if quiet and busy and quiet[0].p99_ms and busy[0].p99_ms:
                    ratio = busy[0].p99_ms / quiet[0].p99_ms
                    rate = f"{busy[0].train_rate:.0f}" if busy[0].train_rate is not None else "-"
                    lines.append(f"{target} {tag} poisson {n} clients: p99 {busy[0].p99_ms:.2f} ms with training vs "
                                 f"{quiet[0].p99_ms:.2f} ms without = {ratio:.2f}x: "
                                 f"{'MET' if ratio <= 2 else 'NOT MET'} (<= 2x); training {rate} samples/s")
    failed = sum(s.failed for s in stats)
    lines.append(f"failed requests over all cells: {failed} of {sum(s.requests for s in stats)}")
    return lines


def layout_lines(layout: dict) -> list[str]:
    lines = ["| layout | clients per app | rounds | req/s (all apps, median) | each round | p50 ms | p99 ms | failed |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in layout.items():
        each = ", ".join(f"{x['throughput']:.0f}" for x in r.get("each", []))
        lines.append(f"| {name} | {r['clients']} | {r.get('rounds', 1)} | {r['throughput']:.1f} | {each} | "
                     f"{_ms(r.get('p50_ms'))} | {_ms(r.get('p99_ms'))} | {r['failed']} |")
    return lines


# ------------------------------------------------------------------------------------------ plots
def plot_cdfs(run: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figure import plain_log_axis, save_figure
    cells = read_cells(run)
    tags = list(dict.fromkeys(c["tag"] for c in cells))
    modes = list(dict.fromkeys(c["mode"] for c in cells))
    fig, axes = plt.subplots(len(modes), len(tags), figsize=(4.2 * len(tags), 3.4 * len(modes)), squeeze=False)
    for ax, (mode, tag) in zip(axes.flat, [(m, t) for m in modes for t in tags]):
        for cell in [c for c in cells if c["tag"] == tag and c["mode"] == mode]:
            by: dict[str, list[float]] = defaultdict(list)
            for row in read_rows(run / cell["folder"]):
                if row["status"] == OK:
                    by[f"{row['app']}@{row['scheme']}"].append(float(row["latency_s"]) * 1e3)
            for target, lat in sorted(by.items()):
                lat.sort()
                ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{target} n={cell['clients']}")
        ax.set(title=f"{tag}, {mode}", xlabel="latency (ms)", ylabel="CDF", xscale="log")
        plain_log_axis(ax.xaxis)
        ax.legend(fontsize=6)
    return save_figure(fig, out)


def plot_throughput(stats: list[CellStats], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figure import no_data, plain_log_axis, save_figure
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    closed = [s for s in stats if s.mode == "closed"]
    for target, tag in sorted({(s.target, s.tag) for s in closed}):
        pts = sorted((s.clients, s.throughput) for s in closed if s.target == target and s.tag == tag)
        ax.plot(*zip(*pts), marker="o", label=f"{target} {tag}")
    ax.set(xlabel="clients per target", ylabel="throughput (req/s)", xscale="log", title="closed loop")
    if closed:
        plain_log_axis(ax.xaxis, sorted({s.clients for s in closed}))
        ax.legend(fontsize=7)
    else:
        no_data(ax, "no closed-loop cell")
    return save_figure(fig, out)


def plot_minutes(minutes: list[MinuteStats], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figure import save_figure
    keys = list(dict.fromkeys((m.target, m.tag, m.clients) for m in minutes))
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 3 * len(keys)), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        mine = [m for m in minutes if (m.target, m.tag, m.clients) == key]
        x = [m.minute for m in mine]
        ax.step(x, [m.trace_rate for m in mine], where="mid", color="grey", ls="--", label="trace (scaled)")
        ax.plot(x, [m.scheduled_rate for m in mine], marker="o", label="scheduled")
        ax.plot(x, [m.achieved_rate for m in mine], marker="x", label="achieved (ok replies)")
        ax.set(title=f"{key[0]} {key[1]}, {key[2]} clients, {mine[0].minute_seconds:g} s a minute",
               xlabel="trace minute (replayed)", ylabel="req/s", ylim=(0, None))
        ax.legend(fontsize=7)
    return save_figure(fig, out)


def plot_profile(profile: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.profiler import read_samples
    from reports.figure import save_figure
    rows = read_samples(profile)
    if not rows:
        raise CoInferError(f"{profile} has no samples")
    t0 = float(rows[0]["time"])
    # two scales, two panels: a process's CPU (100 = one core) above; the machine's CPU and each GPU
    # (100 = all of it) below
    procs: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    whole: dict[str, dict[float, float]] = defaultdict(dict)
    for r in rows:
        t = float(r["time"]) - t0
        if r["kind"] == "gpu":
            whole[f"GPU {r['name']} utilisation"][t] = float(r["gpu_util"])
        elif r["kind"] == "machine":
            whole["machine CPU"][t] = float(r["cpu_percent"])
        else:  # a process whose command line could not be read (gone between two samples): bench.profiler's "?"
            procs["unnamed (exited)" if r["name"] == "?" else r["name"]][t] += float(r["cpu_percent"])
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 5.6), sharex=True, height_ratios=(3, 2))
    for panel, series_by in ((ax, procs), (bx, whole)):
        for name, series in sorted(series_by.items()):
            ts = sorted(series)
            panel.plot(ts, [series[t] for t in ts], label=name, lw=1, ls="--" if name.startswith("GPU") else "-")
        if series_by:
            panel.legend(fontsize=6, ncol=2)
    ax.set(ylabel="CPU % (100 = one core)", title="utilisation per process (bench.profiler)")
    bx.set(xlabel="seconds", ylabel="% of the machine", ylim=(0, 105), title="machine CPU (100 = every core) and GPUs")
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------- report
def report(run: Path) -> tuple[list[str], list[Path]]:
    """(the report's lines, the PNGs written); also writes RUN/report.md and RUN/report.json."""
    run = Path(run)
    only_layouts = not (run / "cells.jsonl").is_file() and (run / "layout.json").is_file()
    stats = [] if only_layouts else cell_stats(run)
    inprocess = json.loads((run / "inprocess.json").read_text()) if (run / "inprocess.json").is_file() else None
    lines = [f"# Co-run report: {run}", "", "## Cells", "", *table(stats)]
    if inprocess:
        lines += ["", "## In-process baseline (runtime.batching.compute, 1 torch thread)", ""]
        for target, r in inprocess.items():
            lines.append(f"- {target}: {r['batch1']:.1f} images/s at batch 1"
                         + (f", {r['batchN']:.1f} at batch {r['batchN_size']}" if r.get("batchN") else "")
                         + (f"; at batch 1 beside the base cell's closed sweep: "
                            f"{', '.join(f'{x:.1f}' for x in r['base_around'])}" if r.get("base_around") else ""))
    if (run / "layout.json").is_file():
        lines += ["", "## One process for all apps vs one process per app (closed loop)", "",
                  *layout_lines(json.loads((run / "layout.json").read_text()))]
    minutes = [] if only_layouts else minute_stats(run)
    if minutes:
        lines += ["", "## Trace replay, per minute", "", *minute_table(minutes)]
    lines += ["", "## Targets", "", *[f"- {line}" for line in targets_check(stats, inprocess) + trace_check(minutes)]]
    figures = [] if only_layouts else [plot_cdfs(run, run / "latency_cdf.png"),
                                       plot_throughput(stats, run / "throughput.png")]
    if minutes:
        figures.append(plot_minutes(minutes, run / "trace.png"))
        (run / "minutes.json").write_text(json.dumps([m.to_json() for m in minutes], indent=1))
    if (run / "profile.csv").is_file():
        figures.append(plot_profile(run / "profile.csv", run / "utilisation.png"))
    lines += ["", "## Figures", "", *[f"- {p}" for p in figures]]
    (run / "report.md").write_text("\n".join(lines) + "\n")
    (run / "report.json").write_text(json.dumps([asdict(s) for s in stats], indent=1))
    return lines, figures
