"""Latency predictors (Neurosurgeon's idea): a device's per-point latency of any model, without running it.

    python -m database.predictor fit --device cpu-cloud              # time layer configurations, report LOMO error
    python -m database.predictor predict --app vgg16_digits --device cpu-cloud   # store a predicted profile

`fit` times, on this CPU as the device (`database.layerprof`: thread CPU time / the device's
speed), a synthetic sweep of layer configurations of every kind plus every layer and the whole
forward of a set of models (the digits-scale apps' and, with `--reference`, torchvision's
ResNet-18/34/50 and MobileNet-V2 at full width, 3x32x32), stores them as the device's samples, and reports the
leave-one-model-out error: for each model, a predictor fitted on everything but that model's
samples predicts its whole-model latency, compared with its measured one.

The predictor (`LatencyPredictor`) is one scikit-learn regressor per layer kind on the layer's
features (FLOPs, input/output elements, parameters, channels, size, kernel, stride, groups),
gradient-boosted trees on log features and log time by default (`--regressor linear`: a
non-negative linear model on FLOPs and bytes). A layer timed alone runs with hot caches and
none of the model's glue, so a model takes longer than the sum of its layers (1.4-1.8x here);
a calibration fitted on the training models' whole-model times, T = a * sum(layer predictions)
+ b * (number of layers), a, b >= 0, closes that gap. A model's layers come from torch.fx with
shape propagation, so any traceable `nn.Module` works.

`predict` splits the app's traced layers at each partition point (the point's graph node, or for
VGG the last node of block p): T_edge(p, c) = T(layers up to the point) + pack, T_cloud(p, c) =
unpack + T(the rest) + top-k, as `database.profile` measures them; channels c < C_p are predicted
on the model pruned at p (`compress.prune`, VGG); a traced model's layers do not change with c
(`models.graph` prunes by scattering into zeros), only pack / unpack do. The rows go into
layer_latency under the device's name, marked predicted (`Store.put_predicted`), so
`--latency-profile` in the searches uses them like a measured profile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apps import DEFAULT_APP
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

if TYPE_CHECKING:
    import numpy as np

    from apps import App
    from database.layerprof import Layer, LayerSample, NamedModel
    from database.store import LatencyRow, Store
    from devices.spec import Device

REGRESSORS = ("gbr", "linear")
TARGET = 0.15  # median leave-one-model-out relative error of whole-model latency
REFERENCE_MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")


@dataclass(frozen=True)
class PredictorConfig:
    """How a predictor is fitted from a device's samples."""

    regressor: str = "gbr"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.regressor not in REGRESSORS:
            raise CoInferError(f"unknown regressor {self.regressor!r} (known: {', '.join(REGRESSORS)})")


def _regressor(config: PredictorConfig):
    import numpy as np
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    if config.regressor == "linear":  # time ~ a + b * FLOPs + c * in + d * out + e * params, all >= 0
        pick = FunctionTransformer(lambda x: x[:, :4])
        return make_pipeline(pick, LinearRegression(positive=True))
    trees = GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, random_state=config.seed)
    return TransformedTargetRegressor(make_pipeline(FunctionTransformer(np.log1p), trees),
                                      func=np.log, inverse_func=np.exp)


def _fit(config: PredictorConfig, layers: list[Layer], seconds: np.ndarray):
    """One kind's regressor, fitted for relative error (log time for trees, weights 1 / t^2 for the linear)."""
    model = _regressor(config)
    if config.regressor == "linear":
        return model.fit(_features(layers), seconds, linearregression__sample_weight=1 / seconds ** 2)
    return model.fit(_features(layers), seconds)


def _features(layers: list[Layer]) -> np.ndarray:
    import numpy as np
    return np.array([layer.features() for layer in layers], dtype=np.float64).reshape(len(layers), -1)


