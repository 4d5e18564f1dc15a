"""Adaptivity: the best partition under changing edge CPU and link rate, and the adaptive runtime.

    python -m bench.adaptivity [--quotas 0.0625 0.125 0.5] [--rates 0.25 0.5 1 2 4] [--n 10] [--json]

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


@dataclass(frozen=True)
class GridConfig:
    """Part 1's grid: every edge CPU share in `quotas` x link rate in `rates` (Mbps), each scheme
    `warmup` + `n` sequential one-image requests."""

    quotas: tuple[float, ...] = (0.0625, 0.125, 0.5)
    rates: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    n: int = 10
    warmup: int = 2

    def __post_init__(self) -> None:
        if min(self.quotas) <= 0 or min(self.rates) <= 0 or self.n < 1:
            raise CoInferError("quotas and rates must be positive, --n >= 1")


def grid_sweep(app, model, tb, worker, schemes: list[str], grid: GridConfig) -> list[dict]:
    """Part 1 on the testbed `tb` through `worker`: per condition of `grid`, each scheme's measured
    mean latency, the latency model's prediction (edge times scaled to the share), and both bests."""
    from cli.progress import progress
    rows = []
    for q in progress(grid.quotas, desc="quotas", unit="quota"):
        worker.set_edge_speed(tb, q)
        for rate in grid.rates:
            tb.set_rate(rate)
            runs = worker.run(schemes, grid.n, grid.warmup)
            measured = {s: statistics.fmean(x["total_s"] for x in runs[s]) for s in schemes}
            scale = (app.edge.speed or q) / q  # the profile's edge times were taken at the app's quota
            predicted = {}
            for s in schemes:
                bd = model.breakdown(Scheme.parse(s), rate)
                predicted[s] = bd.edge * scale + bd.transfer + bd.cloud
            rows.append({"quota": q, "rate_mbps": rate, "measured_s": measured, "predicted_s": predicted,
                         "best": min(measured, key=measured.get), "model_best": min(predicted, key=predicted.get)})
    return rows


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


