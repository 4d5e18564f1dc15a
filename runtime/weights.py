"""Fine-tuned weights per scheme, shared by the edge head and the cloud tail.

    scheme_model(app, Scheme(p, c, b)) -> SchemeModel

A scheme's accuracy in the database is that of the pruned model *after* the app's fine-tune
protocol (database.evaluate); running the pruned base weights instead loses most of it. The build
keeps the weights of every scheme it fine-tunes in the weights store (database/scheme_weights.py:
`<root>/<app>/<protocol>/<p>-<c>-<b>.pt`, tensors only, loaded with `torch.load(weights_only=True)`,
with the accuracy row beside it), and this module loads them. A missing file is `MissingWeights`, one
line naming the build command that makes it: the edge and the cloud never fine-tune unless asked
(`train=True`: `runtime.edge --finetune-missing`, `runtime.cloud --finetune-on-request`). Asked, the
scheme is fine-tuned here with the app's protocol (same seed, data and loop as the accuracy database),
or by the `database.finetuner.Finetuner` the caller passes, and saved atomically under an exclusive
file lock, so an edge process and a cloud process asking for the same scheme at once fine-tune it once
and load the same file: head and tail always come from one state_dict.

`COINFER_SCHEMES_DIR` overrides the folder (tests use a temporary one).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from apps import App
from cli.errors import CoInferError
from compress.model import SchemeModel
from compress.scheme import Scheme
from database.finetuner import Finetuner
from database.scheme_weights import (
    ENV_DIR,
    has_weights,
    load_state,
    locked,
    missing_weights_hint,
    save_weights,
    scheme_accuracy,
    scheme_path,
    schemes_dir,
)
from models.splittable import Splittable

__all__ = ["ENV_DIR", "MissingWeights", "clear_cache", "finetune", "has_weights", "scheme_accuracy", "scheme_model",
           "scheme_path", "scheme_state", "schemes_dir"]
log = logging.getLogger("coinfer.weights")
_cache: dict[tuple[str, str, Scheme], dict[str, torch.Tensor]] = {}
_cache_lock = threading.Lock()


def finetune(app: App, scheme: Scheme, finetuner: Finetuner | None = None) -> tuple[SchemeModel, float]:
    """(model, top-1 on the app's test split) of a split scheme fine-tuned by `finetuner`, by default
    with the app's protocol exactly as the accuracy database evaluates it (SchemeFinetuner)."""
    from data import load_splits
    from database.finetune import SchemeFinetuner
    from models.train import test_accuracy
    model = (finetuner if finetuner is not None else SchemeFinetuner(app)).finetune(scheme)
    return model, test_accuracy(model, load_splits(app)[1])[0]


class MissingWeights(CoInferError):
    """A scheme with no fine-tuned weights in the store, where fine-tuning was not asked for."""


def scheme_state(app: App, scheme: Scheme, *, root: str | Path | None = None, train: bool = False,
                 finetuner: Finetuner | None = None, keep: bool = True) -> dict[str, torch.Tensor]:
    """The fine-tuned state_dict of a split scheme: memory, then the weights store; a missing file is
    `MissingWeights` unless `train` (then fine-tuned here and saved). `keep=False`: not kept in this
    module's process-wide cache (the cloud's TailCache bounds its own memory)."""
    path = scheme_path(app, scheme, root)
    key = (app.name, str(path.parent), scheme)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    if not path.is_file():
        if not train:
            raise MissingWeights(f"no fine-tuned weights for scheme {scheme} of {app.name} (protocol "
                                 f"{app.protocol.name}) in {path.parent}: make them with "
                                 f"{missing_weights_hint(app, scheme)}, or let this command fine-tune "
                                 "(runtime.edge --finetune-missing, runtime.cloud --finetune-on-request)")
        with locked(path):
            if not path.is_file():  # another process may have made it while we waited
                start = time.perf_counter()
                log.info("fine-tuning scheme %s of %s (protocol %s)", scheme, app.name, app.protocol.name)
                model, top1 = finetune(app, scheme, finetuner)
                save_weights(app, scheme, model.state_dict(), {"seed": app.protocol.seed, "top1": top1,
                                                               "wall_s": time.perf_counter() - start}, root)
    state = load_state(path)
    if keep:
        with _cache_lock:
            _cache[key] = state
    return state


def scheme_model(app: App, scheme: Scheme, *, base: Splittable | None = None, root: str | Path | None = None,
                 train: bool = False, finetuner: Finetuner | None = None, keep: bool = True) -> SchemeModel:
    """The SchemeModel of a split scheme with its fine-tuned weights (missing: `MissingWeights`, or with `train`
    fine-tuned by `finetuner` and saved first; `keep` as for scheme_state)."""
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
    if child.exitcode != 0 or not has_weights(app, scheme, root):
        raise RuntimeError(f"the fine-tune of scheme {scheme} of {app.name} failed in its process "
                           f"(exit status {child.exitcode})")


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
