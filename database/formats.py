"""Import/export accuracy tables: the Opt-CoInfer text format and CSV.

Opt-CoInfer text: one scheme a line, `p+c-b*top1_error` (e.g. `3+12-4*0.1623`), partition
index 0..12 over the 13 conv layers; the base model's error is given separately.
CSV: header `p,c,b,top1` (top1 a fraction); extra columns are ignored.

    python -m database.formats import-optcoinfer FILE --app vgg16_cars --base-error 0.151
    python -m database.formats export-csv OUT.csv --app vgg16_digits

A scheme listed more than once (Opt-CoInfer's published files are search logs: a scheme the search
visited twice appears twice, with two measured values) has replicates: every line is stored
(database/replicates.py), the table's value is their mean, and `reports.show` gives their count, spread
and the `--tolerance` it suggests. Imports parse and check the whole file before writing anything, then
write in one transaction. A line is one measurement, identified by its text (scheme and value as
written) and how many times that text came before it in its file: importing the same file again adds
nothing, nor do the lines another file copied (the two published files share a 384-line prefix) or a
log that grew (its new lines are added); any other line is a further replicate.
Every line is first a pydantic `database.documents.TableRow` (bounded integers, bits in range, top-1
a finite fraction); every scheme must be in the app's space and a table must hold at least one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Measurement:
    """One line of a table file: a scheme's top-1 (a fraction) measured once, the line it is on, and its
    identity as a replicate (database/replicates.py): `text`, the scheme and the value as written
    (`2,2,8*0.190`), and `occurrence`, how many times that text has appeared in the file up to this line."""

    scheme: Scheme
    top1: float
    line: int
    text: str
    occurrence: int = 1


@dataclass(frozen=True)
class TableFile:
    """A table file as read: its measurements in file order."""

    path: Path
    measurements: tuple[Measurement, ...]

    def table(self) -> Table:
        """{scheme: the mean top1 of its measurements}: a scheme listed several times has replicates."""
        return mean_table(self.measurements)


def mean_table(measurements: Iterable[Measurement]) -> Table:
    values: dict[Scheme, list[float]] = {}
    for m in measurements:
        values.setdefault(m.scheme, []).append(m.top1)
    return {s: math.fsum(v) / len(v) for s, v in values.items()}


def read_optcoinfer_file(path: Path) -> TableFile:
    """An Opt-CoInfer text file (top1 = 1 - error) as published: a search log, where a scheme the search
    visited twice is listed twice, with the value each visit measured (Opt-CoInfer's own reader keeps the
    last; here each is a replicate). Trailing blanks and CRLF line ends are read as they come. A malformed
    line is one CoInferError naming it."""
    out = []
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
        row = _row(path, n, m.group(1), m.group(2), m.group(3), 1 - error)
        scheme = Scheme(row.p, row.c, row.b)
        out.append(Measurement(scheme, row.top1, n, f"{scheme}*{m.group(4)}"))
    return TableFile(path, _counted(_whole(out, path)))


def read_optcoinfer(path: Path) -> Table:
    """{scheme: top1} from an Opt-CoInfer text file, the mean of a scheme's lines."""
    return read_optcoinfer_file(path).table()


def write_optcoinfer(table: Table, path: Path) -> None:
    """The table as Opt-CoInfer text, one scheme a line in scheme order, written whole or not at all."""
    write_atomic(path, "".join(f"{p}+{c}-{b}*{1 - t:.6f}\n" for (p, c, b), t in sorted(table.items())), "export")


def read_csv_file(path: Path) -> TableFile:
    """A CSV with columns p,c,b,top1 (extra columns ignored), a row per measurement (a scheme's rows are its
    replicates); a malformed file (a field over the csv module's limit of 128 KiB, a NUL byte) is one
    CoInferError line naming the line."""
    rows = csv.DictReader(_read_text(path).splitlines())
    try:
        return TableFile(path, _counted(_csv_rows(path, rows)))
    except csv.Error as exc:
        raise CoInferError(f"{path}:{rows.reader.line_num}: not a CSV row ({exc})") from None


