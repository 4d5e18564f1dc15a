"""Where a scheme's accuracy comes from: the `Evaluator` interface and its two implementations.

- `DatabaseEvaluator` (`--evaluator finetune`): the app's accuracy database; a scheme not in it
  is evaluated with the app's protocol (prune + quantise + fine-tune + test, by a fine-tuner
  that is made on first need or injected) and stored before it is used, so an interrupted
  search loses nothing and a rerun resumes from the database.
- `TableEvaluator` (`--evaluator table:PATH`, benchmarks, tests): a dict {Scheme: top-1}; each
  first look-up of a scheme counts as one evaluation.

A scheme an evaluator cannot evaluate (a table lacks it; fine-tuning is impossible because the
dataset or the checkpoint is missing) raises `NotEvaluable`: the search goes on without that
scheme (or, when nothing can be evaluated, stops) and reports what that leaves open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from apps import App
from cli.errors import CoInferError
from compress.scheme import Scheme
from database.finetuner import Finetuner
from database.formats import check_table, read_table
from database.store import Store


class NotEvaluable(CoInferError):
    """This scheme (`everything=False`) or any scheme (`everything=True`) cannot be evaluated here."""

    def __init__(self, message: str, everything: bool = False) -> None:
        super().__init__(message)
        self.everything = everything


@runtime_checkable
class Evaluator(Protocol):
    """What a search needs to know a scheme's accuracy."""

    name: str

    def known(self) -> dict[Scheme, float]:
        """Accuracies available without evaluating anything (the stored database)."""

    def base_accuracy(self) -> float | None:
        """Top-1 of the unmodified model, if this evaluator knows it."""

    def evaluate(self, scheme: Scheme) -> float:
        """Top-1 of a split scheme (may take minutes: a fine-tune); NotEvaluable when it cannot."""


class DatabaseEvaluator:
    """The accuracy database of `app` under `protocol` (default: the app's own, whose missing
    schemes are fine-tuned here; another one, e.g. an imported table, is read only)."""

    def __init__(self, app: App, store: Store, seed: int | None = None, device: str = "cpu",
                 finetuner: Finetuner | None = None, protocol: str | None = None) -> None:
        self.app = app
        self.store = store
        self.device = device
        self.seed = app.protocol.seed if seed is None else seed
        self.finetuner = finetuner
        self.protocol = protocol or app.protocol.name
        own = self.protocol == app.protocol.name
        self.name = "finetune" if own else f"protocol:{self.protocol}"
        self._impossible: str | None = None if own else (
            f"protocol {self.protocol} is a stored table, not the app's own protocol: its missing schemes "
            "cannot be fine-tuned here")

    def known(self) -> dict[Scheme, float]:
        own = self.protocol == self.app.protocol.name
        return self.store.accuracy_table(self.app.name, self.protocol, self.seed if own else None)

    def base_accuracy(self) -> float | None:
        return self.store.base(self.app.name, self.protocol)

    def evaluate(self, scheme: Scheme) -> float:
        stored = self.known().get(scheme)
        if stored is not None:
            return stored
        if self._impossible is not None:
            raise NotEvaluable(self._impossible, everything=True)
        if self.finetuner is None:
            from database.finetune import SchemeFinetuner
            from devices.torch_device import check_torch_device
            check_torch_device(self.device, available=True)  # a GPU asked for is needed only now: bad input if absent
            try:
                self.finetuner = SchemeFinetuner(self.app, self.device)
            except CoInferError as exc:  # no dataset, no checkpoint, ...: nothing can be fine-tuned here
                self._impossible = f"cannot fine-tune schemes of {self.app.name}: {exc}"
                raise NotEvaluable(self._impossible, everything=True) from None
        row = self.finetuner.finetune_row(scheme, seed=self.seed)
        self.store.put_accuracy([row])
        return row.top1


class TableEvaluator:
    """Replays a table of measured accuracies; `calls` lists every look-up in order."""

    def __init__(self, table: dict[Scheme, float], name: str = "table", known: dict[Scheme, float] | None = None,
                 base: float | None = None) -> None:
        self.table = table
        self.name = name
        self._known = dict(known or {})
        self._base = base
        self.calls: list[Scheme] = []

    @classmethod
    def from_file(cls, path: str, widths: list[int]) -> TableEvaluator:
        table = read_table(Path(path))
        if not table:
            raise CoInferError(f"table {path} holds no schemes")
        check_table(table, widths, str(path))
        return cls(table, name=f"table:{path}")

    def known(self) -> dict[Scheme, float]:
        return dict(self._known)

    def base_accuracy(self) -> float | None:
        return self._base

    def evaluate(self, scheme: Scheme) -> float:
        self.calls.append(scheme)
        try:
            return self.table[scheme]
        except KeyError:
            raise NotEvaluable(f"{self.name} lacks scheme {scheme}") from None


def make_evaluator(spec: str, app: App, store: Store, widths: list[int], seed: int | None = None,
                   device: str = "cpu", protocol: str | None = None) -> Evaluator:
    if spec == "finetune":
        return DatabaseEvaluator(app, store, seed, device, protocol=protocol)
    if spec.startswith("table:") and len(spec) > 6:
        return TableEvaluator.from_file(spec[6:], widths)
    raise CoInferError(f"unknown evaluator {spec!r} (use finetune or table:PATH)")