class LatencyPredictor:
    """A device's time for a layer (one regressor per kind) and for a run of layers (calibrated sum)."""

    def __init__(self, device: str, regressors: dict, fallback, scale: float, per_layer_s: float,
                 config: PredictorConfig, n_samples: int) -> None:
        self.device, self.regressors, self.fallback = device, regressors, fallback
        self.scale, self.per_layer_s, self.config, self.n_samples = scale, per_layer_s, config, n_samples

    @classmethod
    def fit(cls, samples: list[LayerSample], config: PredictorConfig = PredictorConfig(),
            leave_out: str | None = None) -> LatencyPredictor:
        """Fit on `samples` (without those of the model `leave_out`): per-kind regressors on every layer
        sample, then the calibration on the remaining models' whole-model samples."""
        import numpy as np
        from sklearn.linear_model import LinearRegression

        from database.layerprof import WHOLE
        kept = [s for s in samples if s.source != leave_out]
        layers = [s for s in kept if s.layer.kind != WHOLE]
        if not layers:
            raise CoInferError("no layer samples to fit a predictor on")
        device = layers[0].device
        regressors = {}
        for kind in sorted({s.layer.kind for s in layers}):
            group = [s for s in layers if s.layer.kind == kind]
            if len(group) >= 5:
                regressors[kind] = _fit(config, [s.layer for s in group], np.array([s.seconds for s in group]))
        fallback = _fit(config, [s.layer for s in layers], np.array([s.seconds for s in layers]))
        raw = cls(device, regressors, fallback, 1.0, 0.0, config, len(kept))
        wholes = [s for s in kept if s.layer.kind == WHOLE]
        if not wholes:
            return raw
        x, y = [], []
        for whole in wholes:
            own = [s.layer for s in layers if s.source == whole.source]
            x.append([raw.layer_seconds(own).sum(), len(own)])
            y.append(whole.seconds)
        y = np.array(y)  # relative error counts: each model weighs 1 / its time^2
        fit = LinearRegression(positive=True, fit_intercept=False).fit(np.array(x), y, sample_weight=1 / y ** 2)
        scale, per_layer = (float(v) for v in fit.coef_)
        if scale <= 0:  # a degenerate fit (one model, noisy): the plain sum is the safer answer
            scale, per_layer = 1.0, 0.0
        return cls(device, regressors, fallback, scale, per_layer, config, len(kept))

    def layer_seconds(self, layers: list[Layer]) -> np.ndarray:
        """Each layer's predicted time alone (uncalibrated)."""
        import numpy as np
        out = np.zeros(len(layers))
        for kind in {layer.kind for layer in layers}:
            idx = [i for i, layer in enumerate(layers) if layer.kind == kind]
            model = self.regressors.get(kind, self.fallback)
            out[idx] = np.maximum(model.predict(_features([layers[i] for i in idx])), 0.0)
        return out

    def seconds(self, layers: list[Layer]) -> float:
        """A run of a model's layers (calibrated: see the module doc)."""
        if not layers:
            return 0.0
        return self.scale * float(self.layer_seconds(layers).sum()) + self.per_layer_s * len(layers)

    def one(self, layer: Layer) -> float:
        """One runtime operation (pack, unpack, top-k), uncalibrated: it is timed alone in the profile too."""
        return float(self.layer_seconds([layer])[0])

    def describe(self) -> dict:
        return {"regressor": self.config.regressor, "samples": self.n_samples, "kinds": sorted(self.regressors),
                "scale": self.scale, "per_layer_s": self.per_layer_s}


# -- leave one model out ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelError:
    model: str
    measured_s: float
    predicted_s: float
    layers: int

    @property
    def error(self) -> float:
        return abs(self.predicted_s - self.measured_s) / self.measured_s

    def to_json(self) -> dict:
        return {"model": self.model, "measured_s": self.measured_s, "predicted_s": self.predicted_s,
                "layers": self.layers, "error": self.error}


