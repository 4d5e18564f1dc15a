"""Where the profiles a latency model uses were measured, and whether that is this machine.

    uses = profile_uses(store, app, [("cpu-edge", "edge"), ("cpu-cloud", "cloud")])
    warn_foreign(uses)                            # one line on stderr per foreign profile
    [u.to_json() for u in uses]                   # the `profiles` field of a --json answer

A profile is *local* when it was emulated on this CPU: measured by `database.profile` (not imported),
not the paper's formula, and either slowed (a speed or emulation) or one of the app's own devices
(cpu-edge, cpu-cloud). A local profile whose fingerprint names another machine (CPU model or logical
CPUs differ, `devices.fingerprint.same_machine`) is *foreign*: its latencies describe that machine,
and the warning says how to measure it here. A profile imported with database.profile_io, or the
paper's, is another machine's by nature and is never compared.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from apps import App
from database.storage import app_flags
from devices import fingerprint as machine


@dataclass(frozen=True)
class ProfileUse:
    """One (device, side) profile a latency model uses, where it was measured, and this machine when foreign."""
    app: str
    device: str
    side: str
    fingerprint: dict
    source: str  # measured, imported or device (a profile older than provenance: the device row's)
    measured_at: str | None
    local: bool  # emulated on this CPU, so compared with this machine
    here: dict | None = None  # this machine's fingerprint when the profile is foreign
    flags: str = ""  # `--app REF [--storage URL]` as the user named them (database.storage.app_flags): its commands'

    @property
    def foreign(self) -> bool:
        return self.here is not None

    @property
    def machine(self) -> str:
        return machine.describe_machine(self.fingerprint)

    def describe(self) -> str:
        """'cpu-edge (edge): AMD EPYC, 2 CPUs, 2026-11-23T19:16:24'"""
        when = f", {self.measured_at}" if self.measured_at else ""
        return f"{self.device} ({self.side}): {self.machine}{when}" + (" (imported)" if self.source == "imported"
                                                                       else "")

    def to_json(self) -> dict:
        out = {"device": self.device, "side": self.side, "machine": self.machine, "measured_at": self.measured_at,
               "source": self.source, "local": self.local, "foreign": self.foreign, "fingerprint": self.fingerprint}
        if self.here is not None:
            out["here"] = self.here
        return out

    def commands(self) -> tuple[str, str]:
        """The two ways out: re-profile the device here (--replace), or store this machine's beside it."""
        profile = f"python -m database.profile {self.flags or '--app ' + self.app} --device"
        speed, emulation = self.fingerprint.get("speed"), self.fingerprint.get("emulation")
        flags = f" --side {self.side}" + (f" --speed {speed:g}" if speed is not None else "") + (
            " --emulation quota" if emulation == "quota" else "")
        return f"{profile} {self.device} --replace", f"{profile} {self.device}-here{flags}"

    def warning(self) -> str:
        replace, beside = self.commands()
        return (f"warning: the {self.side} latency profile of {self.device} for {self.app} was measured on "
                f"{self.machine}, not on this machine ({machine.describe_machine(self.here or {})}): its latencies "
                f"describe the other machine; measure it here with `{replace}`, or beside it with `{beside}` "
                f"(then name {self.device}-here in --latency-profile EDGE,CLOUD)")


def is_local(app: App, device: str, fp: dict, source: str) -> bool:
    """Whether a profile was emulated on this CPU (see the module doc)."""
    if source == "imported" or fp.get("formula") is not None:
        return False
    return fp.get("speed") is not None or fp.get("emulation") is not None or device in (app.edge_device,
                                                                                        app.cloud_device)


def profile_uses(store, app: App, used: Iterable[tuple[str, str]], here: dict | None = None) -> list[ProfileUse]:
    """Where each (device, side) profile of `app` in `used` was measured; a local one on another machine than
    `here` (default: `devices.fingerprint.this_machine()`) carries `here` (foreign)."""
    here = machine.this_machine() if here is None else here
    out = []
    for device, side in used:
        prov = store.provenance(app.name, device).get(side)
        if prov is None:  # LatencyModel.from_store refuses a missing profile first
            continue
        fp = prov["fingerprint"]
        local = is_local(app, device, fp, prov["source"])
        foreign = local and not machine.same_machine(fp, here)
        out.append(ProfileUse(app.name, device, side, fp, prov["source"], prov["measured_at"], local,
                              here if foreign else None, app_flags(app, store.storage)))
    return out


def model_uses(store, app: App, devices: tuple[str, str], here: dict | None = None) -> list[ProfileUse]:
    """The profiles of a latency model on (edge, cloud) devices."""
    return profile_uses(store, app, zip(devices, ("edge", "cloud")), here)


def warn_foreign(uses: Iterable[ProfileUse], file: TextIO | None = None) -> list[str]:
    """One warning line per foreign profile, on stderr (or `file`); returns the lines."""
    lines = [u.warning() for u in uses if u.foreign]
    for line in lines:
        print(line, file=file or sys.stderr)
    return lines


def describe_uses(uses: Iterable[ProfileUse]) -> str:
    """The profiles in one line: 'cpu-edge (edge): AMD EPYC, 2 CPUs, 2026-...; cpu-cloud (cloud): ...'"""
    return "; ".join(u.describe() + (", not this machine (see the warning)" if u.foreign else "") for u in uses)
