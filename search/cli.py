"""The two query CLIs (latency_search.py, accuracy_search.py) share this parser and printer.

Flags follow the paper (`-accuracy_loss 0.01 -latency 0.6 -bandwidth 1 -gpu 0`) and GNU
style (`--accuracy-loss`, `--torch-device`, `--app`, `--sampler`, `--evaluator`, `--storage`, `--offline`,
`--json`, `--seed`, `--rtt`, `--latency-profile EDGE,CLOUD`, `--base-accuracy`, `--tolerance`,
`--study-storage`, `--study-name`, `--workers`). Exit status: 0 with an answer, 1 when no scheme meets the
bound, 2 on bad input, 3 when the database or study server cannot be reached.

The search is an Optuna study, kept by default in a journal file beside a SQLite database
(`<database>.studies.journal`; a server's own database: `database.storage.Storage.study_storage`),
named after the app, evaluator, query and devices: re-running a query resumes its study
(`optuna.load_study` reads it, optuna-dashboard shows it).

`run` is four steps: `parse_request` (flags -> a frozen `search.answer.QueryRequest`; the query
type from `search.query.QUERY_TYPES`, the sampler and its knob flags from the registry in
search/samplers), `search.answer.prepare` (databases, latency model, evaluator, base accuracy),
`execute` (progress bar, `--workers` helpers, `run_search`) and `print_answer`. The helpers get
the parsed request as JSON on stdin (`python -m search.cli --worker`), never a re-filtered argv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from apps import DEFAULT_APP
from apps.units import bytes_per_second
from cli.args import ArgParser
from cli.errors import CoInferError
from devices.spec import parse_device_pair
from devices.torch_device import add_torch_device_argument, torch_device_of
from search.query import QUERY_TYPES
from search.samplers import SAMPLERS, knobs, sampler_spec

if TYPE_CHECKING:
    from search.answer import Prepared, QueryRequest
    from search.latency import LatencyModel
    from search.runner import SearchResult

WORKER_FLAG = "--worker"  # python -m search.cli --worker: a --workers helper (`worker`)
HELP_TOLERANCE = "0.005"  # search.bounds.DEFAULT_TOLERANCE, spelled out so that --help needs no numpy (tested)


def build_parser(kind: str) -> ArgParser:
    query_type = QUERY_TYPES[kind]
    ap = ArgParser(prog=f"{kind}_search.py", description=f"CoInfer: the {query_type.goal}, at -bandwidth Mbps.")
    ap.add_argument(*query_type.bound_flags, dest="bound", metavar=query_type.bound_flags[0].lstrip("-").upper(),
                    type=float, required=True, help=query_type.bound_help)
    ap.add_argument("-bandwidth", "--bandwidth", dest="bandwidth", type=float, default=1.0,
                    help="edge-to-cloud bandwidth in Mbps (1 Mbps = 2^20 bit/s, as the paper)")
    ap.add_argument("-gpu", dest="gpu", type=int, default=None,
                    help="the paper's flag: CUDA device index for fine-tuning new evaluations (--torch-device cuda:N)")
    add_torch_device_argument(ap, "fine-tune new evaluations on this torch device")
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
    ap.add_argument("--codec", default="bitpack", help="the codec whose bytes cross the cut: bitpack (exact size) or "
                    "zstd (its sizes measured by python -m database.codecprof); default %(default)s")
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
                    help="N processes optimise the study together (its storage must be a file or a URL; "
                         "at most 4 x the CPU count); no scheme is evaluated twice, the answer is the single worker's")
    for knob, owners in knobs().values():  # each sampler knob of the registry is a flag
        ap.add_argument(f"--{knob.name}", type=int, default=knob.default, metavar="N",
                        help=f"--sampler {', '.join(owners)}: {knob.help}")
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
    request = parse_request(kind, args)
    from search.answer import prepare
    ready = prepare(request)
    result = execute(ready, request, args)
    from database.provenance import warn_foreign
    warn_foreign(ready.profiles)  # a profile of another machine is never used silently; said with the answer,
    return print_answer(result, ready, args)  # so that a failure before it stays one line


def parse_request(kind: str, args: argparse.Namespace) -> QueryRequest:
    """The request the flags make; bad input is one line (`CoInferError`)."""
    query = QUERY_TYPES[kind](args.bound, args.bandwidth)
    spec = sampler_spec(args.sampler)
    if args.rtt is not None and not (args.rtt >= 0 and math.isfinite(args.rtt)):
        raise CoInferError(f"--rtt must be >= 0 seconds, got {args.rtt}")
    if args.tolerance is not None and not (args.tolerance >= 0 and math.isfinite(args.tolerance)):
        raise CoInferError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    if args.max_evaluations is not None and args.max_evaluations < 0:
        raise CoInferError("--max-evaluations must be >= 0")
    for knob, _ in knobs().values():
        knob.check(getattr(args, knob.name), f"--{knob.name}")
    if not 1 <= args.workers <= max_workers():
        raise CoInferError(f"--workers must be between 1 and {max_workers()} (4 x this machine's "
                           f"{os.cpu_count() or 1} CPUs), got {args.workers}")
    torch_device = torch_device_of(args.torch_device, args.gpu, available=False)  # checked when a fine-tune runs
    from database.storage import Storage
    storage = Storage.parse(args.storage)
    edge, cloud = parse_device_pair(args.latency_profile)
    from search.answer import QueryRequest
    from search.bounds import DEFAULT_TOLERANCE
    from search.runner import SearchConfig
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    study_storage = args.study_storage or storage.study_storage
    config = SearchConfig(args.sampler, tolerance, args.seed, spec.own_knobs(vars(args)), args.offline,
                          args.max_evaluations, study_name=args.study_name, study_storage=study_storage,
                          shared=args.workers > 1 and not args.offline)
    return QueryRequest(query, args.app, config, args.evaluator, args.protocol, storage, edge, cloud, args.rtt,
                        args.base_accuracy, torch_device, args.codec)


def max_workers() -> int:
    """The most `--workers` a search may start: each is a process that may fine-tune with torch."""
    return 4 * (os.cpu_count() or 1)


def execute(ready: Prepared, request: QueryRequest, args: argparse.Namespace) -> SearchResult:
    """`run_search`, with a progress bar on a terminal and the `--workers` helper processes."""
    from search.progress import ProgressEvaluator
    from search.runner import run_search
    config, evaluator = ready.config, ready.evaluator
    progress = args.progress if args.progress is not None else sys.stderr.isatty() and not _as_json(args)
    if progress and not config.offline:
        evaluator = ProgressEvaluator(evaluator, config.budget, desc=f"{config.sampler} search")
    helpers = start_helpers(replace(request, search=config), args.workers)
    try:
        return run_search(ready.problem, evaluator, config)
    finally:
        if isinstance(evaluator, ProgressEvaluator):
            evaluator.close()
        failed = [proc.returncode for proc in helpers if proc.wait() not in (0, 1)]  # 1: no scheme meets the bound
        if failed and sys.exc_info()[1] is None:  # else this process's own error says why, in one line
            raise CoInferError(f"a --workers helper process failed (exit {failed[0]})")


def _as_json(args: argparse.Namespace) -> bool:
    return args.json or args.json_full


def print_answer(result: SearchResult, ready: Prepared, args: argparse.Namespace) -> int:
    """Print the answer (text or JSON) on stdout; when no scheme meets the bound, one line on
    stderr and exit status 1."""
    from search.query import format_seconds
    model = ready.model
    if _as_json(args):
        out = dict(result.to_json(), app=ready.app.name, devices=list(model.devices),
                   study_storage=ready.config.study_storage, profiles=[u.to_json() for u in ready.profiles])
        print(json.dumps(out, indent=1) if args.json_full else json.dumps(compact(out), separators=(",", ":")))
    elif result.feasible:
        from database.provenance import describe_uses
        print(format_result(result, ready.app.name, model))
        print(f"  profiles    {describe_uses(ready.profiles)}")
    if not result.feasible:
        fastest = result.breakdown.total
        print(f"no scheme meets the bound: {result.query.describe(result.problem.reference)} at "
              f"{result.query.bandwidth:g} Mbps; the fastest scheme, {result.scheme}, takes "
              f"{format_seconds(fastest)}", file=sys.stderr)
        return 1
    return 0


def start_helpers(request: QueryRequest, workers: int) -> list:
    """`--workers N`: N - 1 more processes run the same search on the same study (their output is
    discarded; this process prints the answer). Each is `python -m search.cli --worker` and reads
    the request, its study named, as JSON on stdin (never the command line, which would be parsed
    again and which others can read: a storage URL may hold a password). The study must be shared:
    a file or a URL."""
    config = request.search
    if workers <= 1 or config.offline:
        return []
    if config.study_storage == "memory":
        raise CoInferError("--workers needs a study storage the processes share: --study-storage FILE.journal or URL")
    import subprocess
    text = json.dumps(request.to_json())
    procs = []
    for _ in range(workers - 1):
        proc = subprocess.Popen([sys.executable, "-m", "search.cli", WORKER_FLAG], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        proc.stdin.write(text)
        proc.stdin.close()
        procs.append(proc)
    return procs


def worker(_argv: list[str] | None = None) -> int:
    """A `--workers` helper: the search of the `QueryRequest` given as JSON on stdin, quietly."""
    from search.answer import QueryRequest, prepare
    from search.runner import run_search
    try:
        request = QueryRequest.from_json(json.loads(sys.stdin.read()))
    except (ValueError, KeyError, TypeError) as exc:
        raise CoInferError(f"{WORKER_FLAG}: stdin is not a query request: {exc}") from None
    ready = prepare(request)
    run_search(ready.problem, ready.evaluator, ready.config)
    return 0


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
        gap = q.format_gap(cert.gap)
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


if __name__ == "__main__":  # the --workers helpers: python -m search.cli --worker < request.json
    from cli.run import run_cli
    if sys.argv[1:] != [WORKER_FLAG]:
        print(f"error: usage: python -m search.cli {WORKER_FLAG} < request.json (a --workers helper)", file=sys.stderr)
        sys.exit(2)
    run_cli(worker)
