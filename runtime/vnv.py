"""KETI's VnV measurement: the greedy and the budgeted choice run for real over n test images.

Each choice runs in this process as the runtime runs it, on the emulated device pair:
- edge: the head (all of the model for all-edge), then quantise + pack at the scheme's bits
  (`compress.activation.to_bytes`; the raw input at 8 bits for all-cloud), as one call on the
  emulated edge (`devices.slowdown.SlowCPU`: full speed, then a wait to thread CPU time / speed);
  all-edge ends with the top-5 softmax the runtime's edge computes;
- link: the bytes that call produced, framed as the runtime frames them (the app's `link`: frame
  header once, transport headers per segment), over the bandwidth (serialisation, computed from the
  real byte count; 2^20 bit/s a Mbps) plus the app's RTT;
- cloud: unpack + dequantise, the tail, the top-5 softmax, timed (wall) at this CPU's speed.
A split scheme's weights are its fine-tuned ones (`runtime.weights`; fine-tuned and saved first when
missing, as for the accuracy database). The two choices alternate image by image (which goes first
alternates too), after a warm-up, so a drift of the shared machine hits both alike; every CPU is kept
out of idle meanwhile (`devices.slowdown.KeepWarm`), as when profiling.

    t_b, t_a        per image: the greedy (baseline) and budgeted (advanced) choice's seconds
    saving Δt       (1/n) Σ (t_b − t_a) / t_b                         PASS when >= 20 %
    accuracy diff   top-1(greedy) − top-1(budgeted) over the n images  PASS when <= 10 %

`runtime.vnv_testbed.measure_testbed` runs the same two choices over the real split runtime on the
testbed instead (`select_model.py --testbed`) and returns the same `VnVReport`, its `how` saying so.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from apps import App, Device
from apps.units import bytes_per_second
from cli.errors import CoInferError
from compress.scheme import Scheme

SAVING_TARGET = 0.20
ACCURACY_TARGET = 0.10


@dataclass(frozen=True)
class RunConfig:
    """How both choices are run: the edge device (dilated to its speed; none: this CPU), the link, images and
    warm-up."""

    edge: Device
    bandwidth: float  # Mbps
    images: int = 100
    warmup: int = 3
    keep_warm: bool = True
    progress: bool = True


@dataclass(frozen=True)
class Measured:
    """One choice's runs: per image seconds (edge + link + cloud) and whether top-1 was right."""

    app: str
    scheme: Scheme
    seconds: tuple[float, ...]
    correct: tuple[bool, ...]
    edge_s: float  # medians of the stages
    link_s: float
    cloud_s: float
    wire_bytes: int

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def to_json(self) -> dict:
        return {"app": self.app, "scheme": self.scheme.to_json(), "accuracy": self.accuracy,
                "median_s": self.median_s, "mean_s": statistics.fmean(self.seconds),
                "stages_median_s": {"edge": self.edge_s, "link": self.link_s, "cloud": self.cloud_s},
                "wire_bytes": self.wire_bytes}


@dataclass(frozen=True)
class VnVReport:
    """Both choices' runs; `how` they were measured ("in-process", or the testbed and its link), with notes."""

    baseline: Measured
    advanced: Measured
    how: str = "in-process"
    notes: tuple[str, ...] = ()

    @property
    def saving(self) -> float:
        """Δt = (1/n) Σ (t_b − t_a) / t_b over the images."""
        pairs = list(zip(self.baseline.seconds, self.advanced.seconds))
        return statistics.fmean((tb - ta) / tb for tb, ta in pairs)

    @property
    def accuracy_diff(self) -> float:
        return self.baseline.accuracy - self.advanced.accuracy

    @property
    def saving_pass(self) -> bool:
        return self.saving >= SAVING_TARGET

    @property
    def accuracy_pass(self) -> bool:
        return self.accuracy_diff <= ACCURACY_TARGET

    def to_json(self) -> dict:
        return {"images": len(self.baseline.seconds), "measured": self.how, "notes": list(self.notes),
                "t_b": self.baseline.to_json(), "t_a": self.advanced.to_json(),
                "saving": self.saving, "accuracy_diff": self.accuracy_diff,
                "criteria": {"saving_min": SAVING_TARGET, "accuracy_diff_max": ACCURACY_TARGET},
                "saving_pass": self.saving_pass, "accuracy_pass": self.accuracy_pass,
                "pass": self.saving_pass and self.accuracy_pass}


