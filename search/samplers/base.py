"""`PlannerSampler`: an Optuna sampler that chooses a whole scheme per trial from what is known.

The CoInfer, Opt-CoInfer and exhaustive samplers are `optuna.samplers.BaseSampler`s, so any
study drives them (`study.optimize`), with any storage, with the dashboard and the
visualisations. They work as Optuna's `GridSampler` does: `before_trial` picks the trial's
scheme and writes it to the trial's system attribute `coinfer:scheme`; `sample_independent`
answers the define-by-run parameters p, c, b from it (search/study.py); `after_trial` stops the
study when nothing is left to evaluate (for CoInfer: when the certificate holds).

What a sampler knows is the stored accuracy database it was given plus the study's completed
trials. Several processes may optimise one study: a scheme held by another running trial is
never proposed (a FAILed trial holds nothing: a dead worker's trials are failed, search/liveness.py;
only a scheme the evaluator could not evaluate stays excluded). Trials claim in trial-number
order: trial n waits (briefly) until every running trial numbered below n has written its claim,
then excludes those claims. Since numbers are unique and claims are written once, no two running
trials hold one scheme. When every scheme
still worth evaluating is held, the trial waits for one of them to finish; when nothing is left,
it re-runs the answer (a repeat: no evaluation; Optuna's GridSampler does the same) and the
study stops. The first trial is the better single end (the unmodified model: no evaluation), so
the study always holds the reference the answer is measured against.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from compress.scheme import Scheme
from search.bounds import Knowledge
from search.certificate import Certificate, certify
from search.liveness import WORKER_KEY, fail_stale, worker_id
from search.problem import Problem
from search.status import Status
from search.study import SOURCE_NOT_EVALUABLE, add_known, measured, params_of, scheme_of

SEARCH_CLAIM_KEY = "coinfer:scheme"  # system attr of a search trial: the scheme its sampler chose
REPEAT = "coinfer:repeat"  # the trial re-runs the answer: nothing was left to evaluate
POLL_S = 0.02


class PlannerSampler(BaseSampler):
    """Subclasses implement `pick` (and `finished` when it is not the status's `done`)."""

    name = "planner"

    def __init__(self, problem: Problem, known: dict[Scheme, float] | None = None, tolerance: float = 0.0,
                 wait_s: float = 600.0) -> None:
        """`known`: accuracies stored before the search (the accuracy database); `tolerance`: the
        accepted non-monotonicity of measured accuracy (search/bounds.py); `wait_s`: how long a
        trial waits for other workers' trials before it gives up on their claims."""
        self.problem = problem
        self.known = dict(known or {})
        self.tolerance = tolerance
        self.wait_s = wait_s
        self.decision_s = 0.0  # own time spent choosing schemes (waits excluded)
        self._state: tuple[int, Knowledge, set[int], Status | None] | None = None

    # -- what subclasses decide ------------------------------------------------------------
    def pick(self, kn: Knowledge, st: Status, held: np.ndarray) -> int | None:
        """The flat index of the split scheme to evaluate next, never one of `held`; None when
        nothing that is not held is worth evaluating."""
        raise NotImplementedError

    def finished(self, kn: Knowledge, st: Status) -> bool:
        """Nothing is left to evaluate."""
        return st.done

    # -- what the study knows --------------------------------------------------------------
    def state(self, study: optuna.Study, told: FrozenTrial | None = None) -> tuple[Knowledge, Status]:
        """What `known`, the study's completed trials and `told` (a trial being completed) say, and
        the status it implies. Trials are absorbed once; the status is recomputed only when
        something new was absorbed."""
        if self._state is None or self._state[0] != study._study_id:
            self._state = (study._study_id, self.problem.knowledge(self.known, self.tolerance), set(), None)
        _, kn, absorbed, st = self._state
        new = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number not in absorbed]
        if told is not None and told.number not in absorbed:
            new.append(told)
        absorbed.update(t.number for t in new)
        for scheme, acc in measured(new, self.problem).items():
            kn.add(self.problem.space.index(scheme), acc)
        if st is None or new:
            st = self.problem.status(kn)
            self._state = (study._study_id, kn, absorbed, st)
        return kn, st

    def done(self, study: optuna.Study) -> bool:
        return self.finished(*self.state(study))

    def certificate(self, study: optuna.Study) -> Certificate:
        """The certificate of the study's current answer (the status's incumbent)."""
        kn, st = self.state(study)
        return certify(self.problem, kn, st, st.incumbent)

    def conclude(self, study: optuna.Study, told: FrozenTrial | None = None) -> None:
        """Add to the study, as completed trials (source "database"), the stored evaluations the
        answer and its certificate rely on, so the study alone tells the story."""
        kn, st = self.state(study, told)
        if st.incumbent is None:
            return
        proof = certify(self.problem, kn, st, st.incumbent).proof or (self.problem.scheme(st.incumbent),)
        told_scheme = scheme_of(told, self.problem) if told is not None else None
        stored = [s for s in proof if s != told_scheme and (not s.is_split or s in self.known)]
        add_known(study, self.problem, stored, self.known)

    # -- optuna.samplers.BaseSampler -------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if SEARCH_CLAIM_KEY not in trial.system_attrs:
            raise RuntimeError(f"{type(self).__name__}: trial {trial.number} has no scheme (was before_trial run?)")
        params, _ = params_of(Scheme.parse(trial.system_attrs[SEARCH_CLAIM_KEY]), self.problem)
        return params[param_name]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if SEARCH_CLAIM_KEY in trial.system_attrs:
            return
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_KEY, worker_id())  # who holds it (liveness)
        scheme, repeat = self._choose(study, trial)
        if repeat:
            study._storage.set_trial_system_attr(trial._trial_id, REPEAT, True)
        study._storage.set_trial_system_attr(trial._trial_id, SEARCH_CLAIM_KEY, str(scheme))

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        told = trial if state == TrialState.COMPLETE else None
        if trial.system_attrs.get(REPEAT) or self.finished(*self.state(study, told)):
            self.conclude(study, told)
            study.stop()

    # -- choosing --------------------------------------------------------------------------
    def _choose(self, study: optuna.Study, trial: FrozenTrial) -> tuple[Scheme, bool]:
        deadline = time.monotonic() + self.wait_s
        space = self.problem.space
        storage = study._storage
        beat_s = storage.get_heartbeat_interval() if is_heartbeat_enabled(storage) else None
        next_beat = time.monotonic() + (beat_s or 0.0)

        def wait() -> None:  # this trial beats while it waits; a dead worker's trials are failed meanwhile
            nonlocal next_beat
            time.sleep(POLL_S)
            if beat_s is not None and time.monotonic() >= next_beat:
                storage.record_heartbeat(trial._trial_id)
                fail_stale(study)
                next_beat = time.monotonic() + beat_s

        while True:
            trials = study.get_trials(deepcopy=False)
            earlier = [t for t in trials if t.state == TrialState.RUNNING and t.number < trial.number]
            unclaimed = [t for t in earlier if SEARCH_CLAIM_KEY not in t.system_attrs]
            if unclaimed and time.monotonic() < deadline:
                wait()
                continue
            ref = self.problem.single_end  # first the reference: no evaluation, and best_trial is then right
            if not any(_claim(t) == ref or scheme_of(t, self.problem) == ref for t in trials
                       if t.state == TrialState.COMPLETE or t in earlier):
                return ref, False
            held = np.zeros(space.size, dtype=bool)  # claimed by running trials
            for t in earlier:
                s = _claim(t)
                if s is not None and s.is_split:
                    held[space.index(s)] = True
            failed = np.zeros(space.size, dtype=bool)  # schemes the evaluator could not evaluate
            for t in trials:  # (a trial failed otherwise, e.g. a dead worker's, holds nothing)
                s = _claim(t) if t.state == TrialState.FAIL and t.user_attrs.get("source") == SOURCE_NOT_EVALUABLE \
                    else None
                if s is not None and s.is_split:
                    failed[space.index(s)] = True
            t0 = time.perf_counter()
            kn, st = self.state(study)
            finished = self.finished(kn, st)
            i = None if finished else self.pick(kn, st, held | failed)
            self.decision_s += time.perf_counter() - t0
            if i is not None:
                return space.scheme(i), False
            if finished or not held.any() or time.monotonic() >= deadline:
                answer = st.incumbent if st.incumbent is not None else self.problem.single_end
                return self.problem.scheme(answer), True
            wait()  # everything still open is held by other workers: wait for one


def _claim(trial: FrozenTrial) -> Scheme | None:
    """The scheme a trial's sampler chose for it (None before `before_trial`)."""
    claim = trial.system_attrs.get(SEARCH_CLAIM_KEY)
    return None if claim is None else Scheme.parse(claim)
