"""The generated bad inputs of bench.badinput: argument errors of every CLI, bad values that parse, bad
files, bad storage URLs, and mutated app YAMLs (every key of the schema with wrong types, out-of-range,
non-finite and oversized values, missing keys, malformed files)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SECRET = "s3cret"  # the password in every URL case: it must never be printed
NAN, INF = float("nan"), float("inf")


UNREACHABLE = "@127.0.0.1:1/"  # a PostgreSQL URL on port 1: no server answers there
CHECKED_BEFORE_CONNECTING = {"bench.zoo"}  # refuses any server URL (it reads an SQLite file) without connecting


@dataclass(frozen=True)
class FileSpec:
    """A file a case puts in its folder before it runs (bench.badinput writes it): `name` relative to the
    folder, and its kind: "bytes" (`data`), "sparse" (`size` bytes of holes), "fifo", "dir", "symlink" (to
    `target`, a name in the folder or a path; "loop" points at itself), "full" (a `size`-byte tmpfs mounted
    there and filled) or "readonly" (a tmpfs mounted read-only); the two mounts need root."""
    name: str
    kind: str = "bytes"
    data: bytes = b""
    size: int = 0
    target: str = ""


@dataclass(frozen=True)
class Case:
    """One bad input: a CLI (module or script) and its argv, with {db} (the case's database copy), {tmp} (its
    folder), {app} (its app YAML) and {repo} placeholders; `app` mutates the default app's YAML (a function
    of the parsed mapping) or is the file's raw text; `files` are more files for its folder; `fast` puts it
    in the test suite's subset; `exit` is the expected status (cli.errors: 2 bad input, 3 a server that
    cannot be reached), or the statuses any of which passes."""
    cli: str
    argv: tuple[str, ...]
    label: str
    app: Callable[[dict], None] | str | bytes | None = None
    fast: bool = False
    exit: int | tuple[int, ...] = 2
    files: tuple[FileSpec, ...] = ()


def _c(cli: str, *argv: str, label: str = "", app=None, fast: bool = False, exit: int | None = None) -> Case:
    """A case; unless `exit` is given, one whose argv names the unreachable database server expects exit 3,
    unless its CLI refuses the URL before connecting."""
    if exit is None:
        exit = 3 if any(UNREACHABLE in a for a in argv) and cli not in CHECKED_BEFORE_CONNECTING else 2
    return Case(cli, tuple(argv), label or " ".join(argv)[:80], app, fast, exit)


CLOSED = "127.0.0.1:1"  # nothing listens on port 1: a server that cannot be reached (exit 3)


PROFILE = ('{{"format": "coinfer-latency-profile/1", "app": "vgg16_digits", "device": "cpu-edge", "fingerprint": {{}}, '
           '"rows": [{}]}}')  # database.profile_io' file, its rows filled in
STORAGE_URLS = [
    "sqlite:///typo.sqlite", "sqlite:///{tmp}/no/such/dir/x.sqlite", "nosuchdialect://x/y", "",
    f"postgresql://user:{SECRET}@127.0.0.1:1/db", f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db",
    "{tmp}/corrupt.sqlite", "{tmp}",
]


def search_cases() -> list[Case]:
    out = []
    for script, head in (("latency_search.py", ("-accuracy_loss", "0.01")),
                         ("accuracy_search.py", ("-latency", "0.6"))):
        base = (*head, "--offline", "--storage", "{db}")
        flag = head[0]
        for bad in ("nan", "inf", "-1", "1.5" if flag == "-accuracy_loss" else "0", "abc", ""):
            out.append(_c(script, flag, bad, "--offline", "--storage", "{db}", fast=bad == "nan"))
        out.append(_c(script, "--offline", "--storage", "{db}", label="required option missing"))
        for opt, values in (("-bandwidth", ("0", "-1", "nan", "inf", "x")), ("-gpu", ("-1", "x", "1.5")),
                            ("--sampler", ("magic",)), ("--evaluator", ("oracle", "table:/nonexistent.csv")),
                            ("--latency-profile", ("nope,cpu-cloud", "a", ",")),
                            ("--base-accuracy", ("nan", "0", "2")), ("--rtt", ("-1", "nan")),
                            ("--tolerance", ("nan", "-1")), ("--max-evaluations", ("-1", "x")), ("--seed", ("x",)),
                            ("--study-storage", ("nowhere", f"postgresql://u:{SECRET}@127.0.0.1:1/db")),
                            ("--app", ("nope", "{tmp}/missing.yml"))):
            for v in values:
                out.append(_c(script, *base, opt, v, fast=(opt, v) in (("--tolerance", "nan"), ("-gpu", "-1"))))
        for url in STORAGE_URLS:
            out.append(_c(script, *head, "--offline", "--storage", url,
                          fast=url in ("sqlite:///typo.sqlite", STORAGE_URLS[4])))
        out.append(_c(script, *head, "--storage", "sqlite:///typo.sqlite", label="online, storage typo", fast=True))
        out.append(_c(script, *base, "--bogus", fast=script.startswith("latency")))
    return out


def database_cases() -> list[Case]:
    ev = "database.evaluate"
    out = [_c(ev, "--schemes", s, "--storage", "{db}", fast=s == "-1,1,1")
           for s in ("-1,1,1", "99,1,1", "0,999,1", "0,1,9", "0,1,0", "point:x", "point:99", "abc", "1,2")]
    out += [_c(ev, "--schemes", "0,1,1", "--workers", w, "--storage", "{db}") for w in ("0", "-1", "x")]
    out += [_c(ev, "--schemes", "0,1,1", "--seed", s, "--storage", "{db}") for s in ("-1", "x", str(2**40))]
    out += [_c(ev, "--schemes", "0,1,1", "--storage", url) for url in STORAGE_URLS[2:]]
    out.append(_c(ev, "--schemes", "0,1,1", "--storage", "sqlite:///file:{db}?mode=ro&uri=true",
                  label="read-only database", fast=True))
    out.append(_c(ev, "--schemes", "0,1,1", "--workers", "2", "--app", "{app}", "--storage", "{db}",
                  label="checkpoint does not fit, 2 workers", app=lambda d: d["model"].update(width=0.25), fast=True))
    out.append(_c(ev, "--bogus"))
    fm = "database.formats"
    out += [_c(fm, "explode", "x.csv", label="unknown action", fast=True), _c(fm, label="no action"),
            _c(fm, "export-csv", label="no path"),
            _c(fm, "export-csv", "/nonexistent/dir/out.csv", "--storage", "{db}", fast=True),
            _c(fm, "export-optcoinfer", "{tmp}", "--storage", "{db}", label="export onto a folder"),
            _c(fm, "export-csv", "{tmp}/o.csv", "--protocol", "nope", "--storage", "{db}"),
            _c(fm, "export-csv", "{tmp}/o.csv", "--storage", "sqlite:///typo.sqlite"),
            _c(fm, "import-csv", "/nonexistent.csv", "--storage", "{db}"),
            _c(fm, "import-optcoinfer", "/nonexistent.txt", "--storage", "{db}"),
            _c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: binary file", app=b"\xff\xfe\x00\x81" * 50),
            _c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: bad header", app="a,b\n1,2\n"),
            _c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: top1 nan", app="p,c,b,top1\n0,1,1,nan\n"),
            _c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: percent", app="p,c,b,top1\n0,1,1,95\n"),
            _c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: bad row after replicates",
               app="p,c,b,top1\n1,5,1,0.9\n1,5,1,0.8\n1,x,1,0.7\n", fast=True),
            _c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: outside space",
               app="p,c,b,top1\n0,999,1,0.5\n"),
            _c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: bad scheme", app="p,c,b,top1\nx,1,1,0.5\n"),
            _c(fm, "import-optcoinfer", "{app}", "--storage", "{db}", label="txt: bad line", app="3+12-4\n"),
            _c(fm, "import-optcoinfer", "{app}", "--storage", "{db}", label="txt: bad number", app="3+2-4*1.2.3\n"),
            _c(fm, "import-optcoinfer", "{app}", "--storage", "{db}", label="txt: error > 1", app="3+2-4*1.5\n"),
            _c(fm, "import-optcoinfer", "{app}", "--storage", "{db}", label="txt: bad line after replicates",
               app="1+5-1*0.1\n1+5-1*0.2\n1+5-1\n"),
            _c(fm, "import-optcoinfer", "{app}", "--base-error", "nan", "--storage", "{db}", app="1+5-1*0.1\n"),
            _c(fm, "import-optcoinfer", "{app}", "--base-error", "1", "--storage", "{db}", app="1+5-1*0.1\n"),
            _c(fm, "export-csv", "{tmp}/o.csv", "--seed", "-1", "--storage", "{db}"),
            _c(fm, "export-csv", "{tmp}/o.csv", "--seed", "x", "--storage", "{db}")]
    pr = "database.profile"
    out += [_c(pr, "--storage", "{db}", label="no --device", fast=True),
            _c(pr, "--device", "../../x", "--emulation", "quota", "--storage", "{db}", fast=True)]
    out += [_c(pr, "--device", d, "--storage", "{db}", label=f"device {d!r}")
            for d in ("", "a b", "x/y", ".hidden", "é")]
    for opt, values in (("--speed", ("nan", "0", "-1", "100", "inf", "x")), ("--runs", ("0", "x", "10000000")),
                        ("--passes", ("0",)), ("--threads", ("0",)), ("--idle-ms", ("-1", "nan")),
                        ("--warmup", ("-1",)), ("--side", ("middle",)), ("--emulation", ("fast",))):
        out += [_c(pr, "--device", "dev1", opt, v, "--storage", "{db}", fast=(opt, v) == ("--speed", "nan"))
                for v in values]
    out += [_c(pr, "--device", "dev1", "--speed", "2", "--emulation", "dilate", "--storage", "{db}"),
            _c(pr, "--device", "dev1", "--speed", "0.5", "--emulation", "dilate", "--threads", "2",
               "--storage", "{db}"),
            _c(pr, "--device", "dev1", "--storage", "sqlite:///typo.sqlite", "--app", "nope")]
    sh = "reports.show"
    out += [_c(sh, "--app", "nope", "--storage", "{db}", fast=True), _c(sh, "--bogus"),
_c(sh, "--app", "{app}", "--storage", "{db}", label="bad app yaml", app="name: [x\n")]
    out += [_c(sh, "--storage", url) for url in STORAGE_URLS]
    pa = "database.paper"
    out += [_c(pa, "--json", "/nonexistent.json", "--storage", "{db}"),
            _c(pa, "--json", "{app}", "--storage", "{db}", label="json: garbage", app="{not json"),
            _c(pa, "--json", "{app}", "--storage", "{db}", label="json: a list", app="[1, 2]"),
            _c(pa, "--json", "{app}", "--storage", "{db}", label="json: strings",
               app='{"edge_cumulative_s": ["a"], "cloud_cumulative_s": ["b"], "conv_point_index_1based": [1], '
                   '"edge_all_s": "x"}'),
            _c(pa, "--json", "{app}", "--storage", "{db}", label="json: binary", app=b"\xff\xfe\x00"),
            _c(pa, "--edge", "../x", "--storage", "{db}", fast=True), _c(pa, "--cloud", "", "--storage", "{db}"),
            _c(pa, "--app", "nope", "--storage", "{db}"), _c(pa, "--bogus")]
    tr = "models.train"
    out += [_c(tr, "--out", "/nonexistent/dir/x.pt", fast=True), _c(tr, "--out", "{tmp}", label="out is a folder"),
            _c(tr, "--app", "nope"), _c(tr, "--bogus")]
    return out


def tool_cases() -> list[Case]:
    """Model selection, the build status, the latency predictor and profile files."""
    sm = "select_model.py"
    base = ("--bandwidth", "1", "--select-only", "--storage", "{db}")
    out = [_c(sm, "--bandwidth", "1", "--bogus", fast=True),
           _c(sm, "--select-only", "--storage", "{db}", label="no --bandwidth")]
    for opt, values in (("--bandwidth", ("nan", "0", "-1", "x")), ("--accuracy-budget", ("inf", "0", "1.5")),
                        ("--images", ("-1", "0", "x")), ("--apps", ("nope", "vgg16_digits,", "", "{app}")),
                        ("--edge", ("nowhere",)), ("--cloud", ("../x",)), ("--devices", ("{tmp}/missing.yml",))):
        out += [_c(sm, *base, opt, v, fast=(opt, v) == ("--apps", "nope"),
                   app="name: [x\n" if v == "{app}" else None) for v in values]
    out += [_c(sm, "--bandwidth", "1", "--select-only", "--storage", url) for url in STORAGE_URLS]
    st = "reports.build_status"
    out += [_c(st, "--bogus"),
            _c(st, "--storage", "{db}", "--app", "nope", label="no build queue, unknown app", fast=True)]
    out += [_c(st, "--storage", url) for url in STORAGE_URLS]
    out += [_c(st, "--storage", "{db}", "--queue", url)
            for url in ("nosuchdialect://x/y", f"postgresql://u:{SECRET}@127.0.0.1:1/db", "sqlite:///{tmp}/corrupt.sqlite")]
    dash = "reports.dashboard"  # every case fails before the server would start
    out += [_c(dash, "--bogus"), _c(dash, "--study-storage", "{tmp}/none.journal", label="no journal", fast=True),
            _c(dash, "--study-storage", "memory"), _c(dash, "--port", "0"), _c(dash, "--port", "x"),
            _c(dash, "--study-storage", f"postgresql://u:{SECRET}@127.0.0.1:1/db"),
            _c(dash, "--study-storage", "nowhere", label="study storage neither journal nor URL")]
    out += [_c(dash, "--storage", url) for url in STORAGE_URLS]
    pd = "database.predictor"
    out += [_c(pd, "fit", "--device", "quarter-edge", "--bogus"), _c(pd, "--device", "quarter-edge", label="no action"),
            _c(pd, "fit", label="no --device", fast=True), _c(pd, "explode", "--device", "quarter-edge"),
            _c(pd, "predict", "--device", "nowhere", "--storage", "{db}"),
            _c(pd, "predict", "--device", "quarter-edge", "--app", "nope", "--storage", "{db}"),
            _c(pd, "predict", "--device", "quarter-edge", "--storage", "sqlite:///typo.sqlite",
               label="predict from a missing database"),
            _c(pd, "fit", "--device", "quarter-edge", "--apps", "vgg16_digits,nope", "--storage", "{db}")]
    for opt, values in (("--sweep", ("0", "-1", "x", "100000")), ("--runs", ("0", "x")), ("--regressor", ("magic",)),
                        ("--side", ("middle",))):
        out += [_c(pd, "fit", "--device", "quarter-edge", opt, v, "--storage", "{db}", fast=v == "100000")
                for v in values]
    out += [_c(pd, "fit", "--device", "quarter-edge", "--storage", url) for url in STORAGE_URLS[2:]]
    pf = "database.profile_io"
    ex = ("export-profile", "{tmp}/p.json", "--device", "cpu-edge")
    out += [_c(pf, "import-profile", "{tmp}/p.json", "--bogus", fast=True), _c(pf, label="no action"),
            _c(pf, "export-profile", label="no path"),
            _c(pf, "explode", "{tmp}/p.json"), _c(pf, "export-profile", "{tmp}/p.json", label="no --device"),
            _c(pf, "export-profile", "/nonexistent/dir/p.json", "--device", "cpu-edge", "--storage", "{db}", fast=True),
            _c(pf, "export-profile", "{tmp}", "--device", "cpu-edge", "--storage", "{db}", label="export to a folder"),
            _c(pf, *ex, "--device", "nowhere", "--storage", "{db}"), _c(pf, *ex, "--app", "nope", "--storage", "{db}"),
            _c(pf, "import-profile", "/nonexistent.json", "--storage", "{db}")]
    out += [_c(pf, *ex, "--storage", url) for url in STORAGE_URLS]
    row = '{"side": "edge", "point": 1, "channels": 1, "median_s": 0.1, "p90_s": null, "n": 1}'
    for label, text in (("json: garbage", "{not json"), ("json: a list", "[1, 2]"), ("json: binary", b"\xff\xfe\x00"),
                        ("keys missing", '{"format": "coinfer-latency-profile/1", "app": "a", "device": "d"}'),
                        ("row: side", PROFILE.format(row.replace('"edge"', '"middle"'))),
                        ("row: point", PROFILE.format(row.replace('"point": 1', '"point": "x"'))),
                        ("row: median nan", PROFILE.format(row.replace("0.1", "NaN"))),
                        ("row: negative median", PROFILE.format(row.replace("0.1", "-0.1"))),
                        ("row: a string", PROFILE.format('"x"')),
                        ("app name", PROFILE.format(row).replace("vgg16_digits", "a b")),
                        ("device name", PROFILE.format(row).replace('"cpu-edge"', '"../x"'))):
        out.append(_c(pf, "import-profile", "{app}", "--storage", "{db}", label=f"import {label}", app=text,
                      fast=label == "row: point"))
    sj = "search.journal"  # a study journal checked (exit 2 when a record does not read or replay)
    out += [_c(sj, "{tmp}/x.journal", "--bogus"), _c(sj, label="no journal"), _c(sj, "{tmp}/none.journal", fast=True),
            _c(sj, "{tmp}", label="a folder"), _c(sj, "{tmp}/none.journal", "--repair", label="repair a missing file")]
    for label, text in (("garbage", "{not json\n"), ("unknown operation", '{"op_code":99,"worker_id":"x"}\n'),
                        ("binary", b"\xff\xfe\x00\n"),
                        ("a field missing", '{"op_code":8,"worker_id":"x","trial_id":0}\n'),
                        ("cut short", '{"op_code":0,"worker_id":"x","study_name":"s","dire')):
        out.append(_c(sj, "{app}", label=f"journal: {label}", app=text, fast=label == "unknown operation"))
    return out


def runtime_cases() -> list[Case]:
    out = []
    for cli, bads in (
        ("runtime.edge", [("--bogus",), ("--timeout", "nan"), ("--timeout", "x"), ("--n", "x"), ("--scheme",),
                          ("--scheme", "0,1,1", "--server", "x", "--timeout", "-1")]),
        ("runtime.cloud", [("--bogus",), ("--port", "x"), ("--workers", "0"), ("--read-timeout", "nan"),
                           ("--idle-timeout", "nan"), ("--max-clients", "0"), ("--tls-key", "k.pem"),
                           ("--app", "nope")]),
        ("runtime.testbed", [("--bogus",), ("--rate", "fast", "--verify"), ("--link", "x", "--verify"),
                             ("--speed", "nan", "--verify"), ("--mem-limit", "0", "--verify"),
                             ("--mem-limit", "512M", "--mem-stress", "1.5", "--verify"),
                             ("--mem-stress", "0.5", "--verify")]),
        ("runtime.linkprobe", [("--bogus",), ("nosuchcommand",)]),
        ("devices.memhog", [("--bogus",), ("0",), ("x",), ("1000", "--cpu", "x")]),
        ("runtime.export", [("--bogus",), ("--scheme", "4,12,3"), ("--scheme", "4,999,3", "--out", "{tmp}/a"),
                            ("--scheme", "4,12,3", "--out", "{tmp}", "--finetune-missing"),
                            ("--scheme", "all-edge", "--out", "{tmp}/a", "--samples", "-1"),
                            ("--app", "nope", "--scheme", "1,1,1", "--out", "{tmp}/a")]),
        ("database.codecprof", [("--bogus",), ("--codec", "nope"), ("--images", "0"), ("--app", "nope")]),
        ("bench.corun.sampletrace", [("--bogus",), ("--seed", "x")]),
    ):
        out += [_c(cli, *b, fast=b in (("--workers", "0"), ("--bogus",)) and cli == "runtime.cloud") for b in bads]
    out += [_c("runtime.edge", "--scheme", "4,12,3", "--server", CLOSED, "--n", "1", "--no-finetuned",
               label="cloud unreachable", exit=3, fast=True),
            _c("runtime.edge", "--auto", "--bandwidth", "1", "--server", CLOSED, "--n", "1", "--storage", "{db}",
               label="--auto: cloud unreachable", exit=3),
            _c("runtime.linkprobe", "source", *CLOSED.split(":"), "100", label="source: no sink", exit=3),
            _c("bench.adaptivity", "--server", CLOSED, "--retries", "1", "--profile", "stored", "--quotas", "0.5",
               "--n", "1", label="--server: cloud unreachable, retried", exit=3)]
    for cli, bads in (("bench.codec", [("--bogus",)]), ("bench.fuzz", [("--bogus",), ("--hang-ms", "nan"),
                                                                        ("--inputs", "x")]),
                      ("bench.search", [("--bogus",), ("--tolerance", "nan"), ("--seeds", "x"),
                                        ("--storage", "{tmp}/missing.sqlite", "--no-synthetic")]),
                      ("bench.certificate", [("--bogus",), ("--samplers", "tpe"), ("--samplers", "nope"),
                                             ("--tolerance", "nan"), ("--tolerance", "-1"),
                                             ("--table", "{tmp}/missing.csv", "--no-synthetic"),
                                             ("--storage", "{tmp}/missing.sqlite", "--no-synthetic")]),
                      ("bench.runtime", [("--bogus",), ("--rates", "nan"), ("--link", "x")]),
                      ("bench.adaptivity", [("--bogus",), ("--quotas", "inf"), ("--n", "x"), ("--mem-limit", "0"),
                                            ("--mem-limit", "1G", "--mem-stress", "1.5"), ("--mem-limit", "lots"),
                                            ("--retries", "-1"), ("--server", "x"), ("--token-file", "{tmp}"),
                                            ("--server", "127.0.0.1:1", "--rates", "1")]),
                      ("bench.badinput", [("--bogus",), ("--jobs", "0"), ("--timeout", "nan")])):
        out += [_c(cli, *b, fast=cli == "bench.fuzz" and b == ("--hang-ms", "nan")) for b in bads]
    return out

FAST_BENCH = {("--workers", "1,x,3"), ("--no-sqlite",), ("--storage", f"postgresql://u:{SECRET}@127.0.0.1:1/db"),
              ("--out", "/nonexistent/dir/p.csv"), ("--flood-s", "nan"), ("--repeats", "0"),
              ("--app", "vgg16_digits", "--progress", "/nonexistent/dir/p.csv")}


def bench_cases() -> list[Case]:
    """The benchmarks and the training co-run: every case is refused before any work starts."""
    pg = f"postgresql://u:{SECRET}@127.0.0.1:1/db"
    csv = ("--out", "{tmp}/p.csv")  # bench.profiler's output
    train = ("--app", "vgg16_digits", "--progress", "{tmp}/p.csv")
    out = []
    for cli, bads in (
        ("bench.scale", [("--bogus",), ("--workers", "1,x,3"), ("--workers", "0"), ("--workers", ""),
                         ("--workers=-1,2",), ("--workers", "100000"), ("--per-worker", "0"),
                         ("--per-worker", "1000000000"), ("--delay", "nan"), ("--delay", "-1"), ("--delay", "1e9"),
                         ("--no-sqlite",), ("--postgres", pg, "--no-sqlite"), ("--postgres", "nosuchdialect://x/y"),
                         ("--postgres", "sqlite:///{tmp}/x.sqlite", "--no-sqlite")]),
        ("bench.zoo", [("--bogus",), ("--bandwidth", "nan"), ("--bandwidth", "0"), ("--accuracy-loss", "1"),
                       ("--accuracy-loss", "-0.1"), ("--apps", "nope"), ("--apps", ","),
                       ("--apps", "vgg16_digits,nope"),
                       ("--storage", "{tmp}/missing.sqlite"), ("--storage", "{tmp}/corrupt.sqlite"),
                       ("--storage", pg), ("--storage", "{tmp}"), ("--out", "/nonexistent/dir/zoo.png"),
                       ("--out", "{tmp}")]),
        ("bench.profiler", [(*csv, "--bogus"), ("--interval", "1"), ("--out", "/nonexistent/dir/p.csv"),
                            ("--out", "{tmp}"), (*csv, "--interval", "0"), (*csv, "--interval", "nan"),
                            (*csv, "--duration", "-1"), (*csv, "--duration", "inf"), (*csv, "--pid", "x"),
                            (*csv, "--pid", "-1"), (*csv, "--pid", "0"), (*csv, "--pid", "999999999")]),
        ("bench.flood", [("--bogus",), ("--idle", "0"), ("--idle", "x"), ("--idle-peers", "251"), ("--flooders", "-1"),
                         ("--flood-s", "nan"), ("--flood-s", "0"), ("--flood-rate", "-1"), ("--flood-rate", "inf"),
                         ("--quiet-s", "-1"), ("--interval", "0")]),
        ("bench.studystorage", [("--bogus",), ("--repeats", "0"), ("--repeats", "-1"), ("--repeats", "x"),
                                ("--repeats", "100000"), ("--postgres", "nosuchdialect://x/y"), ("--postgres", pg),
                                ("--postgres", "sqlite:///{tmp}/no/such/dir/x.sqlite")]),
        ("runtime.training", [(*train, "--bogus"), ("--progress", "{tmp}/p.csv"), ("--app", "vgg16_digits"),
                              ("--app", "nope", "--progress", "{tmp}/p.csv"),
                              ("--app", "vgg16_digits", "--progress", "/nonexistent/dir/p.csv"),
                              ("--app", "vgg16_digits", "--progress", "{tmp}"), (*train, "--nice", "-1"),
                              (*train, "--nice", "20"), (*train, "--threads", "0"), (*train, "--interval", "nan"),
                              (*train, "--interval", "-1"), (*train, "--sched", "magic"),
                              (*train, "--parent", "999999999")]),
    ):
        out += [_c(cli, *b, fast=b in FAST_BENCH) for b in bads]
    return out + corun_cases()


def corun_cases() -> list[Case]:
    cr = "bench.corun"
    client = ("client", "--server", "127.0.0.1:1", "--apps", "vgg16_digits", "--token", "t", "--out", "{tmp}/run")
    run = ("run", "--out", "{tmp}/run", "--no-layouts")
    out = [_c(cr, label="no command"), _c(cr, *client, "--bogus"), _c(cr, "explode"),
           _c(cr, "client", "--apps", "vgg16_digits"),
           _c(cr, "report", label="report: no folder"), _c(cr, "report", "/nonexistent/run", fast=True),
           _c(cr, "report", "{tmp}", label="report: not a run folder"),
           _c(cr, "report", "{tmp}/coinfer.sqlite", label="report: a file")]
    for opt, values in (("--server", ("x", "127.0.0.1:99999", "nope=127.0.0.1:1")),
                        ("--apps", ("nope", "", "vgg16_digits,,x")),
                        ("--clients", ("1,x,3", "0", "")), ("--mode", ("magic",)), ("--rate", ("0", "nan")),
                        ("--duration", ("-1",)), ("--images", ("0",)), ("--timeout", ("inf",)), ("--seed", ("x",)),
                        ("--scheme", ("99,1,1", "nope=4,16,4", "x")), ("--out", ("{tmp}/coinfer.sqlite",))):
        out += [_c(cr, *client, opt, v, fast=(opt, v) == ("--clients", "1,x,3")) for v in values]
    out.append(_c(cr, *client, "--duration", "1", label="client: server unreachable", exit=3))
    for opt, values in (("--duration", ("0", "nan")), ("--clients", ("1,x", "-1")), ("--modes", ("magic",)),
                        ("--layout-rounds", ("0",)), ("--apps", ("nope",)), ("--load", ("2", "0")),
                        ("--batch-images", ("0",)), ("--batch-wait-ms", ("-1",)), ("--layout", ("magic",)),
                        ("--cells", ("magic",)), ("--schemes", ("99,1,1", "x", "4,16,4;4,16,4")),
                        ("--twin-scheme", ("99,1,1",)), ("--train", ("nope",)), ("--out", ("{tmp}/coinfer.sqlite",))):
        out += [_c(cr, *run, opt, v, fast=(opt, v) == ("--schemes", "99,1,1")) for v in values]
    return out


def _set(section: str | None, key: str, value) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        target = data
        for part in (section.split(".") if section else []):
            target = target.setdefault(part, {})
        target[key] = value
    return mutate


def _drop(section: str | None, key: str) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        (data if section is None else data[section]).pop(key, None)
    return mutate


SCHEMA_VALUES = {
    ("model", "width"): [0, -0.5, 1.5, NAN, INF, "abc", True, None, [1]],
    ("model", "input_size"): [0, 31, 48, 3_200_000, -32, "32", 32.5, None],
    ("model", "in_channels"): [0, -1, 1000, "1"],
    ("model", "num_classes"): [0, 1, -5, 10**9, "ten"],
    ("model", "classifier_hidden"): [0, -1, 10**9],
    ("model", "arch"): ["resnet", 5, None],
    ("protocol", "epochs"): [-3, "1", 1.5, 10**9],
    ("protocol", "lr"): [NAN, INF, 0, -0.1, "fast", 100],
    ("protocol", "batch_size"): [0, -1, 1.5, 10**9],
    ("protocol", "momentum"): ["fast", 1, -0.1, NAN],
    ("protocol", "weight_decay"): [-1, NAN, "x"],
    ("protocol", "seed"): ["abc", -1, 2**40, 1.5],
    ("protocol", "schedule"): ["cosine", 1],
    ("protocol", "epochz"): [1],
    ("train", "epochs"): [0, -1, "x"],
    ("train", "lr"): [NAN],
    ("train", "batch_size"): [0],
    ("devices.edge", "name"): ["../../x", "", "a b", 5],
    ("devices.edge", "speed"): [0, -1, NAN, 100, "half"],
    ("devices.edge", "emulation"): ["fast"],
    ("devices.cloud", "name"): ["../y"],
    ("dataset", "name"): ["no_such_dataset", None],
    ("dataset", "test_size"): [0, -1, "x"],
    ("dataset", "limit_train"): [0],
    (None, "raw_input_bytes"): [0, -1, 2**40, "x"],
    (None, "rtt_s"): ["abc", -1, NAN, INF, 1000],
    ("link", "mss"): [0, -1],
    ("link", "message_bytes"): [-1],
    (None, "link"): ["x", [1]],
    (None, "checkpoint"): ["", 5, None],
    (None, "name"): ["../x", "", 5, "a" * 100],
    (None, "devices"): ["cpu"],
}
SCHEMA_FAST = {(("protocol", "batch_size"), 0), (("protocol", "epochs"), -3), (("model", "num_classes"), 0),
               ((None, "rtt_s"), "abc"), (("protocol", "momentum"), "fast"), (("protocol", "seed"), "abc"),
               (("model", "input_size"), 3_200_000)}
DEEP_YAML_APP = "name: " + "[" * 50_000 + "]" * 50_000 + "\n"
RAW_APPS = {"not a mapping": "[1, 2]\n", "empty": "", "unclosed": "name: [x\n", "binary": b"\xff\xfe\x00\x81",
            "tabs": "name:\tx\n\tmodel: 1\n", "nested 50,000 deep": DEEP_YAML_APP, "over 1 MiB": "#" * (2**20 + 1)}
# CLIs that load the app before anything else: the schema cases rotate over them
APP_CLIS = [("latency_search.py", ("-accuracy_loss", "0.01", "--offline", "--storage", "{db}")),
            ("database.evaluate", ("--schemes", "0,1,1", "--storage", "{db}")),
            ("models.train", ()),
            ("database.profile", ("--device", "dev1", "--storage", "{db}")),
            ("accuracy_search.py", ("-latency", "0.6", "--storage", "{db}")),
            ("reports.show", ("--storage", "{db}"))]


def schema_cases() -> list[Case]:
    out = []
    i = 0
    items = [((sec, key), v, _set(sec, key, v)) for (sec, key), values in SCHEMA_VALUES.items() for v in values]
    items += [((None, key), "missing", _drop(None, key))
              for key in ("name", "model", "dataset", "protocol", "devices", "raw_input_bytes", "checkpoint")]
    items += [((sec, key), "missing", _drop(sec, key)) for sec, key in (("model", "width"), ("protocol", "lr"))]
    for where, value, mutate in items:
        cli, argv = APP_CLIS[i % len(APP_CLIS)]
        i += 1
        label = f"app {'.'.join(p for p in where if p)} = {value!r}"[:80]
        fast = any(where == w and value == v for w, v in SCHEMA_FAST)
        out.append(_c(cli, *argv, "--app", "{app}", label=label, app=mutate, fast=fast))
    for name, text in RAW_APPS.items():
        cli, argv = APP_CLIS[i % len(APP_CLIS)]
        i += 1
        out.append(_c(cli, *argv, "--app", "{app}", label=f"app file {name}", app=text, fast=name == "binary"))
    return out


def _same(_data: dict) -> None:
    """The default app's YAML, unchanged: a case about the file, not its content."""


