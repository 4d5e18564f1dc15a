"""The searches' study journal, kept whole: its lock has a deadline, its records are checked as they
are read, a write cut short is cut away, and a damaged file is repaired on request.

    storage = SearchJournalStorage(JournalFile("database/coinfer.studies.journal"))   # search/study.py
    python -m search.journal database/coinfer.studies.journal            # check it: one line, exit 0 or 2
    python -m search.journal database/coinfer.studies.journal --repair   # back it up, cut its damage off

The file is Optuna's journal (one JSON object a line, each an operation: create a study, a trial, set
a value; replayed in order), so `optuna.storages.JournalStorage`, optuna-dashboard and `optuna.load_study`
read it; `JournalFile` is the backend Optuna's `JournalStorage` reads and writes it through.

- The lock. A writer holds `<journal>.lock` (the file Optuna's own JournalFileSymlinkLock takes, so a
  plain Optuna process and a search exclude each other), made with O_EXCL and holding "host:pid". A
  lock whose holder was a process of this host that is gone is provably stale: it is removed, with a
  warning line, and taken. Any other (a live holder, another host, Optuna's symlink that names no
  holder, a dangling one) is waited for at most `LOCK_TIMEOUT_S` (database/storage.py); then one line,
  exit 3 (`Unreachable`), naming the file to remove if no search uses the journal, and later writes of
  the process fail at once. (Optuna's own lock spins for ever on a dangling symlink and breaks any lock
  older than 30 s, live or not.) Ctrl-C and SIGTERM wait while the lock is held, never while it is
  awaited, so an interrupt never leaves it behind.
- A write cut short (kill -9 mid-write, a full disk in another program) leaves a last line without
  its end of line. Nobody has read it (a reader stops at an unterminated line), so the next writer,
  under the lock, copies the file to `<journal>.bak-<time>` and cuts it to its last complete record,
  with a warning line. A write that fails here (ENOSPC) cuts its own bytes off before the error goes
  up: nothing half-written stays.
- A damaged record (a complete line that is not a JSON object, an unknown operation, a field its
  replay reads missing) is not repaired behind the user's back: the records after it would be lost.
  Reading it raises `JournalDamaged` (exit 2), whose line gives the command that repairs it; a search
  that need not share its study answers with an in-memory one and a warning line instead
  (`search.study.open_study`). `--repair` (run it when no search uses the journal) copies the file to
  `<journal>.bak-<time>` and keeps the records before the first that does not read or does not
  replay (Optuna's own replay, record by record).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.args import ArgParser
from cli.errors import CoInferError, Unreachable, first_line
from cli.run import run_cli
from database.storage import LOCK_TIMEOUT_S

LOCK_SUFFIX = ".lock"  # optuna.storages.journal._file.LOCK_FILE_SUFFIX: the lock Optuna's writers take too
# Optuna's journal operations (optuna.storages.journal._storage.JournalOperation, 5.1: a test keeps them
# equal) and the fields its replay reads of each, beside "worker_id"
OPERATIONS: dict[int, tuple[str, ...]] = {
    0: ("study_name", "directions"),  # CREATE_STUDY
    1: ("study_id",),  # DELETE_STUDY
    2: ("study_id", "user_attr"),  # SET_STUDY_USER_ATTR
    3: ("study_id", "system_attr"),  # SET_STUDY_SYSTEM_ATTR
    4: ("study_id", "datetime_start"),  # CREATE_TRIAL
    5: ("trial_id", "param_name", "param_value_internal", "distribution"),  # SET_TRIAL_PARAM
    6: ("trial_id", "state", "values"),  # SET_TRIAL_STATE_VALUES
    7: ("trial_id", "step", "intermediate_value"),  # SET_TRIAL_INTERMEDIATE_VALUE
    8: ("trial_id", "user_attr"),  # SET_TRIAL_USER_ATTR
    9: ("trial_id", "system_attr"),  # SET_TRIAL_SYSTEM_ATTR
    10: (),  # DISCARD_TRIALS (Rustuna's; Optuna skips it)
}


class JournalDamaged(CoInferError):
    """A study journal holds a record that cannot be read or replayed: one line naming it and the command
    that repairs it, exit status 2."""

    def __init__(self, path: str | Path, line: int, why: str) -> None:
        self.path, self.line, self.why = str(path), line, why
        super().__init__(f"study journal {path} is damaged at line {line} ({why}); repair it, a copy kept: "
                         f"python -m search.journal {path} --repair")


class JournalUnwritable(CoInferError):
    """A study journal, or the folder its lock is made in, cannot be written (a read-only folder or disk)."""


def parse(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A complete line of a journal as (the record, None), or (None, why it is not one Optuna can replay)."""
    try:
        log = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return None, f"not JSON: {first_line(exc)}"
    if not isinstance(log, dict):
        return None, "not a JSON object"
    op = log.get("op_code")
    if type(op) is not int or op not in OPERATIONS:
        return None, f"unknown operation {op!r}"
    missing = [k for k in ("worker_id", *OPERATIONS[op]) if k not in log]
    if missing:
        return None, f"operation {op} without {', '.join(missing)}"
    bad = [k for k in ("study_id", "trial_id") if k in OPERATIONS[op] and type(log[k]) is not int]
    if bad:
        return None, f"operation {op} whose {bad[0]} is not an integer"
    return log, None


