"""Import/export accuracy tables: the Opt-CoInfer text format and CSV.

Opt-CoInfer text: one scheme a line, `p+c-b*top1_error` (e.g. `3+12-4*0.1623`), partition
index 0..12 over the 13 conv layers; the base model's error is given separately.
CSV: header `p,c,b,top1` (top1 a fraction); extra columns are ignored.

    python -m database.formats import-optcoinfer FILE --app vgg16_cars --base-error 0.151
    python -m database.formats export-csv OUT.csv --app vgg16_digits

Imports parse and check the whole file before opening the database (every row a pydantic
`database.documents.TableRow`: bounded integers, bits in range, top-1 a finite fraction; every scheme
in the app's space; no scheme twice with different values; at least one scheme), then write the rows and
the base accuracy in one transaction (idempotent: schemes already stored are kept).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from apps import DEFAULT_APP, App, load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.files import check_output, read_text, write_atomic
from cli.run import run_cli
from compress.scheme import BITS, Scheme
from database.documents import TableRow, one_line

Table = dict[Scheme, float]
MAX_TABLE_BYTES = 64 * 2**20  # every scheme of a VGG16 space is about 1.5 MB of CSV
_LINE = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*-\s*(\d+)\s*\*\s*([0-9.eE+-]+)\s*$")


def read_optcoinfer(path: Path) -> Table:
    """{scheme: top1} from an Opt-CoInfer text file (top1 = 1 - error)."""
    table: Table = {}
    lines: dict[Scheme, int] = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise CoInferError(f"{path}:{n}: not an Opt-CoInfer line 'p+c-b*top1_error': {line.strip()[:60]!r}")
        try:
            error = float(m.group(4))
        except ValueError:
            raise CoInferError(f"{path}:{n}: bad top-1 error {m.group(4)!r}") from None
        if not 0 <= error <= 1:
            raise CoInferError(f"{path}:{n}: top-1 error {error} outside [0, 1]")
        _put(table, lines, _row(path, n, m.group(1), m.group(2), m.group(3), 1 - error), path, n)
    return _whole(table, path)


def write_optcoinfer(table: Table, path: Path) -> None:
    """The table as Opt-CoInfer text, one scheme a line in scheme order, written whole or not at all."""
    write_atomic(path, "".join(f"{p}+{c}-{b}*{1 - t:.6f}\n" for (p, c, b), t in sorted(table.items())), "export")


def read_csv(path: Path) -> Table:
    """{scheme: top1} from a CSV with columns p,c,b,top1 (extra columns ignored); a malformed file (a field
    over the csv module's limit of 128 KiB, a NUL byte) is one CoInferError line naming the line."""
    rows = csv.DictReader(_read_text(path).splitlines())
    try:
        return _csv_rows(path, rows)
    except csv.Error as exc:
        raise CoInferError(f"{path}:{rows.reader.line_num}: not a CSV row ({exc})") from None


def _csv_rows(path: Path, rows: csv.DictReader) -> Table:
    table: Table = {}
    lines: dict[Scheme, int] = {}
    missing = {"p", "c", "b", "top1"} - set(rows.fieldnames or [])
    if missing:
        raise CoInferError(f"{path}: CSV header lacks {', '.join(sorted(missing))} (need p,c,b,top1)")
    for n, row in enumerate(rows, 2):
        try:
            top1 = float(row["top1"])
        except (TypeError, ValueError):
            raise CoInferError(f"{path}:{n}: bad CSV row {str(row)[:120]}") from None
        if not 0 <= top1 <= 1:
            raise CoInferError(f"{path}:{n}: top1 {top1} outside [0, 1] (a fraction, not a percentage)")
        _put(table, lines, _row(path, n, row["p"], row["c"], row["b"], top1), path, n)
    return _whole(table, path)


def _row(path: Path, n: int, p: str | None, c: str | None, b: str | None, top1: float) -> TableRow:
    """One line as a validated `TableRow` (bounded integers, bits in range, top-1 a finite fraction)."""
    try:
        return TableRow.model_validate({"p": p, "c": c, "b": b, "top1": top1}, strict=False)
    except ValidationError as exc:
        raise one_line(f"{path}:{n}: bad scheme {str(p)[:20]},{str(c)[:20]},{str(b)[:20]}", exc) from None


def _whole(table: Table, path: Path) -> Table:
    """The table read, refused when it holds no scheme (an empty import is a mistake, not a no-op)."""
    if not table:
        raise CoInferError(f"{path}: no schemes in the table")
    return table


def _put(table: Table, lines: dict[Scheme, int], row: TableRow, path: Path, n: int) -> None:
    """One value per scheme: a repeat with the same value is dropped, a conflicting one is an error."""
    scheme, top1 = Scheme(row.p, row.c, row.b), row.top1
    if scheme in table and table[scheme] != top1:
        raise CoInferError(f"{path}: scheme {scheme} has conflicting values on lines {lines[scheme]} "
                           f"({table[scheme]:.6g}) and {n} ({top1:.6g})")
    table.setdefault(scheme, top1)
    lines.setdefault(scheme, n)


def write_csv(table: Table, path: Path) -> None:
    """The table as CSV (header p,c,b,top1, one scheme a row in scheme order), written whole or not at all."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["p", "c", "b", "top1"])
    for (p, c, b), t in sorted(table.items()):
        w.writerow([p, c, b, f"{t:.6f}"])
    write_atomic(path, f.getvalue(), "export")


def read_table(path: Path) -> Table:
    """CSV when the name ends in .csv, else the Opt-CoInfer text format."""
    return read_csv(path) if str(path).lower().endswith(".csv") else read_optcoinfer(path)


def check_table(table: Table, widths: list[int], where: str) -> None:
    for p, c, b in table:
        if not (0 <= p < len(widths) and 1 <= c <= widths[p] and b in BITS):
            raise CoInferError(f"{where}: scheme {p},{c},{b} is outside the app's space")


def _read_text(path: Path) -> str:
    """The table file's text, read through `cli.files.read_text` (a regular file of at most MAX_TABLE_BYTES)."""
    return read_text(path, "table", MAX_TABLE_BYTES)


@dataclass(frozen=True)
class TableJob:
    """One import or export: `action` (import-optcoinfer, import-csv, export-optcoinfer, export-csv),
    the file, the app, protocol and seed of the rows, the base error to store (imports) and the database."""

    action: str
    path: Path
    app: App
    protocol: str
    seed: int = 0
    base_error: float | None = None
    storage: str | None = None

    @property
    def importing(self) -> bool:
        return self.action.startswith("import")


def parse_args(argv: list[str] | None) -> tuple[TableJob, bool]:
    """The command line as (job, --json); every bad value is one CoInferError line, before any file or database."""
    ap = ArgParser(description="Import/export accuracy tables (Opt-CoInfer text, CSV).")
    ap.add_argument("action", choices=["import-optcoinfer", "import-csv", "export-optcoinfer", "export-csv"])
    ap.add_argument("path", type=Path)
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--protocol", default=None, help="protocol name (default: the app's, or 'optcoinfer-paper')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-error", type=float, default=None, help="base model top-1 error (imports)")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--json", action="store_true", help="print one JSON object: what was imported or exported")
    args = ap.parse_args(argv)
    app = load_app(args.app)
    if args.protocol is not None and not 0 < len(args.protocol) <= 128:
        raise CoInferError("--protocol must be 1..128 characters")
    if not 0 <= args.seed < 2**32:
        raise CoInferError(f"--seed must be in 0..{2**32 - 1}, got {args.seed}")
    if args.action.startswith("import"):
        protocol = args.protocol or ("optcoinfer-paper" if args.action == "import-optcoinfer" else app.protocol.name)
        if args.base_error is not None and not 0 <= args.base_error < 1:
            raise CoInferError("--base-error must be in [0, 1)")
    else:
        protocol = args.protocol or app.protocol.name
    return TableJob(args.action, args.path, app, protocol, args.seed, args.base_error, args.storage), args.json


def import_table(job: TableJob) -> dict:
    """Read and check the whole file, then store its rows (and the base accuracy when given) in one go:
    the counts of schemes read and of new rows."""
    from database.storage import Storage
    from database.store import AccuracyRow, Store  # here: --help needs neither SQLAlchemy nor torch
    from models.build import app_points
    app = job.app
    table = read_optcoinfer(job.path) if job.action == "import-optcoinfer" else read_csv(job.path)
    check_table(table, [p.channels for p in app_points(app)], str(job.path))
    store = Store(Storage.parse(job.storage))
    base = None if job.base_error is None else 1 - job.base_error
    with store.transaction():  # the rows and the base accuracy: all or nothing
        new = store.put_accuracy([AccuracyRow(app.name, job.protocol, p, c, b, job.seed, t, host="import")
                                  for (p, c, b), t in table.items()])
        if base is not None:
            store.put_base(app.name, job.protocol, base, source=f"import {job.path.name}")
    return {"action": job.action, "app": app.name, "protocol": job.protocol, "seed": job.seed,
            "path": str(job.path), "schemes": len(table), "new": new, "base_top1": base}


def export_table(job: TableJob) -> dict:
    """Write the stored table of the job's app, protocol and seed to its file: the count of schemes."""
    from database.storage import Storage
    from database.store import Store
    app = job.app
    storage = Storage.parse(job.storage)
    check_output(job.path, "export", (*storage.files, app.source))
    store = Store(storage, create=False, readonly=True)
    table = store.accuracy_table(app.name, job.protocol, job.seed)
    if not table:
        raise CoInferError(f"no accuracy entries for {app.name} / {job.protocol} / seed {job.seed}")
    (write_optcoinfer if job.action == "export-optcoinfer" else write_csv)(table, job.path)
    return {"action": job.action, "app": app.name, "protocol": job.protocol, "seed": job.seed,
            "path": str(job.path), "schemes": len(table)}


def main(argv: list[str] | None = None) -> int:
    job, as_json = parse_args(argv)
    done = import_table(job) if job.importing else export_table(job)
    if as_json:
        print(json.dumps(done))
    elif job.importing:
        print(f"imported {done['schemes']} schemes ({done['new']} new) into {done['app']} / {done['protocol']}")
    else:
        print(f"exported {done['schemes']} schemes of {done['app']} / {done['protocol']} to {done['path']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
