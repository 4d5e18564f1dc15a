"""Predicted (latency model) vs measured latency of the runtime on the testbed.

    python -m bench.runtime [--app vgg16_digits] [--rates 0.5 1 2] [--n 40] [--storage URL] [--json]

For each rate the search picks the optimal scheme (latency query, `-accuracy_loss`, CoInfer's
sampler over the accuracy database, answering from what is stored); the set of those schemes
plus all-edge and all-cloud is then run at every rate on the testbed (`runtime.testbed`: edge and
cloud in two network namespaces, the edge -> cloud link shaped by tc tbf, the edge process under
the app's CPU quota; loopback + token bucket without root). One long-lived edge process
(`bench.edgeworker`) loads every scheme's fine-tuned weights, connects, warms up, and only then
joins the CPU-quota cgroup; each scheme then runs `--warmup` + `--n` sequential requests of one
image each, back to back. Measured: wall time per request on the edge (head start to reply), its
median and p90, and the request frame's size. Predicted: `LatencyModel.breakdown(scheme, rate)`
from the latency database. Error = |measured median - predicted| / measured median per scheme,
with the per-stage medians (edge = head + quantise/pack, transfer = round trip minus the cloud's
own unpack + compute, cloud) next to the model's, so a miss can be traced to its stage. The
mean is shown too: under a CFS quota a request either runs at full speed or stalls for whole
periods (the kernel lets a task overrun its quota and then charges the debt), so per-request
latency is bimodal and the profile's steady-state edge time is a mean, not a median. Wire
bytes: the request frame (48-byte header + body) against the model's bytes. Target: error
<= 10 % per scheme, frame <= model bytes + 64. Writes bench/out/runtime.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from apps import DEFAULT_APP, EDGE_EMULATIONS, load_app
from apps.errors import CoInferError, run_cli
from bench.plots import OUT, save_figure

TARGET_ERROR = 0.10
WIRE_SLACK = 64


def scheme_arg(s) -> tuple[int, int, int] | str:
    """'p,c,b' / 'all-edge' -> the latency model's key."""
    if isinstance(s, str) and "," in s:
        p, c, b = (int(v) for v in s.split(","))
        return p, c, b
    return s


def prepare_weights(app, schemes: list[str]) -> None:
    """Fine-tune (or load) every split scheme here, unthrottled, before the edge needs it."""
    from runtime.weights import scheme_model
    for s in schemes:
        key = scheme_arg(s)
        if isinstance(key, tuple):
            scheme_model(app, *key)


def p90(xs: list[float]) -> float:
    return float(np.percentile(xs, 90))


def measured_rtt(worker, model, rate: float, n: int = 30) -> tuple[float, float]:
    """(RTT, median HELLO round trip): the round trip of an empty frame on this link, less its own
    serialisation at the rate; the latency model's size-independent term for this testbed."""
    from search.latency import bytes_per_second
    seconds, frame = worker.ping(n)
    hello = statistics.median(seconds)
    return max(0.0, hello - model.transport_bytes(frame) / bytes_per_second(rate)), hello


def measure(app, storage: str | None, schemes: list[str], rates: list[float], n: int, warmup: int,
            quota: float | None, link: str, emulation: str) -> list[dict]:
    from bench.edgeworker import EdgeWorker
    from database.store import Store
    from runtime.testbed import Testbed
    from search.latency import LatencyModel
    store = Store(storage, create=False)
    rows = []
    for rate in rates:
        with Testbed(rate, quota, app=app.name, link=link, edge_emulation=emulation) as tb, \
                EdgeWorker(tb, schemes, app.name) as worker:
            rtt, hello = measured_rtt(worker, LatencyModel.from_store(store, app), rate)
            model = LatencyModel.from_store(store, app, rtt_s=rtt)
            runs = worker.run(schemes, n, warmup)
            for s in schemes:
                r = runs[s]
                bd = model.breakdown(scheme_arg(s), rate)
                total = [x["total_s"] for x in r]
                med = statistics.median(total)
                frame = statistics.median(x["bytes_up"] for x in r) if s != "all-edge" else 0
                rows.append({
                    "rate_mbps": rate, "scheme": s, "mode": tb.mode, "link": link, "notes": tb.notes,
                    "rtt_s": rtt, "hello_s": hello,
                    "predicted_s": bd.total, "median_s": med, "p90_s": p90(total),
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
    return rows


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
    axes[0][0].legend()
    fig.suptitle(f"runtime on the testbed ({rows[0]['mode']}, link {rows[0]['link']}): predicted vs measured "
                 "(bar: median, whisker: p90)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.runtime", description=__doc__.splitlines()[0])
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="link rates (Mbps)")
    ap.add_argument("--accuracy-loss", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=40, help="measured requests per scheme and rate")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--edge-cpu", type=float, default=None, help="edge CPU quota (default: the app's)")
    ap.add_argument("--edge-emulation", choices=EDGE_EMULATIONS, default=None,
                    help="how the edge is slowed: dilate or quota (default: the app's; see database.slowdown)")
    ap.add_argument("--link", choices=["tbf", "paced"], default="tbf",
                    help="tbf: tc tbf alone; paced: tbf kept busy by low-priority filler (see runtime.testbed)")
    ap.add_argument("--storage", default=None, help="database URL (latency model + accuracies)")
    ap.add_argument("--out", default=str(OUT / "runtime.png"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.n < 1 or any(r <= 0 for r in args.rates):
        raise CoInferError("--n must be >= 1 and rates positive")
    app = load_app(args.app)
    from runtime.edge import Planner
    planner = Planner(app, args.storage)
    optimal = {rate: str(planner.best(rate, args.accuracy_loss)) for rate in args.rates}
    schemes = list(dict.fromkeys([*optimal.values(), "all-edge", "all-cloud"]))
    prepare_weights(app, schemes)
    quota = args.edge_cpu if args.edge_cpu is not None else app.edge_cpu_quota
    emulation = args.edge_emulation or app.edge_emulation
    rows = measure(app, args.storage, schemes, args.rates, args.n, args.warmup, quota or None, args.link, emulation)
    for r in rows:
        r["optimal_at_rate"] = optimal[r["rate_mbps"]] == r["scheme"]
    plot(rows, Path(args.out))
    if args.json:
        print(json.dumps({"optimal": {str(k): v for k, v in optimal.items()}, "rows": rows}))
        return 0
    print(f"How: app {app.name}; schemes = the search's optimum (accuracy loss <= {args.accuracy_loss:g}) at "
          + ", ".join(f"{r:g} Mbps -> {s}" for r, s in optimal.items()) + ", plus all-edge and all-cloud; "
          f"each run {args.warmup} + {args.n} sequential one-image requests per rate on the testbed "
          f"({rows[0]['mode']}, link {args.link}, edge at {quota} of this CPU by {emulation}); predicted = "
          "LatencyModel.breakdown with RTT = the median HELLO round trip on that testbed less its serialisation; "
          "stage columns are predicted/measured medians (ms).")
    for rate in args.rates:
        r = next(r for r in rows if r["rate_mbps"] == rate)
        print(f"  {rate:g} Mbps: HELLO round trip {r['hello_s'] * 1e3:.2f} ms -> RTT {r['rtt_s'] * 1e3:.2f} ms")
    for note in rows[0]["notes"]:
        print(f"note: {note}")
    print(format_table(rows))
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
