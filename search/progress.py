"""A progress bar on stderr for searches that evaluate: one tick per new evaluation.

`ProgressEvaluator` wraps any `search.evaluators.Evaluator` and has the same interface, so the
search does not know it is there. The bar (`cli.progress`, the one place bars are drawn; here forced
on, since `search.cli` already decided: `--progress`, or stderr a terminal) appears on the first real evaluation only: a
search answered from the database prints nothing. It shows the evaluations done, the time each
took, and, when the number of evaluations is bounded (`total`: `--max-evaluations`, or the
evaluation budget of Optuna's samplers), the ETA; our own samplers stop by themselves, so their
bar shows the count, the elapsed time and the rate only. The time between two ticks includes the
sampler's own work (a GP fit for `optcoinfer`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from compress.scheme import Scheme
    from search.evaluators import Evaluator


class ProgressEvaluator:
    """`inner` with a tqdm bar over its `evaluate` calls (not over `known`, which costs nothing)."""

    def __init__(self, inner: Evaluator, total: int | None = None, desc: str = "evaluating",
                 file: TextIO | None = None) -> None:
        self.inner, self.total, self.desc = inner, total, desc
        self.file = file if file is not None else sys.stderr
        self.name = inner.name
        self.bar = None

    def known(self) -> dict[Scheme, float]:
        return self.inner.known()

    def base_accuracy(self) -> float | None:
        return self.inner.base_accuracy()

    def evaluate(self, scheme: Scheme) -> float:
        if self.bar is None:  # the caller asked for the bar (search.cli decides: --progress, or a terminal)
            from cli.progress import progress
            self.bar = progress(total=self.total, desc=self.desc, unit="eval", file=self.file, force=True)
        self.bar.set_postfix_str(f"{scheme}", refresh=True)
        accuracy = self.inner.evaluate(scheme)
        self.bar.set_postfix_str(f"{scheme} top-1 {100 * accuracy:.2f} %", refresh=False)
        self.bar.update()
        return accuracy

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
