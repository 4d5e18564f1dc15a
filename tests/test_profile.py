"""The latency profiler: which rows one ProfileConfig measures, and the config `main` builds from its flags."""

from __future__ import annotations

import pytest

from apps import Device
from cli.errors import CoInferError
from database.profile import ProfileConfig, main, parse, profile_app
from database.store import Store

# the tiny app's conv widths are 2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16; channel grids {1, C/4, C/2, 3C/4, C}
# hold 2, 2, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5 values: 57 split rows a side
SPLIT_ROWS = 2 * 2 + 2 * 4 + 9 * 5


def test_rows_of_one_point_and_the_whole_model(tiny_app) -> None:
    config = ProfileConfig(Device(name="tiny-edge", speed=0.5), ("edge",), runs=2, warmup=0, passes=2, idle_s=0.0,
                           only_points=frozenset({12}), progress=False)
    rows = profile_app(tiny_app, config)
    assert sorted((r.side, r.point, r.channels, r.n) for r in rows) == [
        ("edge", -1, 1, 2),  # all-cloud's edge share: the raw input packed
        *[("edge", 12, c, 2) for c in (1, 4, 8, 12, 16)],
        ("edge", 13, 10, 2),  # all-edge: the whole model
    ]
    assert {r.device for r in rows} == {"tiny-edge"}


def test_a_config_samples_as_its_device_is_emulated() -> None:
    assert ProfileConfig(Device(name="d", speed=0.5)).window_s == 0.0  # dilate: one call a sample
    assert ProfileConfig(Device(name="d", speed=0.125, emulation="quota")).window_s == 0.08  # 10 periods of 8 ms
    assert ProfileConfig(Device(name="d")).window_s == 0.0
    with pytest.raises(CoInferError, match="on the CPU only"):
        ProfileConfig(Device(name="d", speed=0.5), torch_device="cuda")
    with pytest.raises(CoInferError, match="--threads must be 1"):
        ProfileConfig(Device(name="d", speed=0.5), threads=2)
    assert ProfileConfig(Device(name="d", speed=0.5, emulation="quota"), threads=2).threads == 2


QUICK = ["--runs", "1", "--warmup", "0", "--passes", "1", "--idle-ms", "0", "--no-keep-warm"]


@pytest.mark.parametrize(("flags", "device"), [
    ([], Device(name="tiny-edge", side="both", speed=0.5, emulation="dilate")),  # the app's edge device, both sides
    (["--side", "edge"], Device(name="tiny-edge", side="edge", speed=0.5, emulation="dilate")),
    (["--speed", "0.25"], Device(name="tiny-edge", side="both", speed=0.25, emulation="dilate")),
    (["--emulation", "quota"], Device(name="tiny-edge", side="both", speed=0.5, emulation="quota")),
    (["--speed", "0.25", "--emulation", "quota"], Device(name="tiny-edge", speed=0.25, emulation="quota")),
])
def test_parse_builds_the_device_from_the_app_and_flags(tiny_app_path, flags, device) -> None:
    app, config, _ = parse(["--app", tiny_app_path, "--device", "tiny-edge", *QUICK, *flags])
    assert config.device == device and config.sides == device.sides()


@pytest.mark.parametrize(("flags", "device"), [
    ([], Device(name="tiny-cloud", side="both")),
    (["--side", "cloud", "--speed", "1"], Device(name="tiny-cloud", side="cloud", speed=1.0, emulation="dilate")),
    (["--devices", "{file}"], Device(name="tiny-cloud", side="edge", speed=0.75, emulation="dilate")),
])
def test_parse_takes_a_devices_file_before_the_app(tiny_app_path, tmp_path, flags, device) -> None:
    file = tmp_path / "devices.yml"
    file.write_text("devices:\n  tiny-cloud: {side: edge, speed: 0.75}\n")
    flags = [str(file) if f == "{file}" else f for f in flags]
    assert parse(["--app", tiny_app_path, "--device", "tiny-cloud", *QUICK, *flags])[1].device == device


@pytest.mark.parametrize(("flags", "message"), [
    (["--speed", "1.5"], "device new: speed: must be less than or equal to 1, got 1.5"),
    (["--speed", "0"], "device new: speed: must be greater than 0"),
    (["--emulation", "quota"], "device new: emulation quota needs a speed"),
    (["--cpu-quota", "0.5"], "--cpu-quota is gone: give the device's speed, --speed S"),
    (["--speed", "0.5", "--threads", "2"], "--threads must be 1"),
    (["--speed", "0.5", "--torch-device", "cuda"], "on the CPU only"),
    (["--torch-device", "gpu0"], "--torch-device 'gpu0': expected cpu, cuda or cuda:N"),
    (["--runs", "0"], "--runs must be in 1..100000"),
])
def test_parse_refuses_bad_devices_in_one_line(tiny_app_path, flags, message) -> None:
    with pytest.raises(CoInferError, match=message.replace("(", r"\(")):
        parse(["--app", tiny_app_path, "--device", "new", *QUICK, *flags])


def test_main_profiles_the_edge_device_slowed_to_its_quota(tiny_app_path, tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'profile.sqlite'}"
    assert main(["--app", tiny_app_path, "--device", "tiny-edge", "--side", "edge", "--runs", "1",
                 "--warmup", "0", "--passes", "1", "--idle-ms", "0", "--no-keep-warm", "--storage", url]) == 0
    store = Store(url)
    rows = store.latency_rows("tiny_digits", "tiny-edge")
    assert len(rows) == SPLIT_ROWS + 2 and {r.side for r in rows} == {"edge"}
    info = store.device("tiny-edge")
    assert (info["speed"], info["emulation"]) == (0.5, "dilate")  # the tiny app's devices.edge.speed
    assert info["notes"] == "emulated: this CPU's thread time / 0.5 (devices.slowdown)"
    assert f"tiny_digits on tiny-edge: {SPLIT_ROWS + 2} measurements stored" in capsys.readouterr().out
