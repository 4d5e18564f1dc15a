"""Writes never touch their inputs, and are whole or absent (cli.files.check_output, write_atomic); every named
input is read bounded (cli.files.read_text / read_yaml): the reliability rules 1 and 7."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apps import REPO_ROOT, load_app
from cli.errors import CoInferError
from cli.files import check_output, write_atomic
from compress.scheme import Scheme
from database.formats import read_csv
from database.storage import Storage
from devices.spec import load_devices
from runtime.secret import resolve_token

SHIPPED = REPO_ROOT / "database" / "coinfer.sqlite"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


@pytest.mark.parametrize("argv, says", [
    (("database.formats", "export-csv", "{db}", "--storage", "sqlite:///{db}"), "export {db} would overwrite {db}"),
    (("database.formats", "export-optcoinfer", "{link}", "--storage", "{db}"), "export {link} would overwrite {db}"),
    (("database.profile_io", "export-profile", "{db}", "--device", "cpu-edge", "--storage", "{db}"),
     "profile {db} would overwrite {db}"),
    (("database.formats", "export-csv", "{tmp}/no/../db.sqlite-wal", "--storage", "{db}"), "would overwrite {db}-wal"),
])
def test_an_export_over_its_database_is_refused_and_the_database_is_untouched(tmp_path, argv, says) -> None:
    """The observed failures: each exited 0 and replaced the accuracy database with a CSV or a profile."""
    db, link = tmp_path / "db.sqlite", tmp_path / "link.csv"
    shutil.copyfile(SHIPPED, db)
    link.symlink_to(db)
    before = _sha(db)
    fill = {"{db}": str(db), "{link}": str(link), "{tmp}": str(tmp_path)}
    argv = tuple(_fill(a, fill) for a in argv)
    done = _run(*argv, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and _fill(says, fill) in done.stderr
    assert done.stderr.rstrip().endswith(", an input of this command")
    assert _sha(db) == before and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite", "link.csv"]


def _fill(text: str, fill: dict[str, str]) -> str:
    for key, value in fill.items():
        text = text.replace(key, value)
    return text


def test_the_files_of_a_storage_are_the_database_and_every_sibling(tmp_path) -> None:
    names = [p.name for p in Storage.parse(str(tmp_path / "acc.sqlite")).files]
    assert names == ["acc.sqlite", "acc.sqlite-wal", "acc.sqlite-shm", "acc.sqlite-journal", "acc.queue.sqlite",
                     "acc.queue.sqlite-wal", "acc.queue.sqlite-shm", "acc.queue.sqlite-journal", "acc.studies.journal"]
    assert {p.parent for p in Storage.parse(str(tmp_path / "acc.sqlite")).files} == {tmp_path}
    assert Storage.parse("postgresql://u@host/db").files == ()
    assert Storage.parse("sqlite:///:memory:").files == ()


def test_check_output_resolves_symlinks_dotdot_and_hard_links(tmp_path) -> None:
    db = tmp_path / "db.sqlite"
    db.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sym").symlink_to(db)
    os.link(db, tmp_path / "hard")
    inputs = Storage.parse(str(db)).files
    for out in (db, tmp_path / "sym", tmp_path / "sub" / ".." / "db.sqlite", tmp_path / "hard",
                tmp_path / "db.studies.journal", tmp_path / "db.queue.sqlite-wal"):
        with pytest.raises(CoInferError, match=r"^export .* would overwrite .*, an input of this command$"):
            check_output(out, "export", inputs)
    assert check_output(tmp_path / "sub" / "out.csv", "export", inputs) == tmp_path / "sub" / "out.csv"
    assert check_output(tmp_path / "sub" / ".." / "x.csv", "export", (None, "")) == tmp_path / "x.csv"


def test_write_atomic_replaces_whole_and_keeps_a_symlink_and_the_mode(tmp_path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    (tmp_path / "link").symlink_to(target)
    assert write_atomic(tmp_path / "link", "new\n") == tmp_path / "link"
    assert target.read_text() == "new\n" and (tmp_path / "link").is_symlink()
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    write_atomic(tmp_path / "b.bin", lambda f: f.write(b"\x00\x01"))
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "link", "out.csv"]


def _boom(_f) -> None:
    _f.write(b"half a file")
    raise OSError(28, "No space left on device")


def _interrupt(_f) -> None:
    _f.write(b"half a file")
    raise KeyboardInterrupt


@pytest.mark.parametrize("data, error, says", [
    (_boom, CoInferError, r"^cannot write export .*out\.csv: No space left on device$"),
    (_interrupt, KeyboardInterrupt, None),
    ("whole new text", CoInferError, r"^cannot write export .*out\.csv: Read-only file system$"),  # os.replace fails
])
def test_an_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, data, error, says) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    if isinstance(data, str):
        def refuse(*_args):
            raise OSError(30, "Read-only file system")
        monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(error, match=says):
        write_atomic(target, data, "export")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_an_export_interrupted_midway_keeps_the_old_export(tmp_path, monkeypatch) -> None:
    """database.formats' writers go through write_atomic: a failed os.replace leaves the previous export."""
    from database.formats import write_csv
    out = tmp_path / "t.csv"
    write_csv({(0, 1, 1): 0.5}, out)
    assert out.read_bytes() == b"p,c,b,top1\r\n0,1,1,0.500000\r\n"

    def refuse(*_args):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(CoInferError, match=r"^cannot write export .*t\.csv: Input/output error$"):
        write_csv({(0, 1, 1): 0.25, (1, 2, 3): 0.75}, out)
    assert out.read_bytes() == b"p,c,b,top1\r\n0,1,1,0.500000\r\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_named_inputs_are_read_bounded_one_line_each(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CoInferError, match=r"^--token-file .*fifo is not a regular file$"):
        resolve_token(None, str(fifo))
    big = tmp_path / "big"
    big.write_bytes(b"t" * (64 * 2**10 + 1))
    with pytest.raises(CoInferError, match=r"^--token-file .*big is 65537 bytes, over the limit of 65536$"):
        resolve_token(None, str(big))
    with pytest.raises(CoInferError, match=r"^app .*fifo\.yml is not a regular file$"):
        os.mkfifo(tmp_path / "fifo.yml")
        load_app(str(tmp_path / "fifo.yml"))
    (tmp_path / "big.yml").write_text("#" * (2**20 + 1))
    with pytest.raises(CoInferError, match=r"^app .*big\.yml is 1048577 bytes, over the limit of 1048576$"):
        load_app(str(tmp_path / "big.yml"))


