"""The fast subset of bench.badinput: bad inputs across the CLIs and the app schema each give the expected exit
status (2; 3 for an unreachable server), one stderr line, no traceback, no shown password, an unchanged database
and no new files."""

from __future__ import annotations

from bench.badinput import run_cases
from bench.badinput_cases import all_cases
from bench.badinput_gen import repository_clis


def test_fast_bad_inputs_are_handled() -> None:
    cases = [c for c in all_cases() if c.fast]
    assert len(cases) >= 20
    outcomes = run_cases(cases, jobs=2, timeout_s=180)
    failed = [f"{o.case.cli} [{o.case.label}]: {'; '.join(o.problems)} | {o.stderr[-200:]}"
              for o in outcomes if not o.passed]
    assert not failed, "\n".join(failed)


def test_full_benchmark_has_at_least_200_cases_over_every_cli() -> None:
    cases = all_cases()
    assert len(cases) >= 200 and sum(c.app is not None and c.cli != "database.formats" for c in cases) >= 100
    clis = set(repository_clis())
    assert len(clis) >= 25 and {"select_model.py", "bench.corun", "reports.build_status"} <= clis
    assert not clis - {c.cli for c in cases}, "CLIs without bad-input cases"
