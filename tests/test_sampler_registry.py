"""The sampler registry (search/samplers: SAMPLERS) and the search config read from it."""

from __future__ import annotations

import optuna
import pytest

from cli.errors import CoInferError
from search.problem import Problem
from search.query import LatencyQuery
from search.runner import SearchConfig
from search.samplers import SAMPLERS, sampler_spec
from search.samplers.coinfer import CoInferSampler
from search.samplers.exhaustive import ExhaustiveSampler
from search.samplers.optcoinfer import OptCoInferSampler
from search.synthetic_problems import synthetic_latency, synthetic_points

PROBLEM = Problem(LatencyQuery(0.02, 1), synthetic_latency(synthetic_points([2, 3])), 0.9)


def test_the_table_names_every_sampler_in_the_documented_order():
    assert list(SAMPLERS) == ["coinfer", "optcoinfer", "exhaustive", "tpe", "gp", "random"]
    assert [n for n, s in SAMPLERS.items() if s.ours] == ["coinfer", "optcoinfer", "exhaustive"]
    assert [n for n, s in SAMPLERS.items() if s.stochastic] == ["optcoinfer", "tpe", "gp", "random"]
    assert [n for n, s in SAMPLERS.items() if s.uses_tolerance] == ["coinfer"]
    assert {n: s.budget for n, s in SAMPLERS.items()} == {"coinfer": None, "optcoinfer": None, "exhaustive": None,
                                                          "tpe": 200, "gp": 200, "random": 200}


@pytest.mark.parametrize("name,cls", [("coinfer", CoInferSampler), ("optcoinfer", OptCoInferSampler),
                                      ("exhaustive", ExhaustiveSampler), ("tpe", optuna.samplers.TPESampler),
                                      ("gp", optuna.samplers.GPSampler), ("random", optuna.samplers.RandomSampler)])
def test_each_spec_builds_its_sampler(name, cls):
    assert type(sampler_spec(name).make(PROBLEM, {}, 0.01, 3)) is cls


def test_tolerance_seed_and_knobs_reach_our_samplers():
    assert sampler_spec("coinfer").make(PROBLEM, tolerance=0.01).tolerance == 0.01
    opt = sampler_spec("optcoinfer").make(PROBLEM, seed=7, knobs={"restarts": 5})
    assert (opt.seed, opt.n_restarts) == (7, 5)
    assert sampler_spec("optcoinfer").make(PROBLEM).n_restarts == 2  # the registry's default


def test_an_unknown_sampler_is_one_line_naming_the_known_ones():
    msg = "unknown sampler 'magic' (known: coinfer, optcoinfer, exhaustive, tpe, gp, random)"
    with pytest.raises(CoInferError) as exc:
        sampler_spec("magic")
    assert str(exc.value) == msg
    with pytest.raises(CoInferError) as exc:
        SearchConfig("magic")
    assert str(exc.value) == msg


def test_knobs_are_checked_and_defaulted_by_the_config():
    assert dict(SearchConfig("optcoinfer").knobs) == {"restarts": 2}
    assert dict(SearchConfig("optcoinfer", knobs={"restarts": 0}).knobs) == {"restarts": 0}
    assert dict(SearchConfig("coinfer").knobs) == {}
    with pytest.raises(CoInferError, match=r"^sampler coinfer has no knob 'restarts' \(its knobs: none\)$"):
        SearchConfig("coinfer", knobs={"restarts": 3})
    with pytest.raises(CoInferError, match=r"^optcoinfer restarts must be >= 0, got -1$"):
        SearchConfig("optcoinfer", knobs={"restarts": -1})
    assert sampler_spec("coinfer").own_knobs({"restarts": 4, "seed": 1}) == {}
    assert sampler_spec("optcoinfer").own_knobs({"restarts": 4, "seed": 1}) == {"restarts": 4}


def test_the_budget_is_the_given_one_else_the_samplers():
    assert SearchConfig("tpe").budget == 200
    assert SearchConfig("tpe", max_evaluations=7).budget == 7
    assert SearchConfig("coinfer").budget is None
    with pytest.raises(CoInferError, match="max_evaluations must be >= 0"):
        SearchConfig("coinfer", max_evaluations=-1)
    with pytest.raises(CoInferError, match="tolerance must be a finite number >= 0, got nan"):
        SearchConfig("coinfer", tolerance=float("nan"))


def test_the_query_cli_has_one_flag_per_knob_with_the_registry_default():
    from search.cli import build_parser
    args = build_parser("latency").parse_args(["-accuracy_loss", "0.01"])
    assert args.restarts == 2
    assert "--sampler optcoinfer: GP optimizer restarts" in build_parser("latency").format_help()
