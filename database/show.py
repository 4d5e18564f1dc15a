"""What the databases hold: per app, schemes evaluated / space size, base accuracy, devices.

    python -m database.show [--app A] [--json]
"""

from __future__ import annotations

import json

from apps import available_apps, load_app
from apps.errors import ArgParser, mask_url, run_cli
from database.store import Store
from models.build import app_points


def summary(store: Store, app_name: str) -> dict:
    app = load_app(app_name)
    points = app_points(app)
    space = sum(p.channels for p in points) * 8
    devices = {}
    for name, sides in sorted(store.profiled_devices(app.name).items()):
        info = store.device(name) or {}
        rows = store.latency_rows(app.name, name)
        whole = {r.side: r.median_s for r in rows if (r.side, r.point) in (("edge", len(points)), ("cloud", -1))}
        devices[name] = {"sides": sorted(sides), "rows": len(rows), "cpu_quota": info.get("cpu_quota"),
                         "emulation": info.get("emulation", "quota") if info.get("cpu_quota") else None,
                         "cpu_model": info.get("cpu_model"), "gpu": info.get("gpu"),
                         "formula": info.get("formula"), "whole_model_s": whole, "notes": info.get("notes", "")}
    protocols = [{"protocol": proto, "evaluated": n, "space": space, "base_top1": store.base(app.name, proto)}
                 for proto, n in store.protocols(app.name)]
    return {"app": app.name, "space": space, "points": len(points), "protocols": protocols,
            "devices": devices}


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(description="Show what the accuracy and latency databases hold.")
    ap.add_argument("--app", default=None, help="one app (default: all)")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    store = Store(args.storage, create=False, readonly=True)
    apps = [args.app] if args.app else available_apps()
    result = [summary(store, a) for a in apps]
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"database: {mask_url(store.url)}")
    for s in result:
        print(f"\napp {s['app']}: {s['points']} partition points, {s['space']} split schemes")
        if not s["protocols"]:
            print("  accuracy: nothing evaluated")
        for p in s["protocols"]:
            base = f"{p['base_top1']:.4f}" if p["base_top1"] is not None else "unknown"
            print(f"  accuracy [{p['protocol']}]: {p['evaluated']}/{p['space']} schemes evaluated "
                  f"({100 * p['evaluated'] / p['space']:.1f} %), base top-1 {base}")
        if not s["devices"]:
            print("  latency: no device profiled")
        for name, d in s["devices"].items():
            slowed = {"dilate": "slowed to", "quota": "CPU quota"}.get(d["emulation"])
            what = d["formula"] or f"{d['cpu_model']}" + (f", {slowed} {d['cpu_quota']:g}" if slowed else "")
            whole = ", ".join(f"whole model on {k} side {v * 1e3:.2f} ms"
                              for k, v in sorted(d["whole_model_s"].items()))
            print(f"  latency [{name}]: {'+'.join(d['sides'])}, {d['rows']} rows ({what}); {whole}")
    return 0


if __name__ == "__main__":
    run_cli(main)
