"""A new device end to end, and a latency profile carried between databases as a file."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cli.errors import CoInferError
from database.profile import main as profile_main
from database.profile_io import export_profile, import_profile, read_profile
from database.profile_io import main as profiles_main
from database.store import LatencyRow, Store


def test_new_device_at_quarter_speed_end_to_end(tiny_app, tiny_app_path, tiny_db, tmp_path, capsys):
    """Define (flags), profile the edge at 0.25 speed, refuse a silent re-profile, export, import into
    the server's database, then search and advise on the pair by name."""
    edge_db, server_db = str(tmp_path / "edge.sqlite"), str(tmp_path / "server.sqlite")
    with sqlite3.connect(tiny_db) as src, sqlite3.connect(server_db) as dst:
        src.backup(dst)  # a copy of the server's database (WAL: a plain file copy could miss rows)
    quick = ["--app", tiny_app_path, "--runs", "2", "--warmup", "0", "--passes", "1", "--idle-ms", "0",
             "--no-keep-warm", "--storage", edge_db]
    assert profile_main(["--device", "quarter", "--side", "edge", "--speed", "0.25", *quick]) == 0
    out = capsys.readouterr().out
    assert "dispersion: p90/median" in out and "/ 0.25" in out
    info = Store(edge_db).device("quarter")
    assert (info["speed"], info["emulation"]) == (0.25, "dilate") and "median_tail_ratio" in info["noise"]
    with pytest.raises(CoInferError, match="already has a edge profile .*--replace"):
        profile_main(["--device", "quarter", "--side", "edge", "--speed", "0.25", *quick])
    assert profile_main(["--device", "quarter", "--side", "edge", "--speed", "0.25", "--replace",
                         "--points", "12", *quick]) == 0  # a partial re-profile replaces every old row
    assert {r.point for r in Store(edge_db).latency_rows(tiny_app.name, "quarter")} == {-1, 12, 13}
    assert profile_main(["--device", "quarter", "--side", "edge", "--speed", "0.25", "--replace", *quick]) == 0
    capsys.readouterr()
    file = tmp_path / "quarter.json"
    assert profiles_main(["export-profile", "--device", "quarter", "--app", tiny_app_path, str(file),
                          "--storage", edge_db]) == 0
    assert profiles_main(["import-profile", str(file), "--app", tiny_app_path, "--storage", server_db]) == 0
    capsys.readouterr()
    from search.cli import run
    assert run("latency", ["-accuracy_loss", "0.02", "-bandwidth", "0.5", "--app", tiny_app_path, "--storage",
                           server_db, "--latency-profile", "quarter,tiny-cloud", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["devices"] == ["quarter", "tiny-cloud"]
    from runtime.advisor import SchemeAdvisor
    advisor = SchemeAdvisor(tiny_app, server_db, edge="quarter", cloud="tiny-cloud")
    assert advisor.model.devices == ("quarter", "tiny-cloud")
    assert advisor.best(0.5, 0.02).to_json() == answer["scheme"]


def _rows(device, side, scale):
    return [LatencyRow("vgg16_cars", device, p, 4, side, scale * (p + 1), scale * (p + 1.5), 3) for p in range(3)]


def test_profile_export_import_round_trip_and_merge(tmp_path):
    edge_machine, server = Store(str(tmp_path / "a.sqlite")), Store(str(tmp_path / "b.sqlite"))
    edge_machine.put_device("dev", {"cpu_model": "edge cpu"}, "profiled on the edge")
    edge_machine.put_latency(_rows("dev", "edge", 1e-3))
    server.put_device("dev", {"cpu_model": "server cpu"})
    server.put_latency(_rows("dev", "cloud", 1e-4))
    path = tmp_path / "dev.json"
    exported = export_profile(edge_machine, "vgg16_cars", "dev")
    path.write_text(json.dumps(exported))
    data = read_profile(path)
    assert import_profile(server, data) == 3
    assert sorted(server.latency_rows("vgg16_cars", "dev"), key=str) == sorted(
        _rows("dev", "edge", 1e-3) + _rows("dev", "cloud", 1e-4), key=str)  # merged: both sides
    info = server.device("dev")
    assert info["cpu_model"] == "server cpu" and info["other_fingerprints"] == [{"cpu_model": "edge cpu"}]
    assert import_profile(server, data) == 3 and server.device("dev") == info  # the same file again: no change
    exported["rows"][0]["median_s"] *= 2
    path.write_text(json.dumps(exported))
    data = read_profile(path)
    with pytest.raises(CoInferError, match="different edge profile .*--replace"):
        import_profile(server, data)
    import_profile(server, data, replace=True)
    stored = {(r.side, r.point): r.median_s for r in server.latency_rows("vgg16_cars", "dev")}
    assert stored[("edge", 0)] == pytest.approx(2e-3) and stored[("cloud", 0)] == pytest.approx(1e-4)
    fresh = Store(str(tmp_path / "c.sqlite"))
    import_profile(fresh, data)
    assert fresh.device("dev") == {"cpu_model": "edge cpu", "notes": "profiled on the edge"}


def test_bad_profile_files_are_one_line_errors(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(CoInferError, match="not a latency profile"):
        read_profile(path)
    with pytest.raises(CoInferError, match="no latency profile of device 'nope'"):
        export_profile(Store(str(tmp_path / "d.sqlite")), "app", "nope")


def test_devices_file_defines_side_and_speed(tmp_path):
    from devices.spec import DEFAULT_DEVICES, Device, load_devices
    path = tmp_path / "devices.yml"
    path.write_text("devices:\n  pi-like: {side: edge, speed: 0.25}\n  server: {side: cloud}\n"
                    "  capped: {side: edge, speed: 0.5, emulation: quota}\n")
    assert load_devices(path) == {"pi-like": Device(name="pi-like", side="edge", speed=0.25, emulation="dilate"),
                                  "server": Device(name="server", side="cloud"),
                                  "capped": Device(name="capped", side="edge", speed=0.5, emulation="quota")}
    assert load_devices(DEFAULT_DEVICES)["quarter-edge"].speed == 0.25  # the shipped example
    path.write_text("devices:\n  fast: {side: edge, speed: 2}\n")
    with pytest.raises(CoInferError, match="device fast: speed: must be less than or equal to 1, got 2"):
        load_devices(path)
    path.write_text("devices:\n  old: {side: edge, cpu_quota: 0.5}\n")
    with pytest.raises(CoInferError, match="device old takes side, speed, emulation and notes only"):
        load_devices(path)
    with pytest.raises(CoInferError, match="devices file not found"):
        load_devices(tmp_path / "none.yml")


def test_an_old_device_row_reads_its_cpu_quota_as_speed(tmp_path):
    """Rows written before the one device vocabulary kept the speed as cpu_quota (with emulation dilate from
    the profiler; a cgroup quota without it); they read as speed, read-only opens included."""
    path = tmp_path / "old.sqlite"
    Store(f"sqlite:///{path}").put_device("placeholder", {})
    old = {"dilated": {"cpu_model": "x", "cpu_quota": 0.125, "emulation": "dilate"},
           "capped": {"cpu_model": "x", "cpu_quota": 0.5},
           "plain": {"cpu_model": "x", "cpu_quota": None}}
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO device (name, fingerprint, notes) VALUES (?, ?, '')",
                         [(name, json.dumps(info)) for name, info in old.items()])
    store = Store(f"sqlite:///{path}", readonly=True)
    assert store.device("dilated") == {"cpu_model": "x", "speed": 0.125, "emulation": "dilate", "notes": ""}
    assert store.device("capped") == {"cpu_model": "x", "speed": 0.5, "emulation": "quota", "notes": ""}
    assert store.device("plain") == {"cpu_model": "x", "speed": None, "notes": ""}


def test_a_profiled_device_row_stores_speed_and_emulation(tmp_path):
    from apps import Device
    store = Store(str(tmp_path / "d.sqlite"))
    store.put_device("pi", {"cpu_model": "x", "cgroup_quota": None}, "n", Device(name="pi", speed=0.25))
    assert store.device("pi") == {"cpu_model": "x", "cgroup_quota": None, "speed": 0.25, "emulation": "dilate",
                                  "notes": "n"}
    with sqlite3.connect(tmp_path / "d.sqlite") as conn:  # the row itself says speed, never cpu_quota
        assert "cpu_quota" not in conn.execute("SELECT fingerprint FROM device WHERE name = 'pi'").fetchone()[0]


def test_profile_json_is_what_was_stored(tiny_app, tiny_app_path, tmp_path, capsys):
    """database.profile --json: one object on stdout whose rows are the stored rows, and the device as stored."""
    db = str(tmp_path / "edge.sqlite")
    assert profile_main(["--device", "half", "--side", "edge", "--speed", "0.5", "--points", "12", "--app",
                         tiny_app_path, "--runs", "2", "--warmup", "0", "--passes", "1", "--idle-ms", "0",
                         "--no-keep-warm", "--storage", db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    stored = Store(db).latency_rows(tiny_app.name, "half")
    assert data["app"] == tiny_app.name and data["device"] == "half" and data["measurements"] == len(stored)
    assert (data["speed"], data["emulation"]) == (0.5, "dilate") and "/ 0.5" in data["note"]
    assert sorted((r["side"], r["point"], r["channels"], r["median_s"], r["p90_s"], r["n"]) for r in data["rows"]) \
        == sorted((r.side, r.point, r.channels, r.median_s, r.p90_s, r.n) for r in stored)
    assert {r["point"] for r in data["rows"]} == {-1, 12, 13}  # as the partial re-profile above
    assert data["noise"] == Store(db).device("half")["noise"]


def test_profile_io_json_counts_the_rows_written_and_imported(tmp_path, capsys):
    """database.profile_io --json: one object per run; its row count is the file's and the importing store's."""
    src, dst = Store(str(tmp_path / "a.sqlite")), Store(str(tmp_path / "b.sqlite"))
    src.put_device("dev", {"cpu_model": "edge cpu"})
    src.put_latency([LatencyRow("vgg16_cars", "dev", p, 4, "edge", 1e-3 * (p + 1), 2e-3 * (p + 1), 3)
                     for p in range(3)])
    file = tmp_path / "dev.json"
    assert profiles_main(["export-profile", "--device", "dev", "--app", "vgg16_cars", str(file),
                          "--storage", str(tmp_path / "a.sqlite"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"action": "export-profile", "device": "dev", "app": "vgg16_cars",
                                                   "rows": 3, "path": str(file)}
    assert len(read_profile(file).rows) == 3
    assert profiles_main(["import-profile", str(file), "--storage", str(tmp_path / "b.sqlite"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"action": "import-profile", "device": "dev", "app": "vgg16_cars",
                                                   "rows": 3, "path": str(file)}
    assert sorted(dst.latency_rows("vgg16_cars", "dev"), key=str) == sorted(src.latency_rows("vgg16_cars", "dev"),
                                                                              key=str)
