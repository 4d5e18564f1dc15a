"""Bad-input benchmark: hundreds of generated bad inputs across every CLI and the app schema.

    python -m bench.badinput [--fast] [--jobs 2] [--timeout 120] [--json]

Each case runs one CLI in its own subprocess, in its own temp folder (its working directory), against
its own copy of the shipped database (`--storage` points there), and passes when:
- the exit code is the case's `exit`: 2 (bad input), or 3 for a server that cannot be reached;
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
import shlex
import shutil
import stat
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
    note: str = ""  # how a generated case ran: in process, in its own interpreter, or both


@dataclass
class Ran:
    """What one run of a case's command gave: exit code (None: it did not exit), stdout, stderr, seconds."""
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)  # found while running it (a hang)


@dataclass
class Prepared:
    """A case's folder, ready to run: its path, what it held before (`_state`) and the mounts to undo."""
    tmp: Path
    before: dict[str, str]
    mounts: list[Path] = field(default_factory=list)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def _listing(root: Path) -> set[str]:
    """Every file under root (relative paths), skipping caches and VCS folders."""
    out = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in IGNORED]
        out |= {os.path.relpath(os.path.join(folder, f), root) for f in files}
    return out


HASHED_BYTES = 8 * 2**20  # files up to this size are compared by their bytes, larger ones (sparse) by size and time


def _state(root: Path) -> dict[str, str]:
    """Every entry under root (relative path -> what it is): a file's bytes (sha256; a larger one's size and
    modification time), a symlink's target, a FIFO's or folder's kind; without following symlinks."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                what = "link:" + os.readlink(path)
            elif not stat.S_ISREG(info.st_mode):
                what = f"mode:{stat.S_IFMT(info.st_mode)}"
            elif info.st_size <= HASHED_BYTES:
                what = _digest(Path(path))
            else:
                what = f"size:{info.st_size}:{info.st_mtime_ns}"
            out[os.path.relpath(path, root)] = what
        out.update({os.path.relpath(os.path.join(folder, d), root) + "/": "dir" for d in dirs})
    return out


def fill(text: str, tmp: Path) -> str:
    """A case's argument with its placeholders ({db}, {tmp}, {app}, {repo}) replaced for the folder tmp."""
    for key, value in {"{db}": str(tmp / "coinfer.sqlite"), "{tmp}": str(tmp), "{app}": str(tmp / "app.yml"),
                       "{repo}": str(REPO_ROOT)}.items():
        text = text.replace(key, value)
    return text


def command(case: Case, tmp: Path) -> list[str]:
    """The command line of a case run in the folder tmp."""
    argv = [fill(arg, tmp) for arg in case.argv]
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


def _mount(where: Path, options: str) -> None:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True,
                   capture_output=True, timeout=30)


def _write_files(case: Case, prep: Prepared) -> None:
    """Make the case's FileSpecs in its folder (see FileSpec)."""
    for spec in case.files:
        path = prep.tmp / spec.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec.kind == "bytes":
            path.write_bytes(spec.data)
        elif spec.kind == "sparse":
            with open(path, "wb") as f:
                f.truncate(spec.size)
        elif spec.kind == "fifo":
            os.mkfifo(path)
        elif spec.kind == "dir":
            path.mkdir()
        elif spec.kind in ("symlink", "loop"):
            os.symlink(path.name if spec.kind == "loop" else fill(spec.target, prep.tmp), path)
        elif spec.kind in ("full", "readonly"):
            _mount(path, f"size={max(spec.size, 4096)}" + (",ro" if spec.kind == "readonly" else ""))
            prep.mounts.append(path)
            if spec.kind == "full":
                fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    while os.write(fd, b"\0" * 4096):
                        pass
                except OSError:
                    pass
                finally:
                    os.close(fd)
        else:
            raise ValueError(f"unknown file kind {spec.kind!r}")


