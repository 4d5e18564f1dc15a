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

An import reads and checks the whole file before it opens the database (`database.documents.ProfileDocument`:
bounded integers, finite non-negative seconds, rows of one stage that agree, the points, channels and
shapes of the app's model, the app known here; `--app YAML` for an app outside apps/), then writes it in
one transaction (`Store.transaction`): a refused file, or a refused merge, leaves the database as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

from apps import DEFAULT_APP
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.files import read_json
from cli.run import run_cli
from database.documents import PROFILE_FORMAT as FORMAT
from database.documents import ProfileDocument, parse_profile

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


def read_profile(path: Path, app: str | None = None) -> ProfileDocument:
    """The profile file at `path`, validated whole (`database.documents.ProfileDocument`) and checked against its
    app's model: the app the file names (`app`: that app's name or YAML, which must be the file's app). Every
    problem is one CoInferError line; nothing is written."""
    from apps import load_app
    from models.build import app_points
    doc = parse_profile(read_json(path, "profile"), str(path))
    loaded = load_app(app or doc.app)
    if loaded.name != doc.app:
        raise CoInferError(f"profile {path} is of app {doc.app}, not {loaded.name} (--app)")
    shapes = [(p.index, p.name, p.channels, p.height, p.width) for p in app_points(loaded)]
    doc.check_app(shapes, loaded.in_channels, loaded.num_classes, f"profile {path}")
    return doc


def import_profile(store, doc: ProfileDocument, replace: bool = False) -> int:
    """Merge a validated profile (see the module doc) in one transaction: all of it or nothing. Returns the
    number of rows written."""
    from database.store import LatencyRow
    app, device = doc.app, doc.device
    new = [LatencyRow(app, device, r.point, r.channels, r.side, r.median_s, r.p90_s, r.n) for r in doc.distinct_rows]
    sides = doc.sides
    with store.transaction():
        stored = store.latency_rows(app, device)
        clash = [s for s in sides if {r for r in stored if r.side == s} not in (set(), {r for r in new if r.side == s})]
        if clash and not replace:
            raise CoInferError(f"device {device} already has a different {'+'.join(clash)} profile of {app}: "
                               "pass --replace to overwrite it, or import under another device name")
        if clash:
            store.delete_latency(app, device, tuple(clash))
        existing = store.device(device)
        fingerprint = dict(doc.fingerprint)
        if existing is not None:
            notes = existing.pop("notes", "")
            others = existing.pop("other_fingerprints", [])
            if existing != fingerprint and fingerprint not in others:
                others.append(fingerprint)
            fingerprint = dict(existing, **({"other_fingerprints": others} if others else {}))
        else:
            notes = doc.notes
        store.put_device(device, fingerprint, notes)
        if doc.shapes:
            store.put_shapes(app, [tuple(s) for s in doc.shapes])
        store.put_latency(new)
        for side in sides:
            entry = doc.provenance.get(side)  # a file written before provenance: its fingerprint, time unknown
            fp, when = (dict(entry.fingerprint), entry.when) if entry is not None else (dict(doc.fingerprint), None)
            store.put_provenance(app, device, (side,), fp, "imported", when)
    return len(new)


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m database.profile_io",
                   description="Export / import a device's latency profile as a JSON file.")
    ap.add_argument("action", choices=["export-profile", "import-profile"])
    ap.add_argument("path", type=Path, help="the profile file (written by export-profile, read by import-profile)")
    ap.add_argument("--device", default=None, help="export-profile: the device to export")
    ap.add_argument("--app", default=None, help=f"export-profile: app name or YAML (default: {DEFAULT_APP}); "
                                                "import-profile: the YAML of the file's app (default: its name)")
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
        app = load_app(args.app or DEFAULT_APP)
        check_output(args.path, "profile", (*storage.files, app.source))
        data = export_profile(Store(storage, create=False), app.name, args.device)
        write_atomic(args.path, json.dumps(data, indent=1) + "\n", "profile")
        done, line = len(data["rows"]), f"{len(data['rows'])} rows of {args.device} ({args.app}) -> {args.path}"
    else:
        doc = read_profile(args.path, args.app)  # the whole file checked before the database is opened
        done = import_profile(Store(storage), doc, args.replace)
        data = {"device": doc.device, "app": doc.app}
        line = f"{done} rows of {doc.device} ({doc.app}) imported from {args.path}"
    print(json.dumps({"action": args.action, "device": data["device"], "app": data["app"], "rows": done,
                      "path": str(args.path)}) if args.json else line)
    return 0


if __name__ == "__main__":
    run_cli(main)
