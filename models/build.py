"""Build an app's base model and load its checkpoint (weights only, `weights_only=True`)."""

from __future__ import annotations

from pathlib import Path

import torch

from apps import App
from apps.errors import CoInferError
from models.points import PartitionPoint
from models.vgg import VGG, partition_points, vgg16_bn, vgg16_widths


def build_model(app: App) -> VGG:
    return vgg16_bn(app.width, app.num_classes, app.in_channels, app.input_size, app.classifier_hidden)


def load_base_model(app: App, checkpoint: Path | None = None) -> VGG:
    """The app's base model with its trained weights, in eval mode."""
    path = Path(checkpoint or app.checkpoint)
    if not path.is_file():
        raise CoInferError(f"checkpoint not found: {path} (train it: python -m models.train --app {app.name})")
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
    """Partition points of an app's model, without building it (VGG-16 at width 1 is 138 M params)."""
    return partition_points(vgg16_widths(app.width), app.input_size)