def runner(app: App, scheme: Scheme, config: RunConfig) -> Callable:
    """A function image -> (predicted class, edge s, link s, cloud s, wire bytes) for one choice."""
    from compress import activation
    from database.profile import top_k
    from devices.slowdown import SlowCPU
    from models.build import load_base_model
    base = load_base_model(app)
    device = SlowCPU(config.edge.speed) if config.edge.slowed else None
    bps = bytes_per_second(config.bandwidth)

    def on_edge(fn):
        if device is not None:
            return device.call(fn)
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    def in_cloud(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    if scheme.is_all_edge:  # the runtime's edge: the whole model and its top-5
        def whole(x):
            logits, edge = on_edge(lambda: _with_topk(base(x), top_k))
            return int(logits.argmax(1)), edge, 0.0, 0.0, 0
        return whole
    if scheme.is_all_cloud:  # the raw input at 8 bits, the whole model in the cloud
        bits, head, tail = 8, (lambda x: x), base
    else:
        from runtime.weights import scheme_model
        model = scheme_model(app, scheme, base=base, train=True)  # the check runs them: made here when missing
        bits, head, tail = scheme.b, model.head, model.tail

    def split(x):
        a_shape = []

        def edge_work():
            a = head(x)
            a_shape.append(tuple(a.shape))
            return activation.to_bytes(a, bits)

        body, edge = on_edge(edge_work)
        wire = activation.wire_bytes(app.link, len(body))  # as the latency model counts it
        logits, cloud = in_cloud(lambda: _with_topk(tail(activation.from_bytes(body, a_shape[0], bits)), top_k))
        return int(logits.argmax(1)), edge, wire / bps + app.rtt_s, cloud, wire

    return split


def _with_topk(logits, top_k):
    top_k(logits)
    return logits


def measure(baseline: tuple[App, Scheme], advanced: tuple[App, Scheme], config: RunConfig) -> VnVReport:
    """Run both choices image by image over the first `config.images` test images (see the module doc)."""
    import torch

    from data import load_splits
    from devices.slowdown import KeepWarm
    torch.set_num_threads(1)  # as profiled: the edge's dilation counts this thread's CPU time only
    runs = []
    for app, scheme in (baseline, advanced):
        test = load_splits(app)[1]
        check_images(app.name, len(test), config.images)
        runs.append(_in_process(runner(app, scheme, config), test))
    with torch.no_grad(), (KeepWarm() if config.keep_warm else contextlib.nullcontext()):
        rows = alternate(runs, config)
    return VnVReport(summarise(baseline, rows[0]), summarise(advanced, rows[1]))


def _in_process(run: Callable, test) -> Callable[[int], tuple]:
    def row(i: int) -> tuple:
        x, y = test[i]
        pred, edge, link, cloud, wire = run(x.unsqueeze(0))
        return edge + link + cloud, pred == int(y), edge, link, cloud, wire
    return row


def check_images(app: str, available: int, images: int) -> None:
    if available < images:
        raise CoInferError(f"app {app} has {available} test images, fewer than --images {images}")


def alternate(runs: list[Callable[[int], tuple]], config: RunConfig) -> list[list[tuple]]:
    """`config.warmup` images of each run, then test images 0..n-1 through both, alternating image by image (and
    which goes first). `runs[k](i)` -> (seconds, top-1 right, edge s, link s, cloud s, wire bytes) of image i."""
    from cli.progress import progress
    for run in runs:
        for i in range(config.warmup):
            run(i)
    results: list[list[tuple]] = [[] for _ in runs]
    for i in progress(range(config.images), desc="VnV images", unit="image", enabled=config.progress):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            results[k].append(runs[k](i))
    return results


def summarise(choice: tuple[App, Scheme], rows: list[tuple]) -> Measured:
    """One choice's `alternate` rows as `Measured`: per image seconds and top-1, the stages' medians."""
    app, scheme = choice
    return Measured(app.name, scheme, tuple(r[0] for r in rows), tuple(r[1] for r in rows),
                    statistics.median(r[2] for r in rows), statistics.median(r[3] for r in rows),
                    statistics.median(r[4] for r in rows), int(statistics.median(r[5] for r in rows)))
