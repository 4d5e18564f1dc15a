"""The commands an error hints at work as printed for the app as the user gave it: a YAML path stays a path,
and a `--storage` the user gave comes along (issue #20: `--app tinyr18_digits` was hinted for an app given as a
path, and answered "unknown app"). Each hint is taken from stderr and run (or, where running it would take
minutes of fine-tuning or profiling, parsed by the CLI's own parser, which loads the app and opens the store)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import latency_only_copy, write_tiny_app

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _hint(stderr: str, module: str) -> list[str]:
    """The argv after `python` of the one `python -m MODULE ...` command the one-line error names."""
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    found = re.findall(rf"python (-m {re.escape(module)} [^)`;]*)", stderr)
    assert len(found) == 1, stderr
    return shlex.split(found[0])


def _search(app: str, db: str) -> subprocess.CompletedProcess:
    return _run(["latency_search.py", "-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", app, "--storage", db,
                 "--offline", "--study-storage", "memory"])


def test_the_searchs_hints_work_for_an_app_given_as_a_path(tiny_app_path, tiny_db, tmp_path) -> None:
    from database.evaluate import _parser, job_of
    from database.storage import Storage
    from database.store import Store
    db = str(tmp_path / "partial.sqlite")
    latency_only_copy(tiny_db, db)  # profiled, no base accuracy and no scheme stored
    first = _search(tiny_app_path, db)
    assert first.returncode == 2 and "base accuracy of tiny_digits unknown" in first.stderr, first.stderr
    hint = _hint(first.stderr, "database.evaluate")
    assert hint == ["-m", "database.evaluate", "--app", tiny_app_path, "--storage", Storage.parse(db).url,
                    "--schemes", "none"]
    done = _run(hint)
    assert done.returncode == 0, done.stderr
    base = Store(db).base("tiny_digits")
    assert base is not None
    # what it printed is what it stored: the base accuracy, and no scheme
    assert done.stdout.startswith(f"tiny_digits: base model top-1 {100 * base:.2f} % stored; 0 new evaluations in ")
    assert " 0 schemes stored for protocol " in done.stdout and Store(db).accuracy_table("tiny_digits") == {}
    again = _run(hint)
    assert again.returncode == 0 and "base model" not in again.stdout, again.stdout  # stored once, said once
    # next, --offline has nothing to answer from: the hinted build (every scheme: minutes of fine-tuning here)
    # is checked by database.evaluate's own parse, which loads the app, checks the schemes and opens the store
    second = _search(tiny_app_path, db)
    assert second.returncode == 2 and "holds nothing" in second.stderr, second.stderr
    fill = _hint(second.stderr, "database.evaluate")
    assert fill[:6] == hint[:6] and fill[6:] == ["--schemes", "all"]
    job, app, store = job_of(_parser().parse_args(fill[2:]))
    assert (job.app_ref, job.storage, app.source) == (tiny_app_path, Storage.parse(db), Path(tiny_app_path).resolve())
    assert len(job.schemes) == 8 * sum(job.widths)
    store.close()


def test_a_missing_profile_names_the_profiler_for_the_app_as_given(tiny_app_path, tmp_path) -> None:
    from database import profile
    from database.store import Store
    db = str(tmp_path / "empty.sqlite")
    Store(db).close()  # a database with nothing in it
    out = _search(tiny_app_path, db)
    assert out.returncode == 2 and "no edge latency profile of device 'tiny-edge'" in out.stderr, out.stderr
    hint = _hint(out.stderr, "database.profile")
    assert hint[2:] == ["--app", tiny_app_path, "--storage", f"sqlite:///{Path(db).resolve()}", "--device",
                        "tiny-edge", "--side", "edge"]
    app, config, args = profile.parse(hint[2:])  # everything but the measuring (minutes at 30 runs a row)
    assert (app.source, config.device.name, config.sides, args.storage) == (
        Path(tiny_app_path).resolve(), "tiny-edge", ("edge",), hint[5])


def test_a_missing_checkpoint_names_the_training_for_the_app_as_given(tmp_path) -> None:
    app_path = str(write_tiny_app(tmp_path, train={"epochs": 1, "lr": 0.05, "batch_size": 32, "seed": 0}))
    db = str(tmp_path / "db.sqlite")
    evaluate = ["-m", "database.evaluate", "--app", app_path, "--storage", db, "--schemes", "none"]
    first = _run(evaluate)
    assert first.returncode == 2 and "checkpoint not found" in first.stderr, first.stderr
    hint = _hint(first.stderr, "models.train")
    assert hint == ["-m", "models.train", "--app", app_path]
    trained = _run(hint)
    assert trained.returncode == 0 and Path(tmp_path / "tiny_digits.pt").is_file(), trained.stderr
    done = _run(evaluate)
    assert done.returncode == 0 and "base model top-1" in done.stdout, done.stderr
