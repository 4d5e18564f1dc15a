"""The app schema (apps.schema): every bad type, range or non-finite value is one CoInferError line naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from apps import APPS_DIR, Device, load_app
from cli.errors import CoInferError

BASE = yaml.safe_load((APPS_DIR / "vgg16_digits.yml").read_text())


def write(tmp_path, section: str | None, key: str, value) -> str:
    data = copy.deepcopy(BASE)
    (data if section is None else data[section])[key] = value
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(("section", "key", "value", "says"), [
    (None, "rtt_s", "abc", "rtt_s: must be a valid number"),
    (None, "rtt_s", float("inf"), "rtt_s: must be a finite number"),
    ("protocol", "momentum", "fast", "protocol.momentum"),
    ("protocol", "seed", "abc", "protocol.seed"),
    ("protocol", "batch_size", 0, "protocol.batch_size"),
    ("protocol", "epochs", -3, "protocol.epochs"),
    ("protocol", "lr", float("nan"), "protocol.lr: must be a finite number"),
    ("protocol", "schedule", "cosine", "protocol.schedule"),
    ("protocol", "epochz", 1, "protocol.epochz: unknown key"),
    ("model", "num_classes", 0, "model.num_classes"),
    ("model", "input_size", 3_200_000, "model.input_size"),
    ("model", "input_size", 48, "model.input_size"),
    ("model", "width", True, "model.width"),
    ("model", "arch", "resnet", "model.arch"),
    ("train", "epochs", "10", "train.epochs"),
    (None, "name", "../x", "name"),
    (None, "name", "mobilenet_v2_digits", "name"),  # 19 characters: more than a runtime frame carries
    (None, "raw_input_bytes", -1, "raw_input_bytes"),
    (None, "link", {"mss": 0}, "link.mss"),
])
def test_bad_app_values_are_one_line(tmp_path, section, key, value, says) -> None:
    with pytest.raises(CoInferError) as exc:
        load_app(write(tmp_path, section, key, value))
    text = str(exc.value)
    assert says in text and "\n" not in text, text


def test_bad_device_name_and_missing_key(tmp_path) -> None:
    data = copy.deepcopy(BASE)
    data["devices"]["edge"]["name"] = "../../x"
    path = tmp_path / "dev.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CoInferError, match="devices.edge.name"):
        load_app(str(path))
    del data["protocol"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CoInferError, match="missing key 'protocol'"):
        load_app(str(path))


def test_shipped_apps_load_unchanged() -> None:
    app = load_app("vgg16_digits")
    assert (app.protocol.epochs, app.protocol.batch_size, app.edge.speed, app.link.mss) == (1, 64, 0.125, 1448)
    assert app.edge == Device(name="cpu-edge", side="edge", speed=0.125, emulation="dilate")
    assert app.cloud == Device(name="cpu-cloud", side="cloud") and app.cloud.emulation is None
    assert load_app("vgg16_cars").edge == Device(name="pi-paper", side="edge")  # the paper's: no emulation here
    assert app.dataset == {"name": "digits", "test_size": 600, "split_seed": 0} and app.extra == {}
    assert load_app("vgg16_cars").num_classes == 196


@pytest.mark.parametrize(("edge", "expected"), [
    ({"name": "e", "cpu_quota": 0.25}, Device(name="e", side="edge", speed=0.25, emulation="dilate")),  # an old app
    ({"name": "e", "speed": 0.5, "emulation": "quota"}, Device(name="e", side="edge", speed=0.5, emulation="quota")),
    ({"name": "e", "side": "edge", "speed": 1}, Device(name="e", side="edge", speed=1.0, emulation="dilate")),
])
def test_app_devices_are_devices(tmp_path, edge, expected) -> None:
    data = yaml.safe_load((APPS_DIR / "vgg16_digits.yml").read_text())
    data["devices"]["edge"] = edge
    path = tmp_path / "dev.yml"
    path.write_text(yaml.safe_dump(data))
    assert load_app(str(path)).edge == expected


@pytest.mark.parametrize(("edge", "message"), [
    ({"name": "e", "speed": 1.5}, "devices.edge.speed: must be less than or equal to 1, got 1.5"),
    ({"name": "e", "speed": 0}, "devices.edge.speed: must be greater than 0, got 0"),
    ({"name": "e", "speed": "half"}, "devices.edge.speed: must be a valid number, got 'half'"),
    ({"name": "e", "emulation": "dilate"}, "devices.edge: emulation dilate needs a speed"),
    ({"name": "e", "speed": 0.5, "emulation": "nice"}, "devices.edge.emulation: must be 'dilate' or 'quota'"),
    ({"name": "e", "side": "cloud"}, "devices: the edge device has side edge, got 'cloud'"),
])
def test_bad_app_devices_are_one_line(tmp_path, edge, message) -> None:
    data = yaml.safe_load((APPS_DIR / "vgg16_digits.yml").read_text())
    data["devices"]["edge"] = edge
    path = tmp_path / "dev.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CoInferError, match=message.replace("(", r"\(")):
        load_app(str(path))


def test_every_app_name_fits_the_runtime_protocol() -> None:
    """The schema's limit is the protocol's app field, and every shipped app fits it."""
    from apps import available_apps, load_app
    from apps.schema import APP_NAME_CHARS
    from runtime.protocol import APP_NAME_BYTES, HEADER, Hello, encode, parse_header
    assert APP_NAME_CHARS == APP_NAME_BYTES
    for name in available_apps():
        assert parse_header(encode(Hello(load_app(name).name, b"", 0))[:HEADER.size]).app == name
