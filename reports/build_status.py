"""Progress of distributed builds: what is done, running (by worker and host), failed, retried and left.

    python -m reports.build_status --storage postgresql://u@db/coinfer [--app A] [--json]

Reads the build studies (database/distributed.py) in the queue storage of `--storage` (or
`--queue`) and the accuracy table they fill; writes nothing. Per build:

    done        requested schemes stored in the accuracy table (by the build or before it)
    running     trials holding a scheme now, by worker (host:pid) and by host
    failed      schemes whose every attempt failed, with no retry left or pending
    retried     attempts started again after their worker died (Optuna's retry callback)
    remaining   requested schemes neither stored, running nor failed
    throughput  completions per minute over the last 10 minutes of completions (or since the first)
    eta         remaining / throughput

A database with no build queue (no build ran there, e.g. the shipped one, filled before builds were
studies, or one filled by imports) is not an error: per app (every app, or `--app`) and protocol it
reports the schemes stored out of the app's space, and what a build would do next, the command that
starts it (`database.evaluate --schemes all`: only the app's own protocol is built; another is an
imported table). `--json` then lists those tables, each with `"queue": null`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apps import load_app
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from database.storage import Storage

WINDOW_S = 600.0


@dataclass(frozen=True)
class BuildStatus:
    study: str
    app: str
    protocol: str
    seed: int
    requested: int
    done: int
    running: int
    failed: int
    retried: int
    remaining: int
    attempts: int
    per_minute: float | None
    eta_s: float | None
    workers: dict[str, int] = field(default_factory=dict)  # host:pid -> running trials
    hosts: dict[str, int] = field(default_factory=dict)  # host -> running trials

    def to_json(self) -> dict:
        return asdict(self)


def parse_name(name: str) -> tuple[str, str, int] | None:
    """(app, protocol, seed) of a build study name `build/<app>/<protocol>/seed<seed>`."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "build" or not parts[3].startswith("seed") or not parts[3][4:].isdigit():
        return None
    return parts[1], parts[2], int(parts[3][4:])


