"""The best trial of a constrained study, for the storages a search keeps its study in.

Optuna's `Study.best_trial` honours the trials' constraints (the best feasible trial), but a storage's
`get_best_trial`, which optuna-dashboard calls for its "Best Trial", does not: on a latency query it
names the fastest scheme tried, however far outside the accuracy bound. `FeasibleBest` gives the
searches' storages (search/liveness.py) the same choice as `Study.best_trial`: the best completed trial
among the feasible ones (every constraint <= 0; a trial without constraints counts as feasible). With
no feasible trial it returns the least infeasible one (smallest sum of violations, as Optuna's TPE
ranks them) rather than failing: `Study.best_trial` then still refuses it, as Optuna does, and a
dashboard still draws the study.
"""

from __future__ import annotations

from collections.abc import Sequence

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def violation(trial: FrozenTrial) -> float:
    """How far a trial is outside its constraints: the sum of its positive constraint values (0: feasible)."""
    return sum(v for v in trial.constraints.values() if v > 0)


def feasible_best(trials: Sequence[FrozenTrial], direction: StudyDirection) -> FrozenTrial:
    """The best of the completed `trials` under Optuna's constraint rule (module doc); ValueError when none."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        raise ValueError("No trials are completed yet.")
    feasible = [t for t in done if violation(t) == 0]
    if not feasible:
        return min(done, key=violation)
    pick = max if direction == StudyDirection.MAXIMIZE else min
    return pick(feasible, key=lambda t: t.value)


class FeasibleBest:
    """A storage mixin: `get_best_trial` is `feasible_best` over the study's trials (before Optuna's storage in
    the bases)."""

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        directions = self.get_study_directions(study_id)  # type: ignore[attr-defined]
        if len(directions) > 1:
            raise RuntimeError("Best trial can be obtained only for single-objective optimization.")
        trials = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))  # type: ignore
        return feasible_best(trials, directions[0])
