"""What the databases hold: per app, schemes evaluated / space size, base accuracy, devices.

    python -m reports.show [--app A] [--json]
    python -m reports.show --app A --plot FILE.png --bandwidth B [--accuracy-loss E | --latency R]
    python -m reports.show --app A --layers [--latency-profile EDGE,CLOUD] [--json]

A device profiled on one side only (an edge machine, a cloud server, an imported paper profile)
is listed with the role it can play in `--latency-profile EDGE,CLOUD`. Devices imported with the
paper's formula (`optcoinfer-paper`) count no compute for all-cloud: the paper's all-cloud is the
transfer only, and that is what is said instead of a 0 ms figure. `--plot` draws the scheme space
(reports/space_plot.py). Each device says where its profiles were measured (`profiles` in --json:
per side the machine, when, and whether measured here, imported, or read from the device row of a
database older than provenance). `--layers` is the per-layer report (reports/layers.py): each
partition point's operations, output shape and bytes, and the edge and cloud time of cutting there,
from the stored profile (and where it was measured) or, without one, from the device's latency
predictor, marked which.
database older than provenance). A protocol whose schemes were measured more than once (imported search
logs: database/replicates.py) says how many, their pooled standard deviation and the `--tolerance` that
spread suggests (`replicates` in --json: each repeated scheme's count, mean and std).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from apps import DEFAULT_APP, available_apps, load_app
from cli.args import ArgParser
from cli.errors import CoInferError, mask_url
from cli.run import run_cli
from devices.spec import parse_device_pair

PAPER_FORMULA = "optcoinfer-paper"  # search.latency.PAPER_FORMULA (not imported: it loads torch)


def summary(store, app_name: str) -> dict:
    from models.build import app_points
    app = load_app(app_name)
    points = app_points(app)
    space = sum(p.channels for p in points) * 8
    devices = {}
    predicted = store.predicted(app.name)
    for name, sides in sorted(store.profiled_devices(app.name).items()):
        notes = (store.device(name) or {}).get("notes", "")
        profiles = store.provenance(app.name, name)
        info = next(iter(profiles.values()))["fingerprint"]  # what it was measured on (the edge side's if they differ)
        rows = store.latency_rows(app.name, name)
        whole = {r.side: r.median_s for r in rows if (r.side, r.point) in (("edge", len(points)), ("cloud", -1))}
        devices[name] = {"sides": sorted(sides), "rows": len(rows), "speed": info.get("speed"),
                         "emulation": info.get("emulation") if info.get("speed") else None,
                         "cpu_model": info.get("cpu_model"), "gpu": info.get("gpu"),
                         "formula": info.get("formula"), "whole_model_s": whole, "notes": notes,
                         "role": role(sorted(sides)), "predicted": sorted(predicted.get(name, set()) & sides),
                         "profiles": {side: provenance_json(prov) for side, prov in profiles.items()}}
    protocols = [dict({"protocol": proto, "evaluated": n, "space": space, "base_top1": store.base(app.name, proto)},
                      **replicates_json(store.replicate_stats(app.name, proto), n))
                 for proto, n in store.protocols(app.name)]
    return {"app": app.name, "space": space, "points": len(points), "protocols": protocols,
            "devices": devices}


def replicates_json(stats: dict, evaluated: int) -> dict:
    """What the replicates of one protocol's table say (database/replicates.py): measurements (a scheme without
    replicates counts once), schemes measured more than once, the pooled standard deviation, the tolerance it
    suggests, and each repeated scheme's count, mean and standard deviation."""
    from database.replicates import spread_summary
    out = spread_summary(stats)
    out["measurements"] += evaluated - len(stats)
    out["replicates"] = [dict(scheme=str(s), **r.to_json()) for s, r in stats.items() if r.n > 1]
    return out


def provenance_json(prov: dict) -> dict:
    """Where one side of a profile was measured: the machine in words, when, how it came, the fingerprint."""
    from devices.fingerprint import describe_machine
    return {"machine": describe_machine(prov["fingerprint"]), "measured_at": prov["measured_at"],
            "source": prov["source"], "fingerprint": prov["fingerprint"]}


def measured_on(profiles: dict) -> str:
    """'measured on AMD EPYC, 2 CPUs (2026-11-23T19:16:24)', per side where the sides differ."""
    def one(p: dict) -> str:
        when = f" ({p['measured_at']})" if p["measured_at"] else ""
        return f"{p['machine']}{when}" + (", imported" if p["source"] == "imported" else "")
    texts = {side: one(p) for side, p in profiles.items()}
    if len(set(texts.values())) == 1:
        return f"measured on {next(iter(texts.values()))}"
    return "measured on " + "; ".join(f"{side}: {text}" for side, text in texts.items())


def role(sides: list[str]) -> str:
    """What a device can be in `--latency-profile EDGE,CLOUD`, from the sides it was profiled on."""
    if sides == ["edge"]:
        return "edge only: use it as EDGE in --latency-profile EDGE,CLOUD"
    if sides == ["cloud"]:
        return "cloud only: use it as CLOUD in --latency-profile EDGE,CLOUD"
    return "edge or cloud"


def whole_model(d: dict) -> str:
    parts = []
    for side, seconds in sorted(d["whole_model_s"].items()):
        if side == "cloud" and d["formula"] == PAPER_FORMULA:
            parts.append("all-cloud compute not counted (the paper's formula: transfer only)")
        else:
            parts.append(f"whole model on {side} side {seconds * 1e3:.2f} ms")
    return ", ".join(parts)