def leave_one_model_out(samples: list[LayerSample], config: PredictorConfig = PredictorConfig()) -> list[ModelError]:
    """For each model with a whole-model sample: fit without its samples, predict its whole forward."""
    from database.layerprof import WHOLE
    out = []
    for whole in [s for s in samples if s.layer.kind == WHOLE]:
        own = [s.layer for s in samples if s.source == whole.source and s.layer.kind != WHOLE]
        predictor = LatencyPredictor.fit(samples, config, leave_out=whole.source)
        out.append(ModelError(whole.source, whole.seconds, predictor.seconds(own), len(own)))
    return out


def median_error(errors: list[ModelError]) -> float | None:
    return statistics.median(e.error for e in errors) if errors else None


# -- models and devices ---------------------------------------------------------------------------
def app_example_shape(app: App) -> tuple[int, int, int, int]:
    return (1, app.in_channels, app.input_size, app.input_size)


def default_models(apps: list[str] | None, reference: bool) -> list[NamedModel]:
    """The models whose layers join a device's samples: these apps' (default: every app at <= 64 pixels)
    and, with `reference`, torchvision's REFERENCE_MODELS at 3x32x32 with 10 classes (random weights)."""
    from apps import available_apps, load_app
    from database.layerprof import NamedModel, graph_of
    from models.build import build_model
    chosen = [load_app(a) for a in apps] if apps else [a for a in map(load_app, available_apps())
                                                       if a.input_size <= 64]
    out = [NamedModel(app.name, graph_of(build_model(app)).eval(), app_example_shape(app)) for app in chosen]
    if reference:
        import torchvision
        out += [NamedModel(f"tv_{name}", getattr(torchvision.models, name)(num_classes=10).eval(), (1, 3, 32, 32))
                for name in REFERENCE_MODELS]
    return out


def resolve_device(name: str, devices_file: str | None = None, apps: tuple[App, ...] = (), storage=None) -> Device:
    """A device by name from the one registry (`database.registry.find_device`); layers are timed by dilation
    only, so a device emulated by a CPU quota is timed at this CPU's speed."""
    from database.registry import find_device
    device = find_device(name, devices_file, apps, storage)
    return device if device.dilated or not device.slowed else device.with_speed(None)


def fitted_samples(store: Store, device: str) -> list[LayerSample]:
    samples = store.layer_samples(device)
    if not samples:
        raise CoInferError(f"device '{device}' has no fitted latency predictor: run "
                           f"python -m database.predictor fit --device {device}{store.storage.flag}")
    return samples


# -- a predicted profile ---------------------------------------------------------------------------
def point_positions(gm, layers: list[Layer], points) -> list[int]:
    """For each partition point, how many of `layers` run on the edge (those up to its graph node)."""
    order = {node.name: i for i, node in enumerate(gm.graph.nodes)}
    nodes = list(gm.graph.nodes)
    out = []
    for pt in points:
        name = pt.node
        if not name:  # a chain model (VGG): the last node of block p
            prefix = f"blocks.{pt.index}."
            last = [n.name for n in nodes if n.op == "call_module" and str(n.target).startswith(prefix)]
            if not last:
                raise CoInferError(f"partition point {pt.index} ({pt.name}) names no node of the traced model")
            name = last[-1]
        if name not in order:
            raise CoInferError(f"partition point {pt.index}: node {name!r} is not in the traced model")
        out.append(sum(1 for layer in layers if order.get(layer.name, -1) <= order[name]))
    return out


def _pruned(model, p: int, c: int):
    """The model pruned to c channels at point p when pruning changes its layers (VGG: conv p keeps c
    filters, conv p + 1 reads c channels); else None: a traced model (`models.graph`) computes all C_p
    channels on the edge and scatters the c it receives back into C_p in the cloud, so its layers stay
    and only pack / unpack see c."""
    from models.vgg import VGG
    if not isinstance(model, VGG) or c == model.widths[p]:
        return None
    from compress.prune import prune_at
    return prune_at(model, p, c).eval()


