"""Predicted (latency model) vs measured latency of the runtime on the testbed.

    python -m bench.runtime [--app vgg16_digits] [--rates 0.5 1 2] [--n 60] [--link paced|tbf] [--json]

For each rate the search picks the optimal scheme (latency query, `-accuracy_loss`, CoInfer's
sampler over the accuracy database, answering from what is stored); the set of those schemes
plus all-edge and all-cloud is then run at every rate on the testbed (`runtime.testbed`: edge and
cloud in two network namespaces, the edge -> cloud link shaped by tc tbf, by default `paced` so a
message waits bytes / rate as on a serialising link; the edge slowed to the app's edge device by
its emulation, `dilate` by default; loopback + token bucket without root). One long-lived edge
process (`runtime.edgeworker`) loads every scheme's fine-tuned weights, connects and warms up at
full speed, then slows down. Per rate, `--rounds` times: the rows these schemes need are profiled
again (`bench.freshprofile`, each stage idling before it as long as in the request cycle), then
each scheme runs its share of `--n` one-image requests back to back (after `--warmup`): this
machine's speed drifts by tens of % over minutes, so model and runtime are measured side by side.

Measured: wall time per request on the edge (head start to reply), its median and p90, and the
request frame's size. Predicted: `LatencyModel.breakdown(scheme, rate)` from the latency database
with one term measured on this testbed at this rate: RTT, the median transfer time of the smallest
request the app can make (the deepest point, 1 channel, 1 bit) less its serialisation. Error =
|measured median - predicted| / measured median per scheme, with the per-stage medians (edge =
head + quantise/pack, transfer = round trip minus the cloud's own unpack + compute, cloud) next to
the model's, so a miss can be traced to its stage. Wire bytes: the request frame (48-byte header +
body) against the model's bytes. Target: error <= 10 % per scheme, frame <= model bytes + 64.
Drift: a fixed workload (`database.noise.reference_workload`) is timed on the cloud CPU before each
round and at the end; drift = upper / lower quartile - 1 of those times. Band: the lowest and
highest of the rounds' predictions widened by that drift, the confidence a profile can give on a
machine whose speed moved that much; the table counts the measured medians inside it.
Writes bench/out/runtime.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from apps import DEFAULT_APP, EMULATIONS, load_app
from apps.schema import Device
from bench.freshprofile import idle_before, pinned, reprofile, snapshot
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from compress.scheme import Scheme
from reports.figure import OUT, check_plot_path, fitted_title, save_figure

if TYPE_CHECKING:
    from apps import App
    from database.storage import Storage

TARGET_ERROR = 0.10
WIRE_SLACK = 64


def prepare_weights(app, schemes: list[str]) -> None:
    """Fine-tune (or load) every split scheme here, unthrottled, before the edge needs it."""
    from runtime.weights import scheme_model
    for s in schemes:
        scheme = Scheme.parse(s)
        if scheme.is_split:
            scheme_model(app, scheme, train=True)  # what the benchmark measures: made here when missing


def p90(xs: list[float]) -> float:
    return float(np.percentile(xs, 90))


def calibration_scheme(app) -> str:
    """The smallest request the app can make: the deepest point, one channel, one bit."""
    from models.build import app_points
    return f"{len(app_points(app)) - 1},1,1"


def measured_rtt(rows: list[dict], model, rate: float) -> float:
    """The latency model's size-independent term for this testbed: the median transfer time (round trip
    less the cloud's own unpack + compute) of the smallest request, less its serialisation at the rate.
    It holds what no byte count explains: the client's and server's protocol stacks, the server's
    hand-off to its compute thread, and the paced link's token offset."""
    from apps.units import bytes_per_second
    transfer = statistics.median(r["transfer_s"] for r in rows)
    frame = statistics.median(r["bytes_up"] for r in rows)
    return transfer - model.transport_bytes(frame) / bytes_per_second(rate)


def mean_breakdown(bds: list):
    from search.latency import Breakdown
    return Breakdown(*(statistics.fmean(getattr(b, f) for b in bds) for f in ("edge", "transfer", "cloud", "bytes",
                                                                              "wire")))


