"""Devices defined outside the apps: a devices file, so a new machine needs no app edit.

    # devices.yml (the repository root's by default; --devices FILE elsewhere)
    devices:
      pi-like: {side: edge, speed: 0.25}   # this CPU slowed to 1/4 (devices.slowdown's dilation)
      my-server: {side: cloud}             # this machine as it is

`python -m database.profile --device pi-like` then profiles that side at that speed; the same
settings as flags (`--side edge --speed 0.25`) define a device without any file. The profile is
stored under the name, and searches and the edge runtime select it with
`--latency-profile EDGE,CLOUD`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from apps import REPO_ROOT
from cli.errors import CoInferError

DEFAULT_DEVICES = REPO_ROOT / "devices.yml"
SIDES = ("edge", "cloud", "both")


@dataclass(frozen=True)
class DeviceSpec:
    """One device: which side(s) it profiles, and the speed it is emulated at (None: this CPU)."""

    name: str
    side: str = "both"
    speed: float | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise CoInferError(f"device {self.name}: side must be one of {', '.join(SIDES)}, got {self.side!r}")
        if self.speed is not None and not (isinstance(self.speed, int | float) and 0 < self.speed <= 1):
            raise CoInferError(f"device {self.name}: speed must be in (0, 1] (of this CPU), got {self.speed!r}")


def load_devices(path: Path | str | None = None) -> dict[str, DeviceSpec]:
    """The devices of a devices file; the default file may be absent (no devices), a named one not."""
    file = Path(path) if path is not None else DEFAULT_DEVICES
    if not file.is_file():
        if path is not None:
            raise CoInferError(f"devices file not found: {file}")
        return {}
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError:
        raise CoInferError(f"malformed YAML in devices file {file}") from None
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise CoInferError(f"devices file {file}: expected a mapping 'devices: {{NAME: {{side, speed}}}}'")
    out = {}
    for name, spec in entries.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"side", "speed", "notes"}:
            raise CoInferError(f"devices file {file}: device {name} takes side, speed and notes only")
        out[str(name)] = DeviceSpec(str(name), spec.get("side", "both"), spec.get("speed"), str(spec.get("notes", "")))
    return out


def parse_device_pair(text: str | None, flag: str = "--latency-profile") -> tuple[str | None, str | None]:
    """'EDGE,CLOUD' -> (edge, cloud); None -> (None, None), the app's own devices."""
    if not text:
        return None, None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise CoInferError(f"{flag} takes EDGE,CLOUD, got {text!r}")
    return parts[0], parts[1]
