"""Adaptivity: the best partition under changing edge CPU and link rate, and the adaptive runtime.

    python -m bench.adaptivity [--quotas 0.0625 0.125 0.5] [--rates 0.25 0.5 1 2 4] [--n 10] [--json]
                               [--mem-limit 1G 768M [none]] [--mem-stress 0.5] [--retries 2]
    python -m bench.adaptivity --server HOST:PORT [--tls-ca CA] [--token-file F] [--quotas ...] [--mem-limit ...]

Part 1 (as in McNamee et al.'s adaptive-DNN benchmarking): on one testbed (`runtime.testbed`) and
one long-lived edge process (`runtime.edgeworker`), for every edge CPU share x link rate (the share
changed in the edge's emulation, the rate with `tc qdisc change`; the paced link by default), every
partition point p (all C_p
channels at 8 bits: the unpruned cut), all-edge, all-cloud and the searched frontier's schemes
each run `--warmup` + `--n` sequential one-image requests. Latency does not depend on the
weights, so this part serves the pruned base weights (no fine-tuning). Reported: the best
partition per condition (measured mean) vs the latency model's best, a heat-map of it, and the
latency lost by keeping the scheme that is best in one condition in every other condition.
The model's best scales the profiled edge times by (profiled share / share): CPU-bound. The model is
the stored databases with every latency row profiled again at the start (`--profile fresh`, see
`bench.freshprofile`) and the RTT measured on the testbed with the smallest request (as
`bench.runtime`); the adaptive edge of part 2 uses the same model.

Memory stress (as the reference's stressed edge): `--mem-limit` adds a memory axis, each value a limit
of the edge's memory cgroup (cgroup v1 RAM and RAM + swap; `none`: no limit), and `--mem-stress S`
puts a hog holding S of the limit beside the edge in that group (`devices.memhog`: page by page writes
in a loop at idle priority, started again at each limit and after an OOM kill). Per condition the
report adds the edge worker's peak RSS, the group's peak, the hog's RSS, OOM kills, failcnt, major
faults and refaults (`runtime.testbed`'s `memory_report`). The best partition is then per (CPU quota,
memory limit, rate); "adaptive" is the frontier scheme the adaptive runtime would run at that rate (its
latency model knows neither the CPU share nor the memory) and its latency lost against the best.

Separate hosts: `--server HOST:PORT` runs the edge side here against a `runtime.cloud` elsewhere
(`--tls-ca`, `--token-file`, `--token`, `--timeout` as `runtime.edge` takes them). Then there are no
namespaces and no tc shaping by us: the link is what it is, measured by the edge client's probe
(`EdgeClient.probe`, 5 times) and used as the one rate of the grid and of the latency model; the CPU
quota and memory axes still apply here; `--profile fresh` profiles the edge only (the cloud's rows
stay as stored); part 2 (a rate step) is not run. In both modes a measurement (one scheme, warmup + n
requests) that fails (a cloud lost or unreachable, no reply within `--timeout`, a worker that died) is
done again with a new edge worker up to `--retries` times (`bench.retrying`); retried and failed
attempts are counted in the output, and a measurement still failing is exit 3, one line.

Part 2, the adaptive runtime: the edge runs `Adapter` over the frontier (the search's optimum on
a log grid of 0.125..8 Mbps, accuracy loss `--accuracy-loss`) with its bandwidth estimate; after
`--step-at` requests the link rate steps from `--step 2 0.5` (first to second, `tc qdisc
change`). Pass: within 3 requests of the step it runs (for good) the frontier scheme the
latency model finds best at the new rate, and in each phase (before the step; after the switch) its mean latency is
within 10 % of the best fixed frontier scheme measured at that phase's rate.
Writes bench/out/adaptivity.png.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from apps import DEFAULT_APP, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from compress.scheme import Scheme
from reports.figure import OUT, check_plot_path, no_data, save_figure
from runtime.edge import Connection, add_connection_args, connection_of


@dataclass(frozen=True)
class GridConfig:
    """Part 1's grid: every edge memory limit in `mem_limits` (bytes; None: no limit; with a hog holding
    `mem_stress` of it) x edge CPU share in `quotas` x link rate in `rates` (Mbps), each scheme `warmup` +
    `n` sequential one-image requests, a failed measurement done again up to `retries` times."""

    quotas: tuple[float, ...] = (0.0625, 0.125, 0.5)
    rates: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    n: int = 10
    warmup: int = 2
    mem_limits: tuple[int | None, ...] = (None,)
    mem_stress: float = 0.0
    retries: int = 2

    def __post_init__(self) -> None:
        from runtime.testbed import check_memory
        if min(self.quotas) <= 0 or min(self.rates) <= 0 or self.n < 1 or self.warmup < 0:
            raise CoInferError("quotas and rates must be positive, --n >= 1, --warmup >= 0")
        if self.retries < 0:
            raise CoInferError(f"--retries must be >= 0, got {self.retries}")
        if not self.mem_limits:
            raise CoInferError("--mem-limit needs at least one size (or none)")
        limits = [m for m in self.mem_limits if m is not None]
        check_memory(limits[0] if limits else None, self.mem_stress)
        for m in limits:
            check_memory(m, self.mem_stress)

    @property
    def memory(self) -> bool:
        """Whether the edge runs in a memory group (some limit given)."""
        return any(m is not None for m in self.mem_limits)


def grid_sweep(app, model, tb, measure, schemes: list[str], grid: GridConfig, frontier) -> list[dict]:
    """Part 1 on the testbed `tb` through `measure` (a `bench.retrying.RetryingWorker`): per condition of
    `grid`, each scheme's measured mean latency, the latency model's prediction (edge times scaled to the
    share), both bests, what the adaptive runtime runs there (`Adapter` over `frontier` at the rate) and
    the edge's memory (`Testbed.memory_report`; None without a memory limit)."""
    from cli.progress import progress
    from runtime.advisor import Adapter
    rows = []
    limit: object = object()  # the memory limit now: none set yet
    cells = [(m, q) for m in grid.mem_limits for q in grid.quotas]
    for mem, q in progress(cells, desc="memory x quota", unit="cell"):
        if grid.memory and mem != limit:
            tb.set_memory_limit(mem)  # the hog again at its share of the new limit
            limit = mem
        measure.set_edge_speed(q)
        for rate in grid.rates:
            if tb.mode != "remote":  # a cloud elsewhere: the link is what it is
                tb.set_rate(rate)
            mark = tb.memory_mark(measure.pid)
            runs = {s: measure.run(s, grid.n, grid.warmup) for s in schemes}
            memory = tb.memory_report(mark, measure.pid)
            measured = {s: statistics.fmean(x["total_s"] for x in runs[s]) for s in schemes}
            scale = (app.edge.speed or q) / q  # the profile's edge times were taken at the app's quota
            predicted = {}
            for s in schemes:
                bd = model.breakdown(Scheme.parse(s), rate)
                predicted[s] = bd.edge * scale + bd.transfer + bd.cloud
            rows.append({"quota": q, "mem_limit": mem, "rate_mbps": rate, "measured_s": measured,
                         "predicted_s": predicted, "best": min(measured, key=measured.get),
                         "model_best": min(predicted, key=predicted.get),
                         "adaptive": str(Adapter(model, frontier).choose(rate)), "memory": memory})
    return rows


