"""Rule 6 of issue 21: every input file is validated whole before anything is written, inside one transaction;
a writer refuses a database that is not CoInfer's and leaves it byte-identical."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.errors import CoInferError
from database.formats import main as formats_main
from database.profile_io import import_profile, read_profile
from database.profile_io import main as profiles_main
from database.store import SCHEMA_VERSION, Store

# vgg16_cars: 13 points, channels 64 64 128 128 256 256 256 512 512 512 512 512 512; 3 input channels, 196 classes
CARS_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------ whose database
def _foreign(path: Path, sql: str) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(sql)
    conn.close()
    return path


FOREIGN = {
    "another program's table": ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); "
                                "INSERT INTO notes (body) VALUES ('mine');", "tables CoInfer does not make (notes)"),
    "ours and another's": ("CREATE TABLE accuracy (x); CREATE TABLE cookies (y);", "does not make (cookies)"),
    "a view": ("CREATE VIEW v AS SELECT 1;", "it has views (v)"),
    "only Optuna's": ("CREATE TABLE studies (study_id INTEGER); CREATE TABLE trials (trial_id INTEGER);",
                      "only Optuna's tables"),
    "our name, other columns": ("CREATE TABLE accuracy (x INTEGER);", "table accuracy lacks CoInfer's columns"),
    "a newer CoInfer": ("CREATE TABLE coinfer_schema (version INTEGER PRIMARY KEY, created TIMESTAMP); "
                        f"INSERT INTO coinfer_schema VALUES ({SCHEMA_VERSION + 1}, NULL);", "a newer CoInfer made it"),
}


@pytest.mark.parametrize("label", sorted(FOREIGN))
def test_a_foreign_database_is_refused_untouched_by_every_writer(tmp_path, label, tiny_app_path):
    sql, why = FOREIGN[label]
    why = re.escape(why)
    db = _foreign(tmp_path / "other.sqlite", sql)
    table = tmp_path / "t.csv"
    table.write_text("p,c,b,top1\n0,1,1,0.5\n")
    before = files(tmp_path)
    with pytest.raises(CoInferError, match=rf"^database sqlite:///.*other\.sqlite is not a CoInfer database: .*{why}"):
        Store(str(db))
    with pytest.raises(CoInferError, match=f"is not a CoInfer database: .*{why}"):
        Store(str(db), readonly=True)
    with pytest.raises(CoInferError, match=f"is not a CoInfer database: .*{why}"):
        formats_main(["import-csv", str(table), "--app", "vgg16_cars", "--storage", str(db)])
    from database.evaluate import main as evaluate_main
    with pytest.raises(CoInferError, match=f"is not a CoInfer database: .*{why}"):
        evaluate_main(["--app", tiny_app_path, "--schemes", "none", "--storage", str(db)])
    assert files(tmp_path) == before  # the file byte-identical, nothing beside it (no -wal, no queue)


def test_the_cli_refuses_a_foreign_database_in_one_line_exit_2(tmp_path):
    import subprocess
    import sys
    db = _foreign(tmp_path / "other.sqlite", FOREIGN["another program's table"][0])
    table = tmp_path / "t.csv"
    table.write_text("p,c,b,top1\n0,1,1,0.5\n")
    before = digest(db)
    done = subprocess.run([sys.executable, "-m", "database.formats", "import-csv", str(table), "--app", "vgg16_cars",
                           "--storage", str(db)], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "is not a CoInfer database" in done.stderr and digest(db) == before


def test_new_databases_are_made_and_marked_old_ones_open_unchanged(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path in (empty, tmp_path / "new.sqlite"):
        Store(str(path)).close()
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT version FROM coinfer_schema").fetchall() == [(SCHEMA_VERSION,)]
        conn.close()
        Store(str(path)).close()  # ours now: opens again
    shipped = Path(__file__).parents[1] / "database" / "coinfer.sqlite"  # made before the marker
    old = tmp_path / "old.sqlite"
    old.write_bytes(shipped.read_bytes())
    before = digest(old)
    store = Store(str(old))
    assert store.accuracy_table("vgg16_digits")
    store.close()
    assert digest(old) == before


# ------------------------------------------------------------------------------------ one transaction
def test_an_import_that_fails_midway_writes_nothing(tmp_path, monkeypatch):
    db = tmp_path / "db.sqlite"
    Store(str(db)).close()
    before = digest(db)
    file = tmp_path / "p.json"
    file.write_text(json.dumps(_profile([{"side": "edge", "point": 0, "channels": 4, "median_s": 0.001,
                                          "p90_s": None, "n": 3}])))
    doc = read_profile(file)

    def broken(self, rows):
        raise CoInferError("disk full (simulated)")
    monkeypatch.setattr(Store, "put_latency", broken)
    store = Store(str(db))
    with pytest.raises(CoInferError, match="simulated"):
        import_profile(store, doc)  # the device row and provenance were written before the failure
    store.close()
    assert digest(db) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM device").fetchone() == (0,)
        assert "profile_provenance" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_an_empty_table_is_refused(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("p,c,b,top1\n")
    with pytest.raises(CoInferError, match=r"t\.csv: no schemes in the table"):
        formats_main(["import-csv", str(table), "--app", "vgg16_cars", "--storage", str(tmp_path / "db.sqlite")])
    assert not (tmp_path / "db.sqlite").exists()  # validated before the database was opened
    table.write_text("p,c,b,top1\n0,1,99999999999999999999999,0.5\n")
    with pytest.raises(CoInferError, match=r"t\.csv:2: bad scheme 0,1,9999.*: b: must be less than or equal to 8"):
        formats_main(["import-csv", str(table), "--app", "vgg16_cars", "--storage", str(tmp_path / "db.sqlite")])


# ------------------------------------------------------------------------------------ profile files
def _profile(rows: list[dict], **fields) -> dict:
    return {"format": "coinfer-latency-profile/1", "app": "vgg16_cars", "device": "dev",
            "fingerprint": {"cpu_model": "x"}, "notes": "", "provenance": {}, "shapes": [], "rows": rows, **fields}


seconds = st.floats(min_value=0, max_value=10, allow_nan=False)


@st.composite
def profiles(draw) -> dict:
    """A valid vgg16_cars profile: split rows of either side, plus the ends."""
    keys = draw(st.sets(st.tuples(st.sampled_from(["edge", "cloud"]), st.integers(0, 12)), min_size=1, max_size=6))
    rows = [{"side": side, "point": p, "channels": draw(st.integers(1, CARS_WIDTHS[p])), "median_s": draw(seconds),
             "p90_s": draw(st.none() | seconds), "n": draw(st.integers(0, 100))} for side, p in sorted(keys)]
    if draw(st.booleans()):
        rows.append({"side": "edge", "point": 13, "channels": 196, "median_s": 0.5, "p90_s": None, "n": 1})
    if draw(st.booleans()):
        rows.append({"side": "cloud", "point": -1, "channels": 3, "median_s": 0.1, "p90_s": 0.2, "n": 1})
    return _profile(rows)


def _set(path: str, value):
    def apply(doc: dict) -> dict:
        doc = copy.deepcopy(doc)
        *head, last = path.split(".")
        target = doc
        for key in head:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value
        return doc
    return apply


def _dup(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    twin = dict(doc["rows"][0], median_s=doc["rows"][0]["median_s"] + 1.0)
    doc["rows"].append(twin)
    return doc


BREAKS = {  # one broken field -> what the one line says
    "an unknown app": (_set("app", "nope"), "unknown app 'nope'"),
    "point 999": (_set("rows.0.point", 999), "point 999 is not one of app vgg16_cars's"),
    "a huge point": (_set("rows.0.point", 10**30), "rows.0.point: must be less than or equal to 4096"),
    "a huge n": (_set("rows.0.n", 2**70), "rows.0.n: must be less than or equal to"),
    "channels over C_p": (_set("rows.0.channels", 513), "channels, got 513|point .* has 1..\\d+ channels"),
    "no rows": (_set("rows", []), "rows: list should have at least 1 item"),
    "a negative median": (_set("rows.0.median_s", -1.0), "rows.0.median_s: must be greater than or equal to 0"),
    "a NaN median": (_set("rows.0.median_s", float("nan")), "rows.0.median_s: must be a finite number"),
    "a string median": (_set("rows.0.median_s", "0.1"), "rows.0.median_s: must be a valid number"),
    "n a bool": (_set("rows.0.n", True), "rows.0.n: must be a valid integer"),
    "side middle": (_set("rows.0.side", "middle"), "rows.0.side: must be 'edge' or 'cloud'"),
    "an extra key": (_set("rows.0.extra", 1), "rows.0.extra: unknown key"),
    "shapes of 4": (_set("shapes", [[0, "conv1_1", 64, 224]]), "shapes.0"),
    "shapes of another model": (_set("shapes", [[0, "conv1_1", 8, 32, 32]]), "shapes are not app vgg16_cars's"),
    "a huge shape": (_set("shapes", [[0, "conv1_1", 10**40, 1, 1]]), "shapes.0.2: must be less than or equal"),
    "a bad time": (_set("provenance", {"edge": {"fingerprint": {}, "measured_at": "yesterday"}}),
                   "measured_at must be an ISO time"),
    "a device path": (_set("device", "../x"), "device: string should match pattern"),
    "fingerprint a list": (_set("fingerprint", [1]), "fingerprint: must be a valid dictionary"),
    "duplicate points that differ": (_dup, "rows 0 and \\d+ are both .* but differ"),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=profiles(), broken=st.sampled_from(sorted(BREAKS)))
def test_a_profile_with_one_broken_field_is_refused_and_the_database_unchanged(doc, broken):
    brk, why = BREAKS[broken]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = folder / "db.sqlite"
        good, bad = folder / "good.json", folder / "bad.json"
        good.write_text(json.dumps(doc))
        assert profiles_main(["import-profile", str(good), "--storage", str(db)]) == 0  # the valid one imports
        before = files(folder)
        bad.write_text(json.dumps(brk(doc)))
        before["bad.json"] = digest(bad)
        with pytest.raises(CoInferError, match=why) as info:
            profiles_main(["import-profile", str(bad), "--storage", str(db), "--replace"])
        assert "\n" not in str(info.value)
        assert files(folder) == before


def test_exact_repeats_are_kept_once_and_the_stored_rows_are_the_files(tmp_path):
    row = {"side": "edge", "point": 2, "channels": 7, "median_s": 0.003, "p90_s": 0.004, "n": 5}
    file = tmp_path / "p.json"
    file.write_text(json.dumps(_profile([row, dict(row)])))
    assert profiles_main(["import-profile", str(file), "--storage", str(tmp_path / "db.sqlite")]) == 0
    rows = Store(str(tmp_path / "db.sqlite")).latency_rows("vgg16_cars", "dev")
    assert [(r.side, r.point, r.channels, r.median_s, r.p90_s, r.n) for r in rows] == [("edge", 2, 7, 0.003, 0.004, 5)]
