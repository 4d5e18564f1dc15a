"""Accuracy database builder: prune + quantise + fine-tune each scheme, test, store.

    python -m database.evaluate --app vgg16_digits --schemes all --workers 2

Resumable: schemes already in the database (same app, protocol, seed) are skipped; each
result is written in its own transaction as soon as it is done, and writes are idempotent,
so Ctrl-C or kill -9 and a rerun lose nothing and duplicate nothing.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from typing import TYPE_CHECKING

from apps import DEFAULT_APP, App, load_app
from apps.errors import ArgParser, CoInferError, run_cli
from compress.scheme import Scheme, all_schemes

if TYPE_CHECKING:  # torch, the data and the database load on first use (--help stays fast)
    from compress.model import SchemeModel
    from database.store import AccuracyRow, Store


class FinetuneEvaluator:
    """The app's evaluation protocol for one scheme (a `database.finetuner.Finetuner`). Data and base
    model load once."""

    def __init__(self, app: App, device: str = "cpu") -> None:
        import torch

        from data import load_splits
        from models.build import load_base_model
        self.app = app
        self.device = torch.device(device)
        self.train, self.test = load_splits(app)
        self.base = load_base_model(app).to(self.device)

    def base_accuracy(self) -> tuple[float, float]:
        from models.train import test_accuracy
        return test_accuracy(self.base, self.test)

    def finetune(self, scheme: Scheme, seed: int | None = None) -> SchemeModel:
        """A split scheme of the base model, fine-tuned with the app's protocol (eval mode)."""
        import torch

        from compress.model import SchemeModel
        from models.train import train_epochs
        proto = self.app.protocol
        seed = proto.seed if seed is None else seed
        torch.manual_seed(seed)
        model = SchemeModel(self.base, scheme)
        train_epochs(model, self.train, proto.epochs, proto.lr, proto.batch_size, proto.momentum,
                     proto.weight_decay, proto.schedule, seed)
        return model.eval()

    def evaluate(self, scheme: Scheme, seed: int | None = None) -> AccuracyRow:
        from database.store import AccuracyRow
        from models.train import test_accuracy
        proto = self.app.protocol
        seed = proto.seed if seed is None else seed
        start = time.perf_counter()
        model = self.finetune(scheme, seed)
        top1, top5 = test_accuracy(model, self.test)
        return AccuracyRow(self.app.name, proto.name, *scheme, seed, top1, top5, len(self.test),
                           time.perf_counter() - start, socket.gethostname())


_worker: FinetuneEvaluator | None = None
_worker_error: str | None = None


def _init_worker(app_ref: str, threads: int) -> None:
    """Load the app's evaluator in a pool worker. It never raises: a pool restarts a worker whose
    initializer raises, forever, so the failure is kept and raised by the worker's first task."""
    global _worker, _worker_error
    import torch
    torch.set_num_threads(threads)
    try:
        _worker = FinetuneEvaluator(load_app(app_ref))
    except Exception as exc:  # CoInferError, or anything else: one line either way
        _worker_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _eval_task(task: tuple[Scheme, int]) -> AccuracyRow:
    if _worker is None:
        raise CoInferError(f"evaluation worker failed to start: {_worker_error}")
    return _worker.evaluate(*task)


def select_schemes(app: App, widths: list[int], spec: list[str]) -> list[Scheme]:
    """'all', 'point:P' (every scheme at point P), 'none' (only the base model), or 'p,c,b' items."""
    out: list[Scheme] = []
    for item in spec:
        if item == "none":
            continue
        if item == "all":
            out += all_schemes(widths)
        elif item.startswith("point:"):
            try:
                p = int(item.split(":", 1)[1])
            except ValueError:
                raise CoInferError(f"bad scheme selector {item!r}: expected point:P") from None
            if not 0 <= p < len(widths):
                raise CoInferError(f"partition point {p} outside 0..{len(widths) - 1}")
            out += [s for s in all_schemes(widths) if s.p == p]
        else:
            for part in item.replace(";", " ").split():
                out.append(Scheme.parse(part))
    return list(dict.fromkeys(out))


def run_evaluations(app: App, store: Store, schemes: list[Scheme], seed: int,
                    workers: int = 1, app_ref: str | None = None, progress: bool = True) -> int:
    """Evaluate the schemes not yet stored; returns how many were newly stored."""
    import torch
    from tqdm import tqdm
    proto = app.protocol.name
    done = store.accuracy_table(app.name, proto, seed)
    todo = [(s, seed) for s in schemes if s not in done]
    if not todo:
        return 0
    stored = 0
    bar = tqdm(total=len(todo), desc=f"evaluate {app.name}", unit="scheme", disable=not progress)
    if workers <= 1:
        evaluator = FinetuneEvaluator(app)
        for task in todo:
            stored += store.put_accuracy([evaluator.evaluate(*task)])
            bar.update(1)
    else:
        import torch
        ctx = mp.get_context("spawn")
        threads = max(1, torch.get_num_threads() // workers)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(app_ref or app.name, threads)) as pool:
            for row in pool.imap_unordered(_eval_task, todo):
                stored += store.put_accuracy([row])
                bar.update(1)
    bar.close()
    return stored


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(description="Fill the accuracy database of an app (resumable).")
    ap.add_argument("--app", default=DEFAULT_APP, help="app name or YAML path")
    ap.add_argument("--schemes", nargs="+", default=["all"],
                    help="'all', 'point:P', 'none' (base model only), or schemes 'p,c,b' (several allowed)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None, help="fine-tune seed (default: the protocol's)")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: database/coinfer.sqlite)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        raise CoInferError("--workers must be at least 1")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise CoInferError(f"--seed must be in 0..{2**32 - 1}, got {args.seed}")
    app = load_app(args.app)
    from compress.prune import check_in_space
    from database.store import Store
    from models.build import app_points, load_base_model
    widths = [pt.channels for pt in app_points(app)]
    schemes = select_schemes(app, widths, args.schemes)
    for p, c, b in schemes:
        check_in_space(widths, p, c, b)
    load_base_model(app)  # the checkpoint exists and fits the app, before any database or worker
    store = Store(args.storage)
    store.check_writable()  # before minutes of fine-tuning whose results could not be stored
    seed = app.protocol.seed if args.seed is None else args.seed
    if store.base(app.name, app.protocol.name) is None:
        evaluator = FinetuneEvaluator(app)
        top1, top5 = evaluator.base_accuracy()
        store.put_base(app.name, app.protocol.name, top1, top5, len(evaluator.test),
                       f"checkpoint {app.checkpoint.name}")
    start = time.perf_counter()
    new = run_evaluations(app, store, schemes, seed, args.workers, args.app)
    total = len(store.accuracy_table(app.name, app.protocol.name, seed))
    print(f"{app.name}: {new} new evaluations in {time.perf_counter() - start:.1f} s; "
          f"{total} schemes stored for protocol {app.protocol.name} seed {seed}")
    return 0


if __name__ == "__main__":
    run_cli(main)
