"""bench.badinput's generated cases (bench.badinput_gen): drawn from every CLI's parser, the same for the same seed,
and a seeded subset of 60 handled by every CLI under the listed cases' contract (exit 2 or 3, one stderr line, no
traceback, no password, inputs and database byte-identical, no new file)."""

from __future__ import annotations

from bench.badinput import reproduction, run_generated
from bench.badinput_gen import EXITS, commands, generate, repository_clis

SEED = 0  # the CI subset: generated cases 0..59 of seed 0


def test_commands_are_read_from_every_cli_parser() -> None:
    cmds = commands()
    assert {c.cli for c in cmds} == set(repository_clis())
    by_name = {c.name: c for c in cmds}
    assert {"database.formats import-csv", "bench.corun client", "runtime.linkprobe sink"} <= set(by_name)
    search = by_name["latency_search.py"]
    seed = next(o for o in search.options if o.dest == "seed")
    assert seed.type is int and seed.takes == 1 and not seed.required
    assert next(o for o in search.options if "--accuracy-loss" in o.flags).required


def test_same_seed_same_cases_and_each_has_one_poison() -> None:
    first, again, other = generate(40, 7), generate(40, 7), generate(40, 8)
    assert first == again and first != other
    assert len({(c.cli, c.argv, c.files) for c in first}) == 40
    assert all(c.exit == EXITS and c.label.startswith("[") and "] " in c.label for c in first)


def test_reproduction_names_the_rerun_and_the_files() -> None:
    cases = generate(60, SEED)
    i, case = next((i, c) for i, c in enumerate(cases) if c.files and c.files[0].kind == "bytes")
    text = reproduction(case, i, 60, SEED)
    assert f"--generated 60 --seed {SEED} --case {i}" in text
    assert f"file {case.files[0].name}: {len(case.files[0].data)} bytes" in text


def test_seeded_generated_subset_is_handled() -> None:
    cases = generate(60, SEED)
    assert len({c.cli for c in cases}) >= 15
    outcomes = run_generated(cases, jobs=2, timeout_s=60)
    failed = [f"{o.case.cli} [{o.case.label}]: {'; '.join(o.problems)} | {o.stderr[-200:]}\n"
              f"{reproduction(o.case, i, 60, SEED)}" for i, o in enumerate(outcomes) if not o.passed]
    assert not failed, "\n".join(failed)


def test_a_case_that_breaks_the_contract_in_process_is_confirmed_in_its_own_interpreter() -> None:
    from bench.badinput_cases import Case
    accepted = Case("bench.badinput", ("--only", "no-such-cli"), "runs no case: exit 0, nothing on stderr", exit=EXITS)
    refused = Case("bench.badinput", ("--jobs=--",), "refused: one line", exit=EXITS)
    bad, good = run_generated([accepted, refused], jobs=1, timeout_s=60)
    assert not bad.passed and bad.problems == ["exit code 0, expected 2 or 3", "0 lines on stderr"]
    assert bad.note == "in process: exit code 0, expected 2 or 3; 0 lines on stderr; then subprocess"
    assert good.passed and good.note == "in process"
    assert good.stderr == "error: argument --jobs: invalid int value: '--' (see --help)"
