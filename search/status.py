"""Where a search stands: the incumbent, the schemes that could still beat it, their bounds and
the gap. Computed by a query (search/query.py) from a `Problem` and what is known."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from compress.scheme import Scheme


@dataclass
class Status:
    """Where a search stands given what is known."""

    incumbent: int | Scheme | None  # flat index of a split, a single-end Scheme, or None (nothing feasible yet)
    incumbent_value: float  # latency (latency query) or accuracy (accuracy query) of the incumbent
    candidates: np.ndarray  # bool: unevaluated schemes that could still beat the incumbent
    lower: np.ndarray
    upper: np.ndarray
    gap: float  # how much better the best candidate could be (s or accuracy); 0 when done

    @property
    def done(self) -> bool:
        return not self.candidates.any()