def predicted_rows(app: App, device: str, sides: tuple[str, ...], predictor: LatencyPredictor,
                   full_only: bool = False) -> list[LatencyRow]:
    """The app's latency profile on `device` as `database.profile` would measure it, predicted (`full_only`: at
    each point's full channels only, as `reports.layers` shows them)."""
    import torch

    from database.layerprof import graph_layers, model_layers, runtime_layers, topk_layer, traced
    from database.profile import channel_grid
    from database.store import LatencyRow
    from models.build import app_points, build_model
    model, shape = build_model(app).eval(), app_example_shape(app)
    x = torch.randn(shape)
    points = app_points(app)
    topk = predictor.one(topk_layer((1, app.num_classes)))
    rows = []

    def split(m, pt) -> tuple[list[Layer], list[Layer]]:
        gm = traced(m, x)
        layers = graph_layers(gm)
        k = point_positions(gm, layers, [pt])[0]
        return layers[:k], layers[k:]

    base_layers = model_layers(model, x)
    whole = predictor.seconds(base_layers)
    for pt in points:
        full = split(model, pt)
        for c in [pt.channels] if full_only else channel_grid(pt.channels):
            pruned = _pruned(model, pt.index, c)
            head, tail = full if pruned is None else split(pruned, pt)
            pack, unpack = runtime_layers((1, c, pt.height, pt.width))
            if "edge" in sides:
                rows.append(LatencyRow(app.name, device, pt.index, c, "edge",
                                       predictor.seconds(head) + predictor.one(pack)))
            if "cloud" in sides:
                rows.append(LatencyRow(app.name, device, pt.index, c, "cloud",
                                       predictor.one(unpack) + predictor.seconds(tail) + topk))
    raw_pack, raw_unpack = runtime_layers(shape, "input")
    if "edge" in sides:
        rows.append(LatencyRow(app.name, device, len(points), app.num_classes, "edge", whole + topk))
        rows.append(LatencyRow(app.name, device, -1, app.in_channels, "edge", predictor.one(raw_pack)))
    if "cloud" in sides:
        rows.append(LatencyRow(app.name, device, -1, app.in_channels, "cloud",
                               predictor.one(raw_unpack) + whole + topk))
    return rows


def store_predicted(store: Store, app: App, device: str, sides: tuple[str, ...], predictor: LatencyPredictor,
                    replace: bool = False) -> list[LatencyRow]:
    """Predict and store the profile, marked predicted. A measured profile of a side is kept unless `replace`;
    an earlier predicted one is replaced."""
    from models.build import app_points
    measured = (store.profiled_devices(app.name).get(device, set()) - store.predicted(app.name).get(device, set()))
    clash = sorted(set(sides) & measured)
    if clash and not replace:
        raise CoInferError(f"device {device} has a measured {'+'.join(clash)} profile of {app.name}: pass --replace "
                           "to overwrite it with a predicted one")
    rows = predicted_rows(app, device, sides, predictor)
    store.delete_latency(app.name, device, sides)
    store.put_shapes(app.name, [(p.index, p.name, p.channels, p.height, p.width) for p in app_points(app)])
    store.put_latency(rows)
    store.put_predicted(app.name, device, sides, predictor.describe())
    return rows


