"""Where a trial's accuracy comes from.

- `finetune`: the accuracy database of the app; a scheme not in it is evaluated with the
  app's protocol (prune + quantise + fine-tune + test) and stored before it is used, so an
  interrupted search loses nothing and a rerun resumes from the database.
- `table:PATH`: replays a complete table (CSV `p,c,b,top1` or Opt-CoInfer text); each first
  look-up of a scheme counts as one evaluation. A scheme the table lacks is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

from apps import App
from apps.errors import CoInferError
from compress.scheme import Scheme
from database.formats import check_table, read_table
from database.store import Store


class DatabaseEvaluator:
    name = "finetune"

    def __init__(self, app: App, store: Store, seed: int | None = None, device: str = "cpu") -> None:
        self.app = app
        self.store = store
        self.device = device
        self.seed = app.protocol.seed if seed is None else seed
        self._finetune = None

    def known(self) -> dict[Scheme, float]:
        return self.store.accuracy_table(self.app.name, self.app.protocol.name, self.seed)

    def base_accuracy(self) -> float | None:
        return self.store.base(self.app.name, self.app.protocol.name)

    def evaluate(self, scheme: Scheme) -> float:
        stored = self.store.accuracy_table(self.app.name, self.app.protocol.name, self.seed).get(scheme)
        if stored is not None:
            return stored
        if self._finetune is None:
            from database.evaluate import FinetuneEvaluator
            self._finetune = FinetuneEvaluator(self.app, self.device)
        row = self._finetune.evaluate(scheme, seed=self.seed)
        self.store.put_accuracy([row])
        return row.top1


class TableEvaluator:
    def __init__(self, path: str, widths: list[int]) -> None:
        self.path = Path(path)
        self.name = f"table:{path}"
        self.table = read_table(self.path)
        if not self.table:
            raise CoInferError(f"table {path} holds no schemes")
        check_table(self.table, widths, str(path))

    def known(self) -> dict[Scheme, float]:
        return {}

    def base_accuracy(self) -> float | None:
        return None

    def evaluate(self, scheme: Scheme) -> float:
        try:
            return self.table[scheme]
        except KeyError:
            raise CoInferError(f"table {self.path} lacks scheme {scheme} that the search asked for") from None


def make_evaluator(spec: str, app: App, store: Store, widths: list[int], seed: int | None = None,
                   device: str = "cpu"):
    if spec == "finetune":
        return DatabaseEvaluator(app, store, seed, device)
    if spec.startswith("table:") and len(spec) > 6:
        return TableEvaluator(spec[6:], widths)
    raise CoInferError(f"unknown evaluator {spec!r} (use finetune or table:PATH)")
