"""Every wait has a deadline (database/storage.py: CONNECT_TIMEOUT_S, LOCK_TIMEOUT_S), and its expiry is one
line, exit 3; a full disk anywhere is one line, exit 2, with nothing half-written (the journal's lock and its
records: tests/test_journal.py)."""

from __future__ import annotations

import errno
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from apps import REPO_ROOT
from cli.errors import Unreachable
from cli.run import run_cli
from database.storage import CONNECT_TIMEOUT_S, Storage


def cli(capsys, main, argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of a CLI run as `python -m` runs it (cli.run.run_cli)."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err.strip().splitlines()


@contextmanager
def silent_server() -> Iterator[str]:
    """A PostgreSQL URL on loopback whose server takes connections and never answers (a hung server, or a
    firewall that swallows the replies)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)  # the kernel completes the handshakes; nobody ever reads or writes
    try:
        yield f"postgresql+psycopg://u:p@127.0.0.1:{srv.getsockname()[1]}/x"
    finally:
        srv.close()


def closed_port() -> str:
    """A PostgreSQL URL on a loopback port where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"postgresql+psycopg://u:p@127.0.0.1:{port}/x"


def opens(url: str) -> dict[str, Callable[[], object]]:
    """Each way a command opens a server: the database (--storage), the build queue (--queue), a study storage."""
    from database.distributed import open_build
    from database.rdb import QueueConfig
    from database.store import Store
    from search.study import make_storage
    return {"store": lambda: Store(url), "queue": lambda: open_build(QueueConfig(url), "build/x"),
            "study storage": lambda: make_storage(url)}


def timed(fns: dict[str, Callable[[], object]]) -> dict[str, tuple[BaseException | None, float]]:
    """Run the functions at once (threads); each one's exception and seconds."""
    out: dict[str, tuple[BaseException | None, float]] = {}

    def one(name: str, fn: Callable[[], object]) -> None:
        start = time.monotonic()
        try:
            fn()
            out[name] = (None, time.monotonic() - start)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out[name] = (exc, time.monotonic() - start)
    threads = [threading.Thread(target=one, args=item) for item in fns.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_connect_args_carry_the_deadlines():
    pg = Storage.parse("postgresql+psycopg://u@127.0.0.1/x").connect_args(synchronous_commit="off")
    assert pg["connect_timeout"] == 10 and pg["keepalives"] == 1
    assert pg["options"] == "-c lock_timeout=30000 -c synchronous_commit=off"
    assert Storage.parse("/tmp/x.sqlite").connect_args() == {"timeout": 30}
    own = Storage.parse("postgresql+psycopg://u@h/x?connect_timeout=3&options=-c%20work_mem%3D64MB").connect_args()
    assert "connect_timeout" not in own and own["options"] == "-c lock_timeout=30000 -c work_mem=64MB"  # the URL's win


@pytest.mark.slow
def test_a_server_that_never_answers_is_unreachable_at_the_connect_deadline():
    with silent_server() as url:
        results = timed(opens(url))
    for name, (exc, seconds) in results.items():
        assert isinstance(exc, Unreachable), (name, exc)
        assert "unreachable: connection timeout expired" in str(exc) and "u:***@" in str(exc), (name, exc)
        assert CONNECT_TIMEOUT_S - 0.5 <= seconds < CONNECT_TIMEOUT_S + 10, (name, seconds)  # one attempt, no retries


def test_a_closed_port_is_unreachable_at_once_the_build_queue_too():
    results = timed(opens(closed_port()))
    for name, (exc, seconds) in results.items():
        assert isinstance(exc, Unreachable) and "Connection refused" in str(exc), (name, exc)
        assert seconds < 5, (name, seconds)  # the queue's first contact is not retried for retry_db_s (300 s)


def test_sqlite_busy_past_its_deadline_is_exit_3(tmp_path):
    from database.store import AccuracyRow, Store
    db = tmp_path / "db.sqlite"
    Store(str(db)).put_accuracy([AccuracyRow("a", "p", 0, 1, 1, 0, 0.5)])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        with pytest.raises(Unreachable, match=r"another process held a lock for over 0.2 s \(database is locked\)"):
            Store(str(db), busy_timeout_s=0.2).put_accuracy([AccuracyRow("a", "p", 0, 2, 1, 0, 0.6)])
        assert time.monotonic() - start < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_full_disk_wherever_it_strikes_is_one_line_exit_2(capsys):
    def full(_argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.bin")

    def full_database(_argv):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.Error as exc:
            raise RuntimeError("commit failed") from exc  # as a library wraps it

    assert cli(capsys, full, []) == (2, "", ["error: no space left on the device writing /data/out.bin: free some "
                                              "space and run the command again"])
    assert cli(capsys, full_database, []) == (2, "", ["error: no space left on the device: free some space and run "
                                                       "the command again"])

    def other(_argv):
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(OSError, match="Input/output"):  # not every OSError is a full disk
        run_cli(other, [])


def test_a_build_on_a_full_disk_is_one_line_at_once_with_every_database_whole(capsys, tiny_app_path, tmpfs):
    from database.evaluate import main
    folder = tmpfs("96k")
    db = folder / "x.sqlite"
    start = time.monotonic()
    code, out, err = cli(capsys, main, ["--app", tiny_app_path, "--storage", str(db), "--evaluator", "synthetic:0",
                                        "--schemes", "all"])
    assert code == 2 and out == "" and len(err) == 1, err
    assert err[0].startswith("error: no space left on the device writing ") and err[0].endswith(
        ": free some space and run the command again")
    assert time.monotonic() - start < 60  # not retried as a lost database (retry_db_s: 300 s)
    for f in folder.glob("*.sqlite"):  # nothing half-written: SQLite rolled the failed transaction back
        with sqlite3.connect(f"file:{f}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), f


def test_a_plot_on_a_full_disk_is_one_line_and_leaves_nothing(capsys, tiny_app_path, tiny_db, tmpfs):
    from reports.show import main
    folder = tmpfs("8k")
    plot = folder / "space.png"
    code, out, err = cli(capsys, main, ["--app", tiny_app_path, "--storage", tiny_db, "--plot", str(plot),
                                        "-bandwidth", "1", "-accuracy_loss", "0.01"])
    assert code == 2 and err == [f"error: cannot write figure {plot}: No space left on device"]
    assert list(folder.iterdir()) == []  # no half-written PNG, no temporary file


@pytest.mark.slow
def test_a_build_whose_queue_never_answers_exits_3_within_the_deadline(tiny_app_path, tmp_path):
    with silent_server() as url:
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "database.evaluate", "--app", tiny_app_path, "--storage",
                               str(tmp_path / "x.sqlite"), "--queue", url, "--evaluator", "synthetic:0", "--schemes",
                               "0,1,1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - start
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: build queue {url.replace(':p@', ':***@')} unreachable: connection timeout expired"]
    assert CONNECT_TIMEOUT_S <= seconds < CONNECT_TIMEOUT_S + 60  # the deadline, plus the start-up (was 321 s)


def test_the_deadlines_are_stated_in_the_readme():
    from database.storage import KEEPALIVE_S, LOCK_TIMEOUT_S
    readme = (Path(REPO_ROOT) / "README.md").read_text()
    assert f"a database server (`--storage`, `--queue`, `--study-storage`) {CONNECT_TIMEOUT_S} s" in readme
    assert f"a server host lost mid-query (a crash, a cut link) {KEEPALIVE_S} s" in readme
    assert f"the study journal's `.lock` file) {LOCK_TIMEOUT_S} s" in readme


@pytest.mark.postgres
def test_a_postgresql_lock_held_past_its_deadline_is_exit_3(monkeypatch):
    import os

    import sqlalchemy as sa

    import database.storage
    from database.store import SCHEMA_LOCK_KEY, Store
    url = os.environ.get("COINFER_TEST_POSTGRES")
    if not url:
        pytest.skip("set COINFER_TEST_POSTGRES to a PostgreSQL URL")
    monkeypatch.setattr(database.storage, "LOCK_TIMEOUT_S", 1)
    holder = sa.create_engine(url)
    try:
        with holder.begin() as conn:  # another process creating the tables, stuck
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            start = time.monotonic()
            with pytest.raises(Unreachable, match=r"another process held a lock for over 1 s \(canceling statement "
                                                  r"due to lock timeout\)"):
                Store(url)
            assert 1 <= time.monotonic() - start < 10
    finally:
        holder.dispose()