def _parser() -> ArgParser:
    ap = ArgParser(description="Show what the accuracy and latency databases hold, or plot the "
                                 "scheme space of an app.")
    ap.add_argument("--app", default=None, help=f"one app (default: all; with --plot: {DEFAULT_APP})")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                    help="draw latency against accuracy of every stored scheme at --bandwidth")
    ap.add_argument("-bandwidth", "--bandwidth", dest="bandwidth", type=float, default=None,
                    help="--plot: Mbps (1 Mbps = 2^20 bit/s)")
    bound = ap.add_mutually_exclusive_group()
    bound.add_argument("-accuracy_loss", "--accuracy-loss", dest="accuracy_loss", type=float, default=None,
                       help="--plot: mark the fastest scheme within this top-1 loss (fraction)")
    bound.add_argument("-latency", "--latency", dest="latency", type=float, default=None,
                       help="--plot: mark the most accurate scheme within this ratio of the best single end")
    ap.add_argument("--layers", action="store_true",
                    help="per partition point of --app: kind, output shape and bytes, edge and cloud time")
    ap.add_argument("--latency-profile", default=None, metavar="EDGE,CLOUD",
                    help="--plot, --layers: the devices (default: the app's)")
    return ap


def describe(result: list[dict], url: str) -> list[str]:
    """The text of `summary` for each app: the lines `reports.show` prints."""
    lines = [f"database: {mask_url(url)}"]
    for s in result:
        lines.append(f"\napp {s['app']}: {s['points']} partition points, {s['space']} split schemes")
        if not s["protocols"]:
            lines.append("  accuracy: nothing evaluated")
        for p in s["protocols"]:
            base = f"{p['base_top1']:.4f}" if p["base_top1"] is not None else "unknown"
            lines.append(f"  accuracy [{p['protocol']}]: {p['evaluated']}/{p['space']} schemes evaluated "
                         f"({100 * p['evaluated'] / p['space']:.1f} %), base top-1 {base}")
            if p["repeated"]:
                lines.append(f"    replicates: {p['repeated']} schemes measured 2-{p['max_replicates']} times "
                             f"({p['measurements']} measurements), the table holds their means; pooled std "
                             f"{p['replicate_std']:.4f}: replicate spread suggests --tolerance "
                             f"{p['suggested_tolerance']:.4f}")
        if not s["devices"]:
            lines.append("  latency: no device profiled")
        for name, d in s["devices"].items():
            slowed = {"dilate": "slowed to", "quota": "CPU quota"}.get(d["emulation"])
            what = d["formula"] or f"{d['cpu_model']}" + (f", {slowed} {d['speed']:g}" if slowed else "")
            pred = f", predicted: {'+'.join(d['predicted'])} (database.predictor)" if d["predicted"] else ""
            lines.append(f"  latency [{name}]: {'+'.join(d['sides'])}, {d['rows']} rows ({what}{pred}); "
                         f"{whole_model(d)}")
            lines.append(f"    {measured_on(d['profiles'])}")
            if len(d["sides"]) == 1:
                lines.append(f"    {d['role']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from database.storage import Storage
    from database.store import Store
    storage = Storage.parse(args.storage)
    if args.plot is not None:
        from reports.figure import check_plot_path
        check_plot_path(args.plot, (*storage.files, load_app(args.app or DEFAULT_APP).source))
    if args.layers and (args.plot is not None or not args.app):
        raise CoInferError("--layers needs --app A (and goes without --plot)")
    if args.latency_profile is not None and args.plot is None and not args.layers:
        raise CoInferError("--latency-profile goes with --plot or --layers")
    store = Store(storage, create=False, readonly=True)
    if args.plot is not None:
        return plot(store, args)
    if args.layers:
        from reports.layers import layer_report
        report = layer_report(store, load_app(args.app), *parse_device_pair(args.latency_profile))
        print(json.dumps(report.to_json(), indent=1) if args.json else "\n".join(report.lines()))
        return 0
    if args.bandwidth is not None or args.accuracy_loss is not None or args.latency is not None:
        raise CoInferError("--bandwidth, --accuracy-loss and --latency go with --plot")
    result = [summary(store, a) for a in ([args.app] if args.app else available_apps())]
    print(json.dumps(result, indent=1) if args.json else "\n".join(describe(result, store.url)))
    return 0


def plot(store, args: argparse.Namespace) -> int:
    """`--plot`: the app's stored schemes under its (or the given) latency model."""
    from reports.space_plot import PlotQuery, plot_space
    from search.bounds import DEFAULT_TOLERANCE
    from search.evaluators import DatabaseEvaluator
    from search.latency import LatencyModel
    if args.bandwidth is None or not args.bandwidth > 0:
        raise CoInferError("--plot needs --bandwidth B > 0 (Mbps)")
    app = load_app(args.app or DEFAULT_APP)
    edge, cloud = parse_device_pair(args.latency_profile)
    model = LatencyModel.from_store(store, app, edge, cloud)
    evaluator = DatabaseEvaluator(app, store)
    table, base = evaluator.known(), evaluator.base_accuracy()
    if not table or base is None:
        raise CoInferError(f"the accuracy database holds no schemes (or no base accuracy) of {app.name} for protocol "
                           f"{app.protocol.name}: nothing to plot")
    path = plot_space(app, model, table, base, PlotQuery(args.bandwidth, args.accuracy_loss, args.latency),
                      args.plot, DEFAULT_TOLERANCE)
    print(f"{len(table)} schemes of {app.name} at {args.bandwidth:g} Mbps -> {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
