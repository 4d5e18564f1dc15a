"""search/mincert.py: the MILP's minimum certificate equals a brute-force search over subsets,
each checked with the project's own `Problem.status`, and every minimum verifies."""

from __future__ import annotations

from itertools import combinations

import pytest

from compress.scheme import Scheme
from search.mincert import complete_knowledge, knowledge_of, minimum_certificate, verify
from search.problem import Problem
from search.query import AccuracyQuery, LatencyQuery
from search.synthetic_problems import synthetic_latency, synthetic_points, synthetic_table

POINTS = synthetic_points([1, 2])  # 8 + 16 = 24 split schemes
MODEL = synthetic_latency(POINTS)
QUERIES = [LatencyQuery(e, bw) for e in (0.01, 0.1, 0.3) for bw in (0.5, 4)] + \
          [AccuracyQuery(r, bw) for r in (0.5, 0.8) for bw in (0.5, 4)]
TABLES = [(shape, noise, tol) for shape in ("saturating", "linear", "cliff")
          for noise, tol in ((0.0, 0.0), (0.01, 0.005))]


def brute_force_minimum(pr: Problem, table: dict[Scheme, float], tol: float, at_most: int) -> int | None:
    """The size of the smallest set of evaluable split schemes (latency within the budget) on which
    `Problem.status` is done with the exhaustive answer as incumbent; None when none has <= at_most."""
    full = pr.status(complete_knowledge(pr, table, tol))
    allowed = [i for i in range(pr.space.size) if pr.latency[i] <= pr.budget]
    for k in range(at_most + 1):
        for subset in combinations(allowed, k):
            st = pr.status(knowledge_of(pr, table, subset, tol))
            if st.done and st.incumbent == full.incumbent and st.incumbent_value == full.incumbent_value:
                return k
    return None


POINTS_23 = synthetic_points([2, 3])  # 16 + 24 = 40 split schemes
MODEL_23 = synthetic_latency(POINTS_23)
QUERIES_23 = [LatencyQuery(e, bw) for e in (0.02, 0.1, 0.3) for bw in (0.25, 4)] + \
             [AccuracyQuery(r, bw) for r in (0.5, 0.8) for bw in (0.5, 4)]




def _check_minima(points, model, queries, shape, noise, tol, seed) -> list[int]:
    """Every query's MILP minimum verifies with Problem.status and equals the brute-force minimum."""
    table = synthetic_table(points, 0.9, noise, seed, shape)
    sizes = []
    for q in queries:
        pr = Problem(q, model, 0.9)
        cert = minimum_certificate(pr, table, tol)
        assert verify(pr, table, cert, tol), q
        assert brute_force_minimum(pr, table, tol, cert.size) == cert.size, q
        sizes.append(cert.size)
    return sizes


@pytest.mark.parametrize("shape,noise,tol", TABLES)
def test_milp_minimum_equals_brute_force(shape, noise, tol):
    assert max(_check_minima(POINTS, MODEL, QUERIES, shape, noise, tol, 3)) >= 2  # non-trivial minima


@pytest.mark.parametrize("shape,noise,tol", [("saturating", 0.0, 0.0), ("cliff", 0.01, 0.005)])
def test_milp_minimum_equals_brute_force_two_wider_points(shape, noise, tol):
    assert max(_check_minima(POINTS_23, MODEL_23, QUERIES_23, shape, noise, tol, 5)) >= 3


def test_fixed_latency_minimum():
    """Latency query, 1 % loss at 0.5 Mbps on the cliff table: worked out by hand from the table."""
    table = synthetic_table(POINTS, 0.9, 0.0, 3, "cliff")
    pr = Problem(LatencyQuery(0.01, 0.5), MODEL, 0.9)
    cert = minimum_certificate(pr, table, 0.0)
    assert verify(pr, table, cert, 0.0)
    # the answer is the fastest scheme meeting 0.89, and it is evaluated first
    ok = [i for i in range(pr.space.size) if table[pr.space.scheme(i)] >= pr.threshold]
    assert cert.answer == min(ok, key=lambda i: pr.latency[i]) == cert.schemes[0]


def test_answer_must_be_evaluated_and_cover_is_needed():
    """Dropping any scheme of a minimum breaks the proof (the status is no longer done with the answer)."""
    table = synthetic_table(POINTS, 0.9, 0.01, 3, "linear")
    for q in QUERIES:
        pr = Problem(q, MODEL, 0.9)
        cert = minimum_certificate(pr, table, 0.005)
        for k in range(cert.size):
            rest = cert.schemes[:k] + cert.schemes[k + 1:]
            st = pr.status(knowledge_of(pr, table, rest, 0.005))
            assert not (st.done and st.incumbent == cert.answer), (q, k)


def test_incomplete_table_is_refused():
    table = synthetic_table(POINTS, 0.9, 0.0, 3, "linear")
    del table[Scheme(1, 2, 8)]
    pr = Problem(LatencyQuery(0.01, 1.0), MODEL, 0.9)
    with pytest.raises(ValueError, match=r"the table has no accuracy for .* \(1 schemes missing\)"):
        minimum_certificate(pr, table, 0.0)


@pytest.mark.parametrize("shape", ["saturating", "cliff"])
def test_no_certified_search_beats_the_minimum(shape):
    """The minimum bounds every search: a certified coinfer run evaluates at least that many schemes,
    and returns the optimum (the single end, or nothing when no scheme fits the budget)."""
    from search.evaluators import TableEvaluator
    from search.runner import SearchConfig, run_search
    table = synthetic_table(POINTS_23, 0.9, 0.0, 5, shape)
    for q in QUERIES_23:
        pr = Problem(q, MODEL_23, 0.9)
        cert = minimum_certificate(pr, table, 0.005)
        res = run_search(pr, TableEvaluator(table), SearchConfig("coinfer", 0.005))
        assert res.certified, q
        assert res.new_evaluations >= cert.size, q
        if cert.answer is None:  # nothing fits the budget
            assert not res.feasible and cert.size == 0, q
        else:
            assert res.scheme == pr.scheme(cert.answer), q