def read_csv(path: Path) -> Table:
    """{scheme: top1} from a CSV (see `read_csv_file`), the mean of a scheme's rows."""
    return read_csv_file(path).table()


def _csv_rows(path: Path, rows: csv.DictReader) -> list[Measurement]:
    out = []
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
        valid = _row(path, n, row["p"], row["c"], row["b"], top1)
        scheme = Scheme(valid.p, valid.c, valid.b)
        out.append(Measurement(scheme, valid.top1, n, f"{scheme}*{row['top1'].strip()}"))
    return _whole(out, path)


def _counted(measurements: list[Measurement]) -> tuple[Measurement, ...]:
    """The measurements with each one's occurrence of its text in the file."""
    seen: Counter[str] = Counter()
    out = []
    for m in measurements:
        seen[m.text] += 1
        out.append(replace(m, occurrence=seen[m.text]))
    return tuple(out)


def _row(path: Path, n: int, p: str | None, c: str | None, b: str | None, top1: float) -> TableRow:
    """One line as a validated `TableRow` (bounded integers, bits in range, top-1 a finite fraction)."""
    try:
        return TableRow.model_validate({"p": p, "c": c, "b": b, "top1": top1}, strict=False)
    except ValidationError as exc:
        raise one_line(f"{path}:{n}: bad scheme {str(p)[:20]},{str(c)[:20]},{str(b)[:20]}", exc) from None


def _whole(measurements: list[Measurement], path: Path) -> list[Measurement]:
    """The lines read, refused when there are none (an empty import is a mistake, not a no-op)."""
    if not measurements:
        raise CoInferError(f"{path}: no schemes in the table")
    return measurements


def write_csv(table: Table, path: Path) -> None:
    """The table as CSV (header p,c,b,top1, one scheme a row in scheme order), written whole or not at all."""
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["p", "c", "b", "top1"])
    for (p, c, b), t in sorted(table.items()):
        w.writerow([p, c, b, f"{t:.6f}"])
    write_atomic(path, f.getvalue(), "export")


def read_table(path: Path) -> Table:
    """CSV when the name ends in .csv, else the Opt-CoInfer text format; a scheme's value is its mean."""
    return read_csv(path) if str(path).lower().endswith(".csv") else read_optcoinfer(path)


def check_table(table: Iterable[Scheme], widths: list[int], where: str) -> None:
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
    """Read and check the whole file, then store its lines as replicates and each scheme's mean (and the base
    accuracy when given) in one go: what was read and what was new."""
    from database.storage import Storage
    from database.store import Store  # here: --help needs neither SQLAlchemy nor torch
    from models.build import app_points
    app = job.app
    read = read_optcoinfer_file(job.path) if job.action == "import-optcoinfer" else read_csv_file(job.path)
    table = read.table()
    check_table(table, [p.channels for p in app_points(app)], str(job.path))
    store = Store(Storage.parse(job.storage))
    base = None if job.base_error is None else 1 - job.base_error
    with store.transaction():  # the replicates, the means and the base accuracy: all or nothing
        added, new = store.put_replicates(app.name, job.protocol, job.seed, job.path.name, read.measurements)
        if base is not None:
            store.put_base(app.name, job.protocol, base, source=f"import {job.path.name}")
    return {"action": job.action, "app": app.name, "protocol": job.protocol, "seed": job.seed,
            "path": str(job.path), "schemes": len(table), "new": new, "base_top1": base,
            "measurements": len(read.measurements), "new_measurements": added,
            "repeated": sum(1 for n in Counter(m.scheme for m in read.measurements).values() if n > 1)}


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
        again = "" if done["new_measurements"] else "; this file was imported before"
        print(f"imported {done['measurements']} measurements of {done['schemes']} schemes ({done['repeated']} listed "
              f"more than once) into {done['app']} / {done['protocol']}: {done['new_measurements']} new measurements, "
              f"{done['new']} new schemes{again}")
    else:
        print(f"exported {done['schemes']} schemes of {done['app']} / {done['protocol']} to {done['path']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
