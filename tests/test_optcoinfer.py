"""The `optcoinfer` sampler (the Opt-CoInfer paper's search): its interpolation / extrapolation
bounds on hand-made cases, and whole queries on small noise-free synthetic tables against the
exhaustive oracle."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.gaussian_process.kernels import Matern

from compress.scheme import Scheme
from search.bounds import Knowledge
from search.evaluators import TableEvaluator
from search.problem import Problem
from search.query import AccuracyQuery, LatencyQuery
from search.runner import SearchConfig, run_search
from search.samplers.optcoinfer import OptCoInferSampler, _Matern, loss_bounds
from search.space import Space
from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table

POINTS = synthetic_points([4, 4, 8, 8, 8])  # 256 schemes
MODEL = synthetic_latency(POINTS)
BASE = 0.9


# --- bounds on one point of 6 channels ---------------------------------------------------------

SPACE6 = Space(synthetic_points([6]))


def _losses(entries: dict[tuple[int, int], float]) -> np.ndarray:
    loss = np.full(SPACE6.size, np.nan)
    for (c, b), v in entries.items():
        loss[SPACE6.index(Scheme(0, c, b))] = v
    return loss


def _at(arr: np.ndarray, c: int, b: int) -> float:
    return float(arr[SPACE6.index(Scheme(0, c, b))])


def test_upper_bound_monotone_and_interpolation():
    loss = _losses({(1, 4): 0.6, (5, 4): 0.2, (3, 2): 0.7, (3, 6): 0.3})
    _, up = loss_bounds(SPACE6, loss)
    assert _at(up, 2, 4) == pytest.approx(0.5)  # along c: 0.6 + (0.2 - 0.6) / 4 * 1
    assert _at(up, 3, 3) == pytest.approx(0.6)  # along b: 0.7 + (0.3 - 0.7) / 4 * 1 (< monotone 0.7)
    assert _at(up, 3, 4) == pytest.approx(0.4)  # c-interp 0.4 < b-interp 0.5 < monotone 0.6
    assert _at(up, 6, 8) == pytest.approx(0.2)  # monotone: least loss below it
    assert _at(up, 6, 3) == pytest.approx(0.7)  # only (3, 2) is below it; no line through it
    assert np.isinf(_at(up, 2, 3))  # nothing evaluated below it: the paper never filters it
    assert np.isinf(_at(up, 6, 1))


def test_bounds_use_the_closest_evaluated_neighbours():
    loss = _losses({(1, 4): 0.9, (2, 4): 0.6, (5, 4): 0.2, (6, 4): 0.0})
    lo, up = loss_bounds(SPACE6, loss)
    assert _at(up, 3, 4) == pytest.approx(0.6 - 0.4 / 3)  # between c=2 and c=5, not 1 and 6
    assert _at(lo, 3, 4) == pytest.approx(0.3)  # from c=2 and c=1: 0.6 - 0.3; beats monotone 0.2
    assert _at(lo, 4, 4) == pytest.approx(0.2)  # extrapolation gives 0.0: monotone (5, 4) wins


def test_lower_bound_extrapolations():
    # from the two closest smaller-c schemes (same b)
    lo, _ = loss_bounds(SPACE6, _losses({(1, 3): 0.8, (2, 3): 0.6}))
    assert _at(lo, 3, 3) == pytest.approx(0.4)
    assert _at(lo, 4, 3) == pytest.approx(0.2)
    assert _at(lo, 6, 3) == 0.0  # the paper's bounds start at 0
    assert _at(lo, 3, 4) == 0.0  # other lines know nothing
    # from the two closest larger-b schemes (same c): 0.3 + 2 * 0.05
    lo, _ = loss_bounds(SPACE6, _losses({(2, 7): 0.3, (2, 8): 0.25, (6, 8): 0.1}))
    assert _at(lo, 2, 5) == pytest.approx(0.4)
    assert _at(lo, 1, 5) == pytest.approx(0.3)  # monotone only: (2, 7) dominates it
    # from the two closest smaller-b schemes (same c): 0.7 - 2 * 0.2
    lo, _ = loss_bounds(SPACE6, _losses({(4, 1): 0.9, (4, 2): 0.7}))
    assert _at(lo, 4, 4) == pytest.approx(0.3)


def test_larger_c_extrapolation_is_omitted_like_the_paper():
    # two larger-c schemes on the same b line would extrapolate to 0.2 + 2 * 0.1 = 0.4 at c=3,
    # but the paper never uses that bound: only the monotone one (0.2) acts
    lo, _ = loss_bounds(SPACE6, _losses({(5, 6): 0.2, (6, 6): 0.1}))
    assert _at(lo, 3, 6) == pytest.approx(0.2)


def test_bounds_on_a_multi_point_space_stay_per_point():
    space = Space(synthetic_points([3, 5]))
    loss = np.full(space.size, np.nan)
    loss[space.index(Scheme(0, 1, 1))] = 0.5
    lo, up = loss_bounds(space, loss)
    assert up[space.index(Scheme(0, 3, 8))] == pytest.approx(0.5)
    assert np.isinf(up[space.grid_slice(1)]).all() and (lo[space.grid_slice(1)] == 0).all()


def test_matern_analytic_gradient_matches_sklearn():
    x = np.random.default_rng(0).uniform(size=(25, 3))
    x[7] = x[3]  # a duplicate point: zero distance off the diagonal
    for ls in ([1.0, 1.0, 1.0], [0.2, 3.0, 40.0]):
        k_ours, g_ours = _Matern(length_scale=ls, nu=0.01)(x, eval_gradient=True)
        k_ref, g_ref = Matern(length_scale=ls, nu=0.01)(x, eval_gradient=True)
        np.testing.assert_allclose(k_ours, k_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g_ours, g_ref, rtol=0, atol=1e-4 * np.abs(g_ref).max())


# --- the planner's state --------------------------------------------------------------------------


def test_constraints_follow_the_evaluated_schemes():
    table = synthetic_table(POINTS, base=BASE)
    pr = Problem(LatencyQuery(0.05, 1.0), MODEL, BASE)
    planner = OptCoInferSampler(pr, n_restarts=0)
    kn = Knowledge(pr.space)
    within, e = planner.constraints(kn)
    assert e == 0.05 and np.array_equal(within, pr.latency < pr.reference)
    ok = [i for i in np.flatnonzero(within) if table[pr.space.scheme(i)] >= BASE - 0.05]
    i = max(ok, key=lambda j: pr.latency[j])
    kn.add(i, table[pr.space.scheme(i)])
    within, _ = planner.constraints(kn)
    assert np.array_equal(within, pr.latency < pr.latency[i])

    pr = Problem(AccuracyQuery(0.8, 1.0), MODEL, BASE)
    planner = OptCoInferSampler(pr, n_restarts=0)
    kn = Knowledge(pr.space)
    within, e = planner.constraints(kn)
    assert e == pytest.approx(0.1) and np.array_equal(within, pr.latency <= pr.budget)
    j = int(np.flatnonzero(within)[0])
    kn.add(j, BASE - 0.03)
    kn.add(int(np.flatnonzero(~within)[0]), BASE)  # outside the budget: does not count
    assert planner.constraints(kn)[1] == pytest.approx(0.03)


def test_stops_at_once_when_everything_is_known():
    table = synthetic_table(POINTS, base=BASE)
    pr = Problem(LatencyQuery(0.05, 1.0), MODEL, BASE)
    r = run_search(pr, TableEvaluator(table, known=table), SearchConfig("optcoinfer", knobs={"restarts": 0}))
    inc, _ = pr.exhaustive(table)
    assert r.new_evaluations == 0 and r.scheme == inc


# --- whole queries against the oracle ------------------------------------------------------------

# (table shape, table seed, query). The surfaces are convex along c and b, so the paper's linear
# bounds hold; an accuracy query whose optimum loses much more than the paper's starting loss
# constraint 0.1 can still be missed (the shrink discards it), e.g. ("linear", 1, ratio 0.8).
CASES = [
    ("saturating", 0, LatencyQuery(0.01, 1.0)),
    ("saturating", 0, LatencyQuery(0.05, 1.0)),
    ("saturating", 0, LatencyQuery(0.1, 2.0)),
    ("saturating", 0, AccuracyQuery(0.8, 1.0)),
    ("saturating", 0, AccuracyQuery(0.7, 2.0)),
    ("saturating", 1, LatencyQuery(0.05, 1.0)),
    ("saturating", 1, AccuracyQuery(0.8, 1.0)),
    ("linear", 0, LatencyQuery(0.01, 1.0)),  # only the single end meets it
    ("linear", 0, AccuracyQuery(0.8, 1.0)),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("shape", "table_seed", "query"), CASES)
def test_matches_exhaustive_with_fewer_evaluations(shape, table_seed, query, seed):
    table = synthetic_table(POINTS, base=BASE, seed=table_seed, shape=shape)
    pr = Problem(query, MODEL, BASE)
    oracle = run_search(pr, TableEvaluator(table), SearchConfig("exhaustive"))
    r = run_search(pr, TableEvaluator(table), SearchConfig("optcoinfer", seed=seed, knobs={"restarts": 1}))
    assert r.scheme == oracle.scheme
    assert r.accuracy == oracle.accuracy
    assert r.new_evaluations < oracle.new_evaluations


def test_deterministic_for_a_fixed_seed():
    table = synthetic_table(POINTS, base=BASE, seed=1)
    pr = Problem(LatencyQuery(0.01, 1.0), MODEL, BASE)
    a = run_search(pr, TableEvaluator(table), SearchConfig("optcoinfer", seed=3, knobs={"restarts": 1}))
    b = run_search(pr, TableEvaluator(table), SearchConfig("optcoinfer", seed=3, knobs={"restarts": 1}))
    assert a.evaluated() == b.evaluated() and len(a.evaluated()) > 1


def test_a_new_sampler_repeats_the_same_picks():
    table = synthetic_table(POINTS, base=BASE, seed=1)
    pr = Problem(AccuracyQuery(0.8, 1.0), MODEL, BASE)

    def run() -> list[int]:
        sampler, kn, picks = OptCoInferSampler(pr, seed=5, n_restarts=0), Knowledge(pr.space), []
        held = np.zeros(pr.space.size, dtype=bool)
        while not sampler.finished(kn, pr.status(kn)):
            i = sampler.pick(kn, pr.status(kn), held)
            assert np.isnan(kn.acc[i]) and pr.latency[i] <= pr.budget
            kn.add(i, table[pr.space.scheme(i)])
            picks.append(i)
        return picks

    first = run()
    assert first and run() == first
