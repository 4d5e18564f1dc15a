"""reports.build_status on a database with no build queue: what is stored of each app's space per protocol, and
the command a build would run next (the shipped database, and copies made partial or given an imported table)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3

from apps import REPO_ROOT
from reports.build_status import main

SHIPPED = REPO_ROOT / "database" / "coinfer.sqlite"
OWN = "ft-e1-lr0.01-bs64-m0.9-wd0.0005-linear"  # vgg16_digits' protocol


def test_the_shipped_database_has_no_queue_and_is_complete(capsys):
    before = SHIPPED.read_bytes()
    assert main(["--app", "vgg16_digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"app": "vgg16_digits", "protocol": OWN, "stored": 4224, "space": 4224, "own": True, "next": None,
         "queue": None, "complete": True}]
    assert main([]) == 0  # every app
    text = capsys.readouterr().out
    assert text.startswith("no build queue at ") and "vgg16_digits / " + OWN + ": 4224/4224 schemes stored" in text
    assert "resnet18_digits / " + OWN + ": 11/1984 schemes stored (0.6 %)" in text
    assert "  next: python -m database.evaluate --app resnet18_digits --schemes all   (builds the 1973 " in text
    assert SHIPPED.read_bytes() == before and not SHIPPED.with_suffix(".queue.sqlite").exists()


def test_a_partial_copy_names_the_build_that_finishes_it(tmp_path, capsys):
    db = tmp_path / "partial.sqlite"
    shutil.copy(SHIPPED, db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM accuracy WHERE app = 'vgg16_digits' AND p = 0")  # 8 channels x 8 bits
        conn.execute("INSERT INTO accuracy (app, protocol, p, c, b, seed, top1) "
                     "VALUES ('vgg16_digits', 'imported', 0, 1, 1, 0, 0.5)")
    assert main(["--app", "vgg16_digits", "--storage", str(db), "--json"]) == 0
    own, imported = json.loads(capsys.readouterr().out)
    assert (own["stored"], own["complete"]) == (4160, False)
    assert own["next"] == f"python -m database.evaluate --app vgg16_digits --schemes all --storage sqlite:///{db}"
    assert (imported["protocol"], imported["stored"], imported["own"], imported["next"]) == ("imported", 1, False, None)
    assert main(["--app", "vgg16_digits", "--storage", str(db)]) == 0
    assert "vgg16_digits / imported: 1/4224 schemes stored (0.0 %)\n  an imported table" in capsys.readouterr().out
