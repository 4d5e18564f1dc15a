"""The databases on a real PostgreSQL server (the multi-machine option of --storage).

Runs when COINFER_TEST_POSTGRES holds an SQLAlchemy URL of an empty-able database (.ci/run
installs PostgreSQL, starts it and sets it); skipped otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from apps import REPO_ROOT
from compress.scheme import Scheme
from database.store import AccuracyRow, LatencyRow, Store, meta

URL = os.environ.get("COINFER_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL, reason="COINFER_TEST_POSTGRES not set (no PostgreSQL server)")


@pytest.fixture
def pg_url():
    engine = sa.create_engine(URL)
    meta.drop_all(engine)
    everything = sa.MetaData()  # Optuna's tables too (a build's queue lives beside the accuracy table)
    everything.reflect(engine)
    everything.drop_all(engine)
    engine.dispose()
    return URL


def test_idempotent_writes_and_upserts(pg_url):
    store = Store(pg_url)
    assert store.put_accuracy([AccuracyRow("a", "p", 0, 1, 1, 0, 0.5), AccuracyRow("a", "p", 0, 2, 1, 0, 0.6)]) == 2
    assert store.put_accuracy([AccuracyRow("a", "p", 0, 1, 1, 0, 0.9), AccuracyRow("a", "p", 0, 3, 1, 0, 0.7)]) == 1
    assert store.accuracy_table("a", "p") == {Scheme(0, 1, 1): 0.5, Scheme(0, 2, 1): 0.6, Scheme(0, 3, 1): 0.7}
    store.put_latency([LatencyRow("a", "d", 0, 4, "edge", 1.0)])
    store.put_latency([LatencyRow("a", "d", 0, 4, "edge", 2.0)])
    assert [r.median_s for r in store.latency_rows("a")] == [2.0]


def test_concurrent_evaluators_store_each_scheme_once(pg_url, tiny_app_path):
    """Two evaluate processes on overlapping scheme sets against one server: no duplicates."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "database.evaluate", "--app", tiny_app_path, "--storage", pg_url, "--schemes"]
    procs = [subprocess.Popen([*cmd, *schemes], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for schemes in (["0,1,1", "0,1,2", "0,2,3"], ["0,2,3", "0,1,2", "1,1,1"])]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-500:]
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT p, c, b, count(*) FROM accuracy GROUP BY p, c, b")).all()
    assert sorted((p, c, b) for p, c, b, _ in rows) == [(0, 1, 1), (0, 1, 2), (0, 2, 3), (1, 1, 1)]
    assert all(n == 1 for *_, n in rows)
    out = subprocess.run([sys.executable, "-m", "reports.show", "--app", tiny_app_path, "--storage", pg_url,
                          "--json"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["protocols"][0]["evaluated"] == 4


def test_replicates_on_postgresql(pg_url, tmp_path):
    """database.formats on a server: the replicate table is created by the first import, a stored row becomes a
    replicate, the same file again adds nothing, and the row holds the mean."""
    from database.formats import main as formats_main
    store = Store(pg_url)
    store.put_accuracy([AccuracyRow("vgg16_cars", "optcoinfer-paper", 2, 2, 8, 0, 0.80)])
    src = tmp_path / "log.txt"
    src.write_text("2+2-8*0.190\n2+2-8*0.187\n0+1-7*0.182\n")
    args = ["import-optcoinfer", str(src), "--app", "vgg16_cars", "--storage", pg_url]
    assert formats_main(args) == 0 and formats_main(args) == 0
    assert store.accuracy_table("vgg16_cars", "optcoinfer-paper") == {
        Scheme(2, 2, 8): pytest.approx((0.80 + 0.81 + 0.813) / 3), Scheme(0, 1, 7): pytest.approx(0.818)}
    stats = store.replicate_stats("vgg16_cars", "optcoinfer-paper")
    assert stats[Scheme(2, 2, 8)].n == 3 and stats[Scheme(0, 1, 7)].n == 1
