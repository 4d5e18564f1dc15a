"""Repeated measurements are replicates (database/replicates.py): Opt-CoInfer's two published files imported
as they are, every line stored once, the table's value the mean, the spread shown and turned into a tolerance,
and the paper's twelve queries answered from the union of both files."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sqlite3

import pytest

from apps import REPO_ROOT, load_app
from cli.errors import CoInferError
from compress.scheme import Scheme
from database.formats import main as formats_main
from database.paper import DEFAULT_JSON, import_paper_profile
from database.replicates import ReplicateStats, pooled_std, replicate_key, suggested_tolerance
from database.store import AccuracyRow, Store
from reports.show import main as show_main
from search.cli import run as query
from search.latency import LatencyModel
from search.problem import Problem
from search.query import AccuracyQuery, LatencyQuery
from tests.oracles import offline_oracle

REFERENCE = REPO_ROOT / "database" / "reference"
ACCURACY_LOG = REFERENCE / "optcoinfer_accuracy_search.txt"
LATENCY_LOG = REFERENCE / "optcoinfer_latency_search.txt"
PAPER = ["--app", "vgg16_cars", "--base-error", "0.151"]


def _import(path, db, *extra) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert formats_main(["import-optcoinfer", str(path), *PAPER, "--storage", db, "--json", *extra]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def paper_db(tmp_path_factory) -> str:
    """The paper's profile and both published files, imported as they are (latency log first)."""
    db = str(tmp_path_factory.mktemp("paper") / "paper.sqlite")
    import_paper_profile(Store(db), DEFAULT_JSON)
    first, second, again = _import(LATENCY_LOG, db), _import(ACCURACY_LOG, db), _import(LATENCY_LOG, db)
    # the latency log: 487 lines, 7 schemes twice (2+2-8 at 0.190 and 0.187, lines 33 and 34)
    assert (first["measurements"], first["schemes"], first["repeated"]) == (487, 480, 7)
    assert (first["new_measurements"], first["new"]) == (487, 480)
    # the accuracy log repeats the latency log's first 386 lines but lines 112 and 160: those two and its
    # 121 own lines are new (507 - 384 = 123 less the one own line written twice: 4+8-8*0.168)
    assert (second["measurements"], second["schemes"], second["repeated"]) == (507, 495, 12)
    assert (second["new_measurements"], second["new"]) == (122, 72)
    assert (again["new_measurements"], again["new"]) == (0, 0)  # the same file again adds nothing
    return db


def test_the_published_files_hold_repeated_schemes_with_differing_values():
    """The fixtures are the published bytes: the quirks the importer must take (CRLF, trailing blanks, repeats)."""
    raw = LATENCY_LOG.read_bytes()
    assert raw.count(b"\r\n") == 487 and b"2+2-8*0.190 \r\n2+2-8*0.187 \r\n" in raw
    text = ACCURACY_LOG.read_text()
    assert "\r" not in text and text.count("4+8-8*0.168 \n") == 2


def test_every_line_is_a_replicate_and_the_table_holds_the_mean(paper_db):
    store = Store(paper_db, create=False, readonly=True)
    table = store.accuracy_table("vgg16_cars", "optcoinfer-paper")
    stats = store.replicate_stats("vgg16_cars", "optcoinfer-paper")
    assert len(table) == 552 and sum(r.n for r in stats.values()) == 609
    assert sum(r.n > 1 for r in stats.values()) == 55 and max(r.n for r in stats.values()) == 3
    # within one file: lines 33 and 34 of the latency log
    assert stats[Scheme(2, 2, 8)].n == 2 and table[Scheme(2, 2, 8)] == pytest.approx(1 - (0.190 + 0.187) / 2)
    # across the files: 3+6-1*0.444 (accuracy log) and 3+6-1*0.512 (latency log)
    assert stats[Scheme(3, 6, 1)].std == pytest.approx(abs(0.512 - 0.444) / math.sqrt(2))
    assert table[Scheme(3, 6, 1)] == pytest.approx(1 - (0.444 + 0.512) / 2)
    # a line the accuracy log copied from the latency log is one measurement; one it wrote twice is two
    assert Scheme(0, 1, 7) not in stats or stats[Scheme(0, 1, 7)].n == 1
    assert stats[Scheme(4, 8, 8)].n == 2 and stats[Scheme(4, 8, 8)].std == 0
    # three lines of 1+20-1: 0.194 (accuracy log), and 0.188 twice in the latency log
    assert stats[Scheme(1, 20, 1)].n == 3 and table[Scheme(1, 20, 1)] == pytest.approx(1 - (0.194 + 0.188 * 2) / 3)