def build_status(queue: str, storage: Storage | str, app: str | None = None) -> list[BuildStatus]:
    """The status of every build (of `app`) in the queue storage `queue` (an Optuna RDB storage URL),
    against the accuracy database `storage`."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    from compress.scheme import Scheme
    from database.distributed import SCHEMES, scheme_of_claim
    from database.rdb import BUILD_CLAIM_KEY, RETRY_OF
    from database.storage import as_storage, is_unreachable, unreachable
    from database.store import Store
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage, queue_storage = as_storage(storage), Storage.parse(queue)
    queue_file = queue_storage.sqlite_path
    if queue_file is not None and not queue_file.is_file():
        raise CoInferError(f"no build queue at {queue_file} (no build has run there)")
    try:
        rdb = optuna.storages.RDBStorage(queue_storage.url, skip_table_creation=True,
                                         engine_kwargs={"connect_args": queue_storage.connect_args()})
        studies = rdb.get_all_studies()
    except Exception as exc:
        if is_unreachable(exc):
            raise unreachable("build queue", queue_storage.url, exc) from None
        raise CoInferError(f"cannot read build queue {queue_storage.display}: {type(exc).__name__}") from None
    store = Store(storage, create=False, readonly=storage.backend == "sqlite")
    out = []
    try:
        for st in studies:
            key = parse_name(st.study_name)
            if key is None or (app is not None and key[0] != app):
                continue
            a, protocol, seed = key
            requested: set[Scheme] = set()
            for k, v in st.system_attrs.items():
                if k.startswith(SCHEMES):
                    requested |= {Scheme.parse(x) for x in v.split()}
            stored = set(store.accuracy_table(a, protocol, seed)) & requested
            trials = rdb.get_all_trials(st._study_id, deepcopy=False)
            running_by: Counter[str] = Counter()
            live, failed_tries, completions = set(), Counter(), []
            for t in trials:
                claim = t.system_attrs.get(BUILD_CLAIM_KEY)
                scheme = scheme_of_claim(claim)
                if t.state in (TrialState.RUNNING, TrialState.WAITING) and scheme is not None:
                    live.add(scheme)
                    if t.state == TrialState.RUNNING:
                        running_by[claim.split(" ", 1)[1] if " " in claim else "?"] += 1
                elif t.state == TrialState.FAIL and scheme is not None:
                    failed_tries[scheme] += 1
                elif t.state == TrialState.COMPLETE and t.datetime_complete is not None:
                    completions.append(t.datetime_complete.timestamp())
            failed = {s for s in failed_tries if s not in stored and s not in live}
            retried = sum(1 for t in trials if RETRY_OF in t.system_attrs)
            running = sum(running_by.values())
            remaining = max(0, len(requested - stored - live - failed))
            per_minute = eta = None
            if len(completions) >= 2:
                completions.sort()
                last = completions[-1]
                recent = [c for c in completions if c >= last - WINDOW_S]
                span = last - recent[0]
                if span > 0:
                    per_minute = 60 * (len(recent) - 1) / span
                    eta = 60 * (remaining + running) / per_minute if per_minute else None
            hosts: Counter[str] = Counter()
            for w, n in running_by.items():
                hosts[w.rsplit(":", 1)[0]] += n
            out.append(BuildStatus(st.study_name, a, protocol, seed, len(requested), len(stored), running,
                                   len(failed), retried, remaining, len(trials), per_minute, eta, dict(running_by),
                                   dict(hosts)))
    finally:
        store.close()
        rdb.engine.dispose()
    return out


@dataclass(frozen=True)
class TableStatus:
    """One accuracy table of a database with no build queue: schemes stored out of the app's space, and what a
    build would do next (`next`: the command, or None when there is nothing a build can add)."""

    app: str
    protocol: str
    stored: int
    space: int
    own: bool  # the app's own protocol: the one `database.evaluate` fine-tunes
    next: str | None
    queue: None = None

    @property
    def complete(self) -> bool:
        return self.stored >= self.space

    def to_json(self) -> dict:
        return dict(asdict(self), complete=self.complete)


def has_queue(queue: str) -> bool:
    """Whether a build queue may exist at `queue`: an SQLite queue is a file; a server is asked by build_status."""
    path = Storage.parse(queue).sqlite_path
    return path is None or path.is_file()


def table_status(storage: Storage, app: str | None = None) -> list[TableStatus]:
    """Per app (all, or `app`) and protocol (the app's own, and every other one stored): what is stored of the
    app's space and the command a build would run next."""
    from apps import available_apps, load_app
    from database.store import Store
    from models.build import app_points
    store = Store(storage, create=False, readonly=storage.backend == "sqlite")
    out = []
    try:
        for name in [app] if app is not None else available_apps():
            a = load_app(name)
            space = sum(p.channels for p in app_points(a)) * 8
            stored = dict(store.protocols(a.name))
            for protocol in [a.protocol.name, *sorted(set(stored) - {a.protocol.name})]:
                n, own = stored.get(protocol, 0), protocol == a.protocol.name
                where = "" if storage.url == Storage.parse(None).url else f" --storage {storage.display}"
                step = (f"python -m database.evaluate --app {name} --schemes all{where}"
                        if own and n < space else None)
                out.append(TableStatus(a.name, protocol, n, space, own, step))
    finally:
        store.close()
    return out


def format_tables(rows: list[TableStatus], queue: str) -> str:
    lines = [f"no build queue at {Storage.parse(queue).display} (no build has run there); what is stored:"]
    for r in rows:
        what = "complete" if r.complete else f"{100 * r.stored / r.space:.1f} %"
        lines.append(f"{r.app} / {r.protocol}: {r.stored}/{r.space} schemes stored ({what})")
        if r.next:
            lines.append(f"  next: {r.next}   (builds the {r.space - r.stored} missing schemes; resumable)")
        elif r.complete:
            lines.append("  nothing to build")
        else:
            lines.append("  an imported table: a build fills only the app's own protocol")
    return "\n".join(lines)


def format_status(rows: list[BuildStatus]) -> str:
    from search.query import format_seconds
    lines = []
    for r in rows:
        rate = f"{r.per_minute:.1f}/min" if r.per_minute is not None else "-"
        eta = format_seconds(r.eta_s) if r.eta_s is not None else "-"
        lines.append(f"{r.study}")
        lines.append(f"  done {r.done}/{r.requested}  running {r.running}  failed {r.failed}  retried {r.retried}  "
                     f"remaining {r.remaining}  throughput {rate}  eta {eta}")
        for host, n in sorted(r.hosts.items()):
            workers = ", ".join(f"{w.rsplit(':', 1)[1]}" for w in sorted(r.workers) if w.rsplit(":", 1)[0] == host)
            lines.append(f"  host {host}: {n} running (pids {workers})")
    return "\n".join(lines) if lines else "no builds"


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m reports.build_status", description="Progress of the distributed accuracy-database "
                                                                  "builds.")
    ap.add_argument("--storage", default=None,
                    help="SQLAlchemy URL of the accuracy database (default: database/coinfer.sqlite)")
    ap.add_argument("--queue", default=None, metavar="URL",
                    help="the builds' Optuna storage (default: derived from --storage)")
    ap.add_argument("--app", default=None, help="only this app's builds (its name, or its YAML path)")
    ap.add_argument("--json", action="store_true", help="one JSON line: a list of builds (with no build queue: of "
                                                          "tables, each with \"queue\": null)")
    args = ap.parse_args(argv)
    storage = Storage.parse(args.storage)
    app = load_app(args.app).name if args.app and Path(args.app).suffix in (".yml", ".yaml") else args.app
    queue = args.queue if args.queue is not None else storage.queue
    if not has_queue(queue):
        tables = table_status(storage, app)
        print(json.dumps([t.to_json() for t in tables], separators=(",", ":")) if args.json
              else format_tables(tables, queue))
        return 0
    rows = build_status(queue, storage, app)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], separators=(",", ":")))
    else:
        print(format_status(rows))
    return 0


if __name__ == "__main__":
    run_cli(main)
