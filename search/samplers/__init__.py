"""Samplers: which scheme to evaluate next. All are `optuna.samplers.BaseSampler`s.

`coinfer`, `optcoinfer` and `exhaustive` are ours (search/samplers/base.py: a whole scheme per
trial, the study stops when nothing is left); `tpe`, `gp` and `random` are Optuna's own,
proposing p, c, b define-by-run on a fixed budget.

`SAMPLERS` is the one table of them, name -> `SamplerSpec`: how to build one, whether it is ours,
whether it is stochastic, whether its choices use the tolerance, its default budget, and its own
knobs (`Knob`, e.g. optcoinfer's GP restarts) with their defaults. The query CLIs (names, help, a
flag per knob), the runner and bench.search read it; `sampler_spec` is the one place an unknown
name is refused. Importing this module imports no sampler (nor optuna): factories import on call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cli.errors import CoInferError

if TYPE_CHECKING:
    import optuna

    from compress.scheme import Scheme
    from search.problem import Problem

# default evaluation budget of Optuna's own samplers (ours stop by themselves)
OPTUNA_BUDGET = 200


@dataclass(frozen=True)
class Knob:
    """An integer setting of one sampler, passed to its factory by name (`--NAME` on the query CLIs)."""

    name: str
    default: int
    minimum: int
    help: str  # argparse help of --NAME (may use %(default)s)

    def check(self, value: int, label: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            raise CoInferError(f"{label} must be >= {self.minimum}, got {value}")


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    factory: Callable[..., optuna.samplers.BaseSampler]  # (problem, known, tolerance, seed, **knobs)
    ours: bool  # a PlannerSampler: a whole scheme per trial, single ends included, stops by itself
    stochastic: bool  # its answer depends on the seed
    uses_tolerance: bool  # its choices depend on the tolerance (bench.search runs the others at 0)
    budget: int | None  # new evaluations when no budget is given (None: until it stops)
    knobs: tuple[Knob, ...] = ()

    def knob_values(self, given: Mapping[str, object]) -> dict[str, int]:
        """Every knob of this sampler: its value from `given` (checked), else its default. Names
        in `given` that are not knobs of this sampler are refused."""
        names = {k.name for k in self.knobs}
        unknown = sorted(set(given) - names)
        if unknown:
            raise CoInferError(f"sampler {self.name} has no knob {unknown[0]!r} "
                               f"(its knobs: {', '.join(sorted(names)) or 'none'})")
        out = {}
        for k in self.knobs:
            out[k.name] = given.get(k.name, k.default)
            k.check(out[k.name], f"{self.name} {k.name}")
        return out

    def own_knobs(self, values: Mapping[str, object]) -> dict[str, object]:
        """The entries of `values` (e.g. every knob flag of a command line) that are knobs of this sampler."""
        return {k.name: values[k.name] for k in self.knobs if k.name in values}

    def make(self, problem: Problem, known: dict[Scheme, float] | None = None, tolerance: float = 0.0,
             seed: int = 0, knobs: Mapping[str, object] | None = None) -> optuna.samplers.BaseSampler:
        """The sampler for `problem`; ours start from `known` (the stored database)."""
        return self.factory(problem, known, tolerance, seed, **self.knob_values(knobs or {}))


def _coinfer(problem, known, tolerance, seed):
    from search.samplers.coinfer import CoInferSampler
    return CoInferSampler(problem, known, tolerance)


def _optcoinfer(problem, known, tolerance, seed, restarts):
    from search.samplers.optcoinfer import OptCoInferSampler
    return OptCoInferSampler(problem, known, seed=seed, n_restarts=restarts)


def _exhaustive(problem, known, tolerance, seed):
    from search.samplers.exhaustive import ExhaustiveSampler
    return ExhaustiveSampler(problem, known, tolerance)


def _optuna(cls: str) -> Callable[..., optuna.samplers.BaseSampler]:
    def factory(problem, known, tolerance, seed):
        import optuna
        return getattr(optuna.samplers, cls)(seed=seed)
    return factory


# GP optimizer restarts per `optcoinfer` proposal. The paper used 100. Measured on the default app
# (latency query 1 %, 1 Mbps, 2 shared cores): one proposal took median 0.34 s, at most 0.83 s with 2
# restarts; 0.72 s, at most 4.8 s with 4.
RESTARTS = Knob("restarts", default=2, minimum=0,
                help="GP optimizer restarts per proposal (default: %(default)s, under 1 s a proposal here; "
                     "the paper used 100)")

SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("coinfer", _coinfer, ours=True, stochastic=False, uses_tolerance=True, budget=None),
    SamplerSpec("optcoinfer", _optcoinfer, ours=True, stochastic=True, uses_tolerance=False, budget=None,
                knobs=(RESTARTS,)),
    SamplerSpec("exhaustive", _exhaustive, ours=True, stochastic=False, uses_tolerance=False, budget=None),
    SamplerSpec("tpe", _optuna("TPESampler"), ours=False, stochastic=True, uses_tolerance=False, budget=OPTUNA_BUDGET),
    SamplerSpec("gp", _optuna("GPSampler"), ours=False, stochastic=True, uses_tolerance=False, budget=OPTUNA_BUDGET),
    SamplerSpec("random", _optuna("RandomSampler"), ours=False, stochastic=True, uses_tolerance=False,
                budget=OPTUNA_BUDGET),
)}


def sampler_spec(name: str) -> SamplerSpec:
    """The sampler called `name`; one line naming the known ones otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise CoInferError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})") from None


def knobs() -> dict[str, tuple[Knob, list[str]]]:
    """Every knob name of any sampler -> (the knob, the samplers that take it): one CLI flag each."""
    out: dict[str, tuple[Knob, list[str]]] = {}
    for spec in SAMPLERS.values():
        for k in spec.knobs:
            out.setdefault(k.name, (k, []))[1].append(spec.name)
    return out