def adaptive_lost(rows: list[dict]) -> dict | None:
    """The latency the adaptive runtime's choice loses against the best measured scheme: mean and max over
    the conditions, and in how many it ran the best."""
    lost = [r["measured_s"][r["adaptive"]] / r["measured_s"][r["best"]] - 1 for r in rows if "adaptive" in r]
    if not lost:
        return None
    return {"mean_lost": float(np.mean(lost)), "max_lost": float(np.max(lost)),
            "best_in": sum(r["adaptive"] == r["best"] for r in rows), "conditions": len(lost)}


def fixed_regret(rows: list[dict]) -> dict[str, dict]:
    """For the scheme best in each condition, kept in every condition: mean / max extra latency vs best."""
    out = {}
    for best in dict.fromkeys(r["best"] for r in rows):
        lost = [r["measured_s"][best] / r["measured_s"][r["best"]] - 1 for r in rows]
        out[best] = {"mean_lost": float(np.mean(lost)), "max_lost": float(np.max(lost)),
                     "best_in": sum(r["best"] == best for r in rows)}
    return out


@dataclass(frozen=True)
class StepConfig:
    """Part 2's run: `n` requests with the link stepping from `step[0]` to `step[1]` Mbps before request
    `step_at`; the adapter keeps the top-1 loss within `accuracy_loss` and reads the latency model from
    `storage` with the testbed's measured `rtt_s`."""

    step: tuple[float, float] = (2.0, 0.5)
    step_at: int = 20
    n: int = 45
    accuracy_loss: float = 0.01
    storage: str | None = None
    rtt_s: float = 0.0

    def __post_init__(self) -> None:
        if self.step_at < 4 or self.n <= self.step_at or min(self.step) <= 0:
            raise CoInferError("--step rates must be positive, --step-at >= 4 and below --adapt-n")