def backup(path: str | Path) -> Path:
    """A copy of the file as `<path>.bak-<local time>` (a new name: `-2`, `-3`... after it when taken);
    a failed copy (a full disk) leaves nothing behind and raises."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1, 1000):
        target = Path(f"{path}.bak-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise
        return target
    raise CoInferError(f"cannot name a backup of {path}: 999 taken this second")


class JournalLock:
    """`<journal>.lock`, held by `with lock.held():` (module doc): taken with O_EXCL, naming its holder
    ("host:pid"); a dead holder's lock of this host is removed; any other is waited for `timeout_s` at
    most, then `Unreachable`, and every later wait of this lock fails at once."""

    def __init__(self, journal: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.journal = str(journal)
        self.path = self.journal + LOCK_SUFFIX
        self.timeout_s = timeout_s
        self.stuck = False  # a wait ran past its deadline: the lock is not coming back

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        from search.liveness import signals_deferred
        deadline, delay = time.monotonic() + (0.0 if self.stuck else self.timeout_s), 0.001
        while True:
            with signals_deferred():  # Ctrl-C / SIGTERM wait while the lock is held, not while it is awaited
                if self._take():
                    try:
                        yield
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.path)
                    return
            if self._remove_if_dead():
                continue
            if time.monotonic() >= deadline:
                self.stuck = True
                raise Unreachable(self._held_line())
            time.sleep(delay)
            delay = min(2 * delay, 0.05)

    def _take(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, f"{socket.gethostname()}:{os.getpid()}".encode())
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        return True

    def holder(self) -> tuple[str | None, os.stat_result | None]:
        """(Who holds the lock, "host:pid", or None when it does not say: Optuna's symlink, an empty
        file), and the lock file's own status (None: nobody holds it)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None, None
        if not stat.S_ISREG(st.st_mode):
            return None, st
        try:
            with open(self.path, "rb") as f:
                text = f.read(256).decode("utf-8", "replace").strip()
        except OSError:
            return None, st
        host, sep, pid = text.rpartition(":")
        return (text if sep and host and pid.isdigit() else None), st

    def _remove_if_dead(self) -> bool:
        """Remove the lock when its holder was a process of this host that is gone; whether it did. Removers
        of this host take turns (an flock on the journal, which nobody else flocks) and look again under it,
        so none removes a lock taken after another removed the dead one."""
        from search.liveness import pid_alive
        try:
            journal = open(self.journal, "rb")
        except OSError:
            return False
        with journal:
            fcntl.flock(journal, fcntl.LOCK_EX)
            holder, _ = self.holder()
            host, _, pid = (holder or "").rpartition(":")
            if holder is None or host != socket.gethostname() or pid_alive(int(pid)):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        print(f"warning: removed the lock {self.path} of process {holder}, which is gone", file=sys.stderr)
        return True

    def _held_line(self) -> str:
        holder, st = self.holder()
        if st is None:
            return f"study journal {self.journal}: could not take its lock within {self.timeout_s:g} s"
        who = holder or ("a process that does not say which (an Optuna lock: a symlink)" if stat.S_ISLNK(st.st_mode)
                         else "a process that does not say which")
        return (f"study journal {self.journal}: its lock {self.path} has been held by {who} for "
                f"{max(0.0, time.time() - st.st_mtime):.0f} s (waited {self.timeout_s:g} s); if no search uses "
                f"the journal, remove it: rm {self.path}")


