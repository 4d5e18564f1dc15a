"""The fast subset of bench.badinput: bad inputs across the CLIs and the app schema each give exit code 2, one
stderr line, no traceback, no shown password, an unchanged database and no new files."""

from __future__ import annotations

from bench.badinput import run_cases
from bench.badinput_cases import all_cases


def test_fast_bad_inputs_are_handled() -> None:
    cases = [c for c in all_cases() if c.fast]
    assert len(cases) >= 20
    outcomes = run_cases(cases, jobs=2, timeout_s=180)
    failed = [f"{o.case.cli} [{o.case.label}]: {'; '.join(o.problems)} | {o.stderr[-200:]}"
              for o in outcomes if not o.passed]
    assert not failed, "\n".join(failed)


def test_full_benchmark_has_at_least_200_cases_over_every_cli() -> None:
    cases = all_cases()
    clis = {c.cli for c in cases}
    assert len(cases) >= 200 and sum(c.app is not None and c.cli != "database.formats" for c in cases) >= 100
    for cli in ("latency_search.py", "accuracy_search.py", "database.evaluate", "database.formats", "database.profile",
                "database.show", "database.paper", "models.train", "runtime.edge", "runtime.cloud", "runtime.testbed",
                "bench.search", "bench.runtime", "bench.adaptivity", "bench.fuzz", "bench.codec"):
        assert cli in clis, cli