def adaptive_run(tb, worker, frontier_schemes: list[str], target: str, config: StepConfig) -> dict:
    """`target`: what the adapter should run after the step (the model's best frontier scheme there)."""
    step, step_at, n = config.step, config.step_at, config.n
    tb.set_rate(step[0])
    fixed = {}
    for phase, rate in enumerate(step):
        tb.set_rate(rate)
        runs = worker.run(frontier_schemes, 15, 3)
        fixed[phase] = {s: statistics.fmean(x["total_s"] for x in runs[s]) for s in frontier_schemes}
    tb.set_rate(step[0])
    frontier = [Scheme.parse(s).to_json() for s in frontier_schemes]
    worker.send({"op": "adapt", "n": n, "frontier": frontier, "storage": config.storage,
                 "accuracy_loss": config.accuracy_loss, "initial_mbps": None, "pause_at": step_at,
                 "rtt_s": config.rtt_s})
    trace = []
    while True:
        msg = worker.read()
        if msg.get("done"):
            switches, link = msg["switches"], msg.get("link")
            break
        if "paused" in msg:  # between request step_at - 1 and step_at: the step
            tb.set_rate(step[1])
            worker.send({"op": "go"})
            continue
        trace.append(msg)
    before = [t for t in trace if t["i"] < step_at]
    after = [t for t in trace if t["i"] >= step_at]
    # the first request from which the adapter runs the target for good (it may already have been on it)
    settled = next((t["i"] for k, t in enumerate(after) if all(u["scheme"] == target for u in after[k:])), None)
    best = {ph: min(fixed[ph], key=fixed[ph].get) for ph in (0, 1)}
    phase0 = statistics.fmean(t["total_s"] for t in before[3:])  # after the first probe / pick
    phase1 = statistics.fmean(t["total_s"] for t in trace if t["i"] >= (settled if settled is not None else step_at))
    return {
        "step": list(step), "step_at": step_at, "trace": trace, "switches": switches, "fixed_mean_s": fixed,
        "best_fixed": best, "target": target, "pre_step_scheme": before[-1]["scheme"], "switched_at": settled,
        "switch_delay": None if settled is None else settled - step_at + 1,
        "phase_mean_s": [phase0, phase1],
        "phase_vs_best": [phase0 / fixed[0][best[0]] - 1, phase1 / fixed[1][best[1]] - 1],
        "switch_ok": settled is not None and settled - step_at + 1 <= 3,
        "link": link,  # the edge's probes: how many, why, bytes and share of the link's capacity
    }