DEEP_YAML = "[" * 50_000 + "]" * 50_000


def writes_cases() -> list[Case]:
    """An output that is an input of the command or a file of its --storage (the database, its -wal/-shm, the
    queue and the studies' journal beside it, the app YAML, a token file) is refused before anything is
    written; named inputs over their size limit, nested too deep, or not regular files are one line."""
    fm, pf = "database.formats", "database.profile_io"
    out = [_c(fm, "export-csv", "{db}", "--storage", "sqlite:///{db}", label="export over the database", fast=True),
           _c(fm, "export-optcoinfer", "{tmp}/sub/../coinfer.sqlite", "--storage", "{db}",
              label="export over the database via .."),
           _c(fm, "export-csv", "{db}-wal", "--storage", "{db}", label="export over the database's -wal"),
           _c(fm, "export-csv", "{tmp}/coinfer.studies.journal", "--storage", "{db}", label="export over the journal"),
           _c(fm, "export-csv", "{tmp}/coinfer.queue.sqlite", "--storage", "{db}", label="export over the queue"),
           _c(fm, "export-csv", "{app}", "--app", "{app}", "--storage", "{db}", label="export over the app YAML",
              app=_same),
           _c(pf, "export-profile", "{db}", "--device", "cpu-edge", "--storage", "{db}",
              label="export-profile over the database", fast=True),
           _c(pf, "export-profile", "{db}-shm", "--device", "cpu-edge", "--storage", "{db}",
              label="export-profile over the database's -shm"),
           _c("reports.show", "--plot", "{db}", "--bandwidth", "1", "--storage", "{db}",
              label="plot over the database"),
           _c("bench.zoo", "--out", "{db}", "--storage", "{db}", label="zoo plot over the database"),
           _c("bench.runtime", "--out", "{db}", "--storage", "{db}", label="runtime plot over the database"),
           _c("bench.adaptivity", "--out", "{db}", "--storage", "{db}", label="adaptivity plot over the database"),
           _c("models.train", "--app", "{app}", "--out", "{app}", label="checkpoint over the app YAML", app=_same),
           _c("runtime.training", "--app", "{app}", "--progress", "{app}", label="progress over the app YAML",
              app=_same),
           _c("runtime.cloud", "--app", "{app}", "--train", "{app}", "--train-progress", "{app}",
              label="cloud: training progress over the app YAML", app=_same)]
    out += [_c(fm, "import-csv", "{app}", "--storage", "{db}", label="csv: a field over 128 KiB",
               app="p,c,b,top1\n0,1,1," + "9" * 200_000 + "\n", fast=True),
            _c(fm, "import-csv", "{tmp}", "--storage", "{db}", label="csv: a folder"),
            _c("runtime.cloud", "--token-file", "{app}", label="token file over 64 KiB", app="t" * 70_000, fast=True),
            _c("runtime.cloud", "--token-file", "{tmp}", label="token file is a folder"),
            _c("database.profile", "--device", "dev1", "--devices", "{app}", "--storage", "{db}",
               label="devices file nested 50,000 deep", app=DEEP_YAML),
            _c("database.profile", "--device", "dev1", "--devices", "{app}", "--storage", "{db}",
               label="devices file over 1 MiB", app="#" * (2**20 + 1)),
            _c("bench.adaptivity", "--replay", "{tmp}", label="--replay a folder")]
    return out


def all_cases() -> list[Case]:
    return (search_cases() + database_cases() + tool_cases() + runtime_cases() + bench_cases() + schema_cases()
            + writes_cases())
