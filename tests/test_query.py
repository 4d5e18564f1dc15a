"""What differs between the two queries lives on them (search/query.py), and the query module does
not import the problem it is asked on."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from search.query import QUERY_TYPES, AccuracyQuery, LatencyQuery

QUERY_PY = Path(__file__).resolve().parent.parent / "search" / "query.py"


def test_the_table_of_query_types_is_keyed_by_their_names():
    assert QUERY_TYPES == {"latency": LatencyQuery, "accuracy": AccuracyQuery}
    assert LatencyQuery.bound_flags == ("-accuracy_loss", "--accuracy-loss")
    assert AccuracyQuery.bound_flags == ("-latency", "--latency")
    assert (LatencyQuery.bound_key, AccuracyQuery.bound_key) == ("accuracy_loss_bound", "latency_ratio")


def test_gaps_read_in_the_units_of_the_objective():
    assert LatencyQuery(0.01, 1).format_gap(0.00125) == "1.25 ms faster"
    assert AccuracyQuery(0.6, 1).format_gap(0.0125) == "1.25 % more accurate"


def test_the_first_to_try_is_the_fastest_or_the_slowest():
    latency = np.array([0.3, 0.1, 0.7, 0.2])
    assert LatencyQuery(0.01, 1).first_to_try(latency) == 1
    assert AccuracyQuery(0.6, 1).first_to_try(latency) == 2


def test_query_module_imports_nothing_from_the_problem():
    tree = ast.parse(QUERY_PY.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "search.problem" not in imported
    assert "search.problem" not in QUERY_PY.read_text()
