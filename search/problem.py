"""A query made concrete: every scheme's latency at the bandwidth, the single-end references,
the query's accuracy threshold and latency budget, and what the known accuracies prove.

The query (search/query.py) decides direction, feasibility and status; the problem holds the
numbers they are computed on. Split schemes are flat indices of `space` (search/space.py);
the two single ends are `Scheme.ALL_EDGE` / `Scheme.ALL_CLOUD`.
"""

from __future__ import annotations

from compress.scheme import Scheme
from search.bounds import Knowledge
from search.latency import LatencyModel
from search.query import Query
from search.status import Status


class Problem:
    def __init__(self, query: Query, model: LatencyModel, base_accuracy: float) -> None:
        self.query = query
        self.model = model
        self.space = model.space
        self.base = base_accuracy
        self.latency = model.totals(query.bandwidth)
        self.bytes = model.bytes  # bytes each split scheme sends at the cut
        self.all_edge = model.all_edge(query.bandwidth)
        self.all_cloud = model.all_cloud(query.bandwidth)
        self.reference = model.reference(query.bandwidth)
        self.single_end = Scheme.ALL_EDGE if self.all_edge <= self.all_cloud else Scheme.ALL_CLOUD
        self.threshold = query.threshold(base_accuracy)
        self.budget = query.budget(self.reference)

    @property
    def direction(self) -> str:
        return self.query.direction

    def status(self, kn: Knowledge) -> Status:
        return self.query.status(self, kn)

    def scheme(self, i: int | Scheme) -> Scheme:
        return i if isinstance(i, Scheme) else self.space.scheme(i)

    def latency_of(self, scheme: Scheme) -> float:
        if scheme.is_split:
            return float(self.latency[self.space.index(scheme)])
        return self.all_edge if scheme.is_all_edge else self.all_cloud

    def knowledge(self, table: dict[Scheme, float], tolerance: float = 0.0) -> Knowledge:
        """A Knowledge of the split schemes of `table` that are in this space (others ignored)."""
        kn = Knowledge(self.space, tolerance)
        widths = [pt.channels for pt in self.space.points]
        for s, a in table.items():
            if s.is_split and s.p < len(widths) and s.c <= widths[s.p]:
                kn.add(self.space.index(s), a)
        return kn

    def exhaustive(self, table: dict[Scheme, float]) -> tuple[Scheme | None, float]:
        """The oracle's answer over a complete table: (scheme or None, its latency / accuracy)."""
        st = self.status(self.knowledge(table))
        return (None if st.incumbent is None else self.scheme(st.incumbent)), st.incumbent_value
