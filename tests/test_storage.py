"""database.storage.Storage: one --storage value and what derives from it; unreachable servers exit 3."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from apps import DEFAULT_STORAGE, REPO_ROOT
from cli.errors import CoInferError, Unreachable
from database.rdb import QueueConfig, with_retry
from database.storage import Storage, is_unreachable
from database.store import Store

DOWN = "postgresql://user:s3cret@127.0.0.1:1/db"  # no server listens on port 1


def test_default_is_the_shipped_database_with_its_queue_and_journal_beside_it() -> None:
    s = Storage.parse(None)
    assert s.url == DEFAULT_STORAGE == f"sqlite:///{REPO_ROOT / 'database' / 'coinfer.sqlite'}"
    assert s.sqlite_path == REPO_ROOT / "database" / "coinfer.sqlite"
    assert s.queue == f"sqlite:///{REPO_ROOT / 'database' / 'coinfer.queue.sqlite'}"
    assert s.study_storage == str(REPO_ROOT / "database" / "coinfer.studies.journal")


def test_a_path_is_an_sqlite_file(tmp_path) -> None:
    s = Storage.parse(str(tmp_path / "acc.sqlite"))
    assert s == Storage.parse(f"sqlite:///{tmp_path / 'acc.sqlite'}") == Storage(f"sqlite:///{tmp_path}/acc.sqlite")
    assert (s.backend, s.queue) == ("sqlite", f"sqlite:///{tmp_path}/acc.queue.sqlite")
    assert s.study_storage == f"{tmp_path}/acc.studies.journal"
    other = Storage.parse(f"sqlite:///{tmp_path}/x.db")  # not .sqlite: the suffix is kept
    assert other.queue == f"sqlite:///{tmp_path}/x.db.queue.sqlite"
    assert other.study_storage == f"{tmp_path}/x.studies.journal"
    uri = Storage.parse(f"sqlite:///file:{tmp_path}/acc.sqlite?mode=ro&uri=true")
    assert uri.uri and uri.sqlite_path == tmp_path / "acc.sqlite" and uri.queue == s.queue


def test_a_server_holds_its_own_queue_and_studies_and_shows_no_password() -> None:
    s = Storage.parse(DOWN)
    assert s.queue == s.study_storage == DOWN and s.sqlite_path is None and s.backend == "postgresql"
    assert s.display == "postgresql://user:***@127.0.0.1:1/db"
    assert s.with_database("other").url == "postgresql://user:s3cret@127.0.0.1:1/other"


def test_memory_and_bad_values() -> None:
    mem = Storage.parse("sqlite:///:memory:")
    assert mem.memory and mem.sqlite_path is None and mem.study_storage == "memory"
    with pytest.raises(CoInferError, match="in-memory database cannot hold a build"):
        _ = mem.queue
    with pytest.raises(CoInferError, match="empty storage URL"):
        Storage.parse(" ")
    with pytest.raises(CoInferError, match="bad storage URL 'post gres://u:\\*\\*\\*@h/d'"):
        Storage.parse("post gres://u:s3cret@h/d")


def test_a_symlink_loop_is_one_line(tmp_path) -> None:
    loop = tmp_path / "loop.sqlite"
    loop.symlink_to(loop.name)
    with pytest.raises(CoInferError) as exc:
        Storage.parse(str(loop))
    assert str(exc.value) == f"storage {loop}: symlink loop"


def test_an_unreachable_server_is_exit_3_with_the_password_masked() -> None:
    for opened in (lambda: Store(DOWN), lambda: Store(DOWN, readonly=True).accuracy_table("a"),
                   lambda: Storage.parse(DOWN).check_reachable()):
        with pytest.raises(Unreachable) as exc:
            opened()
        assert exc.value.exit_status == 3 and "s3cret" not in str(exc.value)
        assert str(exc.value).startswith("database postgresql://user:***@127.0.0.1:1/db unreachable: ")
        assert "Connection refused" in str(exc.value)


def test_a_queue_lost_beyond_its_retry_time_is_unreachable() -> None:
    engine = sa.create_engine(DOWN)

    def connect():
        with engine.connect():
            pass
    with pytest.raises(Unreachable, match=r"database unreachable for 0 s: .*Connection refused") as exc:
        with_retry(connect, QueueConfig(DOWN, retry_db_s=0.0))
    assert "s3cret" not in str(exc.value)
    assert is_unreachable(exc.value) and not is_unreachable(CoInferError("database x is locked"))
