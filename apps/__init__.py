"""Apps: one YAML per app (model, dataset, base training, evaluation protocol, devices).

An app is plain data. `load_app("vgg16_digits")` reads `apps/vgg16_digits.yml`; a path to a
YAML file works too (tests use tiny apps written to a temp folder). An app file is read as every named input
is (`cli.files`): a regular file of at most MAX_APP_BYTES (1 MiB), nested at most `cli.files.MAX_YAML_DEPTH` (32) deep.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.errors import CoInferError
from cli.files import read_yaml
from cli.paths import ROOT, data_file, overlay

if TYPE_CHECKING:
    from apps.schema import Device

APPS_DIR = Path(__file__).resolve().parent
REPO_ROOT = ROOT  # the checkout, or site-packages in an installed copy (cli.paths: where the writable files go)
DEFAULT_APP = "vgg16_digits"
__all__ = ["APPS_DIR", "DATABASE_FILE", "DEFAULT_APP", "DEFAULT_STORAGE", "EMULATIONS", "REPO_ROOT", "App", "Device",
           "Link", "Protocol", "app_path", "available_apps", "load_app"]
MAX_APP_BYTES = 2**20  # an app YAML is a few hundred bytes; a list of partition points a few KB
DATABASE_FILE = "database/coinfer.sqlite"  # shipped, and the default database (a copy in an installed one)
DEFAULT_STORAGE = f"sqlite:///{data_file(DATABASE_FILE)}"


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
    classifier_hidden: int | None  # vgg16_bn's hidden width (None: 4096 x width)
    dataset: dict[str, Any]
    train: dict[str, Any]
    protocol: Protocol
    edge: Device   # side edge; its speed and emulation make this CPU the edge device (apps.schema.Device)
    cloud: Device  # side cloud
    raw_input_bytes: int
    rtt_s: float
    checkpoint: Path
    notes: str = ""
    link: Link = field(default_factory=Link)
    extra: dict[str, Any] = field(default_factory=dict)
    stem: str = "imagenet"  # "small": 3x3 stride-1 first conv of a zoo model (models/zoo.py)
    points: tuple[str, ...] | None = None  # partition points as graph node names (None: models/graph.py)
    weights: str | None = None  # pretrained: a state-dict file or a torchvision weights name (models/pretrained.py)
    source: Path | None = field(default=None, compare=False)  # the YAML file it was read from (resolved)
    given: str = field(default="", compare=False)  # how the user named it (`--app`): a name or a path, as typed

    @property
    def edge_device(self) -> str:
        """The edge device's name (the one its profile is stored under)."""
        return self.edge.name

    @property
    def cloud_device(self) -> str:
        return self.cloud.name

    @property
    def ref(self) -> str:
        """The app as a hinted command's `--app` takes it: as the user gave it (a path stays a path; the name
        when it was not loaded by `load_app`), quoted for a shell. Every hint an error prints names the app so."""
        return shlex.quote(self.given or self.name)


def available_apps() -> list[str]:
    return sorted(p.stem for p in APPS_DIR.glob("*.yml"))


def app_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yml", ".yaml"):
        if not candidate.exists():  # a folder or a FIFO is refused by read_yaml, unread
            raise CoInferError(f"app file not found: {candidate}")
        return candidate
    path = APPS_DIR / f"{name_or_path}.yml"
    if not path.is_file():
        raise CoInferError(f"unknown app '{name_or_path}' (known: {', '.join(available_apps())})")
    return path


def load_app(name_or_path: str = DEFAULT_APP) -> App:
    """Read an app YAML and validate all of it (`apps.schema`); every problem is one CoInferError line."""
    path = app_path(name_or_path)
    data = read_yaml(path, "app", MAX_APP_BYTES)
    from apps.schema import check_arch, validate_app  # pydantic: only to read an app (an artifact edge never does)
    spec = validate_app(data, str(path))
    model, proto = spec.model, spec.protocol
    checkpoint = Path(spec.checkpoint)
    if not checkpoint.is_absolute():  # the user's own (models.train in an installed copy) before the shipped one
        checkpoint = overlay(checkpoint)
    return App(
        name=spec.name,
        arch=check_arch(model.arch),
        width=float(model.width),
        input_size=model.input_size,
        in_channels=model.in_channels,
        num_classes=model.num_classes,
        classifier_hidden=model.classifier_hidden,
        dataset=spec.dataset.model_dump(exclude_unset=True),
        train=spec.train.model_dump(exclude_unset=True),
        protocol=Protocol(epochs=proto.epochs, lr=float(proto.lr), batch_size=proto.batch_size,
                          momentum=float(proto.momentum), weight_decay=float(proto.weight_decay),
                          schedule=proto.schedule, seed=proto.seed),
        edge=spec.devices.edge,
        cloud=spec.devices.cloud,
        raw_input_bytes=spec.raw_input_bytes,
        link=Link(**spec.link.model_dump()),
        rtt_s=float(spec.rtt_s),
        checkpoint=checkpoint,
        notes=spec.notes,
        extra=dict(spec.model_extra or {}),
        stem=model.stem,
        points=None if model.points is None else tuple(model.points),
        weights=model.weights,
        source=path.resolve(),
        given=name_or_path,
    )


def __getattr__(name: str):
    """`apps.Device` and `apps.EMULATIONS` (apps.schema's), imported on first use: an edge that runs an exported
    artifact imports `apps` without pydantic."""
    if name in ("Device", "EMULATIONS"):
        from apps import schema
        return getattr(schema, name)
    raise AttributeError(f"module 'apps' has no attribute {name!r}")
