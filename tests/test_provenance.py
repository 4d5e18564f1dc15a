"""Provenance per profile: each (app, device, side) keeps the fingerprint it was measured on, profiling one app
never changes another's, old databases read the device row, and a local profile of another machine is never
used silently (searches, select_model.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import write_tiny_app

from apps import REPO_ROOT, load_app
from database.documents import parse_profile
from database.profile import main as profile_main
from database.profile_io import export_profile, import_profile
from database.provenance import model_uses
from database.store import LatencyRow, Store, profile_provenance
from reports.show import summary

QUICK = ["--runs", "1", "--warmup", "0", "--passes", "1", "--idle-ms", "0", "--no-keep-warm", "--points", "12"]
SHIPPED = REPO_ROOT / "database" / "coinfer.sqlite"
OTHER = {"cpu_model": "Other CPU 9000", "logical_cpus": 96}  # a machine made to differ from the profiles'


def _app_b(tiny_app, tmp_path) -> Path:
    """A second app with the tiny app's model and checkpoint (and devices), under another name."""
    return write_tiny_app(tmp_path, name="tiny_b", checkpoint=str(tiny_app.checkpoint))


def _provenance_json(store: Store, app: str, device: str) -> str:
    return json.dumps(store.provenance(app, device))


def test_profiling_app_b_keeps_app_a_rows_and_provenance(tiny_app, tiny_app_path, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    assert profile_main(["--app", tiny_app_path, "--device", "tiny-edge", "--side", "edge", *QUICK,
                         "--storage", url]) == 0
    store = Store(url)
    rows_a, prov_a = store.latency_rows("tiny_digits", "tiny-edge"), _provenance_json(store, "tiny_digits", "tiny-edge")
    edge_a = json.loads(prov_a)["edge"]
    assert (edge_a["source"], edge_a["fingerprint"]["speed"], edge_a["fingerprint"]["emulation"]) == (
        "measured", 0.5, "dilate")  # the tiny app's devices.edge
    # app B on the same device, at another speed: the device row changes, app A's profile does not
    assert profile_main(["--app", str(_app_b(tiny_app, tmp_path)), "--device", "tiny-edge", "--side", "edge",
                         "--speed", "0.25", *QUICK, "--storage", url]) == 0
    assert store.device("tiny-edge")["speed"] == 0.25
    assert store.latency_rows("tiny_digits", "tiny-edge") == rows_a
    assert _provenance_json(store, "tiny_digits", "tiny-edge") == prov_a  # byte-identical
    edge_b = store.provenance("tiny_b", "tiny-edge")["edge"]
    assert (edge_b["source"], edge_b["fingerprint"]["speed"]) == ("measured", 0.25)


def test_a_profile_older_than_provenance_keeps_its_fingerprint(tiny_app, tiny_app_path, tmp_path) -> None:
    """A database written before provenance: app A's rows read the device row; profiling app B on that device
    rewrites the device row, and app A's profile still says the old machine (frozen before the rewrite)."""
    db = str(tmp_path / "old.sqlite")
    store = Store(db)
    store.put_latency([LatencyRow("tiny_digits", "tiny-edge", p, 4, "edge", 1e-3 * (p + 1)) for p in range(3)])
    store.put_device("tiny-edge", {"cpu_model": "Old CPU 1", "logical_cpus": 2, "cpu_quota": 0.5,
                                   "emulation": "dilate"}, "old")
    before = _provenance_json(store, "tiny_digits", "tiny-edge")
    fp = json.loads(before)["edge"]
    assert fp["source"] == "device" and fp["fingerprint"] == {"cpu_model": "Old CPU 1", "emulation": "dilate",
                                                              "logical_cpus": 2, "speed": 0.5}
    assert profile_main(["--app", str(_app_b(tiny_app, tmp_path)), "--device", "tiny-edge", "--side", "edge",
                         *QUICK, "--storage", f"sqlite:///{db}"]) == 0
    assert store.device("tiny-edge")["cpu_model"] != "Old CPU 1"  # this machine's (the container's CPU)
    assert _provenance_json(store, "tiny_digits", "tiny-edge") == before
    assert summary(store, str(tiny_app_path))["devices"]["tiny-edge"]["profiles"]["edge"]["machine"] == (
        "Old CPU 1, 2 CPUs")


def test_the_shipped_database_reads_its_device_rows_unchanged() -> None:
    digest = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    store = Store(None, readonly=True)
    prov = store.provenance("vgg16_digits", "cpu-edge")
    assert sorted(prov) == ["cloud", "edge"]
    assert (prov["edge"]["source"], prov["edge"]["measured_at"]) == ("device", "2026-11-23T19:15:48")
    fp = prov["edge"]["fingerprint"]
    assert (fp["cpu_model"], fp["logical_cpus"], fp["speed"], fp["emulation"]) == ("AMD EPYC", 2, 0.125, "dilate")
    assert store.provenance("vgg16_cars", "pi-paper")["edge"]["fingerprint"]["formula"] == "optcoinfer-paper"
    shown = summary(store, "vgg16_digits")["devices"]["cpu-edge"]
    assert shown["profiles"]["edge"]["machine"] == "AMD EPYC, 2 CPUs" and shown["cpu_model"] == "AMD EPYC"
    assert not store._has(profile_provenance)  # a read-only open creates nothing
    writable = Store(None, create=False)  # as runtime.advisor opens it: nothing is written, nothing created
    assert writable.provenance("vgg16_digits", "cpu-edge") == prov and not writable._has(profile_provenance)
    writable.close()
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == digest


def test_local_and_imported_profiles(tmp_path) -> None:
    """A slowed device or the app's own is compared with this machine; an imported one or the paper's is not."""
    shutil.copy(SHIPPED, tmp_path / "c.sqlite")
    store = Store(str(tmp_path / "c.sqlite"))
    app = load_app("vgg16_digits")
    amd = {"cpu_model": "AMD EPYC", "logical_cpus": 2}
    assert [u.foreign for u in model_uses(store, app, ("cpu-edge", "cpu-cloud"), here=amd)] == [False, False]
    uses = model_uses(store, app, ("cpu-edge", "cpu-cloud"), here=OTHER)
    assert [(u.device, u.local, u.foreign) for u in uses] == [("cpu-edge", True, True), ("cpu-cloud", True, True)]
    paper = model_uses(store, load_app("vgg16_cars"), ("pi-paper", "gpu-paper"), here=OTHER)
    assert [(u.local, u.foreign) for u in paper] == [(False, False), (False, False)]
    # cpu-edge exported and imported under its own name elsewhere: another machine's by nature
    data = export_profile(store, "vgg16_digits", "cpu-edge")
    assert data["provenance"]["edge"]["measured_at"] == "2026-11-23T19:15:48"
    server = Store(str(tmp_path / "server.sqlite"))
    import_profile(server, parse_profile(json.loads(json.dumps(data)), "cpu-edge.json"))
    imported = server.provenance("vgg16_digits", "cpu-edge")["edge"]
    assert (imported["source"], imported["measured_at"]) == ("imported", "2026-11-23T19:15:48")
    assert imported["fingerprint"]["cpu_model"] == "AMD EPYC"
    use = model_uses(server, app, ("cpu-edge", "cpu-edge"), here=OTHER)[0]
    assert (use.local, use.foreign) == (False, False)


@pytest.fixture
def test_cpu_db(tiny_db, tmp_path) -> str:
    """tiny_db with its devices profiled on a CPU named "test" (logical CPUs unknown), as a database older than
    provenance says it (the device rows rewritten in SQL: `Store.put_device` would keep the old fingerprint as the
    profiles' provenance)."""
    db = str(tmp_path / "test_cpu.sqlite")
    shutil.copy(tiny_db, db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE device SET fingerprint = ?", (json.dumps({"cpu_model": "test"}),))
    return db


def _search(tiny_app_path, tiny_db, capsys, *extra) -> tuple[str, str]:
    from search.cli import run
    assert run("latency", ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage",
                           tiny_db, "--offline", "--study-storage", "memory", *extra]) == 0
    out = capsys.readouterr()
    return out.out, out.err


def test_a_search_on_foreign_profiles_warns_and_says_so(tiny_app_path, test_cpu_db, capsys, monkeypatch) -> None:
    monkeypatch.setattr("devices.fingerprint.this_machine", lambda: dict(OTHER))
    out, err = _search(tiny_app_path, test_cpu_db, capsys, "--json")
    # the commands name the app as the search was given it (a YAML path) and its --storage: they work as printed
    flags = f"--app {tiny_app_path} --storage sqlite:///{Path(test_cpu_db).resolve()}"
    assert err.splitlines() == [
        "warning: the edge latency profile of tiny-edge for tiny_digits was measured on test, ? CPUs, not on this "
        "machine (Other CPU 9000, 96 CPUs): its latencies describe the other machine; measure it here with "
        f"`python -m database.profile {flags} --device tiny-edge --replace`, or beside it with "
        f"`python -m database.profile {flags} --device tiny-edge-here --side edge` "
        "(then name tiny-edge-here in --latency-profile EDGE,CLOUD)",
        "warning: the cloud latency profile of tiny-cloud for tiny_digits was measured on test, ? CPUs, not on this "
        "machine (Other CPU 9000, 96 CPUs): its latencies describe the other machine; measure it here with "
        f"`python -m database.profile {flags} --device tiny-cloud --replace`, or beside it with "
        f"`python -m database.profile {flags} --device tiny-cloud-here --side cloud` "
        "(then name tiny-cloud-here in --latency-profile EDGE,CLOUD)"]
    profiles = json.loads(out)["profiles"]
    assert [(p["device"], p["side"], p["foreign"], p["local"]) for p in profiles] == [
        ("tiny-edge", "edge", True, True), ("tiny-cloud", "cloud", True, True)]
    assert profiles[0]["fingerprint"] == {"cpu_model": "test"} and profiles[0]["here"] == OTHER
    _, text_err = _search(tiny_app_path, test_cpu_db, capsys)
    assert len(text_err.splitlines()) == 2


def test_a_search_on_this_machines_profiles_is_quiet(tiny_app_path, test_cpu_db, capsys, monkeypatch) -> None:
    monkeypatch.setattr("devices.fingerprint.this_machine", lambda: {"cpu_model": "test", "logical_cpus": None})
    out, err = _search(tiny_app_path, test_cpu_db, capsys)
    assert err == ""
    line = [x for x in out.splitlines() if x.startswith("  profiles")]
    assert len(line) == 1 and "tiny-edge (edge): test, ? CPUs" in line[0] and "not this machine" not in line[0]
    out, err = _search(tiny_app_path, test_cpu_db, capsys, "--json")
    assert err == "" and [p["foreign"] for p in json.loads(out)["profiles"]] == [False, False]
    assert "here" not in json.loads(out)["profiles"][0]


def test_select_model_warns_on_foreign_profiles(tiny_app_path, test_cpu_db, capsys, monkeypatch) -> None:
    import select_model
    monkeypatch.setattr("devices.fingerprint.this_machine", lambda: dict(OTHER))
    assert select_model.main(["--apps", tiny_app_path, "--bandwidth", "1", "--storage", test_cpu_db, "--select-only",
                              "--json"]) == 0
    out = capsys.readouterr()
    assert len(out.err.splitlines()) == 2 and all(x.startswith("warning: the ") for x in out.err.splitlines())
    profiles = json.loads(out.out)["profiles"]["tiny_digits"]
    assert [(p["device"], p["foreign"]) for p in profiles] == [("tiny-edge", True), ("tiny-cloud", True)]
    monkeypatch.setattr("devices.fingerprint.this_machine", lambda: {"cpu_model": "test", "logical_cpus": None})
    assert select_model.main(["--apps", tiny_app_path, "--bandwidth", "1", "--storage", test_cpu_db, "--select-only",
                              "--json"]) == 0
    assert capsys.readouterr().err == ""
