"""The app's fine-tuning protocol for one split scheme: the accuracy database's measurement.

    finetuner = SchemeFinetuner(app)                  # data and base model load once
    model = finetuner.finetune(Scheme(4, 12, 3))      # fine-tuned SchemeModel, eval mode
    row = finetuner.finetune_row(Scheme(4, 12, 3))    # ... tested: its accuracy database row

`SchemeFinetuner` is the `database.finetuner.Finetuner` of the build (database/evaluate.py), the
search's `DatabaseEvaluator` (which turns a row into the float its `evaluate` returns), the runtime's
weights (runtime/weights.py) and the training co-run (runtime/training.py). A row measured with the
protocol's seed keeps its weights in the weights store (database/scheme_weights.py), so the runtime loads
the very model whose accuracy the row holds (`keep_weights=False`: not kept).
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from apps import App
from compress.scheme import Scheme
from models.accel import Accel

if TYPE_CHECKING:  # torch and the data load on first use
    from compress.model import SchemeModel
    from database.store import AccuracyRow


class SchemeFinetuner:
    """The app's protocol (seed, data, training loop) for one scheme at a time: prune + quantise,
    fine-tune, test. Data and base model load once."""

    def __init__(self, app: App, device: str = "cpu", accel: Accel | None = None, keep_weights: bool = True,
                 weights_root: str | None = None) -> None:
        import torch

        from data import load_splits
        from models.build import load_base_model
        self.app = app
        self.keep_weights, self.weights_root = keep_weights, weights_root
        self.accel = accel or Accel.for_device(device)
        self.device = torch.device(self.accel.device)
        if self.accel.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.train, self.test = load_splits(app)
        self.base = load_base_model(app).to(self.device)

    def base_accuracy(self) -> tuple[float, float]:
        """(top-1, top-5) of the unpruned base model on the app's test split."""
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
        train_epochs(model, self.train, replace(proto, seed=seed), accel=self.accel)
        return model.eval()

    def finetune_row(self, scheme: Scheme, seed: int | None = None) -> AccuracyRow:
        """The scheme fine-tuned (`finetune`), then tested: its accuracy database row."""
        from database.store import AccuracyRow
        from models.train import test_accuracy
        proto = self.app.protocol
        seed = proto.seed if seed is None else seed
        start = time.perf_counter()
        model = self.finetune(scheme, seed)
        top1, top5 = test_accuracy(model, self.test)
        row = AccuracyRow(self.app.name, proto.name, *scheme, seed, top1, top5, len(self.test),
                          time.perf_counter() - start, socket.gethostname())
        if self.keep_weights and seed == proto.seed and scheme.is_split:
            from database.scheme_weights import save_weights
            save_weights(self.app, scheme, {k: v.detach().cpu() for k, v in model.state_dict().items()},
                         {k: v for k, v in asdict(row).items() if k not in ("app", "protocol")}, self.weights_root)
        return row
