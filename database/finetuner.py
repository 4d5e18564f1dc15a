"""What fine-tunes a split scheme: the interface the weights store and the search's evaluator take.

`database.finetune.SchemeFinetuner` is the implementation (the app's protocol: seed, data and
training loop of the accuracy database); tests and callers inject their own, e.g. one that counts
or refuses fine-tunes, instead of patching modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from compress.model import SchemeModel
    from compress.scheme import Scheme
    from database.store import AccuracyRow


class Finetuner(Protocol):
    """Fine-tunes and tests split schemes of one app's base model."""

    def finetune(self, scheme: Scheme, seed: int | None = None) -> SchemeModel:
        """The split scheme (Scheme(p, c, b)) fine-tuned with `seed` (None: the protocol's), in eval mode."""
        ...

    def finetune_row(self, scheme: Scheme, seed: int | None = None) -> AccuracyRow:
        """The scheme fine-tuned as `finetune` does, then tested: its accuracy database row."""
        ...
