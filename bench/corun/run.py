"""One co-run benchmark into one folder: servers, profiler, in-process baseline, client sweeps, every cell.

    run_corun(CorunConfig(out="bench/out/corun/RUN"), progress=print)

Steps (all on loopback):

1. The profiler (`python -m bench.profiler --interval 1`) starts, watching this process's tree; it
   stops at the end (RUN/profile.csv).
2. The apps: `apps`, each under its scheme; with `twin`, a second app that is the first under
   another name (its YAML copied into RUN/apps/, the same checkpoint), so two apps with their own
   queues share the server: the multi-app case with only the shipped app.
3. The in-process baseline per target (`bench.corun.inprocess`) at batch 1 and at the batching
   size, and at batch 1 again right before and right after the `base` cell's closed sweep (side by
   side with it, the server idle; the machine is shared): RUN/inprocess.json.
4. With `compare_layouts` and two apps or more: a closed-loop cell at the largest client count
   against one server for all apps (`shared`) and against one server per app (`per-app`), nothing
   else running, `layout_rounds` times in alternating order: RUN/layout.json (medians, and each
   round; cells under RUN/layout/).
5. Each of `cells` in turn: `base`, `train`, `batch`, `batch+train`. A fresh server (or one per
   app under `per-app`) with dynamic batching for `batch*` (`batch` policy) and the training co-run
   for `*train` (`train_app` at the server's default setting: nice 19, 1 thread; progress in
   RUN/train-TAG.csv, load starts once it trains); a closed-loop sweep over `clients`, then an
   open-loop (Poisson) sweep at `load` x the saturation throughput (the best closed-loop
   throughput of the same batching without training), split over the clients. Server logs and
   final stats: RUN/server-TAG.log, RUN/server-TAG.stats.

`python -m bench.corun report RUN` turns the folder into tables and plots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from apps import load_app
from bench.corun.load import LoadConfig, Target, preflight, run_load
from cli.errors import CoInferError
from runtime.batching import BatchPolicy
from runtime.ready import wait_ready

ROOT = Path(__file__).resolve().parents[2]
CELLS = ("base", "train", "batch", "batch+train")
LAYOUTS = ("shared", "per-app")


@dataclass(frozen=True)
class CorunConfig:
    """The run (see the module doc). `apps` are names or YAML paths, `schemes` one per app."""

    out: str
    apps: tuple[str, ...] = ("vgg16_digits",)
    schemes: tuple[str, ...] = ("4,16,4",)
    twin: bool = True
    twin_scheme: str = "all-cloud"
    clients: tuple[int, ...] = (1, 2, 4, 8)
    duration: float = 5.0
    load: float = 0.5
    modes: tuple[str, ...] = ("closed", "poisson")
    cells: tuple[str, ...] = CELLS
    train_app: str | None = None  # None: the first app
    batch: BatchPolicy = field(default_factory=lambda: BatchPolicy(16, 0.002))
    layout: str = "shared"
    compare_layouts: bool = True
    layout_rounds: int = 1
    seed: int = 0
    images: int = 32
    inprocess_s: float = 3.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if len(self.schemes) != len(self.apps):
            raise CoInferError(f"{len(self.apps)} app(s) but {len(self.schemes)} scheme(s): give one scheme per app")
        if unknown := [c for c in self.cells if c not in CELLS]:
            raise CoInferError(f"unknown cell {unknown[0]!r} (known: {', '.join(CELLS)})")
        if self.layout not in LAYOUTS:
            raise CoInferError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if not 0 < self.load <= 1:
            raise CoInferError(f"load must be in (0, 1], got {self.load:g}")
        if not self.duration > 0 or not self.clients or min(self.clients) < 1:
            raise CoInferError("duration must be positive and client counts at least 1")


class Servers:
    """The cloud server process(es) of one cell: started with `start`, stopped (SIGTERM) by `stop`."""

    def __init__(self, run: Path, tag: str, app_refs: list[str], layout: str, batch: BatchPolicy | None,
                 train: str | None) -> None:
        self.run, self.tag = run, tag
        groups = [app_refs] if layout == "shared" else [[ref] for ref in app_refs]
        self.procs: list[tuple[subprocess.Popen, list[str]]] = []
        self.ports: dict[str, int] = {}
        self.progress = run / f"train-{tag}.csv" if train else None
        self.log = open(run / f"server-{tag}.log", "w")  # noqa: SIM115  # closed by stop()
        for i, group in enumerate(groups):
            cmd = [sys.executable, "-m", "runtime.cloud", "--app", ",".join(group), "--port", "0", "--threads", "1",
                   "--no-finetuned", "--json"]
            if batch is not None and batch.enabled:
                cmd += ["--batch-images", str(batch.max_images), "--batch-wait-ms", f"{batch.max_wait_s * 1e3:g}"]
            if train and i == 0:
                cmd += ["--train", train, "--train-progress", str(self.progress)]
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                    stdout=subprocess.PIPE, stderr=self.log, text=True)
            self.procs.append((proc, group))

    def wait(self, names: dict[str, str]) -> dict[str, int]:
        """Each app's port once its server is ready (and the training has begun); `names`: ref -> name."""
        try:
            for proc, group in self.procs:
                port = wait_ready(proc, 120, f"the cloud server of {', '.join(group)}")["port"]
                for ref in group:
                    self.ports[names[ref]] = port
            if self.progress is not None:
                from runtime.training import read_progress
                deadline = time.monotonic() + 120
                while not any(r[1] > 0 for r in read_progress(self.progress)):
                    if time.monotonic() > deadline:
                        raise CoInferError("the training co-run did not start within 120 s")
                    time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self.ports

    def stop(self) -> list[str]:
        """SIGTERM each server; their final stats lines (also written to RUN/server-TAG.stats)."""
        stats = []
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            stats.append((out or "").strip().splitlines()[-1] if (out or "").strip() else "")
        self.log.close()
        (self.run / f"server-{self.tag}.stats").write_text("\n".join(stats) + "\n")
        return stats


