"""Latency rows profiled again next to a benchmark's runs, in a snapshot of the database.

This machine's speed drifts by tens of % over minutes (measured: the default model's all-edge
11.7 ms in one profile and 17.1 ms in another 13 minutes later, with nothing else running), so a
benchmark that holds measured latencies against the latency model profiles the rows it needs
side by side with its runs: `snapshot` copies the SQLite database (accuracies included) to a
scratch file and `reprofile` measures the app's edge device (as the testbed emulates it) and
cloud device again there, each pinned to its CPU on the testbed. The shipped database is not touched.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from apps import App
from cli.errors import CoInferError

if TYPE_CHECKING:
    from database.store import Store


def snapshot(stored: Store, path: Path) -> Store:
    """A consistent copy of an SQLite database (WAL included) at `path`, opened."""
    from database.store import Store
    if stored.engine.dialect.name != "sqlite":
        raise CoInferError("a fresh profile works on a copy of an SQLite database; with "
                           f"{stored.engine.dialect.name} use --profile stored")
    src, dst = sqlite3.connect(stored.engine.url.database), sqlite3.connect(path)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return Store(f"sqlite:///{path}")


@contextlib.contextmanager
def pinned(cpu: int | None, threads: int = 1):
    """This process on one CPU with `threads` torch threads, as an edge process on the testbed."""
    import torch
    affinity, before = os.sched_getaffinity(0), torch.get_num_threads()
    torch.set_num_threads(threads)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(before)


def reprofile(store: Store, app: App, edge_speed: float | None, tb, points: set[int] | None = None,
              runs: int = 30, idle_s=0.005, cloud: bool = True) -> None:
    """Profile the edge device (slowed to `edge_speed` by `dilate`) and the cloud device again into
    `store`, each on the CPU the testbed `tb` gives it: the rows of `points` (all when None) and the
    whole-model rows. `idle_s`: as `database.profile.ProfileConfig`'s. `cloud` False: the edge only (a
    cloud elsewhere keeps its stored rows)."""
    from database.profile import ProfileConfig, profile_app
    only = frozenset(points) if points is not None else None
    with pinned(tb.edge_cpu):
        store.put_latency(profile_app(app, ProfileConfig(app.edge.with_speed(edge_speed or None), ("edge",),
                                                         runs=runs, warmup=2, idle_s=idle_s,
                                                         only_points=only, progress=False)))
    if not cloud:
        return
    with pinned(tb.cloud_cpu):
        store.put_latency(profile_app(app, ProfileConfig(app.cloud, ("cloud",), runs=runs, warmup=2,
                                                         idle_s=idle_s, only_points=only, progress=False)))


def idle_before(model, schemes: list, mbps: float):
    """(side, point, channels) -> seconds that stage idles before it when the scheme at that point runs
    request after request: the edge waits for the transfer and the cloud, the cloud for the next edge
    stage and transfer; all-edge runs back to back (point P), all-cloud is point -1. From the model."""
    points = len(model.points)
    by_point = {}
    for s in schemes:
        p = -1 if s.is_all_cloud else points if s.is_all_edge else s.p
        by_point[p] = model.breakdown(s, mbps)

    def idle(side: str, p: int, c: int) -> float:
        bd = by_point.get(p)
        if bd is None or p == points:
            return 0.0
        return bd.transfer + bd.cloud if side == "edge" else bd.edge + bd.transfer
    return idle
