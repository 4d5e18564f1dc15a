"""Fine-tuned weights per scheme, shared by the edge head and the cloud tail.

    scheme_model(app, Scheme(p, c, b)) -> SchemeModel

A scheme's accuracy in the database is that of the pruned model *after* the app's fine-tune
protocol (database.evaluate); running the pruned base weights instead loses most of it. The
fine-tuned state_dict of scheme (p, c, b) lives in `checkpoints/schemes/<app>/<p>-<c>-<b>.pt`
(tensors only, loaded with `torch.load(weights_only=True)`), with a small JSON sidecar holding
the test accuracy measured right after the fine-tune. When the file is missing the scheme is
fine-tuned here with the app's protocol (same seed, data and loop as the accuracy database), or by
the `database.finetuner.Finetuner` the caller passes, and saved atomically (temporary file +
os.replace) under an exclusive file lock, so an edge process and a cloud process asking for the
same scheme at once fine-tune it once and load the same file: head and tail always come from one
state_dict.

`COINFER_SCHEMES_DIR` overrides the folder (tests use a temporary one).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

import torch

from apps import REPO_ROOT, App
from cli.files import write_atomic
from compress.model import SchemeModel
from compress.scheme import Scheme
from database.finetuner import Finetuner
from models.splittable import Splittable

log = logging.getLogger("coinfer.weights")
ENV_DIR = "COINFER_SCHEMES_DIR"
_cache: dict[tuple[str, str, Scheme], dict[str, torch.Tensor]] = {}
_cache_lock = threading.Lock()


def schemes_dir(root: str | Path | None = None) -> Path:
    """Where fine-tuned scheme weights live: `root`, $COINFER_SCHEMES_DIR, or checkpoints/schemes."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else REPO_ROOT / "checkpoints" / "schemes"


def scheme_path(app: App, scheme: Scheme, root: str | Path | None = None) -> Path:
    p, c, b = scheme
    return schemes_dir(root) / app.name / f"{p}-{c}-{b}.pt"


def finetune(app: App, scheme: Scheme, finetuner: Finetuner | None = None) -> tuple[SchemeModel, float]:
    """(model, top-1 on the app's test split) of a split scheme fine-tuned by `finetuner`, by default
    with the app's protocol exactly as the accuracy database evaluates it (SchemeFinetuner)."""
    from data import load_splits
    from database.finetune import SchemeFinetuner
    from models.train import test_accuracy
    model = (finetuner if finetuner is not None else SchemeFinetuner(app)).finetune(scheme)
    return model, test_accuracy(model, load_splits(app)[1])[0]


def _save_atomic(state: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """The weights, then their metadata, each written whole or not at all (`cli.files.write_atomic`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(state, f), "weights")
    write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1), "weights metadata")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A scheme's state_dict: tensors only (weights_only=True; anything else is refused)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state_dict of tensors")
    return state


def scheme_state(app: App, scheme: Scheme, *, root: str | Path | None = None, train: bool = True,
                 finetuner: Finetuner | None = None, keep: bool = True) -> dict[str, torch.Tensor]:
    """The fine-tuned state_dict of a split scheme: memory, then disk, then a fine-tune (saved; with
    `train=False` a missing file is FileNotFoundError). `keep=False`: not kept in this module's
    process-wide cache (the cloud's TailCache bounds its own memory)."""
    path = scheme_path(app, scheme, root)
    key = (app.name, str(path.parent), scheme)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    if not path.is_file():
        if not train:
            raise FileNotFoundError(f"no fine-tuned weights for scheme {scheme} of {app.name} at {path}")
        with _locked(path):
            if not path.is_file():  # another process may have made it while we waited
                start = time.perf_counter()
                log.info("fine-tuning scheme %s of %s (protocol %s)", scheme, app.name, app.protocol.name)
                model, top1 = finetune(app, scheme, finetuner)
                meta = {"app": app.name, "scheme": scheme.to_json(), "protocol": app.protocol.name,
                        "seed": app.protocol.seed, "top1": top1, "seconds": time.perf_counter() - start}
                _save_atomic(model.state_dict(), meta, path)
    state = load_state(path)
    if keep:
        with _cache_lock:
            _cache[key] = state
    return state


def scheme_accuracy(app: App, scheme: Scheme, root: str | Path | None = None) -> float | None:
    """The test top-1 recorded when the scheme was fine-tuned here, None when unknown."""
    try:
        return float(json.loads(scheme_path(app, scheme, root).with_suffix(".json").read_text())["top1"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scheme_model(app: App, scheme: Scheme, *, base: Splittable | None = None, root: str | Path | None = None,
                 train: bool = True, finetuner: Finetuner | None = None, keep: bool = True) -> SchemeModel:
    """The SchemeModel of a split scheme with its fine-tuned weights (fine-tuned by `finetuner` and saved
    first when missing, unless `train=False`; `keep` as for scheme_state)."""
    state = scheme_state(app, scheme, root=root, train=train, finetuner=finetuner, keep=keep)
    if base is None:
        from models.build import load_base_model
        base = load_base_model(app)
    model = SchemeModel(base, scheme)
    model.load_state_dict(state)
    return model.eval()


def _finetune_child(app_source: str, scheme: tuple[int, int, int], root: str | None, threads: int) -> None:
    """The body of `finetune_apart`'s process: fine-tune and save the scheme's weights, nothing kept."""
    from apps import load_app
    torch.set_num_threads(threads)
    scheme_state(load_app(app_source), Scheme(*scheme), root=root, train=True, keep=False)


def finetune_apart(app: App, scheme: Scheme, root: str | Path | None = None, threads: int = 1) -> None:
    """Fine-tune a scheme and save its weights file (as `scheme_state` does) in a child process, with `threads`
    torch threads: the data, the optimiser, the activations and the modules a fine-tune loads (torch's
    compiler stack among them, imported by the optimiser) go with the process, so the caller's memory stays
    what it was (the cloud's fine-tunes on request). RuntimeError when the child fails."""
    import multiprocessing
    child = multiprocessing.get_context("spawn").Process(
        target=_finetune_child, args=(str(app.source), tuple(scheme), None if root is None else str(root), threads),
        name=f"coinfer-finetune-{scheme}", daemon=True)
    child.start()
    child.join()
    if child.exitcode != 0 or not scheme_path(app, scheme, root).is_file():
        raise RuntimeError(f"the fine-tune of scheme {scheme} of {app.name} failed in its process "
                           f"(exit status {child.exitcode})")


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