def twin_app(ref: str, run: Path) -> Path:
    """The app `ref` under another name (its YAML in RUN/apps/, the same checkpoint, absolute)."""
    from apps import app_path
    app = load_app(ref)
    data = yaml.safe_load(app_path(ref).read_text())
    data["name"] = (app.name[:14] + "_b") if len(app.name) > 14 else app.name + "_b"
    data["checkpoint"] = str(app.checkpoint)
    folder = run / "apps"
    folder.mkdir(exist_ok=True)
    path = folder / f"{data['name']}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _sweep(cfg: CorunConfig, out: Path, tag: str, targets: tuple[Target, ...], modes: tuple[str, ...],
           saturation: dict[str, float], progress: Callable[[str], None],
           around: Callable[[], None] | None = None) -> dict[str, float]:
    """The closed then open sweeps of one cell; returns the saturation (req/s) per target of the closed one.
    `around` runs right before and right after the closed sweep (the side-by-side in-process baseline)."""
    from bench.corun.report import cell_stats
    sat: dict[str, float] = {}
    if "closed" in modes:
        if around is not None:
            around()
        run_load(LoadConfig(targets, cfg.clients, "closed", 1.0, cfg.duration, cfg.seed, tag, None, cfg.timeout,
                            str(out)), progress=lambda r: progress(f"  {tag} closed n={r.clients}: {r.requests} "
                                                                   f"requests, {r.failed} failed"))
        if around is not None:
            around()
        for s in cell_stats(out):
            if s.tag == tag and s.mode == "closed":
                sat[s.target] = max(sat.get(s.target, 0.0), s.throughput)
    if "poisson" in modes:
        base = saturation or sat
        for n in cfg.clients:
            # one rate per client for all targets: the slowest target's share, so no target is overloaded
            rate = min(cfg.load * base.get(t.label, 1.0) / n for t in targets)
            run_load(LoadConfig(targets, (n,), "poisson", max(rate, 0.1), cfg.duration, cfg.seed, tag, None,
                                cfg.timeout, str(out)),
                     progress=lambda r: progress(f"  {tag} poisson n={r.clients} at {r.rate:.1f}/s per client: "
                                                 f"{r.requests} requests, {r.failed} failed"))
    return sat


def compare_layouts(cfg: CorunConfig, out: Path, refs: list[str], names: dict[str, str], targets_for,
                    progress: Callable[[str], None]) -> dict:
    """`layout_rounds` rounds of a closed-loop cell at the largest client count per layout, the
    layouts' order alternating; per layout the medians over rounds (and every round)."""
    import statistics

    from bench.corun.report import cell_stats, percentiles, read_rows
    n = max(cfg.clients)
    rounds: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    for i in range(cfg.layout_rounds):
        for name in LAYOUTS if i % 2 == 0 else LAYOUTS[::-1]:
            servers = Servers(out, f"layout-{name}-{i}", refs, name, None, None)
            folder = out / "layout" / f"{name}-{i}"
            try:
                placed = targets_for(servers.wait(names))
                folder.mkdir(parents=True, exist_ok=True)
                cell = run_load(LoadConfig(placed, (n,), "closed", 1.0, cfg.duration, cfg.seed, "base", None,
                                           cfg.timeout, str(folder)))[0]
            finally:
                servers.stop()
            stats = cell_stats(folder)
            lat = [float(r["latency_s"]) for r in read_rows(folder / cell.folder) if r["status"] == "ok"]
            p50, _, p99 = percentiles(lat)
            rounds[name].append({"throughput": sum(s.throughput for s in stats), "p50_ms": p50, "p99_ms": p99,
                                 "failed": cell.failed, "per_target": {s.target: s.throughput for s in stats}})
            progress(f"layout {name} round {i + 1}: {rounds[name][-1]['throughput']:.1f} req/s, "
                     f"p99 {p99 or 0:.2f} ms")
    return {name: {"clients": n, "rounds": len(rs),
                   "throughput": statistics.median(r["throughput"] for r in rs),
                   "p50_ms": statistics.median(r["p50_ms"] or 0 for r in rs),
                   "p99_ms": statistics.median(r["p99_ms"] or 0 for r in rs),
                   "failed": sum(r["failed"] for r in rs), "each": rs} for name, rs in rounds.items()}