def prepare(case: Case, root: Path, index: int) -> Prepared:
    """A fresh folder under root for the case: a copy of the shipped database, a corrupt one, its files."""
    tmp = root / f"case{index:04d}"
    tmp.mkdir()
    shutil.copyfile(SHIPPED_DB, tmp / "coinfer.sqlite")
    (tmp / "corrupt.sqlite").write_bytes(b"this is not an sqlite database " * 64)
    prep = Prepared(tmp, {})
    try:
        _write_app(case, tmp)
        _write_files(case, prep)
    except BaseException:
        cleanup(prep)
        raise
    prep.before = _state(tmp)
    return prep


def cleanup(prep: Prepared) -> None:
    """Undo the case's mounts and remove its folder."""
    for where in prep.mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)
    shutil.rmtree(prep.tmp, ignore_errors=True)


def case_env() -> dict[str, str]:
    """The environment a case runs in: this one, without the variables that point CLIs elsewhere."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("COINFER_SERVER", "COINFER_RATE_LIMIT", "COINFER_SPEED", "COINFER_TEST_POSTGRES", "COINFER_TOKEN"):
        env.pop(key, None)
    return env


def run_subprocess(case: Case, tmp: Path, timeout_s: float) -> Ran:
    """Run the case's command in its own interpreter, in its folder."""
    start = time.perf_counter()
    try:
        out = subprocess.run(command(case, tmp), cwd=tmp, env=case_env(), capture_output=True, text=True,
                             errors="replace", timeout=timeout_s, stdin=subprocess.DEVNULL)
        return Ran(out.returncode, out.stdout, out.stderr, time.perf_counter() - start)
    except subprocess.TimeoutExpired as exc:
        text = [x.decode(errors="replace") if isinstance(x, bytes) else str(x or "") for x in (exc.stdout, exc.stderr)]
        return Ran(None, text[0], text[1], time.perf_counter() - start, [f"hang: no exit within {timeout_s:g} s"])


def expected(case: Case) -> tuple[int, ...]:
    return case.exit if isinstance(case.exit, tuple) else (case.exit,)


def check(case: Case, prep: Prepared, ran: Ran, repo_lock: threading.Lock) -> list[str]:
    """The contract (module doc): what the run broke of it; nothing when it passed."""
    problems = list(ran.problems)
    if ran.code is not None and ran.code not in expected(case):
        problems.append(f"exit code {ran.code}, expected {' or '.join(map(str, expected(case)))}")
    lines = ran.stderr.splitlines()
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    if "Traceback" in ran.stderr or "Traceback" in ran.stdout:
        problems.append("traceback")
    if SECRET in ran.stderr or SECRET in ran.stdout:
        problems.append("password shown")
    after = _state(prep.tmp)
    changed = sorted(k for k in prep.before if after.get(k) != prep.before[k])
    if "coinfer.sqlite" in changed:
        problems.append("database bytes changed")
    others = [k for k in changed if k != "coinfer.sqlite"]
    if others:
        problems.append(f"inputs changed or removed: {', '.join(others[:3])}")
    new = sorted(set(after) - set(prep.before))
    if new:
        problems.append(f"new files: {', '.join(new[:3])}")
    with repo_lock:
        if _digest(SHIPPED_DB) != SHIPPED_DIGEST:
            problems.append("shipped database changed")
        extra = sorted(_listing(REPO_ROOT) - REPO_FILES)
        if extra:
            problems.append(f"new files in the repository: {', '.join(extra[:3])}")
            REPO_FILES.update(extra)  # reported once, by the case that finished first
    return problems


def run_case(case: Case, root: Path, index: int, timeout_s: float, repo_lock: threading.Lock) -> Outcome:
    """Run one case in a fresh folder under root, in its own interpreter, and check it (see the module doc)."""
    prep = prepare(case, root, index)
    try:
        ran = run_subprocess(case, prep.tmp, timeout_s)
        problems = check(case, prep, ran, repo_lock)
    finally:
        cleanup(prep)
    return Outcome(case, not problems, problems, ran.seconds, ran.stderr.strip()[:300])


SHIPPED_DIGEST = ""
REPO_FILES: set[str] = set()


def start_checks() -> None:
    """Note the shipped database's bytes and the repository's files, which every case's check compares with."""
    global SHIPPED_DIGEST, REPO_FILES
    SHIPPED_DIGEST, REPO_FILES = _digest(SHIPPED_DB), _listing(REPO_ROOT)


