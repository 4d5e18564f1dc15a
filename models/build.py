"""Build an app's base model and load its checkpoint (weights only, `weights_only=True`).

Every model is a `models.splittable.Splittable`: `models.vgg.VGG` for `vgg16_bn`, a
`models.graph.GraphModel` over the torchvision model `models.zoo` builds for any other arch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from apps import App
from cli.errors import CoInferError
from models.points import PartitionPoint
from models.splittable import Splittable
from models.vgg import partition_points, vgg16_bn, vgg16_widths


def build_model(app: App) -> Splittable:
    """The app's model, untrained (`model.arch`: models.zoo)."""
    return _splittable(app, _module(app))


def pretrained_model(app: App) -> tuple[Splittable, str]:
    """The app's model with its `model.weights` loaded (models/pretrained.py: head replaced for the app's
    classes, first conv fitted to its input channels), and a line saying what was loaded; without
    `model.weights`, the untrained model and "". models.train starts from this."""
    module = _module(app)
    if app.weights is None:
        return _splittable(app, module), ""
    from models.pretrained import load_pretrained
    note = load_pretrained(module, app)
    return _splittable(app, module), note


def _module(app: App) -> nn.Module:
    if app.arch == "vgg16_bn":
        if app.points is not None:
            raise CoInferError("model.points: vgg16_bn's points are its 13 conv blocks; points name nodes of "
                               "traced models only")
        return vgg16_bn(app.width, app.num_classes, app.in_channels, app.input_size, app.classifier_hidden)
    from models.zoo import BUILDERS, torchvision_model
    return BUILDERS.get(app.arch, torchvision_model)(app)


def _splittable(app: App, module: nn.Module) -> Splittable:
    """VGG as it is; any other model traced with torch.fx and split by models.graph.GraphModel."""
    if app.arch == "vgg16_bn":
        return module  # type: ignore[return-value]
    from models.graph import GraphModel
    return GraphModel(module, app.in_channels, app.input_size, app.num_classes,
                      None if app.points is None else list(app.points), app.arch)


def load_base_model(app: App, checkpoint: Path | None = None) -> Splittable:
    """The app's base model with its trained weights, in eval mode."""
    path = Path(checkpoint or app.checkpoint)
    if not path.is_file():
        raise CoInferError(f"checkpoint not found: {path} (train it: python -m models.train --app {app.ref})")
    model = build_model(app)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise CoInferError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise CoInferError(f"checkpoint {path} is not a state_dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, app expects "
                  f"{tuple(expected[wrong[0]].shape)}" if wrong else
                  f"missing {missing[:1]}" if missing else f"unexpected {unexpected[:1]}")
        raise CoInferError(f"checkpoint {path} does not fit app {app.name}: {detail}")
    model.load_state_dict(state)
    return model.eval()


def app_points(app: App) -> list[PartitionPoint]:
    """Partition points of an app's model: VGG's without building it (at width 1 it is 138 M params),
    a traced model's from its graph (built and traced once per process)."""
    if app.arch == "vgg16_bn":
        return partition_points(vgg16_widths(app.width), app.input_size)
    key = (app.arch, app.width, app.in_channels, app.input_size, app.num_classes, app.stem, app.points)
    if key not in _POINTS:
        _POINTS[key] = build_model(app).partition_points()
    return _POINTS[key]


_POINTS: dict[tuple, list[PartitionPoint]] = {}
