"""The weights store: each fine-tuned scheme's state_dict, kept beside its accuracy row.

    <root>/<app>/<protocol>/<p>-<c>-<b>.pt     tensors only (torch.save of a state_dict; read weights_only)
    <root>/<app>/<protocol>/<p>-<c>-<b>.json   its accuracy row (same key: app, protocol, p, c, b, seed;
                                               top1, top5, n_test) and the sha256 of the .pt file

`root` is $COINFER_SCHEMES_DIR, else `checkpoints/schemes` of the data folder (`cli.paths`: the checkout,
or an installed copy's own). The build
(`database.evaluate`), the search's evaluator and the runtime's on-request fine-tunes all go through
`database.finetune.SchemeFinetuner`, which saves here what it fine-tunes with the protocol's seed, so
the edge and the cloud load the very weights whose accuracy the database holds (runtime/weights.py) and
never fine-tune unless asked. Each file is written whole or not at all (`cli.files.write_atomic`), the
weights first: a .json sidecar means its .pt is complete. The store is a folder of this host: a build on
several hosts keeps each scheme's weights where it was fine-tuned (point $COINFER_SCHEMES_DIR at a shared
folder, or copy the folders together: names never collide).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from apps import App
from cli.files import write_atomic
from cli.paths import data_file
from compress.scheme import Scheme

ENV_DIR = "COINFER_SCHEMES_DIR"
__all__ = ["ENV_DIR", "has_weights", "load_state", "locked", "missing_weights_hint", "save_weights", "scheme_accuracy",
           "scheme_meta", "scheme_path", "schemes_dir"]


def schemes_dir(root: str | Path | None = None) -> Path:
    """Where fine-tuned scheme weights live: `root`, $COINFER_SCHEMES_DIR, or checkpoints/schemes."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else data_file("checkpoints/schemes")


def scheme_path(app: App, scheme: Scheme, root: str | Path | None = None) -> Path:
    """The .pt file of a scheme's weights under the app's protocol."""
    p, c, b = scheme
    return schemes_dir(root) / app.name / app.protocol.name / f"{p}-{c}-{b}.pt"


def has_weights(app: App, scheme: Scheme, root: str | Path | None = None) -> bool:
    """Whether the store holds the scheme's weights."""
    return scheme_path(app, scheme, root).is_file()


def save_weights(app: App, scheme: Scheme, state: dict, row: dict, root: str | Path | None = None) -> Path:
    """Store `state` (a state_dict of tensors) with its accuracy `row` (a mapping with at least top1)."""
    import torch
    path = scheme_path(app, scheme, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(state, f), "weights")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {"app": app.name, "protocol": app.protocol.name, "scheme": scheme.to_json(), **row, "sha256": digest}
    write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True), "weights metadata")
    return path


def load_state(path: Path) -> dict:
    """A scheme's state_dict: tensors only (weights_only=True; anything else is refused)."""
    import torch
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict of tensors")
    return state


def scheme_meta(app: App, scheme: Scheme, root: str | Path | None = None) -> dict | None:
    """The sidecar of a scheme's weights (its accuracy row and hash), None when there is none."""
    try:
        meta = json.loads(scheme_path(app, scheme, root).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def scheme_accuracy(app: App, scheme: Scheme, root: str | Path | None = None) -> float | None:
    """The test top-1 recorded when the scheme was fine-tuned, None when unknown."""
    try:
        return float((scheme_meta(app, scheme, root) or {})["top1"])
    except (KeyError, TypeError, ValueError):
        return None


def missing_weights_hint(app: App, scheme: Scheme) -> str:
    """What makes a scheme's weights: the build of that scheme (it keeps what it fine-tunes), with the app as
    the user named it (`App.ref`)."""
    return f"python -m database.evaluate --app {app.ref} --schemes {scheme.p},{scheme.c},{scheme.b} --weights"


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on `path`'s .lock file: one process fine-tunes a scheme at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
