"""Carry a latency profile between machines as a JSON file, with the device's fingerprint.

    python -m database.profile_io export-profile --device pi-like --app vgg16_digits pi-like.json   # on the edge
    python -m database.profile_io import-profile pi-like.json [--replace]                          # on the server

The file holds the app, the device name, its fingerprint (devices/fingerprint.py, with the
profile's noise), each side's provenance (the fingerprint it was measured on, and when), the
activation shapes and every row (side, point, channels, median, p90, n). Import records each side's
provenance as `imported` (a file without provenance: its fingerprint, measured at an unknown time):
an imported profile is another machine's by nature and is never compared with this one.
Import merges: rows of a side the database lacks for that device are added; a side it already
has is refused with one line naming `--replace` (then that side's old rows are replaced), unless
the file's rows equal the stored ones (importing twice is a no-op). A device profiled on two
machines (edge here, cloud there) keeps the first fingerprint and records the other under
`other_fingerprints`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

from apps import DEFAULT_APP
from apps.schema import check_name
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.files import read_json
from cli.run import run_cli

FORMAT = "coinfer-latency-profile/1"
ROW_KEYS = ("side", "point", "channels", "median_s", "p90_s", "n")


def export_profile(store, app: str, device: str) -> dict:
    """The device's profile of `app` as a JSON-able dict."""
    rows = store.latency_rows(app, device)
    if not rows:
        known = ", ".join(sorted(store.profiled_devices(app))) or "none"
        raise CoInferError(f"no latency profile of device '{device}' for app {app} (profiled: {known})")
    info = store.device(device) or {}
    notes = info.pop("notes", "")
    return {"format": FORMAT, "app": app, "device": device, "fingerprint": info, "notes": notes,
            "provenance": store.provenance(app, device),
            "shapes": [list(s) for s in store.shapes(app)],
            "rows": [{k: getattr(r, k) for k in ROW_KEYS} for r in rows]}


def _provenance(data: dict, side: str) -> tuple[dict, dt.datetime | None]:
    """(fingerprint, measured_at) of one side of a profile file: its `provenance` entry, else (a file written before
    provenance) the file's fingerprint, measured at an unknown time."""
    entry = (data.get("provenance") or {}).get(side)
    if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), dict):
        return dict(data["fingerprint"]), None
    try:
        when = dt.datetime.fromisoformat(entry["measured_at"]) if entry.get("measured_at") else None
    except (TypeError, ValueError):
        when = None
    return dict(entry["fingerprint"]), when


def _good_row(row) -> bool:
    """A row with every key: side edge or cloud, integer point (-1: all-cloud), channels and n, a finite positive
    median and p90 (or null)."""
    def integer(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def seconds(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return (isinstance(row, dict) and not set(ROW_KEYS) - set(row) and row["side"] in ("edge", "cloud")
            and integer(row["point"]) and row["point"] >= -1 and integer(row["channels"]) and row["channels"] >= 0
            and integer(row["n"]) and row["n"] >= 1 and seconds(row["median_s"])
            and (row["p90_s"] is None or seconds(row["p90_s"])))


def read_profile(path: Path) -> dict:
    data = read_json(path, "profile")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CoInferError(f"{path} is not a latency profile ({FORMAT}); write one with export-profile")
    for key in ("app", "device", "fingerprint", "rows"):
        if key not in data:
            raise CoInferError(f"profile {path} lacks '{key}'")
    check_name(data["app"], f"profile {path}: app")
    check_name(data["device"], f"profile {path}: device")
    if not isinstance(data["fingerprint"], dict) or not isinstance(data["rows"], list):
        raise CoInferError(f"profile {path}: fingerprint must be a mapping and rows a list")
    for i, row in enumerate(data["rows"]):
        if not _good_row(row):
            raise CoInferError(f"profile {path}: row {i} must hold {', '.join(ROW_KEYS)} with side edge or cloud, "
                               "integer point, channels and n, and positive finite seconds")
    return data


def import_profile(store, data: dict, replace: bool = False) -> int:
    """Merge a profile (see the module doc); returns the number of rows written."""
    from database.store import LatencyRow
    app, device = data["app"], data["device"]
    new = [LatencyRow(app, device, int(r["point"]), int(r["channels"]), r["side"], float(r["median_s"]),
                      None if r["p90_s"] is None else float(r["p90_s"]), r["n"]) for r in data["rows"]]
    stored = store.latency_rows(app, device)
    sides = sorted({r.side for r in new})
    clash = [s for s in sides if {r for r in stored if r.side == s} not in (set(), {r for r in new if r.side == s})]
    if clash and not replace:
        raise CoInferError(f"device {device} already has a different {'+'.join(clash)} profile of {app}: "
                           "pass --replace to overwrite it, or import under another device name")
    if clash:
        store.delete_latency(app, device, tuple(clash))
    existing = store.device(device)
    fingerprint = dict(data["fingerprint"])
    if existing is not None:
        notes = existing.pop("notes", "")
        others = existing.pop("other_fingerprints", [])
        if existing != fingerprint and fingerprint not in others:
            others.append(fingerprint)
        fingerprint = dict(existing, **({"other_fingerprints": others} if others else {}))
    else:
        notes = data.get("notes", "")
    store.put_device(device, fingerprint, notes)
    if data.get("shapes"):
        store.put_shapes(app, [tuple(s) for s in data["shapes"]])
    store.put_latency(new)
    for side in sides:
        fp, when = _provenance(data, side)
        store.put_provenance(app, device, (side,), fp, "imported", when)
    return len(new)


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m database.profile_io",
                   description="Export / import a device's latency profile as a JSON file.")
    ap.add_argument("action", choices=["export-profile", "import-profile"])
    ap.add_argument("path", type=Path, help="the profile file (written by export-profile, read by import-profile)")
    ap.add_argument("--device", default=None, help="export-profile: the device to export")
    ap.add_argument("--app", default=DEFAULT_APP, help="export-profile: app name or YAML (default: %(default)s)")
    ap.add_argument("--replace", action="store_true", help="import-profile: overwrite a different stored profile")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: database/coinfer.sqlite)")
    ap.add_argument("--json", action="store_true", help="print one JSON object: action, device, app, rows, file")
    args = ap.parse_args(argv)
    from database.storage import Storage
    from database.store import Store
    storage = Storage.parse(args.storage)
    if args.action == "export-profile":
        if not args.device:
            raise CoInferError("export-profile needs --device NAME")
        from apps import load_app
        from cli.files import check_output, write_atomic
        app = load_app(args.app)
        check_output(args.path, "profile", (*storage.files, app.source))
        data = export_profile(Store(storage, create=False), app.name, args.device)
        write_atomic(args.path, json.dumps(data, indent=1) + "\n", "profile")
        done, line = len(data["rows"]), f"{len(data['rows'])} rows of {args.device} ({args.app}) -> {args.path}"
    else:
        data = read_profile(args.path)
        done = import_profile(Store(storage), data, args.replace)
        line = f"{done} rows of {data['device']} ({data['app']}) imported from {args.path}"
    print(json.dumps({"action": args.action, "device": data["device"], "app": data["app"], "rows": done,
                      "path": str(args.path)}) if args.json else line)
    return 0


if __name__ == "__main__":
    run_cli(main)