def run_cases(cases: Iterable[Case], jobs: int = 2, timeout_s: float = 120.0) -> list[Outcome]:
    """Run the cases, `jobs` at a time, each in its own folder and subprocess; the outcomes in case order."""
    cases = list(cases)
    start_checks()
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="coinfer-badinput-") as folder:
        root = Path(folder)
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            return list(pool.map(lambda ic: run_case(ic[1], root, ic[0], timeout_s, lock), enumerate(cases)))


def run_generated(cases: list[Case], jobs: int = 2, timeout_s: float = 60.0,
                  in_process: bool = True) -> list[Outcome]:
    """Run generated cases `jobs` at a time: each in a worker process (bench.badinput_inproc) when in_process,
    and again in its own interpreter when that fails the contract or the worker does not answer (only the
    fresh interpreter's verdict counts); the same preparation and contract check as every other case."""
    from bench.badinput_inproc import Worker
    start_checks()
    lock, local, workers = threading.Lock(), threading.local(), []

    def fresh(case: Case, root: Path, index: int) -> tuple[list[str], Ran]:
        prep = prepare(case, root, index)
        try:
            ran = run_subprocess(case, prep.tmp, timeout_s)
            return check(case, prep, ran, lock), ran
        finally:
            cleanup(prep)

    def one(index: int, case: Case, root: Path) -> Outcome:
        if not in_process:
            problems, ran = fresh(case, root, index)
            return Outcome(case, not problems, problems, ran.seconds, ran.stderr.strip()[:300], "subprocess")
        if not hasattr(local, "worker"):
            local.worker = Worker(case_env())
            with lock:
                workers.append(local.worker)
        prep = prepare(case, root, index)
        try:
            answer = local.worker.run(case.cli, [fill(a, prep.tmp) for a in case.argv], prep.tmp, timeout_s)
            if answer is not None:
                ran = Ran(answer["code"], answer["stdout"], answer["stderr"], answer["seconds"])
                problems = check(case, prep, ran, lock)
                if not problems:
                    return Outcome(case, True, [], ran.seconds, ran.stderr.strip()[:300], "in process")
        finally:
            cleanup(prep)
        note = "in process: " + ("; ".join(problems) if answer is not None else "no answer") + "; then subprocess"
        problems, ran = fresh(case, root, index + 1_000_000)
        return Outcome(case, not problems, problems, ran.seconds, ran.stderr.strip()[:300], note)

    with tempfile.TemporaryDirectory(prefix="coinfer-badgen-") as folder:
        root = Path(folder)
        try:
            with ThreadPoolExecutor(max(1, jobs)) as pool:
                return list(pool.map(lambda ic: one(ic[0], ic[1], root), enumerate(cases)))
        finally:
            for worker in workers:
                worker.stop()


def reproduction(case: Case, index: int, n: int, seed: int) -> str:
    """How to run one generated case again: its rerun flags, its command line and the files of its folder."""
    tmp = Path("/tmp/case")
    lines = [f"  rerun: python -m bench.badinput --generated {n} --seed {seed} --case {index}",
             "  in a folder /tmp/case holding a copy of database/coinfer.sqlite and corrupt.sqlite (cwd): "
             + shlex.join(command(case, tmp)[1:]).replace(str(REPO_ROOT) + "/", "")[:600]]
    shown = {"bytes": lambda s: f"{len(s.data)} bytes {s.data[:120]!r}", "sparse": lambda s: f"sparse, {s.size} bytes",
             "symlink": lambda s: f"symlink to {s.target}", "full": lambda s: f"a full tmpfs of {s.size} bytes",
             "readonly": lambda s: "a read-only tmpfs"}
    for spec in case.files:
        lines.append(f"  file {spec.name}: " + shown.get(spec.kind, lambda s: s.kind)(spec))
    return "\n".join(lines)


