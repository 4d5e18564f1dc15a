"""Accuracy/latency databases: idempotent writes, resume after kill -9, importers, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from apps import REPO_ROOT, load_app
from cli.errors import CoInferError
from compress.scheme import Scheme
from database.formats import main as formats_main
from database.formats import read_csv, read_optcoinfer, write_csv, write_optcoinfer
from database.paper import DEFAULT_JSON, import_paper_profile
from database.store import AccuracyRow, LatencyRow, Store
from tests.conftest import write_tiny_app


def row(p=0, c=1, b=1, top1=0.5, seed=0):
    return AccuracyRow("a", "proto", p, c, b, seed, top1)


def test_accuracy_writes_are_idempotent(tmp_path):
    store = Store(str(tmp_path / "db.sqlite"))
    assert store.put_accuracy([row(), row(c=2)]) == 2
    assert store.put_accuracy([row(top1=0.9), row(c=3)]) == 1  # first write wins
    assert store.accuracy_table("a", "proto") == {Scheme(0, 1, 1): 0.5, Scheme(0, 2, 1): 0.5, Scheme(0, 3, 1): 0.5}
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_protocols_count_distinct_schemes_not_seeds(tmp_path):
    """A scheme fine-tuned with two seeds is one scheme of the space (reports.show printed 4226/4224)."""
    store = Store(str(tmp_path / "db.sqlite"))
    store.put_accuracy([row(), row(seed=7), row(c=2), row(c=2, seed=7), row(c=3, seed=7)])
    store.put_accuracy([AccuracyRow("a", "other", 0, 1, 1, 0, 0.5), AccuracyRow("b", "proto", 0, 1, 1, 0, 0.5)])
    assert sorted(store.protocols("a")) == [("other", 1), ("proto", 3)]


def test_latency_upsert_and_devices(tmp_path):
    store = Store(str(tmp_path / "db.sqlite"))
    store.put_latency([LatencyRow("a", "d", 0, 4, "edge", 1.0)])
    store.put_latency([LatencyRow("a", "d", 0, 4, "edge", 2.0)])
    assert [r.median_s for r in store.latency_rows("a", "d")] == [2.0]
    store.put_device("d", {"cpu_model": "x"}, "n")
    assert store.device("d") == {"cpu_model": "x", "notes": "n"}
    assert store.profiled_devices("a") == {"d": {"edge"}}


def _count(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db, timeout=10) as conn:
        total = conn.execute("SELECT count(*) FROM accuracy").fetchone()[0]
        distinct = conn.execute("SELECT count(*) FROM (SELECT DISTINCT app, protocol, p, c, b, seed "
                                "FROM accuracy)").fetchone()[0]
    return total, distinct


def test_resume_after_kill_9_loses_and_duplicates_nothing(tiny_app_path, tmp_path):
    db = tmp_path / "acc.sqlite"
    cmd = [sys.executable, "-m", "database.evaluate", "--app", tiny_app_path, "--schemes", "point:1",
           "--storage", str(db), "--heartbeat", "0.5", "--grace", "2"]  # the killed worker's scheme: retried after 2 s
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if db.exists():
            try:
                if _count(db)[0] >= 3:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _count(db)[0]
    assert 3 <= done_before < 16, "the kill should land mid-run"
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{16 - done_before} new evaluations" in out.stdout
    assert _count(db) == (16, 16)  # point 1 of the tiny app: C=2 channels x 8 bits
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "0 new evaluations" in rerun.stdout and _count(db) == (16, 16)


def test_evaluate_none_stores_only_the_base_accuracy(tiny_app_path, tmp_path):
    from database.evaluate import main
    db = str(tmp_path / "base.sqlite")
    main(["--app", tiny_app_path, "--schemes", "none", "--storage", db])
    store = Store(db)
    assert store.accuracy_table("tiny_digits") == {} and store.base("tiny_digits") is not None


def test_optcoinfer_text_import_and_round_trip(tmp_path, capsys):
    src = tmp_path / "paper.txt"
    src.write_text("0+64-8*0.151\n1+5-7*0.2\n# comment\n\n12+512-1*0.9\n")
    table = read_optcoinfer(src)
    assert table == {Scheme(0, 64, 8): pytest.approx(0.849), Scheme(1, 5, 7): pytest.approx(0.8),
                     Scheme(12, 512, 1): pytest.approx(0.1)}
    db = str(tmp_path / "db.sqlite")
    formats_main(["import-optcoinfer", str(src), "--app", "vgg16_cars", "--base-error", "0.151", "--storage", db])
    store = Store(db)
    assert store.accuracy_table("vgg16_cars", "optcoinfer-paper") == pytest.approx(table)
    assert store.base("vgg16_cars", "optcoinfer-paper") == pytest.approx(0.849)
    write_optcoinfer(table, tmp_path / "out.txt")
    assert read_optcoinfer(tmp_path / "out.txt") == pytest.approx(table)
    write_csv(table, tmp_path / "out.csv")
    assert read_csv(tmp_path / "out.csv") == pytest.approx(table)


def test_formats_json_reports_what_was_imported_and_exported(tmp_path, capsys):
    """database.formats --json: one object per run whose counts are the rows stored and written."""
    src = tmp_path / "t.csv"
    src.write_text("p,c,b,top1\n0,64,8,0.85\n1,5,7,0.8\n12,512,1,0.1\n")
    db = str(tmp_path / "db.sqlite")
    args = ["--app", "vgg16_cars", "--protocol", "mine", "--seed", "3", "--storage", db, "--json"]
    assert formats_main(["import-csv", str(src), "--base-error", "0.25", *args]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done == {"action": "import-csv", "app": "vgg16_cars", "protocol": "mine", "seed": 3, "path": str(src),
                    "schemes": 3, "new": 3, "base_top1": 0.75, "measurements": 3, "new_measurements": 3,
                    "repeated": 0}
    assert len(Store(db).accuracy_table("vgg16_cars", "mine", 3)) == 3 and Store(db).base("vgg16_cars", "mine") == 0.75
    assert formats_main(["import-csv", str(src), *args]) == 0  # idempotent: nothing new
    assert json.loads(capsys.readouterr().out)["new"] == 0
    out = tmp_path / "out.txt"
    assert formats_main(["export-optcoinfer", str(out), *args]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done == {"action": "export-optcoinfer", "app": "vgg16_cars", "protocol": "mine", "seed": 3,
                    "path": str(out), "schemes": 3}
    assert read_optcoinfer(out) == pytest.approx({Scheme(0, 64, 8): 0.85, Scheme(1, 5, 7): 0.8,
                                                  Scheme(12, 512, 1): 0.1})
    assert formats_main(["export-csv", str(tmp_path / "out.csv"), *args[:-1]]) == 0  # the text line, as before
    assert capsys.readouterr().out == f"exported 3 schemes of vgg16_cars / mine to {tmp_path / 'out.csv'}\n"


@pytest.mark.parametrize("text,match", [
    ("0+64-8*0.151\n1+5*0.2\n", "paper.txt:2"),
    ("0+64-8*1.5\n", "outside"),
])
def test_optcoinfer_bad_lines_name_the_line_and_write_nothing(tmp_path, text, match):
    src = tmp_path / "paper.txt"
    src.write_text(text)
    db = str(tmp_path / "db.sqlite")
    with pytest.raises(CoInferError, match=match):
        formats_main(["import-optcoinfer", str(src), "--app", "vgg16_cars", "--storage", db])
    assert Store(db).accuracy_table("vgg16_cars") == {}


def test_import_rejects_schemes_outside_the_space(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("0+64-8*0.1\n0+65-8*0.1\n")
    db = str(tmp_path / "db.sqlite")
    with pytest.raises(CoInferError, match="0,65,8"):
        formats_main(["import-optcoinfer", str(src), "--app", "vgg16_cars", "--storage", db])
    assert Store(db).accuracy_table("vgg16_cars") == {}


def test_paper_profile_import(tmp_path):
    store = Store(str(tmp_path / "db.sqlite"))
    assert import_paper_profile(store, DEFAULT_JSON) == 28
    rows = {(r.device, r.side, r.point): r.median_s for r in store.latency_rows("vgg16_cars")}
    assert rows[("pi-paper", "edge", 1)] == pytest.approx(0.51)
    assert rows[("gpu-paper", "cloud", 1)] == pytest.approx(0.0025)
    assert rows[("pi-paper", "edge", 13)] == pytest.approx(3.2571)
    assert store.device("pi-paper")["formula"] == "optcoinfer-paper"


def test_unknown_and_malformed_apps(tmp_path):
    with pytest.raises(CoInferError, match="unknown app 'nope'"):
        load_app("nope")
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(CoInferError, match="malformed YAML"):
        load_app(str(bad))
    missing = write_tiny_app(tmp_path, "nodevices")
    text = missing.read_text().replace("devices:", "devicez:")
    missing.write_text(text)
    with pytest.raises(CoInferError, match="missing key 'devices'"):
        load_app(str(missing))


def test_corrupt_database_file(tmp_path):
    db = tmp_path / "corrupt.sqlite"
    db.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(CoInferError, match="corrupt"):
        Store(str(db))


def test_locked_database_is_a_clear_error_and_writes_nothing(tmp_path):
    db = tmp_path / "db.sqlite"
    Store(str(db)).put_accuracy([row()])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CoInferError, match="locked"):
            Store(str(db), busy_timeout_s=0.2).put_accuracy([row(c=2)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert Store(str(db)).accuracy_table("a") == {Scheme(0, 1, 1): 0.5}


@pytest.mark.parametrize("args,match", [
    (["--app", "nope"], "unknown app"),
    (["--schemes", "0,9,1"], "channels 9 outside 1..8"),
    (["--schemes", "0,1,9"], "bits 9 outside"),
    (["--schemes", "point:13"], "partition point 13"),
    (["--schemes", "1,2"], "bad scheme"),
])
def test_evaluate_cli_bad_input_exit_2(tmp_path, args, match):
    out = subprocess.run([sys.executable, "-m", "database.evaluate", *args, "--storage", str(tmp_path / "x.sqlite")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert out.returncode == 2
    assert match in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    if (tmp_path / "x.sqlite").exists():
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM accuracy")).scalar() == 0


def test_paper_profile_ships_inside_the_repository():
    """The repository stands alone: the paper profile and its source note live under it."""
    from apps import REPO_ROOT
    assert DEFAULT_JSON.is_file() and DEFAULT_JSON.resolve().is_relative_to(REPO_ROOT)
    assert "Opt-CoInfer" in (DEFAULT_JSON.parent / "README.md").read_text()


@pytest.mark.parametrize("name,text", [
    ("t.txt", "0+1-1*0.5\n1+2-3*0.25\n0+1-1*0.4\n"),
    ("t.csv", "p,c,b,top1\n0,1,1,0.5\n1,2,3,0.75\n0,1,1,0.6\n"),
])
def test_a_repeated_scheme_reads_as_the_mean_of_its_lines(tmp_path, name, text):
    """A scheme listed twice with two values (a search log) is two measurements: the table holds their mean."""
    from database.formats import read_table
    path = tmp_path / name
    path.write_text(text)
    assert read_table(path) == {Scheme(0, 1, 1): pytest.approx(0.55), Scheme(1, 2, 3): 0.75}