def mem_label(limit: int | None) -> str:
    """A memory limit as the table and the heat-map print it."""
    return "none" if limit is None else f"{limit / 2**20:g}M"


def lost_text(r: dict, scheme: str) -> str:
    return f"{(r['measured_s'][scheme] / r['measured_s'][r['best']] - 1) * 100:.0f}%"


def plot(rows: list[dict], adaptive: dict | None, path: Path) -> None:
    """The heat-map of the best scheme per (CPU quota, memory limit) row x rate column, with the adaptive
    runtime's choice and its loss where it is not the best; part 2's trace beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2 if adaptive else 1, figsize=(13 if adaptive else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    ax.set_title("best scheme per condition (measured mean latency)")
    if not rows:
        no_data(ax, "grid not run (--skip-grid)")
    else:
        memory = any(r.get("mem_limit") is not None for r in rows)
        conditions = list(dict.fromkeys((r["quota"], r.get("mem_limit")) for r in rows))
        rates = list(dict.fromkeys(r["rate_mbps"] for r in rows))
        cell = {(r["quota"], r.get("mem_limit"), r["rate_mbps"]): r for r in rows}
        names = list(dict.fromkeys(r["best"] for r in rows))
        grid = np.array([[names.index(cell[(q, m, b)]["best"]) for b in rates] for q, m in conditions])
        ax.imshow(grid, cmap="tab10", vmin=0, vmax=9, aspect="auto")
        for i, (q, m) in enumerate(conditions):
            for j, b in enumerate(rates):
                r = cell[(q, m, b)]
                pick = r.get("adaptive", r["model_best"])
                ax.text(j, i, f"{r['best']}\n{r['measured_s'][r['best']] * 1e3:.1f} ms"
                        + ("" if pick == r["best"] else f"\nadaptive: {pick} +{lost_text(r, pick)}"),
                        ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(rates)), [f"{b:.3g}" for b in rates])
        ax.set_yticks(range(len(conditions)), [f"{q:g} / {mem_label(m)}" if memory else f"{q:g}"
                                               for q, m in conditions])
        ax.set_xlabel("edge -> cloud rate (Mbps)")
        ax.set_ylabel("edge CPU quota (CPUs) / memory limit" if memory else "edge CPU quota (CPUs)")
    if adaptive:
        ax = axes[0][1]
        tr = adaptive["trace"]
        ax.plot([t["i"] for t in tr], [t["total_s"] * 1e3 for t in tr], ".-", label="adaptive: latency (ms)")
        ax2 = ax.twinx()
        ax2.plot([t["i"] for t in tr], [t["estimate"] for t in tr], "g--", label="estimate (Mbps)")
        ax2.set_ylabel("bandwidth estimate (Mbps)")
        ax.axvline(adaptive["step_at"] - 0.5, color="r", label=f"rate {adaptive['step'][0]:g} -> "
                   f"{adaptive['step'][1]:g} Mbps")
        for t in tr:
            if t["i"] and t["scheme"] != tr[t["i"] - 1]["scheme"]:
                ax.annotate(t["scheme"], (t["i"], t["total_s"] * 1e3), fontsize=7)
        ax.set_xlabel("request")
        ax.set_ylabel("latency (ms)")
        handles, labels = ax.get_legend_handles_labels()
        handles2, labels2 = ax2.get_legend_handles_labels()  # the twin axis's line: in the same legend
        ax.legend(handles + handles2, labels + labels2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
                  fontsize=7, frameon=False)
        ax.set_title("adaptive mode under a rate step")
    save_figure(fig, path)


@dataclass(frozen=True)
class AdaptivityConfig:
    """The whole benchmark (module docstring): part 1's `grid` (skipped with `skip_grid`), part 2's
    `step` (its storage and RTT are filled in by the run), the link shaping, where the latency model's
    profile comes from (`profile`: fresh or stored), the database and the PNG; `server` HOST:PORT: a cloud
    elsewhere, reached as `connection` says (`runtime.edge.Connection`: token, TLS CA, timeout)."""

    app: str = DEFAULT_APP
    grid: GridConfig = GridConfig()
    step: StepConfig = StepConfig()
    link: str = "paced"
    skip_grid: bool = False
    profile: str = "fresh"
    storage: str | None = None
    out: str = str(OUT / "adaptivity.png")
    server: str | None = None
    connection: Connection = Connection()


def run_adaptivity(config: AdaptivityConfig) -> dict:
    """Run both parts on one testbed (part 1 only with a cloud elsewhere) and write the PNG; the result is
    what --json prints and `report` reads."""
    app = load_app(config.app)
    from bench.freshprofile import reprofile, snapshot
    from bench.retrying import RetryingWorker
    from bench.runtime import calibration_scheme, measured_rtt
    from database.storage import Storage
    from database.store import Store
    from runtime.advisor import Adapter, SchemeAdvisor
    from runtime.edgeworker import EdgeWorker
    from runtime.testbed import Testbed, TestbedConfig
    from search.latency import LatencyModel
    storage = Storage.parse(config.storage)
    stored = SchemeAdvisor(app, storage)
    points = [f"{pt.index},{pt.channels},8" for pt in stored.model.points]
    quota = app.edge.speed or 0.125
    calib = calibration_scheme(app)
    tmp = tempfile.TemporaryDirectory(prefix="coinfer-bench-")
    edge = app.edge.with_speed(quota)
    step, grid, remote = config.step, config.grid, config.server is not None
    first_limit = next((m for m in grid.mem_limits if m is not None), None)
    tb_config = TestbedConfig(None if remote else step.step[0], edge, cloud_args=["--no-finetuned"],
                              link=config.link, start_cloud=not remote, server=config.server,
                              mem_limit=first_limit, mem_stress=grid.mem_stress)
    link = None
    with Testbed(app.name, tb_config) as tb, RetryingWorker(
            lambda: EdgeWorker(tb, [calib, *points, "all-edge", "all-cloud"], app.name, finetuned=False,
                               connection=config.connection), tb, grid.retries) as measure:
        if config.profile == "fresh":  # every row again now, next to the runs (see bench.freshprofile)
            store = snapshot(Store(storage, create=False), Path(tmp.name) / "profile.sqlite")
            reprofile(store, app, quota if tb.edge.dilated else None, tb, cloud=not remote)
            storage = store.storage
        planner = SchemeAdvisor(app, storage)
        if remote:  # the link is not ours: measure it, and use it as the grid's one rate
            link = measure.probe()
            if not link.get("mbps"):
                raise CoInferError(f"the link probe to {config.server} measured no rate")
            grid = replace(grid, rates=(float(link["mbps"]),))
        rate0 = grid.rates[0] if remote else step.step[0]
        rtt = measured_rtt(measure.run(calib, 30, 3), planner.model, rate0)
        model = LatencyModel.from_store(planner.store, app, rtt_s=rtt)
        frontier = planner.frontier(step.accuracy_loss)
        frontier_schemes = [str(s) for s in frontier.candidates]
        schemes = list(dict.fromkeys([*points, "all-edge", "all-cloud", *frontier_schemes]))
        rows = [] if config.skip_grid else grid_sweep(app, model, tb, measure, schemes, grid, frontier)
        adaptive = None
        if not remote:  # part 2 steps the link's rate: only on our own shaped link
            measure.set_edge_speed(quota)
            target = str(Adapter(model, frontier).choose(step.step[1]))
            adaptive = adaptive_run(tb, measure.worker, frontier_schemes, target,
                                    replace(step, storage=storage.url, rtt_s=rtt))
        mode, notes = tb.mode, list(tb.notes)
        if remote:
            notes.append("part 2 (a rate step) not run: the link to a cloud elsewhere is not shaped by us")
    plot(rows, adaptive, Path(config.out))
    return {"app": app.name, "mode": mode, "notes": notes, "link": "as it is" if remote else config.link,
            "server": config.server, "link_probe": link, "n": grid.n, "warmup": grid.warmup,
            "profile": config.profile, "rtt_s": rtt,
            "quotas": list(grid.quotas), "rates": list(grid.rates), "mem_limits": list(grid.mem_limits),
            "mem_stress": grid.mem_stress, "accuracy_loss": step.accuracy_loss,
            "schemes": schemes, "frontier_schemes": frontier_schemes,
            "frontier": [[g, str(s)] for g, s in zip(frontier.grid, frontier.schemes)],
            "grid": rows, "fixed_regret": fixed_regret(rows) if rows else {}, "adaptive_lost": adaptive_lost(rows),
            "adaptive": adaptive, "retries": {"limit": grid.retries, "retried": measure.retried,
                                               "failed": measure.failed},
            "plot": config.out}


def mem_limit_arg(text: str) -> int | None:
    """A `--mem-limit` value: a size (512M, 1G, bytes) or `none` (no limit, no hog)."""
    from devices.memlimit import parse_size
    return None if text.strip().lower() == "none" else parse_size(text)


def parse_args(argv: list[str] | None) -> tuple[AdaptivityConfig, bool, str | None]:
    """The command line as (config, --json, --replay FILE); bad values raise CoInferError here, before
    any testbed."""
    ap = ArgParser(prog="python -m bench.adaptivity", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--quotas", type=float, nargs="+", default=[0.0625, 0.125, 0.5])
    ap.add_argument("--rates", type=float, nargs="+", default=None,
                    help="link rates, Mbps (default 0.25 0.5 1 2 4; not with --server: the link is measured)")
    ap.add_argument("--mem-limit", type=mem_limit_arg, nargs="+", default=[None], metavar="SIZE",
                    help="the memory axis: limits of the edge's memory cgroup (512M, 1G, bytes; none: no limit); "
                         "default: none, and no memory group")
    ap.add_argument("--mem-stress", type=float, default=0.0, metavar="SHARE",
                    help="a hog beside the edge holding this share of each --mem-limit, in [0, 1) (devices.memhog)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--retries", type=int, default=2,
                    help="a failed or timed-out measurement is done again this many times (default %(default)s)")
    ap.add_argument("--accuracy-loss", type=float, default=0.01)
    ap.add_argument("--step", type=float, nargs=2, default=[2.0, 0.5])
    ap.add_argument("--step-at", type=int, default=20)
    ap.add_argument("--adapt-n", type=int, default=45)
    ap.add_argument("--link", choices=["tbf", "paced"], default="paced")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--profile", choices=["fresh", "stored"], default="fresh",
                    help="fresh: the model from every row profiled again at the start (default); stored: as stored")
    ap.add_argument("--server", default=None, metavar="HOST:PORT",
                    help="a runtime.cloud elsewhere: the edge runs here against it, no namespaces, no shaping")
    add_connection_args(ap)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--out", default=str(OUT / "adaptivity.png"), help="the PNG (default: %(default)s)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--replay", help="print the report of a saved --json output and exit")
    args = ap.parse_args(argv)
    if args.replay:
        return AdaptivityConfig(), args.json, args.replay
    from database.storage import Storage
    from runtime.edge import parse_server
    check_plot_path(args.out, Storage.parse(args.storage).files)
    if args.server is not None:
        parse_server(args.server)
        if args.rates is not None:
            raise CoInferError("--rates: with --server the link is not shaped by us; its rate is measured")
    elif args.tls_ca or args.token or args.token_file:
        raise CoInferError("--tls-ca, --token and --token-file go with --server (the testbed's cloud has neither)")
    connection = connection_of(args)
    grid = GridConfig(tuple(args.quotas), tuple(args.rates or [0.25, 0.5, 1.0, 2.0, 4.0]), args.n, args.warmup,
                      tuple(args.mem_limit), args.mem_stress, args.retries)
    step = StepConfig(tuple(args.step), args.step_at, args.adapt_n, args.accuracy_loss)
    return (AdaptivityConfig(args.app, grid, step, args.link, args.skip_grid, args.profile, args.storage, args.out,
                             args.server, connection), args.json, None)


def main(argv: list[str] | None = None) -> int:
    config, as_json, replay = parse_args(argv)
    if replay:
        from cli.files import read_json
        data = read_json(replay, "--replay file")
        try:
            print(report(data))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CoInferError(f"cannot replay {replay}: {type(exc).__name__} {str(exc)[:80]}") from None
        return 0
    data = run_adaptivity(config)
    print(json.dumps(data) if as_json else report(data))
    return 0


def report(d: dict) -> str:
    """The text report of a run (also from a saved --json output: --replay FILE)."""
    remote = d.get("server") is not None
    mem_limits = d.get("mem_limits", [None])
    memory = any(m is not None for m in mem_limits)
    where = (f"edge here, cloud at {d['server']} (no namespaces, no tc shaping by us)" if remote
             else f"testbed {d['mode']} (link {d['link']})")
    out = [f"How: app {d['app']}, {where}; {len(d['schemes'])} schemes (every point "
           f"at full channels and 8 bits, all-edge, all-cloud, the frontier's {len(d['frontier_schemes'])}) x "
           f"{len(d['quotas'])} edge CPU quotas x {len(mem_limits)} memory limits x {len(d['rates'])} rates, "
           f"{d['warmup']} + {d['n']} sequential one-image requests each, pruned base weights; best = lowest measured "
           "mean latency; model best = the latency model with edge times scaled by (profiled quota / quota), "
           + ("every row profiled again at the start" if d.get("profile") == "fresh" else "the stored profile")
           + (" (the edge's; the remote cloud's as stored)" if remote and d.get("profile") == "fresh" else "")
           + (f", RTT {d['rtt_s'] * 1e3:.2f} ms measured with the smallest request" if "rtt_s" in d else "")
           + "; adaptive = the frontier scheme the adaptive runtime runs at the rate (it knows neither quota nor "
           "memory)."]
    if remote and d.get("link_probe"):
        out.append(f"link: {d['link_probe']['mbps']:.3g} Mbps, floor {d['link_probe']['floor_s'] * 1e3:.2f} ms, "
                   "measured by the edge client's probe (a HELLO round trip and an all-cloud request of 16 blank "
                   "images, 5 times): the grid's one rate")
    if memory:
        out.append(f"memory: the edge's cgroup v1 memory group limited to each of "
                   f"{', '.join(mem_label(m) for m in mem_limits)} (RAM and RAM + swap), a hog holding "
                   f"{d['mem_stress']:g} of the limit beside it (page by page writes in a loop, idle priority)")
    out += [f"note: {n}" for n in d["notes"]]
    out.append(f"frontier (accuracy loss <= {d['accuracy_loss']:g}): " + ", ".join(f"{g:.3g}->{s}"
                                                                                  for g, s in d["frontier"]))
    if d["grid"]:
        out.append(f"\n{'quota':>7} {'memory':>7} {'Mbps':>6}  {'best (measured)':<16} {'ms':>7}  {'model best':<12} "
                   f"{'its ms':>7} {'lost':>5}  {'adaptive':<12} {'its ms':>7} {'lost':>5}")
        for r in d["grid"]:
            m = r["measured_s"]
            pick = r.get("adaptive", r["model_best"])
            out.append(f"{r['quota']:>7g} {mem_label(r.get('mem_limit')):>7} {r['rate_mbps']:>6.3g}  "
                       f"{r['best']:<16} {m[r['best']] * 1e3:>7.2f}  {r['model_best']:<12} "
                       f"{m[r['model_best']] * 1e3:>7.2f} {lost_text(r, r['model_best']):>5}  {pick:<12} "
                       f"{m[pick] * 1e3:>7.2f} {lost_text(r, pick):>5}")
        if memory:
            out.append(f"\nmemory per condition (MiB; counters over the condition's runs)\n{'quota':>7} {'memory':>7} "
                       f"{'Mbps':>6} {'edge peak RSS':>13} {'group peak':>10} {'hog RSS':>8} {'hog':>5} "
                       f"{'OOM kills':>9} {'failcnt':>7} {'maj faults':>10} {'refaults':>8}")
            mib = 2**20
            for r in d["grid"]:
                mm = r["memory"]
                out.append(f"{r['quota']:>7g} {mem_label(r.get('mem_limit')):>7} {r['rate_mbps']:>6.3g} "
                           f"{(mm['edge_peak_rss'] or 0) / mib:>13.0f} {mm['group_peak'] / mib:>10.0f} "
                           f"{mm['hog_rss'] / mib:>8.0f} {'alive' if mm['hog_alive'] else '-':>5} "
                           f"{'?' if mm['oom_kills'] is None else mm['oom_kills']:>9} {mm['failcnt']:>7} "
                           f"{mm['majfaults']:>10} {mm['refaults']:>8}")
        lost = d.get("adaptive_lost")
        if lost:
            out.append(f"\nadaptive runtime: ran the best scheme in {lost['best_in']} of {lost['conditions']} "
                       f"conditions; latency lost vs the best: mean {lost['mean_lost'] * 100:.0f} %, "
                       f"max {lost['max_lost'] * 100:.0f} %")
        out.append(f"\nkept fixed everywhere (latency lost vs the best per condition)\n"
                   f"{'scheme':<14} {'best in':>7} {'mean lost':>10} {'max lost':>9}")
        for s, v in d["fixed_regret"].items():
            out.append(f"{s:<14} {v['best_in']:>7} {v['mean_lost'] * 100:>9.0f}% {v['max_lost'] * 100:>8.0f}%")
    if "retries" in d:
        r = d["retries"]
        out.append(f"\nmeasurements retried: {r['retried']} ({r['failed']} failed attempts; up to {r['limit']} "
                   "retries each)")
    a = d["adaptive"]
    if a is None:
        out.append("\nadaptive (part 2): not run" + (" (a cloud elsewhere: the link is not ours to step)"
                                                     if remote else ""))
    else:
        out += adaptive_report(a)
    if d.get("plot"):
        out.append(f"plot: {d['plot']}")
    return "\n".join(out)


def adaptive_report(a: dict) -> list[str]:
    """Part 2's lines of the report."""
    out = []
    fixed = {int(k): v for k, v in a["fixed_mean_s"].items()}
    out.append(f"\nadaptive: rate {a['step'][0]:g} -> {a['step'][1]:g} Mbps before request {a['step_at']} "
               f"(of {len(a['trace'])}); fixed frontier schemes (mean ms) before: "
               + ", ".join(f"{s} {v * 1e3:.1f}" for s, v in fixed[0].items()) + "; after: "
               + ", ".join(f"{s} {v * 1e3:.1f}" for s, v in fixed[1].items()))
    out.append(f"  adapter on {a['pre_step_scheme']} at the step; on the model's best at {a['step'][1]:g} Mbps, "
               f"{a['target']}, for good from request {a['switched_at']} (request {a['switch_delay']} after the "
               f"step; within 3: {a['switch_ok']})")
    best = {int(k): v for k, v in a["best_fixed"].items()}
    out.append("  phase means: " + ", ".join(f"{m * 1e3:.2f} ms ({dv * 100:+.0f} % vs best fixed {b})"
                                             for m, dv, b in zip(a["phase_mean_s"], a["phase_vs_best"],
                                                                 (best[0], best[1]))))
    out.append("  switches: " + ("; ".join(f"before #{i} -> {s} at {m:.3f} Mbps" for i, s, m in a["switches"])
                                 or "none"))
    if a.get("link"):
        from runtime.monitor import describe_probes
        out.append("  " + describe_probes(a["link"]))
    return out


if __name__ == "__main__":
    run_cli(main)