def report(outcomes: list[Outcome], wall_s: float, jobs: int, timeout_s: float, generated: str = "") -> str:
    """The counts per CLI, the failures, and how it was measured (`generated`: how generated cases were made)."""
    total, passed = len(outcomes), sum(o.passed for o in outcomes)
    per_cli: Counter[str] = Counter()
    ok_cli: Counter[str] = Counter()
    for o in outcomes:
        per_cli[o.case.cli] += 1
        ok_cli[o.case.cli] += o.passed
    where = ("in worker processes (main(argv) in process), a case failing there again in its own subprocess, "
             if generated else "each one CLI in its own subprocess ")
    lines = [f"How: {total} {generated or 'listed'} bad inputs, {where}and temp folder (its cwd) "
             f"against its own copy of database/coinfer.sqlite; {jobs} at a time, {timeout_s:g} s timeout each; "
             "checked: exit code 2 (3 for an unreachable server; either for a generated case), exactly one "
             "stderr line, no traceback, no password shown, database and every input in the case folder "
             "byte-identical (and the shipped database), no new files (case folder and repository). "
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
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds a case may take (default 120; 60 for generated cases)")
    ap.add_argument("--only", default=None, help="only cases of CLIs whose name contains this")
    ap.add_argument("--generated", type=int, default=None, metavar="N",
                    help="N cases generated by hypothesis from --seed instead of the listed ones (bench.badinput_gen)")
    ap.add_argument("--seed", type=int, default=0, help="the generated cases' seed (default 0)")
    ap.add_argument("--case", type=int, default=None, metavar="K", help="only generated case K (0-based) of N")
    ap.add_argument("--no-in-process", action="store_true",
                    help="run each generated case in its own interpreter (default: in worker processes, and a "
                         "case that fails there again in its own interpreter)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    timeout = args.timeout if args.timeout is not None else 120.0 if args.generated is None else 60.0
    if not 1 <= args.jobs <= 64 or not 0 < timeout <= 3600:
        raise CoInferError("--jobs must be in 1..64 and --timeout in (0, 3600] seconds")
    if args.generated is not None and not 1 <= args.generated <= 100_000:
        raise CoInferError(f"--generated must be in 1..100000, got {args.generated}")
    if not 0 <= args.seed < 2**32:
        raise CoInferError(f"--seed must be in 0..2**32-1, got {args.seed}")
    if args.case is not None and (args.generated is None or not 0 <= args.case < args.generated):
        raise CoInferError("--case K needs --generated N with 0 <= K < N")
    start = time.perf_counter()
    if args.generated is not None:
        from bench.badinput_gen import generate
        generated = generate(args.generated, args.seed)
        chosen = [(i, c) for i, c in enumerate(generated) if (args.case is None or i == args.case)
                  and (args.only is None or args.only in c.cli)]
        outcomes = run_generated([c for _, c in chosen], args.jobs, timeout, not args.no_in_process)
        index = {id(c): i for i, c in chosen}
    else:
        cases = [c for c in all_cases() if (c.fast or not args.fast)
                 and (args.only is None or args.only in c.cli)]
        outcomes = run_cases(cases, args.jobs, timeout)
    wall = time.perf_counter() - start
    failures = [{"cli": o.case.cli, "label": o.case.label, "problems": o.problems, "stderr": o.stderr}
                for o in outcomes if not o.passed]
    if args.generated is not None:
        for f, o in zip(failures, [o for o in outcomes if not o.passed]):
            f.update(note=o.note, reproduction=reproduction(o.case, index[id(o.case)], args.generated, args.seed))
    if args.json:
        print(json.dumps({"cases": len(outcomes), "handled": sum(o.passed for o in outcomes), "wall_s": wall,
                          "seed": args.seed if args.generated is not None else None,
                          "in_process": sum(o.note == "in process" for o in outcomes),
                          "failures": failures}, indent=1))
    else:
        made = (f"generated (hypothesis, seed {args.seed}, {args.generated} drawn"
                f"{', in process' if not args.no_in_process else ''})") if args.generated is not None else ""
        print(report(outcomes, wall, args.jobs, timeout, made))
        for f in failures if args.generated is not None else []:
            print(f"{f['cli']} [{f['label']}]\n{f['reproduction']}")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    run_cli(main)
