"""The study journal is recoverable (search/journal.py): a record cut short is cut away (a copy kept), a
damaged record is one line with the command that repairs it and never withholds an answer the accuracy
database can give, a read-only folder keeps the study in memory, and its lock has a deadline."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from apps import REPO_ROOT
from cli.errors import CoInferError, Unreachable
from cli.run import run_cli
from search.journal import OPERATIONS, JournalDamaged, JournalFile, JournalLock, parse, repair, scan
from search.journal import main as journal_main

QUERY = ["-accuracy_loss", "0.02", "-bandwidth", "1", "--offline", "--json"]


def cli(capsys, main, argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of a CLI run as `python -m` runs it (cli.run.run_cli)."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err.strip().splitlines()


def search(capsys, tiny_app_path: str, db: Path, *extra: str) -> tuple[int, dict | None, list[str]]:
    from search.cli import run
    code, out, err = cli(capsys, lambda argv: run("latency", argv), [*QUERY, "--app", tiny_app_path,
                                                                      "--storage", str(db), *extra])
    return code, (json.loads(out) if out.strip() else None), err


@pytest.fixture
def db(tiny_db, tmp_path) -> Path:
    """A copy of the tiny database (a search writes its journal beside it)."""
    copy = tmp_path / "t.sqlite"
    shutil.copy(tiny_db, copy)
    return copy


def journal_of(db: Path) -> Path:
    return db.with_suffix(".studies.journal")


def backups(db: Path) -> list[Path]:
    return sorted(db.parent.glob("*.bak-*"))


def test_the_operations_checked_are_optunas():
    from optuna.storages.journal._file import LOCK_FILE_SUFFIX
    from optuna.storages.journal._storage import JournalOperation
    assert set(OPERATIONS) == {op.value for op in JournalOperation}
    assert JournalLock("x.journal").path == "x.journal" + LOCK_FILE_SUFFIX  # plain Optuna writers take it too


@pytest.mark.parametrize("line,why", [
    (b'{"op_code":4,"worker_id":"w","study_id":0,"datetime_start":null}\n', None),
    (b'{"op_code":4,"worker_id":"w","study_id":0,"datet', "not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"op_code":99,"worker_id":"w"}\n', "unknown operation 99"),
    (b'{"op_code":"4","worker_id":"w"}\n', "unknown operation '4'"),
    (b'{"op_code":8,"worker_id":"w","trial_id":3}\n', "operation 8 without user_attr"),
    (b'{"op_code":1,"worker_id":"w","study_id":"0"}\n', "operation 1 whose study_id is not an integer"),
])
def test_each_kind_of_damaged_record_is_named(line, why):
    log, found = parse(line)
    if why is None:
        assert found is None and log["op_code"] == 4
    else:
        assert log is None and found.startswith(why)


def test_a_record_cut_short_is_cut_away_with_a_copy_kept_and_the_answer_is_the_same(capsys, tiny_app_path, db):
    code, first, _ = search(capsys, tiny_app_path, db)
    assert code == 0
    journal = journal_of(db)
    whole = journal.read_bytes()
    lines = whole.splitlines(keepends=True)
    cut = sum(map(len, lines[:-3])) + len(lines[-3]) // 2  # a write killed mid-record, three records from the end
    journal.write_bytes(whole[:cut])
    code, again, err = search(capsys, tiny_app_path, db)
    assert code == 0 and again["scheme"] == first["scheme"] and again["certified"]
    assert [line for line in err if "cut short" in line] == [
        f"warning: study journal {journal} ended in a record cut short (a write killed or out of space): cut to its "
        f"last complete record, {len(lines[-3]) // 2} bytes removed (the file as it was: {backups(db)[0]})"]
    assert backups(db)[0].read_bytes() == whole[:cut]
    sound = scan(journal)
    assert sound.line is None and journal.read_bytes().startswith(b"".join(lines[:-3]))
    code, third, err = search(capsys, tiny_app_path, db)  # every later search: no warning, the same answer
    assert code == 0 and third["scheme"] == first["scheme"] and not [line for line in err if "journal" in line]
    assert len(backups(db)) == 1


def test_an_unknown_operation_is_one_line_the_answer_still_comes_and_repair_keeps_the_rest(capsys, tiny_app_path, db):
    code, first, _ = search(capsys, tiny_app_path, db)
    journal = journal_of(db)
    sound = journal.read_bytes()
    records = len(sound.splitlines())
    with journal.open("ab") as f:
        f.write(b'{"op_code":99,"worker_id":"x"}\n')
        f.write(b'{"op_code":0,"worker_id":"x","study_name":"later","directions":[0]}\n')
    repair_line = f"python -m search.journal {journal} --repair"
    code, again, err = search(capsys, tiny_app_path, db)
    assert code == 0 and again["scheme"] == first["scheme"] and again["certified"]
    assert f"warning: study journal {journal} is damaged at line {records + 1} (unknown operation 99); repair " \
           f"it, a copy kept: {repair_line}; this search keeps its study in memory" in err
    code, out, err = cli(capsys, journal_main, [str(journal)])
    assert code == 2 and out == "" and err == [
        f"error: study journal {journal} is damaged at line {records + 1} (unknown operation 99); repair it, a copy "
        f"kept: {repair_line}"]
    damaged = journal.read_bytes()
    code, out, err = cli(capsys, journal_main, [str(journal), "--repair"])
    assert code == 0 and err == []
    assert out.strip() == (f"{journal}: kept the {records} records before line {records + 1} (unknown operation 99), "
                           f"cut {len(damaged) - len(sound)} bytes; the file as it was: {backups(db)[0]}")
    assert journal.read_bytes() == sound and backups(db)[0].read_bytes() == damaged
    code, _, err = search(capsys, tiny_app_path, db)
    assert code == 0 and not [line for line in err if "journal" in line]
    assert len(journal.read_bytes().splitlines()) >= records  # the study lives in the journal again


def test_a_shared_study_refuses_a_damaged_journal(tmp_path):
    from search.problem import Problem
    from search.query import LatencyQuery
    from search.study import open_study
    from search.synthetic_problems import synthetic_latency, synthetic_points
    journal = tmp_path / "s.journal"
    journal.write_bytes(b'{"op_code":99,"worker_id":"x"}\n')
    problem = Problem(LatencyQuery(0.02, 1.0), synthetic_latency(synthetic_points([4, 8])), 0.9)
    with pytest.raises(JournalDamaged, match=r"damaged at line 1 \(unknown operation 99\)"):
        open_study("s", str(journal), problem, shared=True)
    notes: list[str] = []
    study = open_study("s", str(journal), problem, notes=notes)
    assert isinstance(study._storage, optuna.storages.InMemoryStorage) and "in memory" in notes[0]


def test_a_replay_error_is_damage_too(tmp_path):
    journal = tmp_path / "s.journal"
    good = b'{"op_code":0,"worker_id":"x","study_name":"s","directions":[0]}\n'
    bad = b'{"op_code":4,"worker_id":"x","study_id":0,"datetime_start":"not a time"}\n'
    journal.write_bytes(good + bad + good)
    found = scan(journal)
    assert (found.records, found.sound_bytes, found.line) == (1, len(good), 2)
    assert found.why.startswith("operation 4 does not replay: ValueError")
    assert "kept the 1 records before line 2" in repair(journal) and journal.read_bytes() == good


def test_optuna_reads_what_the_checked_journal_wrote(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from search.liveness import SearchJournalStorage
    path = tmp_path / "s.journal"
    ours = optuna.create_study(study_name="s", storage=SearchJournalStorage(JournalFile(path)))
    ours.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
    theirs = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [t.params for t in theirs.trials] == [t.params for t in ours.trials] and len(theirs.trials) == 5


def test_a_read_only_database_folder_answers_offline_from_an_in_memory_study(capsys, tiny_app_path, tiny_db, tmpfs):
    folder = tmpfs("8m")
    db = folder / "t.sqlite"
    shutil.copy(tiny_db, db)
    code, writable, _ = search(capsys, tiny_app_path, db)  # the answer where the folder can be written
    assert code == 0
    journal_of(db).unlink()
    tmpfs.readonly(folder)
    code, answer, err = search(capsys, tiny_app_path, db)
    assert code == 0 and answer["scheme"] == writable["scheme"] and answer["certified"]
    assert f"warning: study journal {journal_of(db)} cannot be written (Read-only file system: {journal_of(db)}); " \
           "this search keeps its study in memory" in err
    assert sorted(p.name for p in folder.iterdir()) == ["t.sqlite"]


def test_a_dead_processs_lock_is_removed_and_the_write_goes_on(tmp_path, capsys):
    path = tmp_path / "s.journal"
    journal = JournalFile(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(f"{path}.lock").write_text(f"{socket.gethostname()}:{dead.pid}")
    journal.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [0]}])
    assert capsys.readouterr().err.strip() == (f"warning: removed the lock {path}.lock of process "
                                               f"{socket.gethostname()}:{dead.pid}, which is gone")
    assert list(journal.read_logs(0))[0]["study_name"] == "s" and not Path(f"{path}.lock").exists()


@pytest.mark.parametrize("kind", ["live", "other-host", "dangling-symlink"])
def test_a_held_lock_is_waited_for_until_its_deadline_then_one_line_without_spinning(tmp_path, kind):
    path = tmp_path / "s.journal"
    journal = JournalFile(path, lock_timeout_s=1.0)
    lock = Path(f"{path}.lock")
    if kind == "dangling-symlink":  # Optuna's own lock, made through a relative path: it spun for ever on it
        lock.symlink_to("nowhere/s.journal")
    else:
        lock.write_text(f"{socket.gethostname()}:{os.getpid()}" if kind == "live" else "elsewhere:1")
    start, cpu = time.monotonic(), time.process_time()
    with pytest.raises(Unreachable, match=rf"its lock {re.escape(str(lock))} has been held by .* \(waited 1 s\); if "
                                          rf"no search uses the journal, remove it: rm {re.escape(str(lock))}") as exc:
        journal.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [0]}])
    assert exc.value.exit_status == 3
    assert 1.0 <= time.monotonic() - start < 3.0 and time.process_time() - cpu < 0.5  # it slept, not spun
    start = time.monotonic()
    with pytest.raises(Unreachable):  # the lock is not coming back: later writes fail at once
        journal.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "t", "directions": [0]}])
    assert time.monotonic() - start < 0.5
    assert path.read_bytes() == b"" and (lock.is_symlink() or lock.exists())  # nothing written, the lock left as found


@pytest.mark.slow
def test_a_search_on_a_journal_whose_lock_is_held_exits_3_within_the_deadline(tiny_app_path, db):
    from database.storage import LOCK_TIMEOUT_S
    search_once = [sys.executable, "latency_search.py", *QUERY, "--app", tiny_app_path, "--storage", str(db)]
    assert subprocess.run(search_once, cwd=REPO_ROOT, capture_output=True, timeout=300).returncode == 0
    lock = Path(f"{journal_of(db)}.lock")
    lock.write_text("elsewhere:1")  # a holder on another host: not provably gone
    start = time.monotonic()
    done = subprocess.run(search_once, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: study journal {re.escape(str(journal_of(db)))}: its lock {re.escape(str(lock))} has "
                        rf"been held by elsewhere:1 for \d+ s \(waited {LOCK_TIMEOUT_S} s\); if no search uses the "
                        rf"journal, remove it: rm {re.escape(str(lock))}", line), line
    assert LOCK_TIMEOUT_S <= time.monotonic() - start < LOCK_TIMEOUT_S + 60  # the deadline, plus the start-up


def test_a_full_disk_under_the_journal_is_one_line_and_leaves_it_whole(capsys, tiny_app_path, db, tmpfs):
    folder = tmpfs("12k")
    journal = folder / "s.journal"
    code, out, err = search(capsys, tiny_app_path, db, "--study-storage", str(journal))
    assert code == 2 and out is None
    assert err == [f"error: no space left on the device writing {journal}: free some space and run the command again"]
    assert scan(journal).line is None and journal.read_bytes().endswith(b"\n")  # every record whole
    assert sorted(p.name for p in folder.iterdir()) == ["s.journal"]  # no lock, no copy left behind


def test_journal_cli_refuses_a_missing_file(capsys, tmp_path):
    code, _, err = cli(capsys, journal_main, [str(tmp_path / "none.journal")])
    assert code == 2 and err == [f"error: no journal file {tmp_path / 'none.journal'}"]
    with pytest.raises(CoInferError, match="no journal file"):
        journal_main([str(tmp_path / "none.journal"), "--repair"])
