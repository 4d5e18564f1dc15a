"""A failed or read-only command leaves nothing behind: no new database file, no -wal/-shm, no password shown;
a pool worker that cannot start ends the run instead of being restarted forever."""

from __future__ import annotations

import shutil

import pytest

from apps import REPO_ROOT
from cli.errors import CoInferError, mask_url
from cli.files import check_output
from database.store import Store

SHIPPED = REPO_ROOT / "database" / "coinfer.sqlite"


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg://u:p@ss@h:5432/d", "postgresql+psycopg://u:***@h:5432/d"),
    ("postgresql://host/db?password=x&a=1", "postgresql://host/db?password=***&a=1"),
    ("sqlite:////tmp/a.sqlite", "sqlite:////tmp/a.sqlite"), ("postgresql://user@host/db", "postgresql://user@host/db"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_database_error_hides_the_password() -> None:
    with pytest.raises(CoInferError) as exc:
        Store("postgresql+psycopg://user:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(exc.value) and "user:***@" in str(exc.value)


def test_missing_file_is_not_created(tmp_path) -> None:
    for kwargs in ({"create": False}, {"readonly": True}):
        with pytest.raises(CoInferError, match="not found"):
            Store(f"sqlite:///{tmp_path / 'typo.sqlite'}", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_read_only_look_leaves_no_files_and_no_change(tmp_path) -> None:
    db = tmp_path / "c.sqlite"
    shutil.copyfile(SHIPPED, db)
    before = db.read_bytes()
    store = Store(str(db), readonly=True)
    assert store.accuracy_table("vgg16_digits")
    with pytest.raises(CoInferError, match="read-only"):
        store.check_writable()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sqlite"] and db.read_bytes() == before


def test_writer_leaves_rollback_mode_and_read_only_url_is_refused_early(tmp_path) -> None:
    db = tmp_path / "c.sqlite"
    shutil.copyfile(SHIPPED, db)
    store = Store(str(db))
    store.check_writable()
    store.put_device("dev1", {"cpu_model": "x"})
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.sqlite"] and db.read_bytes()[18:20] == b"\x01\x01"
    with pytest.raises(CoInferError, match="read-only"):
        Store(f"sqlite:///file:{db}?mode=ro&uri=true").check_writable()


def test_output_path_checked_before_work(tmp_path) -> None:
    with pytest.raises(CoInferError, match="does not exist"):
        check_output("/nonexistent/dir/x.pt")
    with pytest.raises(CoInferError, match="folder"):
        check_output(tmp_path)
    assert check_output(tmp_path / "x.pt") == tmp_path / "x.pt" and not (tmp_path / "x.pt").exists()


def test_a_build_worker_that_cannot_start_fails_with_one_line(tmp_path) -> None:
    from compress.scheme import Scheme
    from database.buildjob import BuildJob
    from database.distributed import QueueConfig
    from database.evaluate import _pool_worker
    from database.storage import Storage
    job = BuildJob("no_such_app", Storage.parse(f"sqlite:///{tmp_path / 'a.sqlite'}"),
                   QueueConfig(f"sqlite:///{tmp_path / 'a.queue.sqlite'}"), (Scheme(0, 1, 1),), 0, (8,))
    with pytest.raises(CoInferError, match="build worker: unknown app"):
        _pool_worker(job)
    assert list(tmp_path.iterdir()) == []
