"""Latency database builder: per-point edge and cloud compute of an app on this machine.

    python -m database.profile --app vgg16_digits --device cpu-edge     # at the app's edge device's speed
    python -m database.profile --app vgg16_digits --device cpu-cloud
    python -m database.profile --app vgg16_digits --device pi-like --side edge --speed 0.25

For every partition point p and a grid of kept channels c (1, C/4, C/2, 3C/4, C) it times,
at batch size 1 after warm-up:
- edge  (p, c): head through block p pruned to c filters, then quantise + pack (8 bits,
  `compress.activation.to_bytes`, the call the runtime's edge makes);
- cloud (p, c): unpack + dequantise (`compress.activation.from_bytes`), then the tail whose first
  conv has c input channels and the top-5 softmax the runtime's cloud replies with;
plus the whole model on the edge (point P, all-edge), the edge's share of all-cloud (point -1:
quantise + pack the raw input) and the whole model in the cloud from the raw input (point -1).
Median and p90 of N runs are stored with the device's fingerprint, and the profile's own provenance
(that fingerprint with the device's speed and emulation, and when: `Store.put_provenance`), which
profiling another app on the same device never changes. Every call runs under
`torch.inference_mode()`, as the runtime's (no_grad was 0.5-4 % slower on the default tails).
Each sample is one call after 5 ms idle (`--idle-ms`), as a request's stage finds the machine
in the runtime, and the samples are spread over `--passes` rounds of all rows. Every CPU is kept
out of idle while it runs (`devices.slowdown.KeepWarm`, as on the testbed; `--no-keep-warm` to skip).

The device (`apps.schema.Device`) is the devices file's, else the app's edge or cloud device of that
name (its speed and emulation; its side is both), else this CPU as it is; `--side`, `--speed` and
`--emulation` override its fields. A device with a speed is emulated as the runtime emulates it
(`Device.emulation`):
- `dilate` (default): every sample is one call on the emulated device (`devices.slowdown`): run
  at full speed, then sleep until its thread CPU time / speed, exactly as the runtime's edge does;
- `quota`: the process puts itself under a cgroup CPU quota of `speed` CPUs (root only; otherwise it
  says so and profiles unthrottled) and each sample is the mean of back-to-back runs over 10 quota
  periods: the steady-state latency of a continuously busy throttled device (one short run alone
  would show either full speed or a stall, never the device's rate; see `devices.slowdown`).

`main` parses the flags into a `Device` and a frozen `ProfileConfig`; `profile_device` does the rest
(refuse a silent re-profile, apply the quota, measure with the noise report, store).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from apps import DEFAULT_APP, EMULATIONS, App, Device, load_app
from apps.schema import check_name
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from devices.cpuquota import apply_cpu_quota, quota_period_us, quota_support
from devices.slowdown import KeepWarm, SlowCPU
from devices.torch_device import add_torch_device_argument, check_torch_device

if TYPE_CHECKING:  # torch and the database load on first use, so --help answers at once
    import torch

    from database.noise import Noise
    from database.store import LatencyRow, Store

IdleFn = Callable[[str, int, int], float]  # (side, point, channels) -> seconds idle before that row


def channel_grid(cp: int) -> list[int]:
    return sorted({1, max(1, cp // 4), max(1, cp // 2), max(1, 3 * cp // 4), cp})


def time_fn(fn: Callable[[], object], runs: int, warmup: int, sync: Callable[[], None],
            window_s: float = 0.0) -> tuple[float, float]:
    """(median, p90) wall seconds of fn() over `runs` timed samples after `warmup` calls.

    With `window_s` > 0 each sample is the mean of back-to-back calls spanning at least that
    long: under a CPU quota a single millisecond call either runs at full speed or stalls for
    the rest of the quota period, and only a window of many periods shows the throttled rate.
    """
    start = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    sync()
    per_call = (time.perf_counter() - start) / max(1, warmup)
    k = 1 if window_s <= 0 else min(500, max(1, math.ceil(window_s / max(per_call, 1e-6))))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(k):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / k)
    return statistics.median(samples), percentile90(samples)


def percentile90(samples: list[float]) -> float:
    """The 90th percentile, linearly interpolated (numpy.percentile's default)."""
    xs = sorted(samples)
    pos = 0.9 * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def top_k(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The prediction the runtime returns: softmax probabilities of the k best classes."""
    import torch
    return torch.softmax(logits.float(), dim=1).topk(min(k, logits.shape[1]), dim=1).values


def job_fn(base, x: torch.Tensor, points: int, side: str, p: int, c: int,
           torch_device: torch.device) -> Callable[[], object]:
    """What one profile row times, built fresh (the runtime's exact calls, see the module doc)."""
    from compress import activation
    from compress.prune import prune_at
    if p == points:  # all-edge: the whole model and its top-k, as the runtime's edge does
        return lambda: top_k(base(x))
    if p == -1 and side == "edge":  # all-cloud's edge share: the raw input, quantised and packed
        return lambda: activation.to_bytes(x, 8)
    if p == -1:  # all-cloud in the cloud: the raw input unpacked, the whole model, top-k
        body, shape = activation.to_bytes(x, 8), tuple(x.shape)
        return lambda: top_k(base(activation.from_bytes(body, shape, 8).to(torch_device)))
    model = prune_at(base, p, c).eval()
    if side == "edge":  # the runtime's edge: head, then quantise + pack (compress.activation)
        return lambda: activation.to_bytes(model.forward_head(x, p), 8)
    a = model.forward_head(x, p)  # the runtime's cloud: unpack + dequantise, then the tail
    body, shape = activation.to_bytes(a, 8), tuple(a.shape)
    return lambda: top_k(model.forward_tail(activation.from_bytes(body, shape, 8).to(torch_device), p))


def one_request(fn: Callable[[], object], sync: Callable[[], None], device: SlowCPU | None,
                idle_s: float) -> float:
    """Seconds of one call after `idle_s` of idling, the way a request finds the runtime: each edge or
    cloud stage starts after the other side and the link have had their turn (measured here, the
    default model's head to point 1 took 0.34 ms of CPU back to back, 0.48 ms after 5 ms idle). With
    `device` the call runs on that emulated device (`SlowCPU.call`, as the runtime's edge does)."""
    time.sleep(idle_s)
    if device is not None:
        return device.call(fn)[1]
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def quota_window_s(speed: float) -> float:
    """Seconds of back-to-back calls per sample under a cgroup quota of `speed` CPUs: 10 quota periods."""
    return 10 * quota_period_us(speed) / 1e6


@dataclass(frozen=True)
class ProfileConfig:
    """How one device is profiled, built once (by `main` from its flags, or by a benchmark); checked here.

    The device's emulation decides how a sample is taken: `dilate`, one call on a device `speed` times as
    fast (`SlowCPU`); `quota`, the mean of back-to-back calls over `quota_window_s(speed)` (`time_fn`; the
    process must be under the quota: `profile_device` puts it there); none, one call at this machine's speed."""
    device: Device                             # the rows are stored under its name
    sides: tuple[str, ...] = ("edge", "cloud")
    runs: int = 30                             # samples per row (median and p90 stored)
    warmup: int = 5                            # untimed calls before a row's samples, each round
    passes: int = 5                            # rounds over all rows the samples are spread over
    idle_s: float | IdleFn = 0.005             # idle before each sample, or a function of the row
    torch_device: str = "cpu"                  # cpu, cuda or cuda:N (devices.torch_device)
    threads: int = 1                           # torch threads (profile_device sets them)
    only_points: frozenset[int] | None = None  # split rows of these points only (None: all)
    progress: bool = True

    def __post_init__(self) -> None:
        idle_ok = callable(self.idle_s) or 0 <= self.idle_s <= 60
        if not (1 <= self.runs <= 100_000 and 0 <= self.warmup <= 10_000 and 1 <= self.threads <= 1024
                and 1 <= self.passes <= 10_000 and idle_ok):
            raise CoInferError("--runs must be in 1..100000, --passes 1..10000, --threads 1..1024, --warmup 0..10000 "
                               "and --idle-ms 0..60000")
        if self.device.dilated and self.torch_device != "cpu":
            raise CoInferError("a dilated (slowed) device is emulated on the CPU only: drop --torch-device or --speed")
        if self.device.dilated and self.threads != 1:
            raise CoInferError("a dilated device is timed by thread CPU time: --threads must be 1")

    @property
    def window_s(self) -> float:
        """Seconds of back-to-back calls per sample: a quota window under `quota`, else 0 (one call)."""
        return quota_window_s(self.device.speed) if self.device.emulation == "quota" else 0.0


def profile_app(app: App, config: ProfileConfig) -> list[LatencyRow]:
    """Every row's samples. With `config.window_s` (a CPU quota): `time_fn`'s back-to-back windows, row by
    row. Otherwise one request after `config.idle_s` idle per sample, interleaved over `config.passes`
    rounds of every row (runs / passes samples a row each round), so a slow minute of a shared machine
    spreads over all rows instead of biasing a few. `config.only_points` limits the split rows to those
    points (the whole-model rows are always measured). `config.idle_s` may be a function of the row
    (side, point, channels): how long that stage idles before it in the runtime (work after a longer
    idle takes longer here)."""
    import torch

    from cli.progress import progress
    from database.store import LatencyRow
    from models.build import load_base_model
    runs, warmup, window_s, idle_s = config.runs, config.warmup, config.window_s, config.idle_s
    device = SlowCPU(config.device.speed) if config.device.dilated else None
    torch_device = torch.device(config.torch_device)
    sync = torch.cuda.synchronize if torch_device.type == "cuda" else (lambda: None)
    base = load_base_model(app).to(torch_device)
    points = base.partition_points()
    x = torch.randn(1, app.in_channels, app.input_size, app.input_size, device=torch_device)
    sides = config.sides
    jobs = [(side, pt.index, c) for side in sides for pt in points for c in channel_grid(pt.channels)
            if config.only_points is None or pt.index in config.only_points]
    if "edge" in sides:
        jobs += [("edge", len(points), app.num_classes), ("edge", -1, app.in_channels)]
    if "cloud" in sides:
        jobs.append(("cloud", -1, app.in_channels))
    rounds = 1 if window_s > 0 else max(1, min(config.passes, runs))
    per_round = [runs // rounds + (i < runs % rounds) for i in range(rounds)]
    samples: dict[tuple[str, int, int], list[float]] = {job: [] for job in jobs}
    bar = progress(total=len(jobs) * rounds, desc=f"profile {app.name} on {config.device.name}",
                   enabled=config.progress)
    with torch.inference_mode():  # as the runtime's edge and cloud compute (runtime.client, runtime.cloud)
        for n in per_round:
            for job in jobs:
                fn = job_fn(base, x, len(points), *job, torch_device)
                if window_s > 0:
                    median, p90 = time_fn(fn, runs, warmup, sync, window_s)
                    samples[job] = [median, p90]
                else:
                    for _ in range(max(1, warmup)):
                        one_request(fn, sync, device, 0.0)
                    idle = idle_s(*job) if callable(idle_s) else idle_s
                    samples[job] += [one_request(fn, sync, device, idle) for _ in range(n)]
                bar.update()
    bar.close()
    rows = []
    for (side, p, c), xs in samples.items():
        median, tail = (xs[0], xs[1]) if window_s > 0 else (statistics.median(xs), percentile90(xs))
        rows.append(LatencyRow(app.name, config.device.name, p, c, side, median, tail, runs))
    return rows


def _parser() -> ArgParser:
    ap = ArgParser(description="Profile per-point edge/cloud latency of an app on this machine.")
    ap.add_argument("--app", default=DEFAULT_APP)
    ap.add_argument("--device", required=True,
                    help="name to store the profile under (e.g. cpu-edge); a device of the devices file "
                         "(devices/spec.py) or of the app brings its side and speed")
    ap.add_argument("--devices", default=None, metavar="FILE", help="devices file (default: devices.yml, if any)")
    ap.add_argument("--side", choices=["edge", "cloud", "both"], default=None,
                    help="which side to profile (default: the device's, else both)")
    ap.add_argument("--speed", type=float, default=None,
                    help="emulate a device this fraction of this CPU's speed, in (0, 1] (default: the device's)")
    ap.add_argument("--emulation", choices=EMULATIONS, default=None,
                    help="how the speed is made: dilate (stretched time, devices.slowdown) or quota (a cgroup CPU "
                         "quota of SPEED CPUs, root); default: the device's, else dilate")
    ap.add_argument("--cpu-quota", default=None, help=argparse.SUPPRESS)  # renamed: one line naming the new flags
    ap.add_argument("--replace", action="store_true",
                    help="overwrite the device's earlier profile of these sides (default: refuse)")
    ap.add_argument("--points", default=None, metavar="P,P,...",
                    help="split rows of these partition points only (a quick partial profile)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--keep-warm", action=argparse.BooleanOptionalAction, default=True,
                    help="keep every CPU out of idle while profiling, as the testbed does (devices.slowdown)")
    ap.add_argument("--runs", type=int, default=30, help="samples per row (median and p90 stored)")
    ap.add_argument("--passes", type=int, default=5, help="rounds over all rows the samples are spread over")
    ap.add_argument("--idle-ms", type=float, default=5.0,
                    help="idle before each sample, as between a request's stages (default 5 ms)")
    ap.add_argument("--warmup", type=int, default=5)
    add_torch_device_argument(ap, "profile on this torch device (a GPU: its fingerprint is stored)")
    ap.add_argument("--storage", default=None)
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object: the device, the note, every stored row, the noise report")
    return ap


def _points(text: str | None, count: int) -> frozenset[int] | None:
    if text is None:
        return None
    try:
        points = frozenset(int(p) for p in text.split(","))
    except ValueError:
        raise CoInferError(f"--points takes partition points P,P,..., got {text!r}") from None
    if not points or not all(0 <= p < count for p in points):
        raise CoInferError(f"--points must lie in 0..{count - 1}, got {text!r}")
    return points


def resolve_profiled_device(args: argparse.Namespace, app: App) -> Device:
    """The device `--device` names (the devices file's, else the app's edge or cloud device with side both,
    else this CPU as it is, side both), with `--side`, `--speed` and `--emulation` applied."""
    from database.registry import open_registry_store, stored_device
    from devices.spec import resolve_device, with_flags
    base = resolve_device(args.device, args.devices)
    if base is None:
        app_device = resolve_device(args.device, None, (app,))
        store = None if app_device else open_registry_store(args.storage)
        base = (app_device.model_copy(update={"side": "both"}) if app_device
                else (store and stored_device(store, args.device)) or Device(name=args.device))
    return with_flags(base, args.side, args.speed, args.emulation)


def parse(argv: list[str] | None = None) -> tuple[App, ProfileConfig, argparse.Namespace]:
    """The flags as the app, the frozen ProfileConfig (its Device included) and the rest (storage, replace,
    keep-warm); every bad value is one CoInferError line, before anything is measured."""
    args = _parser().parse_args(argv)
    if args.cpu_quota is not None:
        raise CoInferError("--cpu-quota is gone: give the device's speed, --speed S (a fraction of this CPU), "
                           "with --emulation quota for a cgroup CPU quota")
    check_name(args.device, "--device")  # stored, and part of a cgroup's name under quota emulation
    app = load_app(args.app)
    device = resolve_profiled_device(args, app)
    from models.build import app_points
    only = _points(args.points, len(app_points(app)))
    config = ProfileConfig(device, device.sides(), runs=args.runs, warmup=args.warmup, passes=args.passes,
                           idle_s=args.idle_ms / 1e3, torch_device=check_torch_device(args.torch_device),
                           threads=args.threads, only_points=only)
    check_torch_device(config.torch_device, available=True)  # the GPU asked for is here: before any store opens
    return app, config, args


def check_not_profiled(store, app: str, device: str, sides: tuple[str, ...], replace: bool) -> None:
    """Re-profiling keeps the earlier profile: refuse, naming --replace, unless it is given (then
    the old rows of those sides go, so no stale row survives a partial re-profile)."""
    done = sorted(set(sides) & store.profiled_devices(app).get(device, set()))
    if done and not replace:
        raise CoInferError(f"device {device} already has a {'+'.join(done)} profile of {app}: pass --replace to "
                           "overwrite it, or profile under another --device name")
    if done:
        store.delete_latency(app, device, tuple(done))


def apply_quota(config: ProfileConfig, store: Store) -> tuple[ProfileConfig, str]:
    """Under `quota` emulation, put this process under the device's cgroup CPU quota: (config, "") once it
    is, or where it cannot be (not root, no cgroup v1) the config of this CPU as it is and a note saying so."""
    device = config.device
    if device.emulation != "quota":
        return config, ""
    reason = quota_support()
    if reason:
        note = f"CPU quota {device.speed} requested but not applied ({reason}): profiled unthrottled"
        print(f"warning: {note}")
        return replace(config, device=device.with_speed(None)), note
    store.check_writable()  # before the process moves into a cgroup
    try:
        apply_cpu_quota(device.speed, f"coinfer-profile-{device.name}")
    except (OSError, ValueError) as exc:
        raise CoInferError(f"cannot apply a CPU quota of {device.speed:g}: {exc}") from None
    return config, ""


@dataclass(frozen=True)
class Profiled:
    """What `profile_device` stored: the rows, the device as measured, its noise report and a note."""
    rows: list[LatencyRow]
    device: Device
    noise: Noise
    note: str


def profile_device(app: App, config: ProfileConfig, store: Store, replace_old: bool = False,
                   keep_warm: bool = True) -> Profiled:
    """Profile `config.device` for `app` and store its rows, fingerprint and point shapes.

    Refuses a device already profiled on these sides unless `replace_old`; applies a `quota` emulation to
    this process (`apply_quota`); measures with every CPU kept out of idle (`keep_warm`) and the machine's
    drift timed before and after (database/noise.py)."""
    import torch

    from database.noise import drift, noise_of, reference_workload
    from devices.fingerprint import fingerprint
    from models.build import app_points
    store.check_writable()  # before minutes of profiling whose rows could not be stored
    check_not_profiled(store, app.name, config.device.name, config.sides, replace_old)
    config, note = apply_quota(config, store)
    if config.device.dilated:
        note = f"emulated: this CPU's thread time / {config.device.speed:g} (devices.slowdown)"
    torch.set_num_threads(config.threads)
    with KeepWarm() if keep_warm else contextlib.nullcontext():
        before = reference_workload()
        rows = profile_app(app, config)
        noise = noise_of(rows, drift(before, reference_workload()))
    info = dict(fingerprint(config.torch_device), noise=noise.to_json())
    store.put_device(config.device.name, info, note, config.device)  # keeps other apps' provenance (store.py)
    emulated = dict(info, speed=config.device.speed, emulation=config.device.emulation)
    store.put_provenance(app.name, config.device.name, config.sides, emulated, "measured")
    store.put_shapes(app.name, [(p.index, p.name, p.channels, p.height, p.width) for p in app_points(app)])
    store.put_latency(rows)
    return Profiled(rows, config.device, noise, note)


def profiled_json(app: App, done: Profiled) -> dict:
    """What --json prints: the device as measured, the note, every stored row and the noise report."""
    device = done.device
    return {"app": app.name, "device": device.name, "speed": device.speed, "emulation": device.emulation,
            "measurements": len(done.rows), "note": done.note, "noise": done.noise.to_json(),
            "warnings": list(done.noise.warnings),
            "rows": [{"point": r.point, "channels": r.channels, "side": r.side, "median_s": r.median_s,
                      "p90_s": r.p90_s, "n": r.n} for r in done.rows]}


def main(argv: list[str] | None = None) -> int:
    app, config, args = parse(argv)
    from database.storage import Storage
    from database.store import Store
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():  # notes: stderr
        done = profile_device(app, config, Store(Storage.parse(args.storage)), args.replace, args.keep_warm)
    if args.json:
        print(json.dumps(profiled_json(app, done)))
    else:
        print_profiled(app, done)
    for warning in done.noise.warnings:
        print(f"warning: {warning}; profile again on a quieter machine (--replace) before trusting it", file=sys.stderr)
    return 0


def print_profiled(app: App, done: Profiled) -> None:
    device = done.device
    quota = f" (CPU quota {device.speed} CPU)" if device.emulation == "quota" else ""
    print(f"{app.name} on {device.name}: {len(done.rows)} measurements stored"
          + (f" ({done.note})" if done.note else quota))
    from models.build import app_points
    whole = len(app_points(app))
    for r in done.rows:
        if (r.side, r.point) in (("edge", whole), ("cloud", -1)):
            label = "whole model, edge side (all-edge)" if r.side == "edge" else "whole model, cloud side (all-cloud)"
            print(f"  {label}: median {r.median_s * 1e3:.2f} ms, p90 {r.p90_s * 1e3:.2f} ms")
    print(f"  {done.noise.describe()}")


if __name__ == "__main__":
    run_cli(main)
