"""A query made concrete: every scheme's latency at the bandwidth, the single-end references,
the accuracy threshold or latency budget, and what the evaluated schemes prove.

- latency query (`-accuracy_loss e`): minimise L(s) subject to A(s) >= base - e. The
  single-end schemes run the unmodified model (loss 0), so the best of them is always a
  feasible answer and only split schemes faster than it matter.
- accuracy query (`-latency r`): maximise A(s) subject to L(s) <= r * min(all-edge, all-cloud).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apps.errors import CoInferError
from compress.scheme import Scheme
from search.bounds import Knowledge
from search.latency import LatencyModel

FLOAT_SLACK = 1e-9


@dataclass(frozen=True)
class Query:
    kind: str  # "latency" (min latency s.t. loss) or "accuracy" (max accuracy s.t. latency)
    bandwidth: float  # Mbps
    accuracy_loss: float | None = None
    latency_ratio: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.bandwidth, (int, float)) and self.bandwidth > 0 and np.isfinite(self.bandwidth)):
            raise CoInferError(f"bandwidth must be a positive number of Mbps, got {self.bandwidth}")
        if self.kind == "latency":
            if self.accuracy_loss is None or not 0 <= self.accuracy_loss < 1:
                raise CoInferError(f"accuracy_loss must be in [0, 1), got {self.accuracy_loss}")
        elif self.kind == "accuracy":
            if self.latency_ratio is None or not self.latency_ratio > 0 or not np.isfinite(self.latency_ratio):
                raise CoInferError(f"latency ratio must be > 0, got {self.latency_ratio}")
        else:
            raise CoInferError(f"unknown query kind {self.kind!r}")


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


class Problem:
    def __init__(self, query: Query, model: LatencyModel, base_accuracy: float) -> None:
        self.query = query
        self.model = model
        self.space = model.space
        self.base = base_accuracy
        self.latency = model.totals(query.bandwidth)
        self.all_edge = model.all_edge(query.bandwidth)
        self.all_cloud = model.all_cloud(query.bandwidth)
        self.reference = model.reference(query.bandwidth)
        self.single_end = Scheme.ALL_EDGE if self.all_edge <= self.all_cloud else Scheme.ALL_CLOUD
        if query.kind == "latency":
            self.threshold = base_accuracy - query.accuracy_loss - FLOAT_SLACK
            self.budget = None
        else:
            self.threshold = None
            self.budget = query.latency_ratio * self.reference * (1 + FLOAT_SLACK)

    def status(self, kn: Knowledge) -> Status:
        lower, upper = kn.bounds()
        ev = kn.evaluated
        if self.query.kind == "latency":
            feasible = ev & (kn.acc >= self.threshold)
            inc, inc_l = self.single_end, self.reference
            if feasible.any():
                i = int(np.flatnonzero(feasible)[np.argmin(self.latency[feasible])])
                if self.latency[i] < inc_l:
                    inc, inc_l = i, float(self.latency[i])
            cand = ~ev & (self.latency < inc_l) & (upper >= self.threshold)
            gap = float(inc_l - self.latency[cand].min()) if cand.any() else 0.0
            return Status(inc, inc_l, cand, lower, upper, gap)
        within = self.latency <= self.budget
        inc, inc_a = None, -np.inf
        if self.reference <= self.budget:
            inc, inc_a = self.single_end, self.base
        known = ev & within
        if known.any():
            idx = np.flatnonzero(known)
            best = idx[np.lexsort((self.latency[idx], -kn.acc[idx]))[0]]
            if kn.acc[best] > inc_a:
                inc, inc_a = int(best), float(kn.acc[best])
        # an unevaluated scheme whose lower bound already beats the incumbent raises the bar
        proven = ~ev & within & (lower > inc_a)
        bar = max(inc_a, float(lower[proven].max())) if proven.any() else inc_a
        cand = ~ev & within & (upper > bar)
        cand |= proven & (lower >= bar)  # the proven-best itself must be measured
        gap = float(np.clip(upper[cand], None, 1.0).max() - max(inc_a, 0.0)) if cand.any() else 0.0
        return Status(inc, inc_a, cand, lower, upper, gap)

    def objective(self, i: int, accuracy: float) -> float:
        return float(self.latency[i]) if self.query.kind == "latency" else accuracy

    def exhaustive(self, table: dict[int, float]) -> tuple[int | Scheme | None, float]:
        """The oracle's answer over a complete table {flat index: accuracy}."""
        kn = Knowledge(self.space)
        for i, a in table.items():
            kn.add(i, a)
        st = self.status(kn)
        return st.incumbent, st.incumbent_value
