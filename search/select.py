"""Model selection (KETI's VnV): the greedy model against the fastest scheme within an accuracy budget.

Candidates are every model (app) of a list, each as all-edge, all-cloud and every split scheme whose
accuracy is stored, with its accuracy (the base model's for the single ends: stored, else its
checkpoint's measured on the test split; the accuracy database's for a split) and its latency from
the latency model on one (edge, cloud) device pair at one bandwidth.

- Greedy (KETI's baseline, "Greedy AI Model Selection"): the most accurate model, run on the edge
  device (all-edge). Ties go to the faster, then to the app named first.
- Budgeted (KETI's "Advanced AI Model Selection"): the fastest candidate, over every model, split and
  compression, whose accuracy is at least the greedy model's minus the budget (an absolute difference
  of top-1: 0.10 is ten points). Ties go to the more accurate, then to the app named first. The
  greedy model itself always qualifies, so there is always an answer.

The choice is the model's; `runtime.vnv` then measures both choices for real.
"""

from __future__ import annotations

from dataclasses import dataclass

from cli.errors import CoInferError
from compress.scheme import Scheme


@dataclass(frozen=True)
class Candidate:
    app: str
    scheme: Scheme
    accuracy: float  # top-1 on the app's test split (the base model's for all-edge / all-cloud)
    latency_s: float  # the latency model's, on the device pair at the bandwidth

    def to_json(self) -> dict:
        return {"app": self.app, "scheme": self.scheme.to_json(), "accuracy": self.accuracy,
                "latency_s": self.latency_s}


@dataclass(frozen=True)
class Selection:
    greedy: Candidate
    budgeted: Candidate
    accuracy_budget: float
    considered: int

    @property
    def threshold(self) -> float:
        return self.greedy.accuracy - self.accuracy_budget

    def to_json(self) -> dict:
        return {"greedy": self.greedy.to_json(), "budgeted": self.budgeted.to_json(),
                "accuracy_budget": self.accuracy_budget, "accuracy_threshold": self.threshold,
                "candidates": self.considered}


def check_budget(budget: float) -> float:
    if not 0 < budget < 1:
        raise CoInferError(f"--accuracy-budget must lie in (0, 1) (a top-1 difference, 0.10 = ten points), "
                           f"got {budget:g}")
    return budget


def greedy_choice(candidates: list[Candidate]) -> Candidate:
    """The most accurate model, on the edge (all-edge); ties: the faster, then the app named first."""
    order = {name: i for i, name in enumerate(dict.fromkeys(c.app for c in candidates))}
    edge = [c for c in candidates if c.scheme.is_all_edge]
    if not edge:
        raise CoInferError("no model to choose from")
    return min(edge, key=lambda c: (-c.accuracy, c.latency_s, order[c.app]))


def budgeted_choice(candidates: list[Candidate], threshold: float) -> Candidate:
    """The fastest candidate with accuracy >= threshold; ties: the more accurate, then the app named first."""
    order = {name: i for i, name in enumerate(dict.fromkeys(c.app for c in candidates))}
    ok = [c for c in candidates if c.accuracy >= threshold - 1e-12]
    if not ok:
        raise CoInferError(f"no candidate reaches accuracy {threshold:.4f}")
    return min(ok, key=lambda c: (c.latency_s, -c.accuracy, order[c.app], c.scheme))


def select(candidates: list[Candidate], accuracy_budget: float) -> Selection:
    greedy = greedy_choice(candidates)
    budgeted = budgeted_choice(candidates, greedy.accuracy - check_budget(accuracy_budget))
    return Selection(greedy, budgeted, accuracy_budget, len(candidates))


def base_accuracy(store, app) -> tuple[float | None, str]:
    """(top-1, where from): the stored base accuracy ("stored"), else the checkpoint's measured on the app's
    test split here ("measured"), else (None, "-")."""
    stored = store.base(app.name, app.protocol.name)
    if stored is not None:
        return stored, "stored"
    if not app.checkpoint.is_file():
        return None, "-"
    from data import load_splits
    from models.build import load_base_model
    from models.train import test_accuracy
    return test_accuracy(load_base_model(app), load_splits(app)[1])[0], "measured"


def candidates(store, apps: list, edge: str, cloud: str, bandwidth: float) -> list[Candidate]:
    """Every app's single ends and stored split schemes on (edge, cloud) at `bandwidth` Mbps."""
    from database.storage import app_flags
    from search.latency import LatencyModel, ProfileGap
    out = []
    for app in apps:
        base = base_accuracy(store, app)[0]
        if base is None:
            raise CoInferError(f"no base accuracy of app {app.name} (protocol {app.protocol.name}) and no checkpoint: "
                               f"python -m models.train --app {app.ref}")
        try:
            model = LatencyModel.from_store(store, app, edge, cloud)
        except ProfileGap as gap:
            raise CoInferError(f"{gap}; or predict one: python -m database.predictor predict "
                               f"{app_flags(app, store.storage)} --device {gap.device} --side {gap.side}") from None
        out.append(Candidate(app.name, Scheme.ALL_EDGE, base, model.all_edge(bandwidth)))
        out.append(Candidate(app.name, Scheme.ALL_CLOUD, base, model.all_cloud(bandwidth)))
        for scheme, top1 in sorted(store.accuracy_table(app.name, app.protocol.name).items()):
            if scheme.is_split:  # a stored scheme outside the app's space (an older model) is not a candidate
                try:
                    latency = model.breakdown(scheme, bandwidth).total
                except CoInferError:
                    continue
                out.append(Candidate(app.name, scheme, top1, latency))
    return out
