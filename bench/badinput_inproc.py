"""Run bench.badinput's cases inside long-lived worker processes: a CLI's `main(argv)` through `cli.run.run_cli`,
in the case's folder, with file descriptors 1 and 2 captured, so a case costs its own work and not an
interpreter's start and imports (~0.5-1 s each).

A worker (`serve`, a `spawn`ed process) takes one case at a time as a JSON line {cli, argv, cwd} and answers
{code, stdout, stderr, tainted}. Between cases it restores its working folder, `sys.argv`, the environment and
the warning filters (a warning shown once per process is shown again per case, as a fresh interpreter would).
What a case cannot take back makes the worker *tainted*: a thread or a child process left running; the worker
then exits after answering and a fresh one takes the next case. The parent (`Worker`) waits for an answer at
most the case's timeout; a worker that does not answer, or dies, is killed and replaced, and the case is run
again in its own interpreter (bench.badinput decides). An exception that escapes `run_cli` is printed as
Python would print it, with exit code 1.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("text") prints the text and exits 1
    return 1


def _children() -> int:
    try:
        import psutil
        return len(psutil.Process().children())
    except Exception:  # noqa: BLE001 - without psutil, multiprocessing's own children only
        return len(multiprocessing.active_children())


def serve(conn, env: dict[str, str]) -> None:
    """A worker's loop (see the module doc)."""
    from bench.badinput_gen import main_of
    from cli.run import run_cli
    os.environ.clear()
    os.environ.update(env)
    home = os.getcwd()
    filters = list(warnings.filters)
    threads = threading.active_count()
    mains: dict = {}
    capture = Path(tempfile.mkdtemp(prefix="coinfer-worker-"))
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        saved_env, saved_argv = dict(os.environ), sys.argv
        warnings.filters[:] = filters
        warnings.onceregistry.clear()
        warnings._filters_mutated()  # every module's __warningregistry__ is stale: warnings show again
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = open(capture / "out", "w+b"), open(capture / "err", "w+b")
        fd1, fd2 = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        start = time.perf_counter()
        code = 0
        try:
            os.chdir(request["cwd"])
            sys.argv = [request["cli"], *request["argv"]]
            try:
                main = mains.get(request["cli"]) or mains.setdefault(request["cli"], main_of(request["cli"]))
                run_cli(main, list(request["argv"]))
            except SystemExit as exc:
                code = _exit_code(exc)
            except BaseException:  # noqa: BLE001 - what a fresh interpreter would print, and its status
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(fd1, 1)
            os.dup2(fd2, 2)
            os.close(fd1)
            os.close(fd2)
            os.chdir(home)
            sys.argv = saved_argv
            os.environ.clear()
            os.environ.update(saved_env)
        seconds = time.perf_counter() - start
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
            f.close()
        tainted = threading.active_count() > threads or _children() > 0
        conn.send_bytes(json.dumps({"code": code, "stdout": texts[0], "stderr": texts[1], "seconds": seconds,
                                    "tainted": tainted}).encode())
        if tainted:
            return


class Worker:
    """The parent's handle on one worker process, started when first needed and replaced when it fails."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = None
        self.conn = None
        self.started = 0

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, self.env), daemon=True)
        self.proc.start()
        child.close()
        self.started += 1

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.pid is not None and self.proc.is_alive():
                self.proc.kill()
                self.proc.join(10)
            self.conn.close()
        self.proc = self.conn = None

    def run(self, cli: str, argv: list[str], cwd: Path, timeout_s: float) -> dict | None:
        """The worker's answer for one case, or None when it did not answer within timeout_s (it is replaced)."""
        if self.proc is None or not self.proc.is_alive():
            self.stop()
            self._start()
        try:
            self.conn.send_bytes(json.dumps({"cli": cli, "argv": argv, "cwd": str(cwd)}).encode())
            if self.conn.poll(timeout_s):
                answer = json.loads(self.conn.recv_bytes())
                if answer["tainted"]:
                    self.proc.join(10)
                    self.stop()
                return answer
        except (EOFError, OSError):
            pass
        self.stop()
        return None
