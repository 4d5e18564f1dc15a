"""Apps: one YAML per app (model, dataset, base training, evaluation protocol, devices).

An app is plain data. `load_app("vgg16_digits")` reads `apps/vgg16_digits.yml`; a path to a
YAML file works too (tests use tiny apps written to a temp folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apps.errors import CoInferError

APPS_DIR = Path(__file__).resolve().parent
REPO_ROOT = APPS_DIR.parent
DEFAULT_APP = "vgg16_digits"
# how this CPU is made the (slower) edge device: stretched time (database.slowdown) or a cgroup quota
EDGE_EMULATIONS = ("dilate", "quota")
DEFAULT_STORAGE = f"sqlite:///{REPO_ROOT / 'database' / 'coinfer.sqlite'}"


@dataclass(frozen=True)
class Protocol:
    """How a scheme's accuracy is measured: prune + quantise, fine-tune `epochs`, test."""

    epochs: int
    lr: float
    batch_size: int
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "linear"  # linear decay of lr to 0 over the fine-tune
    seed: int = 0

    @property
    def name(self) -> str:
        """Stable identifier stored with every accuracy entry; changes when any field does."""
        return (f"ft-e{self.epochs}-lr{self.lr:g}-bs{self.batch_size}-m{self.momentum:g}"
                f"-wd{self.weight_decay:g}-{self.schedule}")


@dataclass(frozen=True)
class Link:
    """What one message costs on the edge -> cloud link beyond its payload: the runtime's frame
    header once, and the transport's headers once per segment of at most `mss` bytes (TCP/IPv4
    with timestamps over Ethernet: 14 + 20 + 32 = 66 bytes per segment, MSS 1448)."""

    message_bytes: int = 0
    packet_bytes: int = 0
    mss: int = 1448


@dataclass(frozen=True)
class App:
    name: str
    arch: str
    width: float
    input_size: int
    in_channels: int
    num_classes: int
    classifier_hidden: int
    dataset: dict[str, Any]
    train: dict[str, Any]
    protocol: Protocol
    edge_device: str
    cloud_device: str
    edge_cpu_quota: float | None
    raw_input_bytes: int
    rtt_s: float
    checkpoint: Path
    notes: str = ""
    link: Link = field(default_factory=Link)
    edge_emulation: str = "dilate"  # how the testbed and profiler make this CPU the edge device (EDGE_EMULATIONS)
    extra: dict[str, Any] = field(default_factory=dict)


def _require(data: dict, key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise CoInferError(f"{where}: missing key '{key}'")
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CoInferError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def available_apps() -> list[str]:
    return sorted(p.stem for p in APPS_DIR.glob("*.yml"))


def app_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yml", ".yaml"):
        if not candidate.is_file():
            raise CoInferError(f"app file not found: {candidate}")
        return candidate
    path = APPS_DIR / f"{name_or_path}.yml"
    if not path.is_file():
        raise CoInferError(f"unknown app '{name_or_path}' (known: {', '.join(available_apps())})")
    return path


def load_app(name_or_path: str = DEFAULT_APP) -> App:
    """Read and validate an app YAML; every problem is one CoInferError line."""
    path = app_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise CoInferError(f"malformed YAML in {path}{at}") from None
    if not isinstance(data, dict):
        raise CoInferError(f"malformed app {path}: expected a mapping at top level")
    where = str(path)
    model = _require(data, "model", dict, where)
    protocol = _require(data, "protocol", dict, where)
    devices = _require(data, "devices", dict, where)
    edge = _require(devices, "edge", dict, f"{where}: devices")
    cloud = _require(devices, "cloud", dict, f"{where}: devices")
    arch = _require(model, "arch", str, f"{where}: model")
    if arch != "vgg16_bn":
        raise CoInferError(f"{where}: unknown model arch '{arch}' (known: vgg16_bn)")
    width = _require(model, "width", float, f"{where}: model")
    input_size = _require(model, "input_size", int, f"{where}: model")
    if not 0 < width <= 1:
        raise CoInferError(f"{where}: model width must be in (0, 1], got {width}")
    if input_size < 32 or input_size % 32:
        raise CoInferError(f"{where}: input_size must be a positive multiple of 32 (5 pools), got {input_size}")
    checkpoint = Path(_require(data, "checkpoint", str, where))
    if not checkpoint.is_absolute():
        checkpoint = REPO_ROOT / checkpoint
    quota = edge.get("cpu_quota")
    if quota is not None and not (isinstance(quota, (int, float)) and 0 < quota <= 64):
        raise CoInferError(f"{where}: devices.edge.cpu_quota must be a number of CPUs in (0, 64], got {quota!r}")
    link_data = data.get("link", {}) or {}
    if not isinstance(link_data, dict) or set(link_data) - {"message_bytes", "packet_bytes", "mss"}:
        raise CoInferError(f"{where}: link must be a mapping of message_bytes, packet_bytes, mss")
    link = Link(**{k: _require(link_data, k, int, f"{where}: link") for k in link_data})
    if link.message_bytes < 0 or link.packet_bytes < 0 or link.mss < 1:
        raise CoInferError(f"{where}: link byte counts must be >= 0 and mss >= 1")
    emulation = edge.get("emulation", "dilate")
    if emulation not in EDGE_EMULATIONS:
        raise CoInferError(f"{where}: devices.edge.emulation must be one of {', '.join(EDGE_EMULATIONS)}, "
                           f"got {emulation!r}")
    proto = Protocol(
        epochs=_require(protocol, "epochs", int, f"{where}: protocol"),
        lr=_require(protocol, "lr", float, f"{where}: protocol"),
        batch_size=_require(protocol, "batch_size", int, f"{where}: protocol"),
        momentum=float(protocol.get("momentum", 0.9)),
        weight_decay=float(protocol.get("weight_decay", 5e-4)),
        schedule=str(protocol.get("schedule", "linear")),
        seed=int(protocol.get("seed", 0)),
    )
    if proto.schedule not in ("linear", "constant"):
        raise CoInferError(f"{where}: protocol.schedule must be linear or constant, got {proto.schedule!r}")
    return App(
        name=_require(data, "name", str, where),
        arch=arch,
        width=width,
        input_size=input_size,
        in_channels=_require(model, "in_channels", int, f"{where}: model"),
        num_classes=_require(model, "num_classes", int, f"{where}: model"),
        classifier_hidden=_require(model, "classifier_hidden", int, f"{where}: model"),
        dataset=_require(data, "dataset", dict, where),
        train=data.get("train", {}) or {},
        protocol=proto,
        edge_device=_require(edge, "name", str, f"{where}: devices.edge"),
        cloud_device=_require(cloud, "name", str, f"{where}: devices.cloud"),
        edge_cpu_quota=None if quota is None else float(quota),
        raw_input_bytes=_require(data, "raw_input_bytes", int, where),
        edge_emulation=emulation,
        link=link,
        rtt_s=float(data.get("rtt_s", 0.0)),
        checkpoint=checkpoint,
        notes=str(data.get("notes", "")),
        extra={k: v for k, v in data.items() if k not in {
            "name", "model", "dataset", "train", "protocol", "devices", "raw_input_bytes", "link",
            "rtt_s", "checkpoint", "notes"}},
    )
