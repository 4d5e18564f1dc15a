"""The two query CLIs (latency_search.py, accuracy_search.py) share this parser and printer.

Flags follow the paper (`-accuracy_loss 0.01 -latency 0.6 -bandwidth 1 -gpu 0`) and GNU
style (`--accuracy-loss`, `--app`, `--sampler`, `--evaluator`, `--storage`, `--offline`,
`--json`, `--seed`, `--rtt`, `--latency-profile EDGE,CLOUD`, `--base-accuracy`, `--tolerance`,
`--study-storage`, `--study-name`, `--workers`). Exit status: 0 with an answer, 1 when no scheme meets the
bound, 2 on bad input.

The search is an Optuna study, kept by default in a journal file beside a SQLite database
(`<database>.studies.journal`; a server's own database: `database.storage.Storage.study_storage`),
named after the app, evaluator, query and devices: re-running a query resumes its study
(`optuna.load_study` reads it, optuna-dashboard shows it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING

from apps import DEFAULT_APP, load_app
from apps.units import bytes_per_second
from cli.args import ArgParser
from cli.errors import CoInferError
from devices.spec import parse_device_pair
from search.samplers import SAMPLERS

if TYPE_CHECKING:
    from search.latency import LatencyModel
    from search.runner import SearchResult

# GP optimizer restarts per `optcoinfer` proposal. The paper used 100. Measured on the default app
# (latency query 1 %, 1 Mbps, 2 shared cores): one proposal took median 0.34 s, at most 0.83 s with 2
# restarts; 0.72 s, at most 4.8 s with 4.
DEFAULT_RESTARTS = 2
HELP_TOLERANCE = "0.005"  # search.bounds.DEFAULT_TOLERANCE, spelled out so that --help needs no numpy (tested)

def build_parser(kind: str) -> ArgParser:
    what = ("fastest scheme whose accuracy loss is at most -accuracy_loss" if kind == "latency" else
            "most accurate scheme whose latency is at most -latency x min(all-edge, all-cloud)")
    ap = ArgParser(prog=f"{kind}_search.py", description=f"CoInfer: the {what}, at -bandwidth Mbps.")
    if kind == "latency":
        ap.add_argument("-accuracy_loss", "--accuracy-loss", dest="accuracy_loss", type=float, required=True,
                        help="largest accepted top-1 loss vs the base model, a fraction in [0, 1) (0.01 = 1 %%)")
    else:
        ap.add_argument("-latency", "--latency", dest="latency", type=float, required=True,
                        help="latency budget as a ratio of the best single-end latency (0.6 = 60 %%)")
    ap.add_argument("-bandwidth", "--bandwidth", dest="bandwidth", type=float, default=1.0,
                    help="edge-to-cloud bandwidth in Mbps (1 Mbps = 2^20 bit/s, as the paper)")
    ap.add_argument("-gpu", "--gpu", dest="gpu", type=int, default=None,
                    help="CUDA device index for fine-tuning new evaluations (default: CPU)")
    ap.add_argument("--app", default=DEFAULT_APP, help="app name or YAML path (default: %(default)s)")
    ap.add_argument("--sampler", default="coinfer", help=f"one of {', '.join(SAMPLERS)} (default: %(default)s)")
    ap.add_argument("--evaluator", default="finetune", help="finetune (the app's protocol) or table:PATH")
    ap.add_argument("--protocol", default=None,
                    help="answer from the accuracy table stored under this protocol, e.g. an imported one "
                         "(default: the app's own; see python -m reports.show)")
    ap.add_argument("--storage", default=None,
                    help="SQLAlchemy URL of the databases (default: database/coinfer.sqlite)")
    ap.add_argument("--latency-profile", default=None, metavar="EDGE,CLOUD",
                    help="profiled devices for the latency model (default: the app's)")
    ap.add_argument("--base-accuracy", type=float, default=None,
                    help="base model top-1 (default: from the database)")
    ap.add_argument("--rtt", type=float, default=None, help="round-trip time in seconds (default: the app's)")
    ap.add_argument("--tolerance", type=float, default=None,
                    help=f"accepted non-monotonicity of measured accuracy (default: {HELP_TOLERANCE})")
    ap.add_argument("--max-evaluations", type=int, default=None, help="stop after this many new evaluations")
    ap.add_argument("--seed", type=int, default=0, help="seed of stochastic samplers")
    ap.add_argument("--offline", action="store_true",
                    help="never evaluate: answer from the database and bounds, with the gap and what to evaluate next")
    ap.add_argument("--study-storage", default=None, metavar="URL",
                    help="where the Optuna study lives: memory, FILE.journal or a SQLAlchemy URL "
                         "(default: a journal file beside a SQLite database, else memory)")
    ap.add_argument("--study-name", default=None, help="study name (default: from app, evaluator, query, devices)")
    ap.add_argument("--workers", type=int, default=1, metavar="N",
                    help="N processes optimise the study together (its storage must be a file or a URL); "
                         "no scheme is evaluated twice, the answer is the single worker's")
    ap.add_argument("--restarts", type=int, default=DEFAULT_RESTARTS, metavar="N",
                    help="--sampler optcoinfer: GP optimizer restarts per proposal (default: %(default)s, "
                         "under 1 s a proposal here; the paper used 100)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="a progress bar on stderr while the search evaluates (default: when stderr is a "
                         "terminal and not --json)")
    ap.add_argument("--json", action="store_true",
                    help="print one compact JSON line (the certificate's proof as a count)")
    ap.add_argument("--json-full", action="store_true", help="print the whole JSON object, indented")
    return ap


def run(kind: str, argv: list[str] | None = None) -> int:
    """Parse, search, print; heavy modules (torch, optuna, SQLAlchemy) are imported after parsing,
    so `--help` and bad flags answer at once."""
    args = build_parser(kind).parse_args(argv)
    from search.query import AccuracyQuery, LatencyQuery, format_seconds
    if kind == "latency":
        query = LatencyQuery(args.accuracy_loss, args.bandwidth)
    else:
        query = AccuracyQuery(args.latency, args.bandwidth)
    if args.sampler not in SAMPLERS:
        raise CoInferError(f"unknown sampler {args.sampler!r} (known: {', '.join(SAMPLERS)})")
    if args.rtt is not None and not (args.rtt >= 0 and math.isfinite(args.rtt)):
        raise CoInferError(f"--rtt must be >= 0 seconds, got {args.rtt}")
    if args.tolerance is not None and not (args.tolerance >= 0 and math.isfinite(args.tolerance)):
        raise CoInferError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    if args.max_evaluations is not None and args.max_evaluations < 0:
        raise CoInferError("--max-evaluations must be >= 0")
    if args.restarts < 0:
        raise CoInferError(f"--restarts must be >= 0, got {args.restarts}")
    if args.workers < 1:
        raise CoInferError(f"--workers must be at least 1, got {args.workers}")
    from database.storage import Storage
    from database.store import Store
    from models.build import app_points
    from search.evaluators import make_evaluator
    from search.latency import LatencyModel
    from search.problem import Problem
    from search.progress import ProgressEvaluator
    from search.runner import OPTUNA_BUDGET, run_search
    device = "cpu"
    if args.gpu is not None:
        import torch
        if not torch.cuda.is_available() or args.gpu >= torch.cuda.device_count() or args.gpu < 0:
            raise CoInferError(f"-gpu {args.gpu}: no such CUDA device on this machine")
        device = f"cuda:{args.gpu}"
    app = load_app(args.app)
    widths = [p.channels for p in app_points(app)]  # the model builds (and traces) before the database opens
    storage = Storage.parse(args.storage)
    store = Store(storage, create=False, readonly=args.offline)
    edge, cloud = parse_device_pair(args.latency_profile)
    model = LatencyModel.from_store(store, app, edge, cloud, args.rtt)
    protocols = dict(store.protocols(app.name))
    if args.protocol is not None and args.protocol not in protocols | {app.protocol.name: 0}:
        known = ", ".join(f"{p} ({n} schemes)" for p, n in protocols.items()) or "none"
        raise CoInferError(f"unknown protocol {args.protocol!r} for {app.name} (stored: {known})")
    evaluator = make_evaluator(args.evaluator, app, store, widths, device=device, protocol=args.protocol)
    if args.offline and not evaluator.known():
        others = [f"{p} ({n} schemes)" for p, n in protocols.items() if p != getattr(evaluator, "protocol", None)]
        raise CoInferError(f"the accuracy database holds nothing for {app.name} under protocol "
                           f"{getattr(evaluator, 'protocol', args.evaluator)}: --offline cannot answer"
                           + (f"; stored: {', '.join(others)} (pass --protocol NAME)" if others else
                              f" (fill it with python -m database.evaluate --app {app.name})"))
    base = args.base_accuracy if args.base_accuracy is not None else evaluator.base_accuracy()
    if base is None:
        base = store.base(app.name)
    if base is None:
        raise CoInferError(f"base accuracy of {app.name} unknown: pass --base-accuracy or evaluate the base model "
                           f"(python -m database.evaluate --app {app.name} --schemes none)")
    if not 0 < base <= 1:  # also refuses nan
        raise CoInferError(f"base accuracy must be a fraction in (0, 1], got {base}")
    from search.bounds import DEFAULT_TOLERANCE
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    study_storage = args.study_storage or storage.study_storage
    study_name = args.study_name or (f"{app.name}/{evaluator.name}/{query}/base{base:.6g}/"
                                     f"{model.devices[0]}->{model.devices[1]}")
    as_json = args.json or args.json_full
    progress = args.progress if args.progress is not None else sys.stderr.isatty() and not as_json
    if progress and not args.offline:
        total = args.max_evaluations if args.max_evaluations is not None else (
            OPTUNA_BUDGET if args.sampler in ("tpe", "gp", "random") else None)
        evaluator = ProgressEvaluator(evaluator, total, desc=f"{args.sampler} search")
    helpers = start_helpers(kind, argv if argv is not None else sys.argv[1:], args.workers, study_storage,
                            args.offline)
    try:
        result = run_search(Problem(query, model, base), evaluator, args.sampler, tolerance, args.seed,
                            args.offline, args.max_evaluations, study_name=study_name, study_storage=study_storage,
                            n_restarts=args.restarts)
    finally:
        if isinstance(evaluator, ProgressEvaluator):
            evaluator.close()
        for proc in helpers:
            if proc.wait() not in (0, 1):  # 1: no scheme meets the bound, as here
                raise CoInferError(f"a --workers helper process failed (exit {proc.returncode})")
    if as_json:
        out = dict(result.to_json(), app=app.name, devices=list(model.devices), study_storage=study_storage)
        print(json.dumps(out, indent=1) if args.json_full else json.dumps(compact(out), separators=(",", ":")))
    elif result.feasible:
        print(format_result(result, app.name, model))
    if not result.feasible:
        fastest = result.breakdown.total
        print(f"no scheme meets the bound: {result.query.describe(result.problem.reference)} at "
              f"{query.bandwidth:g} Mbps; the fastest scheme, {result.scheme}, takes {format_seconds(fastest)}",
              file=sys.stderr)
        return 1
    return 0


def start_helpers(kind: str, argv: list[str], workers: int, study_storage: str, offline: bool) -> list:
    """`--workers N`: N - 1 more processes run the same search on the same study (their output is
    discarded; this process prints the answer). The study must be shared: a file or a URL."""
    if workers <= 1 or offline:
        return []
    if study_storage == "memory":
        raise CoInferError("--workers needs a study storage the processes share: --study-storage FILE.journal or URL")
    import subprocess
    rest, skip = [], False
    for a in argv:  # the helpers run one worker each, quietly
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if not a.startswith("--workers=") and a not in ("--progress", "--json", "--json-full"):
            rest.append(a)
    cmd = [sys.executable, "-m", "search.cli", kind, *rest, "--study-storage", study_storage, "--no-progress", "--json"]
    return [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers - 1)]


def compact(out: dict) -> dict:
    """`--json`: the answer without the certificate's long lists (the proof and the monotonicity
    violations become counts; `--json-full` keeps them). The wire bytes stay (`wire_bytes`)."""
    cert = dict(out["certificate"])
    cert["proof_count"] = len(cert.pop("proof", []))
    cert["violation_count"] = len(cert.pop("violations", []))
    return dict(out, certificate=cert)


def format_result(r: SearchResult, app: str, model: LatencyModel) -> str:
    from search.query import format_seconds as ms
    q = r.query
    ref = r.problem.reference
    head = f"{q.describe(ref)} at {q.bandwidth:g} Mbps ({bytes_per_second(q.bandwidth):,.0f} B/s)"
    lines = [f"{app} [{model.devices[0]} -> {model.devices[1]}]: {head}"]
    if r.scheme.is_split:
        p, c, b = r.scheme
        cp = model.points[p].channels
        lines.append(f"  scheme      split after {r.layer} (p={p}): keep {c} of {cp} channels, {b} bits")
    else:
        where = "whole model on the edge" if r.scheme.is_all_edge else "raw input sent, whole model in the cloud"
        lines.append(f"  scheme      {r.scheme} ({where})")
    bd = r.breakdown
    lines.append(f"  latency     {ms(bd.total)} = edge {ms(bd.edge)} + transfer {ms(bd.transfer)} "
                 f"({bd.bytes:,.0f} B" + (f", {bd.wire:,.0f} B on the wire" if bd.wire > bd.bytes else "")
                 + f") + cloud {ms(bd.cloud)}")
    lines.append(f"  references  all-edge {ms(r.reference['all_edge'])}, all-cloud {ms(r.reference['all_cloud'])}"
                 f" -> this is {bd.total / ref:.3f} x the best single-end")
    if r.accuracy is not None:
        bound = ">= " if r.accuracy_is_bound else ""
        lines.append(f"  accuracy    top-1 {bound}{100 * r.accuracy:.2f} % (base {100 * r.base_accuracy:.2f} %, "
                     f"loss {100 * r.accuracy_loss:.2f} %)")
    else:
        lines.append("  accuracy    not evaluated")
    lines.append(f"  evaluations {r.new_evaluations} new, {r.reused_evaluations} reused from the database "
                 f"(sampler {r.sampler}, evaluator {r.evaluator})")
    cert = r.certificate
    verdict = "yes, exactly" if cert.exact else "yes" if cert.certified else "no"
    lines.append(f"  certified   {verdict}: {cert.reason}")
    if r.offline:
        gap = f"{ms(cert.gap)} faster" if q.name == "latency" else f"{100 * cert.gap:.2f} % more accurate"
        lines.append(f"  gap         an unevaluated scheme could be up to {gap}" if cert.gap else
                     "  gap         none: the answer is optimal given the database")
        if r.next_to_evaluate:
            lines.append("  next        " + "  ".join(map(str, r.next_to_evaluate)))
    for note in r.notes:
        if note != cert.reason:
            lines.append(f"  note        {note}")
    if r.study is not None:
        lines.append(f"  study       {r.study.study_name} ({len(r.study.trials)} trials)")
    lines.append(f"  wall time   {r.wall_s:.2f} s (sampler {1e3 * r.sampler_s:.1f} ms)")
    return "\n".join(lines)


if __name__ == "__main__":  # the --workers helpers: python -m search.cli latency|accuracy ARGS
    from cli.run import run_cli
    run_cli(lambda argv: run(sys.argv[1], sys.argv[2:]))