# The paper's twelve queries (ε 0.01 / 0.05, latency ratio 0.6 / 0.7, at 0.5 / 1 / 2 Mbps) on its profile, --offline,
# from the union of both files: (kind, bound, Mbps) -> (scheme, top-1 of the answer). Each answer's scheme was
# measured once in the two files. Checked against the independent offline oracle below.
TWELVE = {
    ("latency", 0.01, 0.5): ("1,4,6", 0.839), ("latency", 0.01, 1.0): ("1,4,6", 0.839),
    ("latency", 0.01, 2.0): ("0,4,5", 0.839), ("latency", 0.05, 0.5): ("0,1,5", 0.808),
    ("latency", 0.05, 1.0): ("0,1,5", 0.808), ("latency", 0.05, 2.0): ("0,1,5", 0.808),
    ("accuracy", 0.6, 0.5): ("3,20,5", 0.843), ("accuracy", 0.6, 1.0): ("1,10,5", 0.843),
    ("accuracy", 0.6, 2.0): ("0,2,7", 0.830), ("accuracy", 0.7, 0.5): ("3,25,8", 0.844),
    ("accuracy", 0.7, 1.0): ("1,10,5", 0.843), ("accuracy", 0.7, 2.0): ("0,4,5", 0.839),
}


def test_the_papers_twelve_queries_from_both_files(paper_db):
    store = Store(paper_db, create=False, readonly=True)
    stats = store.replicate_stats("vgg16_cars", "optcoinfer-paper")
    table = store.accuracy_table("vgg16_cars", "optcoinfer-paper")
    model = LatencyModel.from_store(store, load_app("vgg16_cars"), "pi-paper", "gpu-paper")
    common = ["--app", "vgg16_cars", "--protocol", "optcoinfer-paper", "--latency-profile", "pi-paper,gpu-paper",
              "--offline", "--storage", paper_db, "--study-storage", "memory", "--json"]
    for (kind, bound, mbps), (scheme, top1) in TWELVE.items():
        flag = "-accuracy_loss" if kind == "latency" else "-latency"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert query(kind, [flag, str(bound), "-bandwidth", str(mbps), *common]) == 0
        answer = json.loads(out.getvalue())
        got = Scheme(**answer["scheme"])
        assert (str(got), answer["accuracy"]) == (scheme, pytest.approx(top1)), (kind, bound, mbps)
        assert answer["new_evaluations"] == 0 and got in table and (got not in stats or stats[got].n == 1)
        q = LatencyQuery(bound, mbps) if kind == "latency" else AccuracyQuery(bound, mbps)
        assert offline_oracle(Problem(q, model, 0.849), table, answer["certificate"]["tolerance"]) == got


def test_a_stored_row_becomes_a_replicate_before_an_import_adds_to_it(tmp_path):
    """Nothing measured is dropped across imports: a scheme stored before (a build's row) keeps its value as a
    replicate, and the row becomes the mean."""
    db = str(tmp_path / "db.sqlite")
    store = Store(db)
    store.put_accuracy([AccuracyRow("vgg16_cars", "optcoinfer-paper", 1, 5, 7, 0, 0.80, host="build")])
    src = tmp_path / "log.txt"
    src.write_text("1+5-7*0.18\n1+6-7*0.10\n")
    assert _import(src, db)["new"] == 1  # 1,6,7; 1,5,7 was stored
    assert store.accuracy_table("vgg16_cars", "optcoinfer-paper") == {Scheme(1, 5, 7): pytest.approx(0.81),
                                                                     Scheme(1, 6, 7): pytest.approx(0.9)}
    assert store.replicate_stats("vgg16_cars", "optcoinfer-paper")[Scheme(1, 5, 7)].n == 2
    renamed = tmp_path / "copy.txt"  # the same lines under another name are the same measurements
    shutil.copy(src, renamed)
    assert _import(renamed, db)["new_measurements"] == 0
    src.write_text("1+5-7*0.18\n1+6-7*0.10\n1+5-7*0.22\n")  # the log grew: only its new line is added
    assert _import(src, db)["new_measurements"] == 1
    assert store.accuracy_table("vgg16_cars", "optcoinfer-paper")[Scheme(1, 5, 7)] == pytest.approx(0.80)
    assert store.replicate_stats("vgg16_cars", "optcoinfer-paper")[Scheme(1, 5, 7)].n == 3