# -- the CLI -----------------------------------------------------------------------------------------
def _parser() -> ArgParser:
    ap = ArgParser(prog="python -m database.predictor",
                   description="Fit a device's layer-latency predictor; predict an app's latency profile on it.")
    ap.add_argument("action", choices=["fit", "predict"])
    ap.add_argument("--device", required=True, help="the device (devices.yml, or an app's edge/cloud device)")
    ap.add_argument("--app", default=DEFAULT_APP, help="predict: the app (default: %(default)s)")
    ap.add_argument("--apps", default=None, metavar="A,B,...",
                    help="fit: the apps whose models join the samples (default: every app at <= 64 pixels)")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="fit: also torchvision's ResNet-18/34/50 and MobileNet-V2 at 32x32 (default: on)")
    ap.add_argument("--side", choices=["edge", "cloud", "both"], default=None,
                    help="predict: which side(s) (default: the device's)")
    ap.add_argument("--regressor", choices=REGRESSORS, default="gbr", help="per-kind regressor (default: gbr)")
    ap.add_argument("--sweep", type=int, default=60, help="fit: synthetic configurations per layer kind (default 60)")
    ap.add_argument("--runs", type=int, default=7, help="fit: timed samples per layer (median kept)")
    ap.add_argument("--devices", default=None, metavar="FILE", help="devices file (default: devices.yml)")
    ap.add_argument("--replace", action="store_true", help="predict: overwrite a measured profile of that side")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: database/coinfer.sqlite)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def fit_device(store: Store, spec: Device, models: list[NamedModel], config: PredictorConfig, sweep: int,
               runs: int, progress: bool) -> tuple[list[LayerSample], list[ModelError]]:
    """Profile the device's layers, replace its stored samples, and the leave-one-model-out errors."""
    import torch

    from database.layerprof import SweepConfig, profile_layers
    torch.set_num_threads(1)
    samples = profile_layers(SweepConfig(spec, runs=runs, n_per_kind=sweep,
                                         progress=progress), models)
    errors = leave_one_model_out(samples, config)
    store.delete_layer_samples(spec.name)
    store.put_layer_samples(samples)
    return samples, errors


@dataclass(frozen=True)
class FitJob:
    """`fit`: sample `device`'s layers over the models of `apps` (None: the default set) and, with
    `reference`, torchvision's; `sweep` configurations per kind, `runs` timed samples each."""

    device: Device
    apps: tuple[str, ...] | None = None
    reference: bool = True
    config: PredictorConfig = PredictorConfig()
    sweep: int = 60
    runs: int = 7
    storage: str | None = None
    progress: bool = False


@dataclass(frozen=True)
class PredictJob:
    """`predict`: store `app`'s latency profile on `device` for `sides`, predicted from its stored samples."""

    app: App
    device: Device
    sides: tuple[str, ...]
    config: PredictorConfig = PredictorConfig()
    replace: bool = False
    storage: str | None = None


@dataclass(frozen=True)
class Fitted:
    """What `run_fit` stored: the sample count and the leave-one-model-out errors."""

    job: FitJob
    samples: int
    errors: list[ModelError]

    @property
    def median_error(self) -> float | None:
        return median_error(self.errors)

    def to_json(self) -> dict:
        spec = self.job.device
        return {"device": spec.name, "speed": spec.speed, "samples": self.samples,
                "regressor": self.job.config.regressor, "leave_one_model_out": [e.to_json() for e in self.errors],
                "median_error": self.median_error, "target": TARGET}

    def lines(self) -> list[str]:
        spec, med = self.job.device, self.median_error
        out = [f"{spec.name}: {self.samples} layer samples stored (speed {spec.speed or 1:g} of this CPU, "
               f"thread CPU time / speed, median of {self.job.runs})", "leave-one-model-out, whole-model latency:"]
        out += [f"  {e.model:<22} measured {e.measured_s * 1e3:9.2f} ms  predicted {e.predicted_s * 1e3:9.2f} ms"
                f"  error {e.error:6.1%}  ({e.layers} layers)" for e in self.errors]
        if med is not None:
            out.append(f"  median error {med:.1%} (target <= {TARGET:.0%}): {'PASS' if med <= TARGET else 'FAIL'}")
        return out


