"""Co-running benchmark: many clients, several apps, a fine-tune beside serving; throughput and tail latency.

    python -m bench.corun client --server H:P --apps A1,A2 --clients 1,2,4,8 --mode closed|poisson
                                 [--rate R] [--duration S] [--seed N] [--scheme [APP=]SCHEME ...] [--out RUN]
    python -m bench.corun client --server H:P --apps A --clients 4 --mode trace --trace FILE [--trace-functions K]
                                 [--trace-start M] [--trace-minutes N] [--minute-seconds S] [--rate R] [--seed N]
    python -m bench.corun run    [--out RUN] [--duration 5] [--clients 1,2,4,8] [--cells base,train,...]
    python -m bench.corun report RUN

`client` is the load generator (`bench.corun.load`): client processes against running servers,
every request in RUN/requests/; `--mode trace` replays an Azure Functions trace (`bench.corun.trace`)
and prints the scheduled and achieved rate of each replayed minute. `run` starts everything itself
(`bench.corun.run`): profiler, servers per cell, in-process baseline, both sweeps. `report` prints the
tables and writes the plots (`bench.corun.report`). Each takes `--json`: one JSON object on stdout
(client: the cells, and for a trace its functions and minutes; run: the folder; report: each cell's
figures and the PNGs). Exit status: 0; 1 when requests failed (the logs are kept and named); 2 on bad
input; 3 when a server cannot be reached (one line on stderr).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.paths import data_file
from cli.run import run_cli

OUT = data_file("bench/out/corun")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CoInferError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise CoInferError(f"{what} must be at least 1, got {text!r}")
    return values


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CoInferError(f"server address must be HOST:PORT, got {text!r}")
    return host, int(port)


def _servers(values: list[str], names: list[str]) -> dict[str, tuple[str, int]]:
    """--server H:P (every app) or APP=H:P (one app; repeatable) -> app name -> address."""
    out: dict[str, tuple[str, int]] = {}
    default = None
    for value in values:
        if "=" in value:
            app, _, addr = value.partition("=")
            if app not in names:
                raise CoInferError(f"--server {value!r}: {app!r} is not one of --apps")
            out[app] = _address(addr)
        else:
            default = _address(value)
    for name in names:
        if name not in out:
            if default is None:
                raise CoInferError(f"no --server for app {name!r}")
            out[name] = default
    return out


def _schemes(values: list[str], names: list[str]) -> list[str]:
    """--scheme SCHEME (every app) or APP=SCHEME (one app by name; repeatable); default all-cloud."""
    from compress.scheme import Scheme
    chosen = dict.fromkeys(names, "all-cloud")
    for value in values:
        app, sep, scheme = value.rpartition("=")
        if sep and app not in chosen:
            raise CoInferError(f"--scheme {value!r}: {app!r} is not one of --apps ({', '.join(names)})")
        Scheme.parse(scheme)
        for name in [app] if sep else names:
            chosen[name] = scheme
    return [chosen[name] for name in names]


def _new_run(out: str | None) -> Path:
    path = Path(out) if out else OUT / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    if (path / "cells.jsonl").exists():
        raise CoInferError(f"{path} already holds a run (cells.jsonl): give a new --out")
    if path.exists() and not path.is_dir():
        raise CoInferError(f"--out {path} is a file, not a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    import os
    if not os.access(parent, os.W_OK):
        raise CoInferError(f"cannot write --out {path}: permission denied")
    return path


TRACE_FLAGS = ("trace_functions", "trace_start", "trace_minutes", "minute_seconds")


def _trace(args):
    """--mode trace: the trace's window read from --trace (None in the other modes, which refuse the flags)."""
    from bench.corun.trace import TraceWindow, read_trace
    given = [f"--{f.replace('_', '-')}" for f in ("trace", *TRACE_FLAGS) if getattr(args, f) is not None]
    if args.mode != "trace":
        if given:
            raise CoInferError(f"{given[0]} goes with --mode trace")
        return None
    if args.trace is None:
        raise CoInferError("--mode trace needs --trace FILE (Azure Functions 2019 invocations_per_function format)")
    if args.duration is not None:
        raise CoInferError("--mode trace: the duration is --trace-minutes x --minute-seconds, not --duration")
    window = TraceWindow(*(d if v is None else v for v, d in ((args.trace_functions, 5), (args.trace_start, 1),
                                                               (args.trace_minutes, 10))), args.seed)
    return read_trace(args.trace, window)


