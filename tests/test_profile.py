"""The latency profiler: which rows one ProfileConfig measures, and the config `main` builds from its flags."""

from __future__ import annotations

import pytest

from database.profile import ProfileConfig, main, profile_app
from database.store import Store

# the tiny app's conv widths are 2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16; channel grids {1, C/4, C/2, 3C/4, C}
# hold 2, 2, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5 values: 57 split rows a side
SPLIT_ROWS = 2 * 2 + 2 * 4 + 9 * 5


def test_rows_of_one_point_and_the_whole_model(tiny_app) -> None:
    config = ProfileConfig("tiny-edge", ("edge",), runs=2, warmup=0, passes=2, idle_s=0.0, speed=0.5,
                           only_points=frozenset({12}), progress=False)
    rows = profile_app(tiny_app, config)
    assert sorted((r.side, r.point, r.channels, r.n) for r in rows) == [
        ("edge", -1, 1, 2),  # all-cloud's edge share: the raw input packed
        *[("edge", 12, c, 2) for c in (1, 4, 8, 12, 16)],
        ("edge", 13, 10, 2),  # all-edge: the whole model
    ]
    assert {r.device for r in rows} == {"tiny-edge"}


def test_dilation_and_quota_window_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        ProfileConfig("tiny-edge", speed=0.5, window_s=0.08)


def test_main_profiles_the_edge_device_slowed_to_its_quota(tiny_app_path, tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'profile.sqlite'}"
    assert main(["--app", tiny_app_path, "--device", "tiny-edge", "--side", "edge", "--runs", "1",
                 "--warmup", "0", "--passes", "1", "--idle-ms", "0", "--no-keep-warm", "--storage", url]) == 0
    store = Store(url)
    rows = store.latency_rows("tiny_digits", "tiny-edge")
    assert len(rows) == SPLIT_ROWS + 2 and {r.side for r in rows} == {"edge"}
    info = store.device("tiny-edge")
    assert (info["cpu_quota"], info["emulation"]) == (0.5, "dilate")  # the tiny app's devices.edge.cpu_quota
    assert info["notes"] == "emulated: this CPU's thread time / 0.5 (devices.slowdown)"
    assert f"tiny_digits on tiny-edge: {SPLIT_ROWS + 2} measurements stored" in capsys.readouterr().out
