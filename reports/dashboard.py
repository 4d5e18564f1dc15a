"""optuna-dashboard on the searches' studies, with the answer as each study's best trial.

    python -m reports.dashboard [--storage URL | --study-storage FILE.journal|URL] [--host H] [--port N]

Every search trial carries its constraint in Optuna's `constraints` system attribute (search/study.py),
so any optuna-dashboard (`optuna-dashboard database/coinfer.studies.journal` too) draws feasible and
infeasible trials apart. Its "Best Trial" panel, though, asks the storage (`get_best_trial`), and Optuna's
storages ignore constraints: opened directly, a latency query's best trial is the fastest scheme tried,
however far outside the accuracy bound. This command serves the same dashboard (`optuna_dashboard.wsgi`)
on the searches' own storages (`search.study.make_storage`), whose best trial is the best feasible one
(search/best.py): the scheme the query CLI answered. It binds 127.0.0.1 unless told otherwise and only
reads the studies (the dashboard's own notes and deletions excepted: it is Optuna's UI).
"""

from __future__ import annotations

from pathlib import Path

from cli.args import ArgParser
from cli.errors import CoInferError, mask_url
from cli.run import run_cli


def _parser() -> ArgParser:
    ap = ArgParser(prog="python -m reports.dashboard",
                   description="optuna-dashboard on the searches' studies, each study's best trial the best "
                               "feasible one (the query's answer).")
    ap.add_argument("--storage", default=None, help="the databases (default: database/coinfer.sqlite); the "
                                                    "studies are its default study storage")
    ap.add_argument("--study-storage", default=None, metavar="FILE.journal|URL",
                    help="the studies' storage (default: the one beside --storage)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    return ap


def study_storage_of(storage: str | None, study_storage: str | None) -> str:
    """The study storage to show: `study_storage`, else the searches' default beside `storage`; a journal file
    that does not exist is refused (no search has run there), not created."""
    from database.storage import Storage
    from search.study import JOURNAL_SUFFIXES
    url = study_storage if study_storage is not None else Storage.parse(storage).study_storage
    if url == "memory":
        raise CoInferError("--study-storage memory holds no studies once a search ends: name a .journal file or a URL")
    if url.startswith("journal:") or url.endswith(JOURNAL_SUFFIXES):
        path = Path(url.removeprefix("journal:"))
        if not path.is_file():
            raise CoInferError(f"no study storage at {path} (no search has kept a study there)")
    return url


def dashboard_app(url: str):
    """optuna-dashboard's WSGI application on the study storage `url`, opened as the searches open it."""
    import optuna_dashboard

    from search.study import make_storage
    return optuna_dashboard.wsgi(make_storage(url))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise CoInferError(f"--port must be in 1..65535, got {args.port}")
    url = study_storage_of(args.storage, args.study_storage)
    app = dashboard_app(url)
    from wsgiref.simple_server import make_server
    try:
        server = make_server(args.host, args.port, app)
    except OSError as exc:
        raise CoInferError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (studies: {mask_url(url)}); Ctrl-C stops it",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    run_cli(main)
