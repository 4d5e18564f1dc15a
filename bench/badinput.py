"""Bad-input benchmark: hundreds of generated bad inputs across every CLI and the app schema.

    python -m bench.badinput [--fast] [--jobs 2] [--timeout 120] [--json]

Each case runs one CLI in its own subprocess, in its own temp folder (its working directory), against
its own copy of the shipped database (`--storage` points there), and passes when:
- the exit code is the case's `status`: 2 (bad input), or 3 where a URL names a server that cannot be
  reached (cli.errors.Unreachable);
- stderr is exactly one line, and no traceback appears on stdout or stderr;
- no password of a URL appears (cases with a URL carry the password `s3cret`);
- the database copy's bytes are unchanged, and so are the shipped database's;
- no file is left in the case's folder or in the repository that was not there before.
App-schema cases write a mutated copy of apps/vgg16_digits.yml into the case's folder and hand it to a
CLI that loads the app first. Cases run in parallel subprocesses (`--jobs`), each under a timeout
(a timeout is a failure: a hang). `--fast` runs the subset the test suite runs (tests/test_badinput.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from apps import APPS_DIR, REPO_ROOT
from bench.badinput_cases import SECRET, Case, all_cases
from cli.args import ArgParser
from cli.errors import CoInferError
from cli.run import run_cli

SHIPPED_DB = REPO_ROOT / "database" / "coinfer.sqlite"
IGNORED = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", ".hypothesis"}


@dataclass
class Outcome:
    case: Case
    passed: bool
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stderr: str = ""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def _listing(root: Path) -> set[str]:
    """Every file under root (relative paths), skipping caches and VCS folders."""
    out = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in IGNORED]
        out |= {os.path.relpath(os.path.join(folder, f), root) for f in files}
    return out


def _command(case: Case, tmp: Path) -> list[str]:
    fill = {"{db}": str(tmp / "coinfer.sqlite"), "{tmp}": str(tmp), "{app}": str(tmp / "app.yml"),
            "{repo}": str(REPO_ROOT)}
    argv = []
    for arg in case.argv:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    if case.cli.endswith(".py"):
        return [sys.executable, str(REPO_ROOT / case.cli), *argv]
    return [sys.executable, "-m", case.cli, *argv]


def _write_app(case: Case, tmp: Path) -> None:
    if case.app is None:
        return
    if isinstance(case.app, (str, bytes)):
        data = case.app.encode() if isinstance(case.app, str) else case.app
        (tmp / "app.yml").write_bytes(data)
        return
    base = yaml.safe_load((APPS_DIR / "vgg16_digits.yml").read_text())
    shutil.copyfile(REPO_ROOT / base["checkpoint"], tmp / "base.pt")  # a wrongly accepted app trains over a copy
    base["checkpoint"] = str(tmp / "base.pt")
    data = copy.deepcopy(base)
    case.app(data)
    (tmp / "app.yml").write_text(yaml.safe_dump(data))


def run_case(case: Case, root: Path, index: int, timeout_s: float, repo_lock: threading.Lock) -> Outcome:
    """Run one case in a fresh folder under root and check it (see the module doc)."""
    tmp = root / f"case{index:04d}"
    tmp.mkdir()
    shutil.copyfile(SHIPPED_DB, tmp / "coinfer.sqlite")
    (tmp / "corrupt.sqlite").write_bytes(b"this is not an sqlite database " * 64)
    _write_app(case, tmp)
    before, db_before = _listing(tmp), _digest(tmp / "coinfer.sqlite")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("COINFER_SERVER", "COINFER_RATE_LIMIT", "COINFER_EDGE_SPEED", "COINFER_TEST_POSTGRES"):
        env.pop(key, None)
    problems = []
    start = time.perf_counter()
    try:
        out = subprocess.run(_command(case, tmp), cwd=tmp, env=env, capture_output=True, text=True,
                             timeout=timeout_s, stdin=subprocess.DEVNULL)
        code, stdout, stderr = out.returncode, out.stdout, out.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = None, str(exc.stdout or ""), str(exc.stderr or "")
        problems.append(f"hang: no exit within {timeout_s:g} s")
    seconds = time.perf_counter() - start
    if code is not None and code != case.status:
        problems.append(f"exit code {code}")
    lines = stderr.splitlines()
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    if "Traceback" in stderr or "Traceback" in stdout:
        problems.append("traceback")
    if SECRET in stderr or SECRET in stdout:
        problems.append("password shown")
    if _digest(tmp / "coinfer.sqlite") != db_before:
        problems.append("database bytes changed")
    new = sorted(_listing(tmp) - before)
    if new:
        problems.append(f"new files: {', '.join(new[:3])}")
    with repo_lock:
        if _digest(SHIPPED_DB) != SHIPPED_DIGEST:
            problems.append("shipped database changed")
        extra = sorted(_listing(REPO_ROOT) - REPO_FILES)
        if extra:
            problems.append(f"new files in the repository: {', '.join(extra[:3])}")
            REPO_FILES.update(extra)  # reported once, by the case that finished first
    shutil.rmtree(tmp, ignore_errors=True)
    return Outcome(case, not problems, problems, seconds, stderr.strip()[:300])


SHIPPED_DIGEST = ""
REPO_FILES: set[str] = set()


def run_cases(cases: Iterable[Case], jobs: int = 2, timeout_s: float = 120.0) -> list[Outcome]:
    """Run the cases, `jobs` at a time, each in its own folder and subprocess; the outcomes in case order."""
    global SHIPPED_DIGEST, REPO_FILES
    cases = list(cases)
    SHIPPED_DIGEST, REPO_FILES = _digest(SHIPPED_DB), _listing(REPO_ROOT)
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="coinfer-badinput-") as folder:
        root = Path(folder)
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            return list(pool.map(lambda ic: run_case(ic[1], root, ic[0], timeout_s, lock), enumerate(cases)))


def report(outcomes: list[Outcome], wall_s: float, jobs: int, timeout_s: float) -> str:
    """The counts per CLI, the failures, and how it was measured."""
    total, passed = len(outcomes), sum(o.passed for o in outcomes)
    per_cli: Counter[str] = Counter()
    ok_cli: Counter[str] = Counter()
    for o in outcomes:
        per_cli[o.case.cli] += 1
        ok_cli[o.case.cli] += o.passed
    lines = [f"How: {total} generated bad inputs, each one CLI in its own subprocess and temp folder (its cwd) "
             f"against its own copy of database/coinfer.sqlite; {jobs} at a time, {timeout_s:g} s timeout each; "
             "checked: exit code 2, exactly one stderr line, no traceback, no password shown, database bytes "
             "unchanged (copy and shipped), no new files (case folder and repository). "
             f"Wall time {wall_s:.0f} s.",
             f"handled {passed}/{total} ({100 * passed / max(1, total):.1f} %)"]
    for cli in sorted(per_cli):
        lines.append(f"  {ok_cli[cli]:>4}/{per_cli[cli]:<4} {cli}")
    failed = [o for o in outcomes if not o.passed]
    if failed:
        lines.append(f"not handled: {len(failed)}")
        for o in failed:
            first = o.stderr.splitlines()[-1][:140] if o.stderr else ""
            lines.append(f"  {o.case.cli} [{o.case.label}]: {'; '.join(o.problems)} | {first}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = ArgParser(prog="python -m bench.badinput", description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="only the fast subset the test suite runs")
    ap.add_argument("--jobs", type=int, default=2, help="cases run at the same time (default 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a case may take (default 120)")
    ap.add_argument("--only", default=None, help="only cases of CLIs whose name contains this")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 1 <= args.jobs <= 64 or not 0 < args.timeout <= 3600:
        raise CoInferError("--jobs must be in 1..64 and --timeout in (0, 3600] seconds")
    cases = [c for c in all_cases() if (c.fast or not args.fast)
             and (args.only is None or args.only in c.cli)]
    start = time.perf_counter()
    outcomes = run_cases(cases, args.jobs, args.timeout)
    wall = time.perf_counter() - start
    if args.json:
        print(json.dumps({"cases": len(outcomes), "handled": sum(o.passed for o in outcomes), "wall_s": wall,
                          "failures": [{"cli": o.case.cli, "label": o.case.label, "problems": o.problems,
                                        "stderr": o.stderr} for o in outcomes if not o.passed]}, indent=1))
    else:
        print(report(outcomes, wall, args.jobs, args.timeout))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    run_cli(main)
