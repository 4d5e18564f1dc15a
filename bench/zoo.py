"""The model zoo at a glance: per model, its points, accuracy, single-end latencies, optimum and predictor error.

    python -m bench.zoo [--apps vgg16_digits,resnet18_digits,...] [--bandwidth 1] [--accuracy-loss 0.01] [--json]

Works on a copy of the database (`--storage`, default the shipped one; the original is never written).
Per model (app):
- partition points: the model's (`models.build.app_points`; torch.fx for the zoo's ResNets/MobileNet);
- base accuracy: the stored top-1, else the checkpoint's measured on the app's test split here, else "-";
- all-edge / all-cloud latency at the bandwidth: the latency model on the apps' edge/cloud devices, from
  the stored profile when the device has a measured one for that app, else from a profile predicted on
  the spot (`database.predictor`, marked `pred`);
- the searched optimum: the latency query (fastest scheme within `--accuracy-loss` of the base, CoInfer's
  sampler, offline: what the stored accuracy database proves) at the bandwidth, "-" without accuracy rows;
- predictor error: the leave-one-model-out relative error of the whole-model latency on each device, from
  the device's stored layer samples (`python -m database.predictor fit --device D`; `--fit` profiles them
  here first when a device has none, a few minutes).
Writes bench/out/zoo.png: the latencies per model, and the predictor errors.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli
from reports.figure import OUT, check_plot_path, no_data, save_figure

if TYPE_CHECKING:
    from apps import App

DEFAULT_APPS = ("vgg16_digits", "resnet18_digits", "resnet34_digits", "resnet50_digits", "mobilenet_digits")


@dataclass(frozen=True)
class ZooRow:
    app: str
    points: int
    base_accuracy: float | None
    accuracy_source: str  # stored, measured, -
    all_edge_s: float
    all_cloud_s: float
    predicted_sides: tuple[str, ...]  # which of edge / cloud came from a predicted profile
    optimum: str | None
    optimum_s: float | None
    optimum_accuracy: float | None
    edge_error: float | None  # leave-one-model-out, whole model
    cloud_error: float | None

    def to_json(self) -> dict:
        return dict(self.__dict__, predicted_sides=list(self.predicted_sides))


def _optimum(store, app, model, base: float | None, mbps: float, loss: float):
    if base is None or not store.accuracy_table(app.name, app.protocol.name):
        return None, None, None
    from search.evaluators import DatabaseEvaluator
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.runner import SearchConfig, run_search
    result = run_search(Problem(LatencyQuery(loss, mbps), model, base), DatabaseEvaluator(app, store),
                        SearchConfig("coinfer", tolerance=0.005, offline=True))
    return str(result.scheme), result.breakdown.total, result.accuracy


def zoo_rows(store, apps: list, mbps: float, loss: float, fit: bool, progress: bool) -> list[ZooRow]:
    from database.predictor import (
        LatencyPredictor,
        default_models,
        fit_device,
        leave_one_model_out,
        resolve_device,
        store_predicted,
    )
    from models.build import app_points
    from search.latency import LatencyModel
    from search.select import base_accuracy
    errors: dict[str, dict[str, float]] = {}
    predictors = {}
    for name in sorted({d for a in apps for d in (a.edge_device, a.cloud_device)}):
        spec = resolve_device(name, None, tuple(apps))
        samples = store.layer_samples(name)
        if not samples and fit:
            samples, _ = fit_device(store, spec, default_models([a.name for a in apps], True),
                                    _config(), 60, 7, progress)
        if samples:
            errors[name] = {e.model: e.error for e in leave_one_model_out(samples, _config())}
            predictors[name] = LatencyPredictor.fit(samples, _config())
    rows = []
    for app in apps:
        predicted = []
        for side, name in (("edge", app.edge_device), ("cloud", app.cloud_device)):
            profiled = store.profiled_devices(app.name).get(name, set()) - store.predicted(app.name).get(name, set())
            if side not in profiled:
                if name not in predictors:
                    raise CoInferError(f"no {side} profile of {app.name} on {name} and no fitted predictor: "
                                       f"python -m database.predictor fit --device {name} (or pass --fit)")
                store_predicted(store, app, name, (side,), predictors[name], replace=True)
                predicted.append(side)
        model = LatencyModel.from_store(store, app)
        base, source = base_accuracy(store, app)
        optimum, optimum_s, optimum_acc = _optimum(store, app, model, base, mbps, loss)
        rows.append(ZooRow(app.name, len(app_points(app)), base, source, model.all_edge(mbps), model.all_cloud(mbps),
                           tuple(predicted), optimum, optimum_s, optimum_acc,
                           errors.get(app.edge_device, {}).get(app.name),
                           errors.get(app.cloud_device, {}).get(app.name)))
    return rows


def _config():
    from database.predictor import PredictorConfig
    return PredictorConfig()


def _plot(rows: list[ZooRow], mbps: float, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.27, [r.all_edge_s * 1e3 for r in rows], 0.27, label="all-edge")
    ax.bar(x, [r.all_cloud_s * 1e3 for r in rows], 0.27, label="all-cloud")
    ax.bar(x + 0.27, [(r.optimum_s or 0) * 1e3 for r in rows], 0.27, label="searched optimum")
    ax.set_xticks(x, [r.app.replace("_digits", "") for r in rows], rotation=20)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"latency at {mbps:g} Mbps (cpu-edge / cpu-cloud)")
    ax.legend()
    ax2.set_title("latency predictor, leave one model out")
    if all(r.edge_error is None and r.cloud_error is None for r in rows):  # an empty panel would read as 0 %
        no_data(ax2, "no predictor data\n(python -m database.predictor fit, or bench.zoo --fit)")
        return save_figure(fig, path)
    for offset, side, label in ((-0.2, "edge_error", "edge device"), (0.2, "cloud_error", "cloud device")):
        errors = [getattr(r, side) for r in rows]
        ax2.bar(x + offset, [100 * (e or 0) for e in errors], 0.4, label=label)
        for xi, e in zip(x, errors):
            if e is None:  # this model has no leave-one-out error on that device: say so, not a 0 % bar
                ax2.text(xi + offset, 0.02, "n/a", ha="center", va="bottom", fontsize=8, color="0.35",
                         transform=ax2.get_xaxis_transform())
    ax2.axhline(15, color="k", ls="--", lw=1, label="target 15 %")
    ax2.set_xticks(x, [r.app.replace("_digits", "") for r in rows], rotation=20)
    ax2.set_ylabel("whole-model error (%)")
    ax2.legend()
    return save_figure(fig, path)


def _parser() -> ArgParser:
    ap = ArgParser(prog="python -m bench.zoo", description="Per model of the zoo: points, accuracy, latencies, "
                                                           "searched optimum, predictor error.")
    ap.add_argument("--apps", default=",".join(DEFAULT_APPS), metavar="A,B,...")
    ap.add_argument("--bandwidth", type=float, default=1.0, help="Mbps (default 1)")
    ap.add_argument("--accuracy-loss", type=float, default=0.01, help="the optimum's bound (default 0.01)")
    ap.add_argument("--fit", action="store_true", help="profile a device's layers here when it has no samples")
    ap.add_argument("--storage", default=None, help="SQLite file to read (copied; default: the shipped database)")
    ap.add_argument("--out", default=str(OUT / "zoo.png"), help="the PNG (default: %(default)s)")
    ap.add_argument("--json", action="store_true")
    return ap


@dataclass(frozen=True)
class ZooConfig:
    """The table's models (`apps`, loaded), the link and the optimum's bound, whether to profile a device's
    layers here (`fit`), the SQLite file read through a copy (`source`), the PNG, and a progress bar."""

    apps: tuple[App, ...]
    source: Path
    bandwidth: float = 1.0
    accuracy_loss: float = 0.01
    fit: bool = False
    out: Path = OUT / "zoo.png"
    progress: bool = False


@dataclass(frozen=True)
class ZooTable:
    config: ZooConfig
    rows: list[ZooRow]
    png: Path

    def to_json(self) -> dict:
        return {"bandwidth_mbps": self.config.bandwidth, "accuracy_loss": self.config.accuracy_loss,
                "rows": [r.to_json() for r in self.rows], "png": str(self.png)}

    def lines(self) -> list[str]:
        config = self.config
        out = [f"How: the latency model on each app's edge/cloud devices at {config.bandwidth:g} Mbps, from measured "
               "profiles, else profiles predicted from the device's layer samples (pred); base accuracy stored, else "
               "the checkpoint measured on the test split; optimum = latency query (coinfer, offline) within "
               f"{config.accuracy_loss:g} top-1 of the base; predictor error = leave-one-model-out relative error of "
               "the whole-model latency (database.predictor).",
               f"{'model':<22}{'points':>7}{'base top-1':>12}{'all-edge':>12}{'all-cloud':>12}  {'optimum':<14}"
               f"{'latency':>10}{'top-1':>8}{'err edge':>10}{'err cloud':>10}"]
        for r in self.rows:
            pred = "(pred " + "+".join(r.predicted_sides) + ")" if r.predicted_sides else ""
            acc = f"{r.base_accuracy:.2%}" if r.base_accuracy is not None else "-"
            out.append(f"{r.app:<22}{r.points:>7}{acc:>12}{r.all_edge_s * 1e3:>10.2f}ms{r.all_cloud_s * 1e3:>10.2f}ms  "
                       f"{r.optimum or '-':<14}{(f'{r.optimum_s * 1e3:.2f}ms' if r.optimum_s else '-'):>10}"
                       f"{(f'{r.optimum_accuracy:.2%}' if r.optimum_accuracy else '-'):>8}"
                       f"{(f'{r.edge_error:.1%}' if r.edge_error is not None else '-'):>10}"
                       f"{(f'{r.cloud_error:.1%}' if r.cloud_error is not None else '-'):>10} {pred}")
        out.append(f"wrote {self.png}")
        return out


def run_zoo(config: ZooConfig) -> ZooTable:
    """The table's rows, computed on a copy of the database (the original is never written), and the PNG."""
    import torch

    from database.storage import Storage
    from database.store import Store
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "zoo.sqlite"
        try:
            with sqlite3.connect(f"file:{config.source}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)
        except sqlite3.DatabaseError as exc:
            raise CoInferError(f"cannot read database {config.source}: {exc}") from None
        store = Store(Storage.parse(str(copy)))
        rows = zoo_rows(store, list(config.apps), config.bandwidth, config.accuracy_loss, config.fit, config.progress)
        store.close()
    return ZooTable(config, rows, _plot(rows, config.bandwidth, config.out))


def parse_args(argv: list[str] | None) -> tuple[ZooConfig, bool]:
    """The command line as (config, --json); every bad value one line, before any work."""
    args = _parser().parse_args(argv)
    if not 0 < args.bandwidth <= 1e6 or not 0 <= args.accuracy_loss < 1:
        raise CoInferError("--bandwidth must be in (0, 1e6] Mbps and --accuracy-loss in [0, 1)")
    from apps import load_app
    from database.storage import Storage
    storage = Storage.parse(args.storage)
    apps = [load_app(a.strip()) for a in args.apps.split(",") if a.strip()]
    check_plot_path(args.out, (*storage.files, *(a.source for a in apps)))
    if not apps:
        raise CoInferError("--apps names no app")
    source = storage.sqlite_path
    if source is None:
        raise CoInferError(f"--storage {storage.display!r}: bench.zoo reads an SQLite file")
    if not source.is_file():
        raise CoInferError(f"database file not found: {source}")
    return (ZooConfig(tuple(apps), source, args.bandwidth, args.accuracy_loss, args.fit, Path(args.out),
                      sys.stderr.isatty() and not args.json), args.json)


def main(argv: list[str] | None = None) -> int:
    config, as_json = parse_args(argv)
    table = run_zoo(config)
    print(json.dumps(table.to_json()) if as_json else "\n".join(table.lines()))
    return 0


if __name__ == "__main__":
    run_cli(main)
