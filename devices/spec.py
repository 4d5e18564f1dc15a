"""Devices: the one `Device` type, the devices file, and finding a device by name.

A device is a name, a side (edge, cloud or both), a speed as a fraction of this CPU (None: this CPU
as it is) and an emulation saying how that speed is made here (`dilate`: devices.slowdown's
stretched time; `quota`: devices.cpuquota's cgroup CPU quota). The type is `apps.schema.Device`
(the app YAML's `devices:` entries are Devices, and apps sit below this package), re-exported here.

    # devices.yml (the checkout's by default, cli.paths.overlay; --devices FILE elsewhere)
    devices:
      pi-like: {side: edge, speed: 0.25}   # this CPU slowed to 1/4 (devices.slowdown's dilation)
      my-server: {side: cloud}             # this machine as it is

`python -m database.profile --device pi-like` then profiles that side at that speed; the same
settings as flags (`--side edge --speed 0.25`) define a device without any file. The profile is
stored under the name, and searches and the edge runtime select it with
`--latency-profile EDGE,CLOUD`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from apps import App
from apps.schema import EMULATIONS, SIDES, Device, make_device
from cli.errors import CoInferError
from cli.files import read_yaml
from cli.paths import overlay

__all__ = ["DEFAULT_DEVICES", "EMULATIONS", "SIDES", "Device", "load_devices", "make_device", "parse_device_pair",
           "resolve_device", "with_flags"]

DEFAULT_DEVICES = overlay("devices.yml")  # the user's own in an installed copy's data folder, else the shipped one
MAX_DEVICES_BYTES = 2**20  # a device is a few lines; read as every named input is (cli.files.read_yaml)


def load_devices(path: Path | str | None = None) -> dict[str, Device]:
    """The devices of a devices file; the default file may be absent (no devices), a named one not."""
    file = Path(path) if path is not None else DEFAULT_DEVICES
    if not file.is_file():
        if path is not None:
            raise CoInferError(f"devices file not found: {file}")
        return {}
    data = read_yaml(file, "devices file", MAX_DEVICES_BYTES) or {}
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise CoInferError(f"devices file {file}: expected a mapping 'devices: {{NAME: {{side, speed}}}}'")
    out = {}
    for name, spec in entries.items():
        spec = spec or {}
        if not isinstance(spec, dict) or "name" in spec or "cpu_quota" in spec:
            raise CoInferError(f"devices file {file}: device {name} takes side, speed, emulation and notes only")
        out[str(name)] = make_device({**spec, "name": str(name)}, f"devices file {file}: device {name}")
    return out


def resolve_device(name: str, devices_file: str | Path | None = None, apps: Iterable[App] = ()) -> Device | None:
    """A device by name: the devices file's, else the edge or cloud device of one of `apps` (None when
    neither knows it)."""
    devices = load_devices(devices_file)
    if name in devices:
        return devices[name]
    for app in apps:
        for device in (app.edge, app.cloud):
            if device.name == name:
                return device
    return None


def with_flags(device: Device, side: str | None = None, speed: float | None = None, emulation: str | None = None,
               where: str = "") -> Device:
    """`device` with the fields a CLI's `--side`, `--speed` and `--emulation` give (None: keep the device's).
    A new speed keeps the device's emulation (dilate when it had none) unless `emulation` names one."""
    fields = device.model_dump()
    if side is not None:
        fields["side"] = side
    if speed is not None:
        fields["speed"] = speed
        fields["emulation"] = emulation or (device.emulation if device.slowed else None)
    elif emulation is not None:
        fields["emulation"] = emulation
    return make_device(fields, where or f"device {device.name}")


def parse_device_pair(text: str | None, flag: str = "--latency-profile") -> tuple[str | None, str | None]:
    """'EDGE,CLOUD' -> (edge, cloud); None -> (None, None), the app's own devices."""
    if not text:
        return None, None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise CoInferError(f"{flag} takes EDGE,CLOUD, got {text!r}")
    return parts[0], parts[1]