def run_corun(cfg: CorunConfig, progress: Callable[[str], None] = print) -> Path:
    """Every step of the module doc into `cfg.out`; returns the folder."""
    from compress.scheme import Scheme
    out = Path(cfg.out)
    if (out / "cells.jsonl").exists():
        raise CoInferError(f"{out} already holds a run (cells.jsonl): give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    refs = list(cfg.apps)
    schemes = [Scheme.parse(s) for s in cfg.schemes]
    if cfg.twin:
        refs.append(str(twin_app(refs[0], out)))
        schemes.append(Scheme.parse(cfg.twin_scheme))
    apps = [load_app(r) for r in refs]
    names = {r: a.name for r, a in zip(refs, apps)}
    train = cfg.train_app or refs[0]
    load_app(train)
    profiler = subprocess.Popen([sys.executable, "-m", "bench.profiler", "--interval", "1", "--out",
                                 str(out / "profile.csv"), "--pid", str(os.getpid())], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
    try:
        import torch
        torch.set_num_threads(1)
        from bench.corun.inprocess import inprocess_throughput
        from bench.corun.payloads import make_payload
        from models.build import load_base_model
        targets = []
        inprocess: dict[str, dict] = {}
        bases = {}
        for app, scheme in zip(apps, schemes):
            base = bases[app.name] = load_base_model(app)
            payload = make_payload(app, scheme, cfg.images, base)
            target = Target(app.name, str(scheme), "127.0.0.1", 0, payload)
            targets.append(target)
            one = inprocess_throughput(app, scheme, payload, 1, cfg.inprocess_s, base)
            many = inprocess_throughput(app, scheme, payload, cfg.batch.max_images, cfg.inprocess_s, base)
            inprocess[target.label] = {"batch1": one, "batchN": many, "batchN_size": cfg.batch.max_images,
                                       "base_around": []}
            progress(f"in-process {target.label}: {one:.1f} images/s at batch 1, {many:.1f} at batch "
                     f"{cfg.batch.max_images}")
        (out / "inprocess.json").write_text(json.dumps(inprocess, indent=1))

        def around_base() -> None:
            """Batch 1 in-process again, right beside the base cell's closed sweep (the server idle)."""
            for app, scheme, target in zip(apps, schemes, targets):
                rate = inprocess_throughput(app, scheme, target.payload, 1, cfg.inprocess_s, bases[app.name])
                inprocess[target.label]["base_around"].append(rate)
            (out / "inprocess.json").write_text(json.dumps(inprocess, indent=1))

        def targets_for(ports: dict[str, int]) -> tuple[Target, ...]:
            placed = tuple(replace(t, port=ports[t.app]) for t in targets)
            for t in placed:
                preflight(t, timeout=cfg.timeout)
            return placed

        if cfg.compare_layouts and len(apps) > 1:
            (out / "layout.json").write_text(json.dumps(compare_layouts(cfg, out, refs, names, targets_for,
                                                                        progress), indent=1))

        saturation: dict[str, dict[str, float]] = {}
        for tag in cfg.cells:
            parts = tag.split("+")
            batching = "batch" in parts
            servers = Servers(out, tag, refs, cfg.layout, cfg.batch if batching else None,
                              train if "train" in parts else None)
            try:
                placed = targets_for(servers.wait(names))
                progress(f"cell {tag}: servers ready")
                sat = _sweep(cfg, out, tag, placed, cfg.modes, saturation.get(str(batching), {}), progress,
                             around_base if tag == "base" else None)
                if "train" not in parts and sat:
                    saturation[str(batching)] = sat
            finally:
                stats = servers.stop()
            progress(f"cell {tag}: server stats {' | '.join(stats)}")
    finally:
        profiler.send_signal(signal.SIGTERM)
        try:
            profiler.wait(10)
        except subprocess.TimeoutExpired:
            profiler.kill()
    return out
