"""The fast subset of bench.badinput: bad inputs across the CLIs and the app schema each give the expected exit
status (2; 3 for an unreachable server), one stderr line, no traceback, no shown password, an unchanged database
and no new files."""

from __future__ import annotations

import os
from pathlib import Path

from apps import REPO_ROOT
from bench.badinput import run_cases
from bench.badinput_cases import all_cases


def test_fast_bad_inputs_are_handled() -> None:
    cases = [c for c in all_cases() if c.fast]
    assert len(cases) >= 20
    outcomes = run_cases(cases, jobs=2, timeout_s=180)
    failed = [f"{o.case.cli} [{o.case.label}]: {'; '.join(o.problems)} | {o.stderr[-200:]}"
              for o in outcomes if not o.passed]
    assert not failed, "\n".join(failed)


def repository_clis() -> set[str]:
    """Every CLI of the repository: the scripts and modules (a package's __main__ is the package) that run their
    main through run_cli."""
    out = set()
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and d != "tests"]
        for name in files:
            path = Path(folder, name)
            if name.endswith(".py") and "run_cli(main)" in path.read_text():
                parts = path.relative_to(REPO_ROOT).with_suffix("").parts
                out.add(name if len(parts) == 1 else ".".join(parts).removesuffix(".__main__"))
    return out


def test_full_benchmark_has_at_least_200_cases_over_every_cli() -> None:
    cases = all_cases()
    assert len(cases) >= 200 and sum(c.app is not None and c.cli != "database.formats" for c in cases) >= 100
    clis = repository_clis()
    assert len(clis) >= 25 and {"select_model.py", "bench.corun", "reports.build_status"} <= clis
    assert not clis - {c.cli for c in cases}, "CLIs without bad-input cases"
