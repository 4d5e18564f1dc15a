"""Pretrained weights for an app's model (`model.weights:` in the app YAML), read from local files only.

`model.weights` is either

    a torchvision weights name   `ResNet18_Weights.IMAGENET1K_V1`, or for the app's arch `IMAGENET1K_V1`
                                 / `DEFAULT`: the file torchvision would download, looked up in the local
                                 torch hub cache, torch.hub.get_dir()/checkpoints/<file name of its URL>
                                 ($TORCH_HOME moves it); nothing is downloaded
    a state-dict file            any other value, a path (relative: from the checkout, DATA_ROOT): tensors only,
                                 torchvision's key names (a CoInfer base checkpoint's `net.` prefix is taken off)

read with torch.load(weights_only=True). The weights are fitted to the app's model before loading:

    the classifier head          the last module with parameters (ResNet's fc, MobileNet's classifier.1...):
                                 kept from the file when its shapes fit the app's classes, else left freshly
                                 initialised (replaced) for `model.num_classes`
    the first conv               the first Conv2d: a file for C channels given an app with c input channels
                                 gets, for every input channel, the file's kernel summed over its C channels
                                 divided by c. With RGB weights and a grey app (c = 1) that is the kernel summed
                                 over RGB: a grey image g answers as the RGB image (g, g, g) did; in general a
                                 uniform image answers as before.
    everything else              must match key for key and shape for shape: else one CoInferError line

`models.train` fine-tunes from them (`build_model(app, pretrained=True)`); a trained checkpoint replaces them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from apps import App
from cli.errors import CoInferError, first_line
from cli.paths import data_file
from models.zoo import first_conv

TORCHVISION_NAME = re.compile(r"^(?:[A-Za-z0-9]+_Weights\.)?[A-Z][A-Z0-9_]*$")  # ResNet18_Weights.IMAGENET1K_V1


def weights_path(app: App) -> Path:
    """The local file `model.weights` names (a torchvision name through the hub cache); one CoInferError
    line when it is not there, naming where it looked."""
    name = str(app.weights)
    if not TORCHVISION_NAME.match(name):
        path = Path(name).expanduser()
        path = path if path.is_absolute() else data_file(path)
        if not path.is_file():
            raise CoInferError(f"model.weights: no file {path}")
        return path
    import torchvision
    from torchvision.models import get_model_weights, get_weight
    try:
        weights = get_weight(name) if "." in name else get_model_weights(app.arch)[name]
    except (KeyError, ValueError, AttributeError):
        known = ", ".join(w.name for w in get_model_weights(app.arch)) if app.arch in torchvision.models.list_models(
            module=torchvision.models) else "none"
        raise CoInferError(f"model.weights: torchvision has no weights '{name}' for {app.arch} "
                           f"(known: {known}, DEFAULT)") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise CoInferError(f"model.weights {name}: not in the local torch hub cache, looked for {path} "
                           f"(nothing is downloaded: place the file there or name a local state-dict file)")
    return path


def read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CoInferError(f"cannot read weights {path}: {first_line(exc)}") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CoInferError(f"weights {path} are not a state_dict (a mapping of names to tensors)")
    if state and all(k.startswith("net.") for k in state):  # a CoInfer base checkpoint of a traced model
        state = {k[len("net."):]: v for k, v in state.items()}
    return state


def head_name(module: nn.Module) -> str:
    """The classifier head: the last module, in module order, that holds parameters of its own."""
    return [n for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))][-1]


def fit_state(module: nn.Module, state: dict[str, torch.Tensor], where: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(`state` fitted to `module` as the module doc says, a note of what was adapted)."""
    own = module.state_dict()
    conv, head = first_conv(module) + ".weight", head_name(module) + "."
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CoInferError(f"weights {where} do not fit {type(module).__name__}: unexpected key {unexpected[0]}")
    fitted, notes = {}, []
    for key, mine in own.items():
        theirs = state.get(key)
        if key.startswith(head) and (theirs is None or theirs.shape != mine.shape):
            if key.endswith("weight"):
                shape = "missing" if theirs is None else tuple(theirs.shape)
                notes.append(f"head {head[:-1]} replaced ({shape} -> {tuple(mine.shape)})")
            fitted[key] = mine
        elif theirs is None:
            raise CoInferError(f"weights {where} do not fit {type(module).__name__}: missing key {key}")
        elif key == conv and theirs.dim() == 4 and theirs.shape[1] != mine.shape[1] \
                and (theirs.shape[0], *theirs.shape[2:]) == (mine.shape[0], *mine.shape[2:]):
            c = mine.shape[1]
            fitted[key] = (theirs.sum(1, keepdim=True) / c).expand_as(mine).clone().to(mine.dtype)
            notes.append(f"first conv {conv[:-7]}: {theirs.shape[1]} -> {c} input channels (summed / {c})")
        elif theirs.shape != mine.shape:
            raise CoInferError(f"weights {where} do not fit {type(module).__name__}: {key} is {tuple(theirs.shape)}, "
                               f"the app's model has {tuple(mine.shape)}")
        else:
            fitted[key] = theirs.to(mine.dtype)
    return fitted, "; ".join(notes)


def load_pretrained(module: nn.Module, app: App) -> str:
    """Load the app's `model.weights` into `module` (fitted); returns one line saying what was loaded."""
    path = weights_path(app)
    fitted, notes = fit_state(module, read_state(path), path)
    module.load_state_dict(fitted)
    return f"pretrained weights from {path}" + (f" ({notes})" if notes else "")
