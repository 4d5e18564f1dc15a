"""Model selection (KETI VnV): greedy vs budgeted on a hand-checkable table, the VnV arithmetic, the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from apps import REPO_ROOT
from cli.errors import CoInferError
from compress.scheme import Scheme
from runtime.vnv import Measured, VnVReport
from search.select import Candidate, budgeted_choice, greedy_choice, select

E, C = Scheme.ALL_EDGE, Scheme.ALL_CLOUD
# app        scheme      top-1   latency
TABLE = [
    Candidate("r18", E, 0.90, 0.030),
    Candidate("r18", C, 0.90, 0.050),
    Candidate("r18", Scheme(2, 4, 2), 0.86, 0.012),
    Candidate("r50", E, 0.95, 0.080),
    Candidate("r50", C, 0.95, 0.060),
    Candidate("r50", Scheme(5, 8, 4), 0.94, 0.020),
    Candidate("r50", Scheme(1, 1, 1), 0.70, 0.005),
    Candidate("r34", E, 0.95, 0.055),  # as accurate as r50 and faster on the edge: greedy picks it
    Candidate("r34", Scheme(3, 2, 8), 0.85, 0.010),
]


def test_greedy_is_the_most_accurate_model_on_the_edge():
    assert greedy_choice(TABLE) == Candidate("r34", E, 0.95, 0.055)


@pytest.mark.parametrize(("budget", "expected"), [
    (0.001, Candidate("r34", E, 0.95, 0.055)),               # >= 0.949: the 0.95s only; r34 on the edge, 55 ms
    (0.01, Candidate("r50", Scheme(5, 8, 4), 0.94, 0.020)),   # >= 0.94: the r50 split, 20 ms
    (0.05, Candidate("r50", Scheme(5, 8, 4), 0.94, 0.020)),   # >= 0.90: r18 all-edge (30 ms) is slower
    (0.10, Candidate("r34", Scheme(3, 2, 8), 0.85, 0.010)),   # >= 0.85: r34's split, 10 ms (r18's: 12 ms)
    (0.30, Candidate("r50", Scheme(1, 1, 1), 0.70, 0.005)),   # everything: the fastest
])
def test_budgeted_is_the_fastest_within_the_budget_of_the_greedy_models_accuracy(budget, expected):
    chosen = select(TABLE, budget)
    assert chosen.greedy == Candidate("r34", E, 0.95, 0.055)
    assert chosen.budgeted == expected
    assert chosen.threshold == pytest.approx(0.95 - budget) and chosen.considered == len(TABLE)
    # oracle: brute force over the table
    ok = [c for c in TABLE if c.accuracy >= 0.95 - budget - 1e-12]
    assert chosen.budgeted.latency_s == min(c.latency_s for c in ok)


def test_ties_go_to_the_more_accurate_then_the_first_named_app():
    table = [Candidate("a", E, 0.9, 0.02), Candidate("b", E, 0.9, 0.02), Candidate("b", Scheme(0, 1, 1), 0.85, 0.02)]
    assert greedy_choice(table).app == "a"
    assert budgeted_choice(table, 0.8) == Candidate("a", E, 0.9, 0.02)


@pytest.mark.parametrize("budget", [0.0, 1.0, -0.1, 1.5])
def test_a_budget_outside_zero_one_is_refused(budget):
    with pytest.raises(CoInferError, match=r"\(0, 1\)"):
        select(TABLE, budget)


def _measured(app, scheme, seconds, correct):
    return Measured(app, scheme, tuple(seconds), tuple(correct), 0.0, 0.0, 0.0, 0)


def test_vnv_saving_is_the_mean_of_per_image_ratios_and_the_criteria():
    base = _measured("r50", E, [0.10, 0.20, 0.10, 0.10], [True, True, True, False])
    adv = _measured("r18", Scheme(2, 4, 2), [0.05, 0.20, 0.08, 0.02], [True, False, True, False])
    report = VnVReport(base, adv)
    assert report.saving == pytest.approx((0.5 + 0.0 + 0.2 + 0.8) / 4)
    assert report.accuracy_diff == pytest.approx(0.75 - 0.5)
    assert report.saving_pass and not report.accuracy_pass and report.to_json()["pass"] is False


def test_payload_and_wire_bytes_are_the_formulas():
    """compress.activation's sizes, which the latency model and the in-process VnV both use, against the
    formulas worked by hand: ceil(H W c b / 8) + 8 c; a 48-byte frame header, 66 bytes a 1448-byte segment."""
    import math

    import numpy as np

    from apps import Link
    from compress.activation import body_len, frame_on_wire, payload_bytes, wire_bytes
    from search.synthetic_problems import synthetic_latency, synthetic_points
    assert [payload_bytes(64, 3, 3), payload_bytes(1, 3, 1), payload_bytes(49, 5, 3)] == [96, 25, 132]
    assert body_len((2, 5, 7, 7), 3) == 184 + 80  # ceil(2*5*49*3 / 8) + 8 * 2 * 5
    link = Link(48, 66, 1448)
    sizes = {0: 114, 1: 115, 1400: 1514, 1401: 1449 + 2 * 66, 5000: 5048 + 4 * 66}
    assert {n: wire_bytes(link, n) for n in sizes} == sizes and type(wire_bytes(link, 1)) is int
    assert wire_bytes(Link(), 777) == 777 and frame_on_wire(link, 0) == 66  # an empty frame is one segment
    model = synthetic_latency(synthetic_points([4, 4]))
    s = model.space
    hw = [model.points[p].elements_per_channel for p in s.p]
    assert model.bytes.tolist() == [math.ceil(n * c * b / 8) + 8 * c for n, c, b in zip(hw, s.c, s.b)]
    model.link = link
    assert [model.wire_bytes(np.float64(n)) for n in sizes] == list(sizes.values())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "select_model.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_bad_inputs_are_one_line_and_exit_2(tiny_app_path, tiny_db, tmp_path):
    db = str(tmp_path / "copy.sqlite")
    with sqlite3.connect(tiny_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    cases = [("--apps", "vgg16_digits", "--bandwidth", "1", "--accuracy-budget", "0"),
             ("--apps", "vgg16_digits", "--bandwidth", "1", "--accuracy-budget", "1"),
             ("--apps", "vgg16_digits", "--bandwidth", "1", "--accuracy-budget", "nan"),
             ("--apps", "no_such_app", "--bandwidth", "1"),
             ("--apps", "vgg16_digits", "--bandwidth", "1", "--edge", "no-such-device"),
             ("--apps", tiny_app_path, "--bandwidth", "1", "--edge", "quarter-edge", "--storage", db),  # no profile
             ("--apps", "vgg16_digits", "--bandwidth", "0"),
             ("--bandwidth", "1", "--apps", ""),
             ("--apps", "vgg16_digits", "--bandwidth", "1", "--testbed", "--select-only")]
    for case in cases:
        proc = _cli(*case)
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, (case, proc.stderr)
    assert "database.predictor predict" in _cli(*cases[5]).stderr


def test_cli_select_only_on_the_tiny_app(tiny_app_path, tiny_db):
    proc = _cli("--apps", tiny_app_path, "--bandwidth", "1", "--storage", tiny_db, "--select-only", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["edge"] == "tiny-edge" and out["selection"]["greedy"]["scheme"] == "all-edge"
    assert out["selection"]["budgeted"]["accuracy"] >= out["selection"]["accuracy_threshold"] and "vnv" not in out
