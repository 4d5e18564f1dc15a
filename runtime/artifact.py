"""An exported split, as a device runs it: a folder of two TorchScript programs and a manifest.

    DIR/manifest.json   what the split is (app, scheme, codec, input shape and transform, classes), the sha256
                        of each program and of the weights they were made from, the profile the scheme was
                        chosen under and the machine that exported it (`runtime.export` writes it)
    DIR/edge.pt         the head: input (N, C, H, W) float32 -> the activation at the cut (channels kept);
                        all-edge: the whole model -> logits; absent for all-cloud (the input is sent)
    DIR/cloud.pt        the tail: the dequantised activation -> logits (all-cloud: the whole model);
                        absent for all-edge
    DIR/samples.npy     a few of the app's test images, transformed, with labels.npy (optional)

`load_artifact(DIR)` checks the manifest and each program's hash before loading it (`torch.jit.load`: no
pickle), and returns an `Artifact` whose `split` has the `head` / `tail` of a `compress.model.SchemeModel`,
so the edge client (`runtime.client.EdgeClient(..., models={scheme: artifact.split})`) and the cloud's
tails run it unchanged; quantise + pack (`compress.activation`) and the wire (`runtime.protocol`) are the
runtime's own. This module imports torch and numpy only (plus the project's light modules): an edge
device runs `python -m runtime.edge --artifact DIR` without pydantic, optuna, SQLAlchemy, scikit-learn
or matplotlib (`pip install .[edge]`), which tests/test_export.py checks from `sys.modules`.

Why TorchScript and not `torch.export`: torch 2.14 marks `torch.jit` deprecated, but `torch.export.load`
falls back to full unpickling (`weights_only=False`, then `pickle.loads` for constants) when its tensors
do not load with `weights_only=True`, and an artifact is a file from elsewhere; a TorchScript archive
holds TorchScript code and tensors, no Python objects. The manifest's hashes say whether the programs
are the ones exported; whether to trust the exporter is the user's call, as for any model file.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cli.errors import CoInferError
from cli.files import read_json
from compress.scheme import Scheme

FORMAT = "coinfer-artifact/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 2**20
__all__ = ["FORMAT", "MANIFEST", "Artifact", "ExportedApp", "ExportedSplit", "HeadOf", "TailOf", "load_artifact",
           "sha256_of"]


@dataclass(frozen=True)
class ExportedApp:
    """What the edge client needs of an app (`runtime.client.EdgeClient`): its name on the wire and its input."""

    name: str
    in_channels: int
    input_size: int


class ExportedSplit(nn.Module):
    """The two programs of an exported split, as a SchemeModel's `head` and `tail` (None where that side has none)."""

    def __init__(self, head: torch.jit.ScriptModule | None, tail: torch.jit.ScriptModule | None) -> None:
        super().__init__()
        self._head, self._tail = head, tail

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(x) if self._head is not None else x

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        if self._tail is None:
            raise CoInferError("this artifact has no cloud part (all-edge)")
        return self._tail(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # all-edge: the whole model
        return self.head(x)


class HeadOf(nn.Module):
    """A split model's head as a module of its own (what `runtime.export` traces)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(x)


class TailOf(nn.Module):
    """A split model's tail as a module of its own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.model.tail(a)


@dataclass(frozen=True)
class Artifact:
    folder: Path
    manifest: dict
    app: ExportedApp
    scheme: Scheme
    split: ExportedSplit

    def samples(self) -> tuple[torch.Tensor, list[int]]:
        """The test images exported with the split and their labels (CoInferError when there are none)."""
        images, labels = self.folder / "samples.npy", self.folder / "labels.npy"
        if not images.is_file() or not labels.is_file():
            raise CoInferError(f"artifact {self.folder} has no samples: give --inputs X.npy --labels Y.npy")
        return load_inputs(images, labels, self.app)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inputs(images: Path, labels: Path, app: ExportedApp) -> tuple[torch.Tensor, list[int]]:
    """Images (N, C, H, W) float32, already transformed as the manifest says, and their N labels (.npy files,
    read without pickle)."""
    try:
        x = np.load(images, allow_pickle=False)
        y = np.load(labels, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CoInferError(f"cannot read inputs {images} / {labels}: {exc}") from None
    shape = (app.in_channels, app.input_size, app.input_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape or y.shape != (len(x),) or not len(x):
        raise CoInferError(f"inputs must be (N, {', '.join(map(str, shape))}) with N labels, got {x.shape} and "
                           f"{y.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), [int(v) for v in y]


def load_artifact(folder: str | Path) -> Artifact:
    """The artifact in `folder`, its programs checked against the manifest's hashes and loaded."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST, "artifact manifest", MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CoInferError(f"{folder / MANIFEST}: not a CoInfer artifact manifest ({FORMAT})")
    try:
        scheme = Scheme.parse(str(manifest["scheme"]))
        shape = [int(v) for v in manifest["input"]["shape"]]
        app = ExportedApp(str(manifest["app"]), shape[0], shape[1])
        programs = {side: manifest["programs"].get(side) for side in ("edge", "cloud")}
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CoInferError(f"{folder / MANIFEST}: malformed manifest ({type(exc).__name__}: {exc})") from None
    loaded = {}
    for side, entry in programs.items():
        if entry is None:
            loaded[side] = None
            continue
        path = folder / str(entry["file"])
        if path.parent != folder or not path.is_file():
            raise CoInferError(f"artifact {folder}: the {side} program {entry['file']!r} is missing")
        if sha256_of(path) != entry.get("sha256"):
            raise CoInferError(f"artifact {folder}: {path.name} does not match the manifest's sha256 (changed or "
                               "damaged): export it again")
        with warnings.catch_warnings():  # torch 2.14 calls TorchScript deprecated: the module doc says why it is used
            warnings.simplefilter("ignore", FutureWarning)
            loaded[side] = torch.jit.load(str(path), map_location="cpu").eval()
    return Artifact(folder, manifest, app, scheme, ExportedSplit(loaded["edge"], loaded["cloud"]))
