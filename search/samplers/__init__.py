"""Samplers: which scheme to evaluate next.

A planner has `name` and `next(kn, status) -> int | None` (a flat scheme index, or None to
stop). `coinfer`, `optcoinfer` and `exhaustive` are planners driven by the runner; `tpe`, `gp`
and `random` are Optuna's samplers driven by an Optuna study (see search/runner.py).
"""

from __future__ import annotations

PLANNERS = ("coinfer", "optcoinfer", "exhaustive")
OPTUNA_SAMPLERS = ("tpe", "gp", "random")
SAMPLERS = PLANNERS + OPTUNA_SAMPLERS