class JournalFile:
    """The backend of Optuna's `JournalStorage` (`read_logs`, `append_logs`) over one journal file, checked
    (module doc). The file is created when missing (`JournalUnwritable` when it cannot be)."""

    def __init__(self, path: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.path = str(path)
        self.lock = JournalLock(self.path, lock_timeout_s)
        self._offsets: dict[int, int] = {0: 0}  # record number -> its byte offset, for the records read
        try:
            if not os.path.exists(self.path):
                open(self.path, "ab").close()
        except OSError as exc:
            _raise_unwritable(self.path, exc)

    def check_writable(self) -> None:
        """Take the lock and give it back, and open the file for writing: `JournalUnwritable` (a read-only
        folder or disk), or the OSError (a full disk), before a search that would write it starts."""
        try:
            with self.lock.held():
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND))
        except OSError as exc:
            _raise_unwritable(self.path, exc)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        """The records from number `log_number_from` on, each checked (`JournalDamaged`); it stops before a
        line written after the read began or one without its end of line (a write in flight or cut short)."""
        start = log_number_from if log_number_from in self._offsets else 0
        with open(self.path, "rb") as f:
            size, pos = os.fstat(f.fileno()).st_size, self._offsets[start]
            f.seek(pos)
            for number, line in enumerate(f, start=start):
                if pos + len(line) > size or not line.endswith(b"\n"):
                    return
                pos += len(line)
                if number < log_number_from:
                    self._offsets[number + 1] = pos
                    continue
                log, why = parse(line)
                if log is None:
                    raise JournalDamaged(self.path, number + 1, why or "")
                self._offsets[number + 1] = pos
                yield log

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append the records under the lock, after cutting off a record an earlier write left cut short; a
        failed write (ENOSPC) cuts its own bytes off before its error goes up."""
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        with self.lock.held():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            try:
                size = self._cut_short_tail(fd)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except BaseException as exc:
                    os.ftruncate(fd, size)
                    if isinstance(exc, OSError) and exc.filename is None:
                        exc.filename = self.path  # the one-line error names the file (cli.errors.disk_full_error)
                    raise
            finally:
                os.close(fd)

    def _cut_short_tail(self, fd: int) -> int:
        """Cut a last line without its end of line (a copy of the file kept, a warning line); the size after."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        keep, end = 0, size
        while end > 0:
            begin = max(0, end - (1 << 16))
            i = os.pread(fd, end - begin, begin).rfind(b"\n")
            if i >= 0:
                keep = begin + i + 1
                break
            end = begin
        copy = backup(self.path)
        os.ftruncate(fd, keep)
        print(f"warning: study journal {self.path} ended in a record cut short (a write killed or out of space): "
              f"cut to its last complete record, {size - keep} bytes removed (the file as it was: {copy})",
              file=sys.stderr)
        return keep


def _raise_unwritable(path: str, exc: OSError) -> None:
    """A read-only folder or disk raised as `JournalUnwritable`; any other OSError (ENOSPC) as it is."""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        raise JournalUnwritable(f"study journal {path} cannot be written ({exc.strerror}: {exc.filename})") from exc
    raise exc


@dataclass(frozen=True)
class Scan:
    """What a journal holds: `records` that read and replay, in its first `sound_bytes` bytes, out of
    `size`; the first line that does not (1-based) and why (None: every line does)."""

    records: int
    sound_bytes: int
    size: int
    line: int | None = None
    why: str | None = None


def scan(path: str | Path) -> Scan:
    """Read and replay every record of the journal (Optuna's replay, as a worker that wrote none of them, so
    only damage raises)."""
    from optuna.storages.journal._storage import JournalStorageReplayResult
    replay = JournalStorageReplayResult("coinfer-scan-")
    size, pos, records = os.path.getsize(path), 0, 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return Scan(records, pos, size, records + 1, "a record cut short, without its end of line")
            log, why = parse(line)
            if log is not None:
                try:
                    replay.apply_logs([log])
                except Exception as exc:  # a field of the wrong kind: whatever the replay raises
                    why = f"operation {log['op_code']} does not replay: {type(exc).__name__}: {first_line(exc)}"
            if why is not None:
                return Scan(records, pos, size, records + 1, why)
            pos, records = pos + len(line), records + 1
    return Scan(records, pos, size)


def repair(path: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> str:
    """Under the journal's lock: when a record does not read or replay, copy the file to
    `<path>.bak-<time>` and cut it before that record. Returns the line that says what was done."""
    with JournalLock(path, lock_timeout_s).held():
        found = scan(path)
        if found.line is None:
            return f"{path}: {found.records} records, all sound: nothing to repair"
        copy = backup(path)
        with open(path, "r+b") as f:
            f.truncate(found.sound_bytes)
            f.flush()
            os.fsync(f.fileno())
    return (f"{path}: kept the {found.records} records before line {found.line} ({found.why}), cut "
            f"{found.size - found.sound_bytes} bytes; the file as it was: {copy}")


def _parser() -> ArgParser:
    ap = ArgParser(description="Check a searches' study journal (an Optuna journal file, by default "
                               "database/coinfer.studies.journal): one line, exit 0 when every record reads and "
                               "replays, 2 when one does not. --repair keeps the records before the first damaged "
                               "one, the file as it was copied to JOURNAL.bak-TIME; run it when no search uses it.")
    ap.add_argument("journal", help="the journal file")
    ap.add_argument("--repair", action="store_true", help="cut the journal before its first damaged record")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = Path(args.journal)
    if not path.is_file():
        raise CoInferError(f"no journal file {path}")
    if args.repair:
        print(repair(path))
        return 0
    found = scan(path)
    if found.line is not None:
        raise JournalDamaged(path, found.line, found.why or "")
    print(f"{path}: {found.records} records, all sound")
    return 0


if __name__ == "__main__":
    run_cli(main)
