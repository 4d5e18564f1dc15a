"""The app YAML's schema (pydantic): every key's type, range and finiteness, checked before anything runs.

`validate_app(data, where)` checks the mapping read from an app YAML and returns an `AppSpec`; the
first problem becomes one `CoInferError` line naming the key (`protocol.batch_size: must be >= 1,
got 0`). `apps.load_app` turns the spec into the frozen `apps.App` the rest of the code uses.
Numbers are strict: a string is never read as a number, a bool never as an int, NaN and
infinities are refused, and every size is bounded so a typo cannot ask for terabytes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cli.errors import CoInferError

# a name stored in the database and used in file and cgroup names: no path separators, no dots first
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
APP_NAME_CHARS = 16  # an app's name travels in every runtime frame's 16-byte field (runtime/protocol.py)
AppName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=APP_NAME_CHARS)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
MAX_INPUT_SIZE = 1024  # pixels a side: 224 is the paper's; 1024 x 1024 x 3 floats is 12 MB an image
SEED_MAX = 2**32 - 1


class _Spec(BaseModel):
    """Strict (no string-to-number coercion), unknown keys refused, frozen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# the zoo (models/zoo.py): scaled builders; any other torchvision classification model is built as is
ZOO_ARCHS = ("vgg16_bn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2")
NODE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"  # a torch.fx node name


class ModelSpec(_Spec):
    arch: Annotated[str, Field(pattern=NAME_PATTERN)]  # ZOO_ARCHS or a torchvision model (apps.load_app checks)
    width: Annotated[Finite, Field(gt=0, le=1)]
    input_size: Annotated[int, Field(ge=32, le=MAX_INPUT_SIZE, multiple_of=32)]  # 5 pools of 2
    in_channels: Annotated[int, Field(ge=1, le=64)]
    num_classes: Annotated[int, Field(ge=2, le=100_000)]
    classifier_hidden: Annotated[int, Field(ge=1, le=65_536)] | None = None  # vgg16_bn (default 4096 x width)
    stem: Literal["imagenet", "small"] = "imagenet"  # small: a 3x3 stride-1 first conv (models/zoo.py)
    points: Annotated[list[Annotated[str, Field(pattern=NODE_PATTERN)]], Field(min_length=1, max_length=4096)] \
        | None = None  # partition points as graph node names (default: models/graph.py's rules)
    weights: Annotated[str, Field(min_length=1, max_length=4096)] | None = None  # models/pretrained.py


# the dataset kinds (data/__init__.py's DATASETS: one module each); tests/test_datasets.py checks both agree
DATASET_NAMES = ("digits", "stanford_cars", "image_folder", "cifar10", "cifar100", "mnist", "svhn")
DatasetName = Literal["digits", "stanford_cars", "image_folder", "cifar10", "cifar100", "mnist", "svhn"]
Stats = Annotated[list[Annotated[Finite, Field(ge=-1e3, le=1e3)]], Field(min_length=1, max_length=3)]