def test_a_malformed_line_among_replicates_is_one_error_naming_it(tmp_path):
    db = str(tmp_path / "db.sqlite")
    src = tmp_path / "log.txt"
    src.write_text("2+2-8*0.190\n2+2-8*0.187\n2+2-8\n")
    with pytest.raises(CoInferError, match=r"log.txt:3: not an Opt-CoInfer line"):
        formats_main(["import-optcoinfer", str(src), *PAPER, "--storage", db])
    assert Store(db).accuracy_table("vgg16_cars") == {}


def test_pooled_spread_and_the_tolerance_it_suggests():
    a, b = ReplicateStats.of([0.80, 0.82]), ReplicateStats.of([0.5])
    assert a.std == pytest.approx(0.01 * math.sqrt(2)) and b.std is None and b.n == 1
    assert pooled_std([a, b]) == pytest.approx(0.01 * math.sqrt(2))
    # two single measurements differ with std sigma * sqrt(2); 2 of those: 2 * sqrt(2) * 0.01 * sqrt(2) = 0.04
    assert suggested_tolerance(pooled_std([a, b])) == pytest.approx(0.04)
    c = ReplicateStats.of([0.1, 0.2, 0.3])  # pooled over degrees of freedom: (1 * 0.0002 + 2 * 0.01) / 3
    assert pooled_std([a, c]) == pytest.approx(math.sqrt((0.0002 + 2 * 0.01) / 3))
    assert pooled_std([b]) is None
    assert replicate_key("1,2,3*0.5") == "1,2,3*0.5" and replicate_key("x" * 200).startswith("sha256:")


def test_show_gives_the_replicates_and_the_tolerance_they_suggest(tmp_path, capsys):
    db = str(tmp_path / "db.sqlite")
    src = tmp_path / "t.csv"
    src.write_text("p,c,b,top1\n1,5,7,0.80\n1,5,7,0.82\n1,6,7,0.5\n")
    assert formats_main(["import-csv", str(src), "--app", "vgg16_cars", "--storage", db]) == 0
    assert "3 measurements of 2 schemes (1 listed more than once)" in capsys.readouterr().out
    assert show_main(["--app", "vgg16_cars", "--storage", db]) == 0
    assert ("replicates: 1 schemes measured 2-2 times (3 measurements), the table holds their means; pooled std "
            "0.0141: replicate spread suggests --tolerance 0.0400") in capsys.readouterr().out
    assert show_main(["--app", "vgg16_cars", "--storage", db, "--json"]) == 0
    proto = json.loads(capsys.readouterr().out)[0]["protocols"][0]
    assert (proto["evaluated"], proto["measurements"], proto["repeated"]) == (2, 3, 1)
    assert proto["suggested_tolerance"] == pytest.approx(0.04)
    assert proto["replicates"] == [{"scheme": "1,5,7", "n": 2, "mean": pytest.approx(0.81),
                                    "std": pytest.approx(0.01 * math.sqrt(2))}]


def test_the_shipped_database_reads_without_replicates_and_takes_an_import(tmp_path, capsys):
    """An old database (the shipped one: no replicate table) shows as before, one measurement a scheme, and opens
    unchanged; an import into a copy creates the table and keeps the stored rows."""
    shipped = REPO_ROOT / "database" / "coinfer.sqlite"
    before = shipped.read_bytes()
    assert show_main(["--app", "vgg16_digits", "--json"]) == 0
    proto = json.loads(capsys.readouterr().out)[0]["protocols"][0]
    assert (proto["evaluated"], proto["measurements"], proto["repeated"], proto["replicates"]) == (4224, 4224, 0, [])
    assert shipped.read_bytes() == before
    copy = tmp_path / "coinfer.sqlite"
    shutil.copy(shipped, copy)
    stored = Store(str(copy)).accuracy_table("vgg16_digits", proto["protocol"])
    src = tmp_path / "more.csv"
    src.write_text(f"p,c,b,top1\n0,1,1,{stored[Scheme(0, 1, 1)] + 0.01}\n")
    assert formats_main(["import-csv", str(src), "--app", "vgg16_digits", "--storage", str(copy)]) == 0
    store = Store(str(copy), create=False, readonly=True)
    assert store.accuracy_table("vgg16_digits", proto["protocol"])[Scheme(0, 1, 1)] == pytest.approx(
        stored[Scheme(0, 1, 1)] + 0.005)
    assert store.replicate_stats("vgg16_digits", proto["protocol"])[Scheme(0, 1, 1)].n == 2
    with contextlib.closing(sqlite3.connect(copy)) as conn:  # no row added: the scheme's row holds the mean
        assert conn.execute("SELECT count(*) FROM accuracy WHERE app = 'vgg16_digits'").fetchone()[0] == 4224
        assert conn.execute("SELECT count(*) FROM accuracy_replicate").fetchone()[0] == 2