def plot(rows: list[dict], quotas: list[float], rates: list[float], adaptive: dict | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2 if adaptive else 1, figsize=(13 if adaptive else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    ax.set_title("best scheme per condition (measured mean latency)")
    if not rows:
        no_data(ax, "grid not run (--skip-grid)")
    else:
        names = list(dict.fromkeys(r["best"] for r in rows))
        grid = np.array([[names.index(next(r["best"] for r in rows if r["quota"] == q and r["rate_mbps"] == b))
                          for b in rates] for q in quotas])
        ax.imshow(grid, cmap="tab10", vmin=0, vmax=9, aspect="auto")
        for i, q in enumerate(quotas):
            for j, b in enumerate(rates):
                r = next(r for r in rows if r["quota"] == q and r["rate_mbps"] == b)
                ax.text(j, i, f"{r['best']}\n{r['measured_s'][r['best']] * 1e3:.1f} ms"
                        + ("" if r["model_best"] == r["best"] else f"\nmodel: {r['model_best']}"),
                        ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(rates)), [f"{b:g}" for b in rates])
        ax.set_yticks(range(len(quotas)), [f"{q:g}" for q in quotas])
        ax.set_xlabel("edge -> cloud rate (Mbps)")
        ax.set_ylabel("edge CPU quota (CPUs)")
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
    profile comes from (`profile`: fresh or stored), the database and the PNG."""

    app: str = DEFAULT_APP
    grid: GridConfig = GridConfig()
    step: StepConfig = StepConfig()
    link: str = "paced"
    skip_grid: bool = False
    profile: str = "fresh"
    storage: str | None = None
    out: str = str(OUT / "adaptivity.png")


def run_adaptivity(config: AdaptivityConfig) -> dict:
    """Run both parts on one testbed and write the PNG; the result is what --json prints and
    `report` reads."""
    app = load_app(config.app)
    from bench.freshprofile import reprofile, snapshot
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
    step = config.step
    with Testbed(app.name, TestbedConfig(step.step[0], edge, cloud_args=["--no-finetuned"], link=config.link)) as tb, \
            EdgeWorker(tb, [calib, *points, "all-edge", "all-cloud"], app.name, finetuned=False) as worker:
        if config.profile == "fresh":  # every row again now, next to the runs (see bench.freshprofile)
            store = snapshot(Store(storage, create=False), Path(tmp.name) / "profile.sqlite")
            reprofile(store, app, quota if tb.edge.dilated else None, tb)
            storage = store.storage
        planner = SchemeAdvisor(app, storage)
        rtt = measured_rtt(worker.run([calib], 30, 3)[calib], planner.model, step.step[0])
        model = LatencyModel.from_store(planner.store, app, rtt_s=rtt)
        frontier = planner.frontier(step.accuracy_loss)
        frontier_schemes = [str(s) for s in frontier.candidates]
        schemes = list(dict.fromkeys([*points, "all-edge", "all-cloud", *frontier_schemes]))
        rows = [] if config.skip_grid else grid_sweep(app, model, tb, worker, schemes, config.grid)
        worker.set_edge_speed(tb, quota)
        target = str(Adapter(model, frontier).choose(step.step[1]))
        adaptive = adaptive_run(tb, worker, frontier_schemes, target, replace(step, storage=storage.url, rtt_s=rtt))
        mode, notes = tb.mode, tb.notes
    grid = config.grid
    plot(rows, list(grid.quotas), list(grid.rates), adaptive, Path(config.out))
    return {"app": app.name, "mode": mode, "notes": notes, "link": config.link, "n": grid.n, "warmup": grid.warmup,
            "profile": config.profile, "rtt_s": rtt,
            "quotas": list(grid.quotas), "rates": list(grid.rates), "accuracy_loss": step.accuracy_loss,
            "schemes": schemes, "frontier_schemes": frontier_schemes,
            "frontier": [[g, str(s)] for g, s in zip(frontier.grid, frontier.schemes)],
            "grid": rows, "fixed_regret": fixed_regret(rows) if rows else {}, "adaptive": adaptive,
            "plot": config.out}


def parse_args(argv: list[str] | None) -> tuple[AdaptivityConfig, bool, str | None]:
    """The command line as (config, --json, --replay FILE); bad values raise CoInferError here, before
    any testbed."""
    ap = ArgParser(prog="python -m bench.adaptivity", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--quotas", type=float, nargs="+", default=[0.0625, 0.125, 0.5])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--accuracy-loss", type=float, default=0.01)
    ap.add_argument("--step", type=float, nargs=2, default=[2.0, 0.5])
    ap.add_argument("--step-at", type=int, default=20)
    ap.add_argument("--adapt-n", type=int, default=45)
    ap.add_argument("--link", choices=["tbf", "paced"], default="paced")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--profile", choices=["fresh", "stored"], default="fresh",
                    help="fresh: the model from every row profiled again at the start (default); stored: as stored")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--out", default=str(OUT / "adaptivity.png"), help="the PNG (default: %(default)s)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--replay", help="print the report of a saved --json output and exit")
    args = ap.parse_args(argv)
    if args.replay:
        return AdaptivityConfig(), args.json, args.replay
    from database.storage import Storage
    check_plot_path(args.out, Storage.parse(args.storage).files)
    grid = GridConfig(tuple(args.quotas), tuple(args.rates), args.n, args.warmup)
    step = StepConfig(tuple(args.step), args.step_at, args.adapt_n, args.accuracy_loss)
    return (AdaptivityConfig(args.app, grid, step, args.link, args.skip_grid, args.profile, args.storage, args.out),
            args.json, None)


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
    out = [f"How: app {d['app']}, testbed {d['mode']} (link {d['link']}); {len(d['schemes'])} schemes (every point "
           f"at full channels and 8 bits, all-edge, all-cloud, the frontier's {len(d['frontier_schemes'])}) x "
           f"{len(d['quotas'])} edge CPU quotas x {len(d['rates'])} rates, {d['warmup']} + {d['n']} sequential "
           "one-image requests each, pruned base weights; best = lowest measured mean latency; model best = the "
           "latency model with edge times scaled by (profiled quota / quota), "
           + ("every row profiled again at the start" if d.get("profile") == "fresh" else "the stored profile")
           + (f", RTT {d['rtt_s'] * 1e3:.2f} ms measured with the smallest request" if "rtt_s" in d else "") + "."]
    out += [f"note: {n}" for n in d["notes"]]
    out.append(f"frontier (accuracy loss <= {d['accuracy_loss']:g}): " + ", ".join(f"{g:.3g}->{s}"
                                                                                  for g, s in d["frontier"]))
    if d["grid"]:
        out.append(f"\n{'quota':>7} {'Mbps':>5}  {'best (measured)':<16} {'ms':>7}  {'model best':<12} {'its ms':>7}"
                   f"  {'lost':>5}")
        for r in d["grid"]:
            m = r["measured_s"]
            out.append(f"{r['quota']:>7g} {r['rate_mbps']:>5g}  {r['best']:<16} {m[r['best']] * 1e3:>7.2f}  "
                       f"{r['model_best']:<12} {m[r['model_best']] * 1e3:>7.2f}  "
                       f"{(m[r['model_best']] / m[r['best']] - 1) * 100:>4.0f}%")
        out.append(f"\nkept fixed everywhere (latency lost vs the best per condition)\n"
                   f"{'scheme':<14} {'best in':>7} {'mean lost':>10} {'max lost':>9}")
        for s, v in d["fixed_regret"].items():
            out.append(f"{s:<14} {v['best_in']:>7} {v['mean_lost'] * 100:>9.0f}% {v['max_lost'] * 100:>8.0f}%")
    a = d["adaptive"]
    fixed = {int(k): v for k, v in a["fixed_mean_s"].items()}
    out.append(f"\nadaptive: rate {a['step'][0]:g} -> {a['step'][1]:g} Mbps before request {a['step_at']} "
               f"(of {len(a['trace'])}); fixed frontier schemes (mean ms) before: "
               + ", ".join(f"{s} {v * 1e3:.1f}" for s, v in fixed[0].items()) + "; after: "
               + ", ".join(f"{s} {v * 1e3:.1f}" for s, v in fixed[1].items()))
    out.append(f"  adapter on {a['pre_step_scheme']} at the step; on the model's best at {a['step'][1]:g} Mbps, "
               f"{a['target']}, for good from request {a['switched_at']} (request {a['switch_delay']} after the "
               f"step; within 3: {a['switch_ok']})")
    out.append("  phase means: " + ", ".join(
        f"{m * 1e3:.2f} ms ({dv * 100:+.0f} % vs best fixed {b})"
        for m, dv, b in zip(a["phase_mean_s"], a["phase_vs_best"], (a["best_fixed"]["0"] if "0" in a["best_fixed"]
                                                                     else a["best_fixed"][0],
                                                                     a["best_fixed"]["1"] if "1" in a["best_fixed"]
                                                                     else a["best_fixed"][1]))))
    out.append("  switches: " + ("; ".join(f"before #{i} -> {s} at {m:.3f} Mbps" for i, s, m in a["switches"])
                                 or "none"))
    link = a.get("link")
    if link:
        share = link["share_of_link"]
        out.append(f"  probes: {link['probes']} ({', '.join(f'{k} {v}' for k, v in link['by_reason'].items())}), "
                   f"{link['probe_bytes']} bytes = "
                   + (f"{share:.1%}" if share is not None else "?")
                   + f" of the link's estimated capacity over the run (budget {link['budget']['max_share']:.0%}, "
                   f"at least {link['budget']['min_interval_s']:g} s apart); {link['held_back']} held back")
    if d.get("plot"):
        out.append(f"plot: {d['plot']}")
    return "\n".join(out)


if __name__ == "__main__":
    run_cli(main)
