"""One device registry: a device defined by flags when it was profiled is known to every command that takes a
device name, and a name nobody knows is refused with the same line everywhere."""

from __future__ import annotations

import argparse
import re

import pytest

import select_model
from cli.errors import CoInferError
from database import predictor
from database.profile import main as profile_main
from database.registry import find_device
from runtime import edge


def _profiled(tiny_app_path, tmp_path) -> str:
    db = str(tmp_path / "edge.sqlite")
    assert profile_main(["--app", tiny_app_path, "--device", "pi-like", "--side", "edge", "--speed", "0.5",
                         "--runs", "2", "--warmup", "0", "--passes", "1", "--idle-ms", "0", "--no-keep-warm",
                         "--points", "1", "--storage", db]) == 0
    return db


def _edge_args(app_path: str, db: str, device: str) -> argparse.Namespace:
    return edge._parser().parse_args(["--app", app_path, "--scheme", "all-edge", "--device", device, "--storage", db])


def test_a_device_defined_by_flags_is_known_everywhere(tiny_app, tiny_app_path, tmp_path, capsys):
    db = _profiled(tiny_app_path, tmp_path)
    capsys.readouterr()
    device = find_device("pi-like", None, (tiny_app,), db)
    assert (device.side, device.speed, device.emulation) == ("edge", 0.5, "dilate")
    job, _ = predictor.parse_args(["fit", "--device", "pi-like", "--storage", db])
    assert job.device == device
    config, _ = select_model.parse_args(["--apps", tiny_app_path, "--edge", "pi-like", "--bandwidth", "1",
                                         "--storage", db])
    assert config.spec == device
    assert edge.edge_device(_edge_args(tiny_app_path, db, "pi-like"), tiny_app) == device
    # and a second profile under the same name, of another side, takes its speed from the database
    assert profile_main(["--app", tiny_app_path, "--device", "pi-like", "--side", "cloud", "--runs", "2",
                         "--warmup", "0", "--passes", "1", "--idle-ms", "0", "--no-keep-warm", "--points", "1",
                         "--storage", db]) == 0
    assert "/ 0.5" in capsys.readouterr().out


def test_an_unknown_device_is_the_same_line_everywhere(tiny_app, tiny_app_path, tmp_path):
    db = _profiled(tiny_app_path, tmp_path)
    messages = []
    for call in (lambda: predictor.parse_args(["fit", "--device", "nosuch", "--storage", db]),
                 lambda: select_model.parse_args(["--apps", tiny_app_path, "--edge", "nosuch", "--bandwidth", "1",
                                                  "--storage", db]),
                 lambda: edge.edge_device(_edge_args(tiny_app_path, db, "nosuch"), tiny_app),
                 lambda: find_device("nosuch", None, (tiny_app,), db)):
        with pytest.raises(CoInferError) as info:
            call()
        messages.append(str(info.value))
    # the same line; the names it lists as known are those of the apps in play (predictor fit has none)
    assert len({re.sub(r"\(known: [^)]*\)", "", m) for m in messages}) == 1, "\n".join(messages)
    assert "pi-like" in messages[0] and "database.profile" in messages[0] and "\n" not in messages[0]


def test_a_missing_database_is_no_device(tmp_path):
    with pytest.raises(CoInferError, match="unknown device 'nosuch'"):
        find_device("nosuch", None, (), str(tmp_path / "absent.sqlite"))
    assert not (tmp_path / "absent.sqlite").exists()
