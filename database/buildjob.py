"""What a build worker is given: one frozen `BuildJob`, the same on every host (picklable: `--workers N`
sends it to each process), and the finetuner it implies (`make_finetuner`). The build CLI
(database/evaluate.py) makes it; the build protocol (database/distributed.py) runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from apps import App
from compress.scheme import Scheme
from database.storage import Storage
from models.accel import Accel

if TYPE_CHECKING:
    from database.finetuner import Finetuner
    from database.rdb import QueueConfig


@dataclass(frozen=True)
class BuildJob:
    """Everything a build worker needs, on any host (picklable: `--workers N` sends it to each)."""

    app_ref: str  # app name or YAML path
    storage: Storage  # the accuracy database (database/storage.py)
    queue: QueueConfig  # the build study (database/distributed.py)
    schemes: tuple[Scheme, ...]
    seed: int
    widths: tuple[int, ...]  # C_p of the app's points
    evaluator: str = "finetune"  # or "synthetic[:SECONDS]" (database/synthetic_finetuner.py)
    accel: Accel = Accel()
    threads: int | None = None  # torch threads of a worker (None: torch's default)

    @property
    def synthetic(self) -> bool:
        return self.evaluator.startswith("synthetic")

    def protocol(self, app: App) -> str:
        from database.synthetic_finetuner import synthetic_protocol
        return synthetic_protocol(app) if self.synthetic else app.protocol.name


def make_finetuner(job: BuildJob, app: App) -> Finetuner:
    if job.synthetic:
        from database.synthetic_finetuner import SyntheticFinetuner, parse_delay
        return SyntheticFinetuner(app, job.widths, parse_delay(job.evaluator))
    if job.threads is not None:
        import torch
        torch.set_num_threads(job.threads)
    from database.finetune import SchemeFinetuner
    return SchemeFinetuner(app, accel=job.accel)