@dataclass(frozen=True)
class MeasureConfig:
    """How `measure` runs: the link `rates` (Mbps); per scheme and rate `n` measured requests after `warmup`,
    in `rounds` (each after profiling again when `fresh`); the testbed's `edge` device (its speed and emulation;
    speed None: full speed), `link` (tbf | paced) and `keep_warm`; `storage`: the database."""

    rates: tuple[float, ...] = (0.5, 1.0, 2.0)
    n: int = 60
    warmup: int = 5
    rounds: int = 3
    edge: Device | None = None  # None: the app's edge device
    link: str = "paced"
    keep_warm: bool = True
    fresh: bool = True
    storage: Storage | None = None  # None: the shipped database

    def __post_init__(self) -> None:
        if self.n < 1 or not self.rates or any(r <= 0 for r in self.rates) or not 1 <= self.rounds <= self.n:
            raise CoInferError("--n must be >= 1, rates positive, --rounds in 1..n")


def measure(app, schemes: list[str], config: MeasureConfig) -> list[dict]:
    from database.noise import reference_workload
    from database.store import Store
    from runtime.edgeworker import EdgeWorker
    from runtime.testbed import Testbed, TestbedConfig
    from search.latency import LatencyModel
    rates, n, warmup, rounds, link = config.rates, config.n, config.warmup, config.rounds, config.link
    edge = config.edge or app.edge
    quota, emulation = edge.speed, edge.emulation
    stored = Store(config.storage, create=False)
    fresh = config.fresh and emulation == "dilate"  # a quota'd edge is profiled by `database.profile` in its cgroup
    tmp = tempfile.TemporaryDirectory(prefix="coinfer-bench-")
    calib = calibration_scheme(app)
    points = {k.p for k in map(Scheme.parse, [calib, *schemes]) if k.is_split}
    rows = []
    reference = []  # a fixed workload's seconds on the cloud CPU, before each round and at the end
    for rate in rates:
        with Testbed(app.name, TestbedConfig(rate, edge, link=link, keep_warm=config.keep_warm)) as tb, \
                EdgeWorker(tb, [calib, *schemes], app.name) as worker:
            store = snapshot(stored, Path(tmp.name) / f"profile-{rate:g}.sqlite") if fresh else stored
            # `rounds` x (profile again, then n / rounds requests of every scheme): model and runtime side
            # by side within seconds; the prediction is the mean of the rounds' models
            models, runs = [], {s: [] for s in [calib, *schemes]}
            idle = idle_before(LatencyModel.from_store(stored, app), [Scheme.parse(s) for s in [calib, *schemes]], rate)
            for k in range(rounds):
                with pinned(tb.cloud_cpu):
                    reference.append(reference_workload())
                if fresh:
                    reprofile(store, app, quota, tb, points, runs=max(5, 30 // rounds), idle_s=idle)
                models.append(LatencyModel.from_store(store, app))
                part = worker.run([calib, *schemes], n // rounds + (k < n % rounds), warmup if k == 0 else 1)
                for s, r in part.items():
                    runs[s] += r
            with pinned(tb.cloud_cpu):
                reference.append(reference_workload())
            rtt = measured_rtt(runs[calib], models[0], rate)
            for m in models:
                m.rtt_s = rtt
            for s in schemes:
                r = runs[s]
                per_round = [m.breakdown(Scheme.parse(s), rate) for m in models]
                bd = mean_breakdown(per_round)
                total = [x["total_s"] for x in r]
                med = statistics.median(total)
                frame = statistics.median(x["bytes_up"] for x in r) if s != "all-edge" else 0
                rows.append({
                    "rate_mbps": rate, "scheme": s, "mode": tb.mode, "link": link, "notes": tb.notes,
                    "rtt_s": rtt, "fresh_profile": fresh,
                    "predicted_s": bd.total, "round_predicted_s": [b.total for b in per_round],
                    "median_s": med, "p90_s": p90(total),
                    "mean_s": statistics.fmean(total), "error": abs(med - bd.total) / med,
                    "error_mean": abs(statistics.fmean(total) - bd.total) / statistics.fmean(total),
                    "stage_median_s": {
                        "edge": statistics.median(x["edge_s"] + x["pack_s"] for x in r),
                        "transfer": statistics.median(x["transfer_s"] for x in r),
                        "cloud": statistics.median(x["cloud_unpack_s"] + x["cloud_compute_s"] for x in r)},
                    "stage_predicted_s": {"edge": bd.edge, "transfer": bd.transfer, "cloud": bd.cloud},
                    "frame_bytes": frame, "model_bytes": bd.bytes, "wire_bytes": bd.wire,
                    "wire_ok": s == "all-edge" or frame <= bd.bytes + WIRE_SLACK,
                })
    q1, _, q3 = statistics.quantiles(reference, n=4)
    drift = q3 / q1 - 1  # interquartile: one preempted probe does not make the band
    for r in rows:
        r["reference_s"], r["drift"] = reference, drift
        r["band_s"] = band(r["round_predicted_s"], drift)
        r["in_band"] = r["band_s"][0] <= r["median_s"] <= r["band_s"][1]
    return rows


def band(totals: list[float], drift: float) -> tuple[float, float]:
    """The prediction's confidence band: the lowest and highest of the rounds' predicted totals, widened by the
    machine's drift over the run (upper / lower quartile of a fixed workload's time, less 1) in either direction:
    a profile measured at one end of that drift predicts a runtime met at the other end only to within it."""
    return min(totals) / (1 + drift), max(totals) * (1 + drift)


def format_table(rows: list[dict]) -> str:
    head = (f"{'Mbps':>5} {'scheme':<10} {'pred ms':>8} {'med ms':>8} {'p90 ms':>8} {'err':>6} {'mean ms':>8} "
            f"{'err':>5}  "
            f"{'edge p/m':>11} {'xfer p/m':>11} {'cloud p/m':>11}  {'frame B':>7} {'model B':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        sp, sm = r["stage_predicted_s"], r["stage_median_s"]
        edge, xfer, cloud = (f"{sp[k] * 1e3:5.1f}/{sm[k] * 1e3:<5.1f}" for k in ("edge", "transfer", "cloud"))
        flag = "" if r["error"] <= TARGET_ERROR else " *"
        lines.append(f"{r['rate_mbps']:>5g} {r['scheme']:<10} {r['predicted_s'] * 1e3:>8.2f} "
                     f"{r['median_s'] * 1e3:>8.2f} {r['p90_s'] * 1e3:>8.2f} {r['error'] * 100:>5.0f}% "
                     f"{r['mean_s'] * 1e3:>8.2f} {r['error_mean'] * 100:>4.0f}%  "
                     f"{edge:>11} {xfer:>11} {cloud:>11}  {r['frame_bytes']:>7.0f} {r['model_bytes']:>7.0f}{flag}")
    ok = sum(r["error"] <= TARGET_ERROR for r in rows)
    wire = all(r["wire_ok"] for r in rows)
    ok_mean = sum(r["error_mean"] <= TARGET_ERROR for r in rows)
    ref = rows[0]["reference_s"]
    lines.append("fixed workload (database.noise.reference_workload, cloud CPU) before each round and at the end: "
                 + ", ".join(f"{x * 1e3:.2f}" for x in ref) + f" ms -> drift {rows[0]['drift']:.0%} (q3/q1 - 1); "
                 f"measured median inside the drift-widened band of the rounds' predictions: "
                 f"{sum(r['in_band'] for r in rows)}/{len(rows)}")
    lines.append(f"median: {ok}/{len(rows)} within {TARGET_ERROR:.0%} (* = missed); mean: {ok_mean}/{len(rows)}; "
                 f"frames <= model bytes + {WIRE_SLACK}: "
                 f"{'yes' if wire else 'NO'}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rates = sorted({r["rate_mbps"] for r in rows})
    fig, axes = plt.subplots(1, len(rates), figsize=(4.5 * len(rates), 4), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        sub = [r for r in rows if r["rate_mbps"] == rate]
        x = np.arange(len(sub))
        ax.bar(x - 0.2, [r["predicted_s"] * 1e3 for r in sub], 0.4, label="predicted (model)")
        ax.bar(x + 0.2, [r["median_s"] * 1e3 for r in sub], 0.4, label="measured median",
               yerr=[[0] * len(sub), [(r["p90_s"] - r["median_s"]) * 1e3 for r in sub]], capsize=3)
        ax.set_xticks(x, [r["scheme"] for r in sub], rotation=30)
        ax.set_title(f"{rate:g} Mbps")
        ax.set_ylabel("latency per request (ms)")
    axes[0][0].legend(fontsize=8)
    fitted_title(fig, f"runtime on the testbed ({rows[0]['mode']}, link {rows[0]['link']}): predicted vs measured "
                      "(bar: median, whisker: p90)")
    save_figure(fig, path)


@dataclass(frozen=True)
class RuntimeBenchConfig:
    """The benchmark (module docstring): the app, the searches' accuracy loss, how to measure, the PNG."""

    app: App
    accuracy_loss: float = 0.01
    measure: MeasureConfig = MeasureConfig()
    out: str = str(OUT / "runtime.png")


@dataclass(frozen=True)
class RuntimeBenchResult:
    config: RuntimeBenchConfig
    optimal: dict[float, str]  # rate (Mbps) -> the search's optimum there
    rows: list[dict]  # per rate and scheme (`measure`), with optimal_at_rate

    def to_json(self) -> dict:
        return {"optimal": {str(k): v for k, v in self.optimal.items()}, "rows": self.rows}

    def lines(self) -> list[str]:
        config, m, rows = self.config, self.config.measure, self.rows
        app = config.app
        out = [f"How: app {app.name}; schemes = the search's optimum (accuracy loss <= {config.accuracy_loss:g}) at "
               + ", ".join(f"{r:g} Mbps -> {s}" for r, s in self.optimal.items()) + ", plus all-edge and all-cloud; "
               f"{m.warmup} + {m.n} sequential one-image requests each per rate on the testbed "
               f"({rows[0]['mode']}, link {m.link}, edge at {m.edge.speed} of this CPU by {m.edge.emulation}); "
               f"predicted = LatencyModel.breakdown with RTT = the median transfer of the smallest request "
               f"({calibration_scheme(app)}) on that testbed less its serialisation; edge and cloud times from "
               + (f"rows profiled again {m.rounds} times per rate, each time followed by 1/{m.rounds} of the "
                  "requests (--profile fresh; prediction = mean of those models); " if rows[0]["fresh_profile"]
                  else "the stored latency database; ")
               + "stage columns are predicted/measured medians (ms)."]
        for rate in m.rates:
            r = next(r for r in rows if r["rate_mbps"] == rate)
            out.append(f"  {rate:g} Mbps: RTT {r['rtt_s'] * 1e3:.2f} ms")
        out += [f"note: {note}" for note in rows[0]["notes"]]
        out.append(format_table(rows))
        out.append(f"plot: {config.out}")
        return out


def run_runtime(config: RuntimeBenchConfig) -> RuntimeBenchResult:
    """Search the optimum at each rate, measure those schemes plus all-edge and all-cloud at every rate on
    the testbed, and write the PNG."""
    from runtime.advisor import SchemeAdvisor
    app, m = config.app, config.measure
    planner = SchemeAdvisor(app, m.storage)
    optimal = {rate: str(planner.best(rate, config.accuracy_loss)) for rate in m.rates}
    schemes = list(dict.fromkeys([*optimal.values(), "all-edge", "all-cloud"]))
    prepare_weights(app, [*schemes, calibration_scheme(app)])
    rows = measure(app, schemes, m)
    for r in rows:
        r["optimal_at_rate"] = optimal[r["rate_mbps"]] == r["scheme"]
    plot(rows, Path(config.out))
    return RuntimeBenchResult(config, optimal, rows)


def parse_args(argv: list[str] | None) -> tuple[RuntimeBenchConfig, bool]:
    """The command line as (config, --json), its app loaded and its values checked before any work."""
    ap = ArgParser(prog="python -m bench.runtime", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="link rates (Mbps)")
    ap.add_argument("--accuracy-loss", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=60, help="measured requests per scheme and rate")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3,
                    help="with --profile fresh: alternate profiling and measuring this many times per rate")
    ap.add_argument("--speed", type=float, default=None, help="the edge's speed, a fraction of this CPU "
                    "(default: the app's edge device's)")
    ap.add_argument("--emulation", choices=EMULATIONS, default=None,
                    help="how the edge is slowed: dilate or quota (default: the app's; see devices.slowdown)")
    ap.add_argument("--link", choices=["tbf", "paced"], default="paced",
                    help="tbf: tc tbf alone; paced: tbf kept busy by low-priority filler (see runtime.testbed)")
    ap.add_argument("--keep-warm", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the CPUs out of idle during the runs (devices.slowdown.KeepWarm; as the profiler)")
    ap.add_argument("--profile", choices=["fresh", "stored"], default="fresh",
                    help="fresh: predict from rows profiled again next to each rate's run (default); "
                         "stored: from the database as it is")
    ap.add_argument("--storage", default=None, help="database URL (latency model + accuracies)")
    ap.add_argument("--out", default=str(OUT / "runtime.png"), help="the PNG (default: %(default)s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    app = load_app(args.app)
    from database.storage import Storage
    from devices.spec import with_flags
    storage = Storage.parse(args.storage)
    check_plot_path(args.out, storage.files)
    edge = with_flags(app.edge, None, args.speed, args.emulation)
    measure_config = MeasureConfig(tuple(args.rates), args.n, args.warmup, args.rounds, edge, args.link,
                                   args.keep_warm, args.profile == "fresh", storage)
    return RuntimeBenchConfig(app, args.accuracy_loss, measure_config, args.out), args.json


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    result = run_runtime(config)
    print(json.dumps(result.to_json()) if as_json else "\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    run_cli(main)