@dataclass(frozen=True)
class Predicted:
    """What `run_predict` stored: the rows, the whole-model times among them, the predictor."""

    job: PredictJob
    rows: int
    all_edge_s: float | None
    all_cloud_compute_s: float | None
    predictor: dict  # LatencyPredictor.describe()

    def to_json(self) -> dict:
        return {"app": self.job.app.name, "device": self.job.device.name, "sides": list(self.job.sides),
                "rows": self.rows, "all_edge_s": self.all_edge_s, "all_cloud_compute_s": self.all_cloud_compute_s,
                "predictor": self.predictor}

    def lines(self) -> list[str]:
        job = self.job
        out = [f"{job.app.name} on {job.device.name}: {self.rows} predicted rows stored ({'+'.join(job.sides)}, "
               "marked predicted)"]
        if "edge" in job.sides and self.all_edge_s is not None:
            out.append(f"  whole model, edge side (all-edge): {self.all_edge_s * 1e3:.2f} ms predicted")
        if self.all_cloud_compute_s is not None:
            out.append(f"  whole model, cloud side (all-cloud): {self.all_cloud_compute_s * 1e3:.2f} ms predicted")
        return out


def run_fit(job: FitJob) -> Fitted:
    """Profile the device's layers into the database (its fingerprint too, if it has none yet)."""
    from database.storage import Storage
    from database.store import Store
    spec = job.device
    store = Store(Storage.parse(job.storage))
    store.check_writable()
    apps = list(job.apps) if job.apps is not None else None
    samples, errors = fit_device(store, spec, default_models(apps, job.reference), job.config, job.sweep, job.runs,
                                 job.progress)
    if store.device(spec.name) is None:
        from devices.fingerprint import fingerprint
        store.put_device(spec.name, fingerprint(), "layer samples only (database.predictor)", spec)
    return Fitted(job, len(samples), errors)


def run_predict(job: PredictJob) -> Predicted:
    """Fit the predictor from the device's stored samples and store the app's predicted rows."""
    from database.storage import Storage
    from database.store import Store
    from models.build import app_points
    store = Store(Storage.parse(job.storage), create=False)  # the device's layer samples are in an existing database
    predictor = LatencyPredictor.fit(fitted_samples(store, job.device.name), job.config)
    store.check_writable()
    rows = store_predicted(store, job.app, job.device.name, job.sides, predictor, job.replace)
    singles = {(r.side, r.point): r.median_s for r in rows}
    return Predicted(job, len(rows), singles.get(("edge", len(app_points(job.app)))), singles.get(("cloud", -1)),
                     predictor.describe())


def parse_args(argv: list[str] | None) -> tuple[FitJob | PredictJob, bool]:
    """The command line as (job, --json); every bad value one line, before any profiling."""
    args = _parser().parse_args(argv)
    if not (1 <= args.sweep <= 10_000 and 1 <= args.runs <= 1000):
        raise CoInferError("--sweep must be in 1..10000 and --runs in 1..1000")
    from apps import load_app
    app = load_app(args.app) if args.action == "predict" else None
    spec = resolve_device(args.device, args.devices, (app,) if app else (), args.storage)
    config = PredictorConfig(args.regressor)
    progress = not (args.no_progress or args.json) and sys.stderr.isatty()
    if args.action == "fit":
        apps = tuple(a.strip() for a in args.apps.split(",")) if args.apps else None
        for name in apps or ():
            load_app(name)  # an unknown app is one line before minutes of profiling
        return FitJob(spec, apps, args.reference, config, args.sweep, args.runs, args.storage, progress), args.json
    side = args.side or spec.side
    sides = ("edge", "cloud") if side == "both" else (side,)
    return PredictJob(app, spec, sides, config, args.replace, args.storage), args.json


def main(argv: list[str] | None = None) -> int:
    job, as_json = parse_args(argv)
    done = run_fit(job) if isinstance(job, FitJob) else run_predict(job)
    print(json.dumps(done.to_json()) if as_json else "\n".join(done.lines()))
    return 0


if __name__ == "__main__":
    run_cli(main)