def client(args) -> int:
    from bench.corun.load import MODES, LoadConfig, Target, preflight, run_load
    from runtime.secret import resolve_token
    if args.mode not in MODES:
        raise CoInferError(f"--mode must be one of {', '.join(MODES)}, got {args.mode!r}")
    if not args.rate > 0:
        raise CoInferError(f"--rate must be a positive number of requests per second per client, got {args.rate:g}")
    trace = _trace(args)
    replay = trace.replay(args.rate, 60.0 if args.minute_seconds is None else args.minute_seconds) if trace else None
    duration = replay.duration if replay else 10.0 if args.duration is None else args.duration
    if not duration > 0:
        raise CoInferError(f"--duration must be positive, got {duration:g}")
    clients = _ints(args.clients, "--clients")
    if args.images < 1:
        raise CoInferError(f"--images must be at least 1, got {args.images}")
    refs = [a.strip() for a in args.apps.split(",")]
    if not all(refs):
        raise CoInferError(f"--apps {args.apps!r}: an empty app name")
    token = resolve_token(args.token, args.token_file)
    from apps import load_app
    apps = [load_app(ref) for ref in refs]  # an unknown app: one line, before anything is written
    names = [a.name for a in apps]
    if len(set(names)) != len(names):
        raise CoInferError(f"--apps {args.apps!r} names an app twice")
    schemes = _schemes(args.scheme or [], names)
    servers = _servers(args.server, names)
    out = _new_run(args.out)
    from bench.corun.payloads import make_payload
    from compress.scheme import Scheme
    targets = []
    for app, scheme in zip(apps, schemes):
        host, port = servers[app.name]
        targets.append(Target(app.name, scheme, host, port, make_payload(app, Scheme.parse(scheme), args.images)))
    for target in targets:
        preflight(target, token, args.timeout)  # the server is there and hosts the app, before any log
    out.mkdir(parents=True, exist_ok=True)
    config = LoadConfig(tuple(targets), clients, args.mode, args.rate, duration, args.seed, args.tag, token,
                        args.timeout, str(out), replay)
    if trace and not args.json:
        print(f"trace: {trace.describe()}; {len(replay.rates)} minutes of {replay.minute_seconds:g} s, "
              f"{args.rate:g} req/s per client on average")
    from cli.progress import progress
    bar = progress(total=len(clients), desc="corun cells", unit="cell")
    failed = total = 0
    results = []
    for result in run_load(config, progress=lambda r: bar.update(1)):
        results.append(result)
        total += result.requests
        failed += result.failed
        if not args.json:
            print(f"{args.mode} {result.clients} client(s) per app: {result.requests} requests, {result.failed} "
                  f"failed -> {out / result.folder}")
    bar.close()
    minutes = []
    if trace:
        from bench.corun.report import minute_stats, minute_table, trace_check
        minutes = minute_stats(out)
        if not args.json:
            print("\n".join([*minute_table(minutes), *trace_check(minutes)]))
    if args.json:
        extra = {"trace": {"path": trace.path, "functions": [asdict(f) | {"counts": list(f.counts)}
                                                              for f in trace.functions],
                           "counts": list(trace.counts), "eligible": trace.eligible},
                 "minutes": [m.to_json() for m in minutes]} if trace else {}
        print(json.dumps({"run": str(out), "requests": total, "failed": failed,
                          "cells": [asdict(r) for r in results], **extra}))
    if failed:
        print(f"error: {failed} of {total} requests failed (the server went away or refused them); "
              f"the logs are kept in {out}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"run folder: {out} (python -m bench.corun report {out})")
    return 0


def run(args) -> int:
    from bench.corun.run import CorunConfig, run_corun
    from runtime.batching import BatchPolicy
    if not args.duration > 0:
        raise CoInferError(f"--duration must be positive, got {args.duration:g}")
    apps = tuple(a.strip() for a in args.apps.split(","))
    schemes = tuple(s.strip() for s in args.schemes.split(";"))
    cells = () if args.cells == "none" else tuple(c.strip() for c in args.cells.split(","))
    if args.layout_rounds < 1:
        raise CoInferError(f"--layout-rounds must be at least 1, got {args.layout_rounds}")
    modes = tuple(m.strip() for m in args.modes.split(","))
    if bad := [m for m in modes if m not in ("closed", "poisson")]:
        raise CoInferError(f"--modes: unknown mode {bad[0]!r} (closed, poisson)")
    cfg = CorunConfig(str(_new_run(args.out)), apps, schemes, not args.no_twin, args.twin_scheme,
                    _ints(args.clients, "--clients"), args.duration, args.load, modes, cells, args.train,
                    BatchPolicy(args.batch_images, args.batch_wait_ms / 1e3), args.layout, not args.no_layouts,
                    args.layout_rounds, args.seed)
    from apps import load_app
    from bench.corun.payloads import check_sendable
    from compress.scheme import Scheme
    loaded = [load_app(ref) for ref in apps + ((args.train,) if args.train else ())]
    twin = [(loaded[0], args.twin_scheme)] if cfg.twin else []
    for app, scheme in [*zip(loaded, schemes), *twin]:  # before run_corun writes anything
        check_sendable(app, Scheme.parse(scheme))
    started = time.perf_counter()
    out = run_corun(cfg, progress=lambda line: print(line, file=sys.stderr if args.json else sys.stdout, flush=True))
    wall = time.perf_counter() - started
    if args.json:  # the progress lines went to stderr
        print(json.dumps({"run": str(out), "wall_s": round(wall, 1), "report": f"python -m bench.corun report {out}"}))
    else:
        print(f"done in {wall:.0f} s: python -m bench.corun report {out}")
    return 0


def report(args) -> int:
    from bench.corun.report import report as make_report
    run = Path(args.run)
    if not run.is_dir():
        raise CoInferError(f"{run} is not a folder")
    lines, figures = make_report(run)
    if args.json:  # the cells' figures as report.json holds them, the markdown report and the PNGs
        stats = json.loads((run / "report.json").read_text())
        print(json.dumps({"run": str(run), "cells": stats, "report": str(run / "report.md"),
                          "figures": [str(f) for f in figures]}))
    else:
        print("\n".join(lines))
    return 0


def _parser() -> ArgParser:
    ap = ArgParser(prog="python -m bench.corun", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("client", help="the load generator against running servers")
    c.add_argument("--server", action="append", required=True, help="HOST:PORT, or APP=HOST:PORT (repeatable)")
    c.add_argument("--apps", required=True, help="comma-separated app names or YAML paths")
    c.add_argument("--scheme", action="append", help="SCHEME for every app or APP=SCHEME (default all-cloud)")
    c.add_argument("--clients", default="1,2,4,8", help="client processes per app, one cell per count")
    c.add_argument("--mode", default="closed", help="closed (next request when the last returns), poisson, or "
                                                     "trace (--trace's per-minute rates)")
    c.add_argument("--rate", type=float, default=10.0, help="poisson: requests per second per client; trace: their "
                                                            "mean over the replay")
    c.add_argument("--duration", type=float, default=None, help="seconds per cell (default 10; trace: the replay's)")
    c.add_argument("--trace", help="trace: an Azure Functions 2019 invocations_per_function CSV (e.g. "
                                   "bench/corun/traces/sample.csv)")
    c.add_argument("--trace-functions", type=int, help="trace: functions picked by --seed (default 5)")
    c.add_argument("--trace-start", type=int, help="trace: first minute replayed, 1..1440 (default 1)")
    c.add_argument("--trace-minutes", type=int, help="trace: minutes replayed (default 10)")
    c.add_argument("--minute-seconds", type=float, help="trace: seconds each trace minute lasts (default 60: real "
                                                        "time)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tag", default="base", help="how the server runs, for the report: base, train, batch, "
                                                 "batch+train")
    c.add_argument("--images", type=int, default=32, help="test images per app, sent in turn")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
    c.add_argument("--token")
    c.add_argument("--token-file")
    c.add_argument("--out", help="run folder (default bench/out/corun/UTC-TIME)")
    r = sub.add_parser("run", help="servers, profiler and every cell into one folder")
    r.add_argument("--out", help="run folder (default bench/out/corun/UTC-TIME)")
    r.add_argument("--apps", default="vgg16_digits")
    r.add_argument("--schemes", default="4,16,4", help="one per app, ';'-separated")
    r.add_argument("--no-twin", action="store_true", help="no second app (the first under another name)")
    r.add_argument("--twin-scheme", default="all-cloud")
    r.add_argument("--clients", default="1,2,4,8")
    r.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    r.add_argument("--load", type=float, default=0.5, help="open loop at this fraction of saturation")
    r.add_argument("--modes", default="closed,poisson")
    r.add_argument("--cells", default="base,train,batch,batch+train", help="which cells ('none': only the "
                                                                          "layout comparison)")
    r.add_argument("--train", help="app the training co-run fine-tunes (default: the first)")
    r.add_argument("--batch-images", type=int, default=16)
    r.add_argument("--batch-wait-ms", type=float, default=2.0)
    r.add_argument("--layout", default="shared", help="shared (one server for all apps) or per-app")
    r.add_argument("--no-layouts", action="store_true", help="skip the shared vs per-app comparison")
    r.add_argument("--layout-rounds", type=int, default=1, help="rounds of the layout comparison (alternating)")
    r.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("report", help="tables and plots of a run folder")
    p.add_argument("run")
    for command in (c, r, p):
        command.add_argument("--json", action="store_true", help="the result as one JSON object on stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"client": client, "run": run, "report": report}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