class DatasetSpec(_Spec):
    """Where the images are and how they become tensors (data/transforms.py); every key is optional but the
    name. `resize`, `mean`, `std` and `augment` apply to the image datasets (not digits, not stanford_cars)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)  # a dataset may take its own keys
    name: DatasetName
    root: str | None = None
    test_size: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    split_seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    limit_train: Annotated[int, Field(ge=1)] | None = None
    test_fraction: Annotated[Finite, Field(gt=0, lt=1)] | None = None  # image_folder without train/ and test/
    resize: Annotated[int, Field(ge=1, le=4 * MAX_INPUT_SIZE)] | None = None  # shorter side, before the crop
    mean: Stats | None = None  # per channel (1 or 3 values), after scaling to [0, 1]
    std: Annotated[list[Annotated[Finite, Field(gt=0, le=1e3)]], Field(min_length=1, max_length=3)] | None = None
    augment: bool = False  # train: a random crop (padded by 1/8) and a horizontal flip instead of the centre crop


class TrainSpec(_Spec):
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 30
    lr: Annotated[Finite, Field(gt=0, le=10)] = 0.05
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 64
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0


class ProtocolSpec(_Spec):
    epochs: Annotated[int, Field(ge=0, le=10_000)]  # 0: the pruned, quantised model without fine-tuning
    lr: Annotated[Finite, Field(gt=0, le=10)]
    batch_size: Annotated[int, Field(ge=1, le=65_536)]
    momentum: Annotated[Finite, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[Finite, Field(ge=0, le=1)] = 5e-4
    schedule: Literal["linear", "constant"] = "linear"
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] = 0


SIDES = ("edge", "cloud", "both")
EMULATIONS = ("dilate", "quota")  # how this CPU is made a slower device: stretched time, or a cgroup CPU quota


class Device(_Spec):
    """A device: a name (the one its profile is stored under), the side(s) it plays, and how fast it is.

    `speed` is the device's speed as a fraction of this CPU (0 < speed <= 1); None is this CPU as it
    is. `emulation` says how that speed is made here: `dilate` (devices.slowdown: run at full speed,
    then wait to CPU time / speed; the default whenever there is a speed) or `quota` (devices.cpuquota:
    a cgroup CFS quota of `speed` CPUs); None when there is no speed. Built from an app YAML's
    `devices:` entries, from devices.yml, or from flags (`--side --speed --emulation`), always
    through this model (`make_device` turns a refusal into one CoInferError line). An old app's
    `cpu_quota` key is read as `speed`.
    """

    name: Name
    side: Literal["edge", "cloud", "both"] = "both"
    speed: Annotated[Finite, Field(gt=0, le=1)] | None = None
    emulation: Literal["dilate", "quota"] | None = None
    notes: str = ""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "cpu_quota" in data and "speed" not in data:  # the key's name before the one device vocabulary
                data["speed"] = data.pop("cpu_quota")
            if data.get("speed") is not None and data.get("emulation") is None:
                data["emulation"] = "dilate"
        return data

    @model_validator(mode="after")
    def _emulation_needs_speed(self) -> Device:
        if self.speed is None and self.emulation is not None:
            raise ValueError(f"emulation {self.emulation} needs a speed (this CPU as it is has none)")
        return self

    @property
    def slowed(self) -> bool:
        """Whether the device is emulated slower than this CPU (it has a speed)."""
        return self.speed is not None

    @property
    def dilated(self) -> bool:
        return self.emulation == "dilate"

    def sides(self) -> tuple[str, ...]:
        """The sides a profile of this device measures: ("edge",), ("cloud",) or both."""
        return ("edge", "cloud") if self.side == "both" else (self.side,)

    def with_speed(self, speed: float | None) -> Device:
        """The same device at another speed (checked); None: this CPU as it is."""
        return make_device(self.model_dump() | {"speed": speed, "emulation": self.emulation if speed else None},
                           f"device {self.name}")


def make_device(fields: Any, where: str) -> Device:
    """A `Device` from a mapping; a refusal is one CoInferError line naming `where` and the key."""
    try:
        return Device.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise CoInferError(f"{where}: {describe_error(errors[0])}".replace("\n", " ")) from None


class DevicesSpec(_Spec):
    """An app's devices: `edge` and `cloud`, each a `Device` whose side the key gives."""

    edge: Device
    cloud: Device

    @model_validator(mode="before")
    @classmethod
    def _sides(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for side in ("edge", "cloud"):
                entry = data.get(side)
                if isinstance(entry, dict):
                    if entry.get("side", side) != side:
                        raise ValueError(f"the {side} device has side {side}, got {entry['side']!r}")
                    data[side] = {**entry, "side": side}
        return data


class LinkSpec(_Spec):
    message_bytes: Annotated[int, Field(ge=0, le=1 << 20)] = 0
    packet_bytes: Annotated[int, Field(ge=0, le=1 << 16)] = 0
    mss: Annotated[int, Field(ge=1, le=1 << 16)] = 1448


class AppSpec(BaseModel):
    """A whole app YAML; unknown top-level keys are kept (`App.extra`)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    name: AppName
    model: ModelSpec
    dataset: DatasetSpec
    train: TrainSpec = TrainSpec()
    protocol: ProtocolSpec
    devices: DevicesSpec
    raw_input_bytes: Annotated[int, Field(ge=1, le=1 << 31)]
    rtt_s: Annotated[Finite, Field(ge=0, le=60)] = 0.0
    checkpoint: Annotated[str, Field(min_length=1)]
    notes: str = ""
    link: LinkSpec = LinkSpec()


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error as `key.path: problem, got VALUE`."""
    loc = ".".join(str(part) for part in err["loc"])
    kind = err["type"]
    if kind == "missing":
        head, _, key = loc.rpartition(".")
        return f"{head + ': ' if head else ''}missing key '{key}'"
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "value_error":  # a model's own check (Device, DevicesSpec): its message as it is
        return f"{loc + ': ' if loc else ''}{err['ctx']['error']}"
    value = err.get("input")
    got = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if len(got) > 60:
        got = got[:57] + "..."
    msg = err["msg"].replace("Input should be", "must be").replace("Input ", "value ")
    return f"{loc}: {msg[0].lower()}{msg[1:]}, got {got}"


def validate_app(data: Any, where: str) -> AppSpec:
    """Check an app YAML's mapping against the schema; the first problem is one CoInferError line."""
    if not isinstance(data, dict):
        raise CoInferError(f"malformed app {where}: expected a mapping at top level")
    # YAML null for an optional section means "the defaults", as an absent key does
    data = {k: v for k, v in data.items() if not (k in ("train", "link", "notes") and v is None)}
    try:
        return AppSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CoInferError(f"{where}: {describe_error(errors[0])}{more}".replace("\n", " ")) from None


def check_arch(arch: str) -> str:
    """`arch` when it is a zoo model or a torchvision classification model (torchvision is imported only
    for names outside the zoo); else one CoInferError line."""
    if arch not in ZOO_ARCHS:
        import torchvision
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise CoInferError(f"model.arch: torchvision has no classification model '{arch}' "
                               f"(zoo: {', '.join(ZOO_ARCHS)})")
    return arch


def check_name(name: str, what: str) -> str:
    """`name` when it is a safe identifier (NAME_PATTERN: letters, digits, _ . -, at most 64); else one
    CoInferError line."""
    if not re.fullmatch(NAME_PATTERN, name or ""):
        raise CoInferError(f"{what} must be 1..64 letters, digits, '_', '.' or '-', starting with a letter "
                           f"or digit, got {name!r}")
    return name