@pytest.mark.parametrize("text", ["[" * 50_000 + "]" * 50_000, "".join(" " * i + "a:\n" for i in range(40)),
                                  "{a: " * 1000 + "1" + "}" * 1000])
def test_a_deep_yaml_is_one_line(tmp_path, text) -> None:
    (tmp_path / "deep.yml").write_text(text)
    with pytest.raises(CoInferError, match=r"^app .*deep\.yml nests deeper than 32 levels$"):
        load_app(str(tmp_path / "deep.yml"))
    with pytest.raises(CoInferError, match=r"^devices file .*deep\.yml nests deeper than 32 levels$"):
        load_devices(tmp_path / "deep.yml")


def test_a_csv_field_over_the_csv_limit_is_one_line(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("p,c,b,top1\n0,1,1,0.5\n0,1,2," + "9" * 200_000 + "\n")
    with pytest.raises(CoInferError, match=r"^.*t\.csv:3: not a CSV row \(field larger than field limit \(131072\)\)$"):
        read_csv(path)
    path.write_text("p,c,b,top1\n0,1,1,0.5\n")
    assert read_csv(path) == {Scheme(0, 1, 1): 0.5}


def test_every_output_flag_refuses_its_inputs(tmp_path) -> None:
    """models.train's checkpoint, reports.show's plot, a benchmark's PNG: the same rule, before any work."""
    from bench.zoo import parse_args as zoo_args
    from models.train import main as train
    from reports.show import main as show
    app, db = tmp_path / "app.yml", tmp_path / "db.sqlite"
    shutil.copyfile(REPO_ROOT / "apps" / "vgg16_digits.yml", app)
    shutil.copyfile(SHIPPED, db)
    before = (_sha(app), _sha(db))
    with pytest.raises(CoInferError, match=r"^checkpoint .*app\.yml would overwrite .*app\.yml, an input of"):
        train(["--app", str(app), "--out", str(tmp_path / "." / "app.yml")])
    with pytest.raises(CoInferError, match=r"^plot .*db\.sqlite-journal would overwrite .*-journal, an input"):
        show(["--plot", str(db) + "-journal", "--bandwidth", "1", "--storage", str(db)])
    with pytest.raises(CoInferError, match=r"^plot .*db\.queue\.sqlite would overwrite .*db\.queue\.sqlite, an input"):
        zoo_args(["--out", str(tmp_path / "db.queue.sqlite"), "--storage", f"sqlite:///{db}"])
    assert (_sha(app), _sha(db)) == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.yml", "db.sqlite"]
