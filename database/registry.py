"""One device registry: a device by name, found the same way by every command that takes one.

A name is looked up, in order, in
  1. the devices file (`devices.yml`, or `--devices FILE`),
  2. the edge and cloud devices of the apps in play, then of every shipped app,
  3. the database's device rows: a device defined by flags when it was profiled
     (`database.profile --device NAME --side edge --speed 0.25`) is stored with its speed and
     emulation, and the sides its profiles cover, so it is known from then on without a file.
A name none of them knows is refused with `unknown_device`'s one line, the same in
`database.predictor`, `select_model.py`, `runtime.edge --device` and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from apps import App
from apps.schema import Device, make_device
from cli.errors import CoInferError

__all__ = ["find_device", "known_devices", "open_registry_store", "stored_device", "unknown_device"]


def find_device(name: str, devices_file: str | Path | None = None, apps: Iterable[App] = (), storage=None) -> Device:
    """The device `name` (see the module's order), else `unknown_device`. `storage`: a Store, or the --storage
    text of one (None: the shipped database), opened read-only only when the file and the apps do not know it."""
    from devices.spec import resolve_device
    apps = tuple(apps)
    device = resolve_device(name, devices_file, _every(apps))
    if device is not None:
        return device
    store = open_registry_store(storage)
    device = stored_device(store, name) if store is not None else None
    if device is None:
        raise unknown_device(name, known_devices(devices_file, apps, store))
    return device


def stored_device(store, name: str) -> Device | None:
    """The device `store` knows by its device row (None when it has none): its speed and emulation as profiled,
    the side its latency rows cover (`both` when they cover both, or none)."""
    row = store.device(name)
    if row is None:
        return None
    sides = store.device_sides(name)
    speed = row.get("speed")
    fields = {"name": name, "side": sides.pop() if len(sides) == 1 else "both", "speed": speed,
              "emulation": row.get("emulation") if speed else None}
    return make_device(fields, f"device {name} in the database")


def known_devices(devices_file: str | Path | None = None, apps: Iterable[App] = (), store=None) -> list[str]:
    """Every name `find_device` resolves, sorted (`store`: an open Store or None)."""
    from devices.spec import load_devices
    names = set(load_devices(devices_file)) | {d.name for a in _every(apps) for d in (a.edge, a.cloud)}
    return sorted(names | (set(store.devices()) if store is not None else set()))


def unknown_device(name: str, known: Iterable[str]) -> CoInferError:
    """The one line every command gives for a device no registry knows."""
    return CoInferError(f"unknown device '{name}' (known: {', '.join(known) or 'none'}); define it in devices.yml "
                        f"or profile it: python -m database.profile --app APP --device {name} --side edge|cloud "
                        "--speed FRACTION")


def open_registry_store(storage):
    """A Store as given, or the --storage text opened read-only; None for a database that does not exist or
    keeps nothing (in memory)."""
    from database.storage import Storage
    from database.store import Store
    if isinstance(storage, Store):
        return storage
    parsed = Storage.parse(storage)
    path = parsed.sqlite_path
    if parsed.memory or (path is not None and not parsed.uri and not Path(path).is_file()):
        return None
    return Store(parsed, readonly=True)


def _every(apps: Iterable[App]) -> Iterator[App]:
    """`apps`, then every shipped app not among them, each loaded only when the caller gets to it (a name the
    devices file or the given apps know loads no shipped app)."""
    from apps import available_apps, load_app
    given = tuple(apps)
    yield from given
    names = {a.name for a in given}
    yield from (load_app(n) for n in available_apps() if n not in names)
