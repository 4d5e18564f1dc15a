"""Samplers: which scheme to evaluate next. All are `optuna.samplers.BaseSampler`s.

`coinfer`, `optcoinfer` and `exhaustive` are ours (search/samplers/base.py: a whole scheme per
trial, the study stops when nothing is left); `tpe`, `gp` and `random` are Optuna's own,
proposing p, c, b define-by-run on a fixed budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from compress.scheme import Scheme
    from search.problem import Problem

PLANNERS = ("coinfer", "optcoinfer", "exhaustive")
OPTUNA_SAMPLERS = ("tpe", "gp", "random")
SAMPLERS = PLANNERS + OPTUNA_SAMPLERS


def make_sampler(name: str, problem: Problem, known: dict[Scheme, float] | None = None, tolerance: float = 0.0,
                 seed: int = 0, n_restarts: int = 100) -> optuna.samplers.BaseSampler:
    """The sampler called `name` for `problem`; ours start from `known` (the stored database)."""
    import optuna

    from cli.errors import CoInferError
    if name == "coinfer":
        from search.samplers.coinfer import CoInferSampler
        return CoInferSampler(problem, known, tolerance)
    if name == "optcoinfer":
        from search.samplers.optcoinfer import OptCoInferSampler
        return OptCoInferSampler(problem, known, seed=seed, n_restarts=n_restarts)
    if name == "exhaustive":
        from search.samplers.exhaustive import ExhaustiveSampler
        return ExhaustiveSampler(problem, known, tolerance)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise CoInferError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
