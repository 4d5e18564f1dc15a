"""Limit the memory of an edge device's processes with a cgroup v1 memory group, and read what it saw.

    set_group_limit("coinfer-tb-123", parse_size("512M"))    # create / update the group
    procs_file("coinfer-tb-123")                              # write a pid there to join it
    stats("coinfer-tb-123")                                   # MemoryStats: limit, peak, failcnt, OOM kills

The group is made under this process's own memory cgroup (`/proc/self/cgroup`), so whatever limits
that one has still hold. `memory.limit_in_bytes` caps its RAM, and `memory.memsw.limit_in_bytes`
(RAM + swap, present when the kernel accounts swap) is set to the same value, so the limit cannot be
escaped into swap. A group over its limit first reclaims its page cache (file pages: the edge's
shared libraries and weights read again from disk), then the kernel's OOM killer kills one of its
processes (`memory.oom_control`'s `oom_kill` counts them; `memory.failcnt` counts the times a charge
hit the limit). Needs root and cgroup v1; `memory_support()` says why not.

A process's own peak resident set is `VmHWM` of /proc/PID/status (`peak_rss`); `reset_peak_rss`
(clear_refs 5) starts it again from the current RSS, as `reset_peak` does the group's
`memory.max_usage_in_bytes`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cli.errors import CoInferError
from devices.cpuquota import child_group, remove_group_dir

MEM_ROOT = Path("/sys/fs/cgroup/memory")
UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_size(text: str) -> int:
    """'512M', '1G', '65536k' or a number of bytes -> bytes (K, M, G: powers of 1024); positive only."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?)i?b?\s*", str(text).lower())
    if not m:
        raise CoInferError(f"bad memory size {text!r}: expected e.g. 512M, 1G or a number of bytes")
    value = int(float(m.group(1)) * UNITS[m.group(2)])
    if value <= 0:
        raise CoInferError(f"a memory limit must be positive, got {text!r}")
    return value


def own_root() -> Path:
    """The memory cgroup this process is in (the parent of the groups made here)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(","):
                return MEM_ROOT / rel.lstrip("/")
    except (OSError, ValueError):
        pass
    return MEM_ROOT


def memory_support() -> str | None:
    """None when a memory limit can be applied here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not root"
    if not (own_root() / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {MEM_ROOT}"
    return None


def group_path(group: str) -> Path:
    return child_group(own_root(), group)


def procs_file(group: str) -> Path:
    """Write a pid here to move that process into the group (its children are born in it)."""
    return group_path(group) / "cgroup.procs"


def _write(path: Path, value: int) -> None:
    try:
        path.write_text(str(value))
    except OSError as exc:
        raise CoInferError(f"cannot set {path.name} of {path.parent.name} to {value} bytes: {exc.strerror}") from None


def set_group_limit(group: str, nbytes: int | None) -> Path:
    """Create (or update) the group with RAM (and RAM + swap, when accounted) limited to `nbytes` (None:
    unlimited). RAM <= RAM + swap must hold after each write: when raising, memsw goes first."""
    path = group_path(group)
    path.mkdir(exist_ok=True)
    ram, memsw = path / "memory.limit_in_bytes", path / "memory.memsw.limit_in_bytes"
    if nbytes is None:
        nbytes = -1  # the kernel's "unlimited"
        if memsw.exists():
            _write(memsw, nbytes)
        _write(ram, nbytes)
    elif not memsw.exists():
        _write(ram, nbytes)
    elif nbytes >= int(memsw.read_text()):
        _write(memsw, nbytes)
        _write(ram, nbytes)
    else:
        _write(ram, nbytes)
        _write(memsw, nbytes)
    return path


def move_pid(group: str, pid: int) -> None:
    procs_file(group).write_text(str(pid))


@dataclass(frozen=True)
class MemoryStats:
    """What a memory group saw: its limit, usage now and peak since the last `reset_peak` (bytes), the
    times a charge hit the limit (`failcnt`, RAM + swap counted too when accounted; some kernels leave it
    at 0), the processes the OOM killer killed in it (`oom_kills`, None when the kernel does not count
    them), its major page faults (`majfaults`: pages read back from disk) and the file pages it faulted
    in again soon after they were reclaimed (`refaults`: thrashing)."""

    limit: int
    usage: int
    peak: int
    failcnt: int
    oom_kills: int | None
    majfaults: int = 0
    refaults: int = 0

    def since(self, before: MemoryStats) -> MemoryStats:
        """The counters as increments since `before` (limit, usage and peak as they are now)."""
        oom = None if self.oom_kills is None or before.oom_kills is None else self.oom_kills - before.oom_kills
        return MemoryStats(self.limit, self.usage, self.peak, self.failcnt - before.failcnt, oom,
                           self.majfaults - before.majfaults, self.refaults - before.refaults)


def stats(group: str) -> MemoryStats:
    path = group_path(group)

    def read(name: str) -> int:
        f = path / name
        return int(f.read_text()) if f.exists() else 0

    oom = None
    for line in (path / "memory.oom_control").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            oom = int(value)
    stat = dict(line.split(" ", 1) for line in (path / "memory.stat").read_text().splitlines() if " " in line)
    return MemoryStats(read("memory.limit_in_bytes"), read("memory.usage_in_bytes"),
                       read("memory.max_usage_in_bytes"),
                       read("memory.failcnt") + read("memory.memsw.failcnt"), oom,
                       int(stat.get("total_pgmajfault", 0)), int(stat.get("total_workingset_refault_file", 0)))


def reset_peak(group: str) -> None:
    """Start the group's peak (`memory.max_usage_in_bytes`) again from its usage now."""
    (group_path(group) / "memory.max_usage_in_bytes").write_text("0")


def rss(pid: int) -> int:
    """Resident set of process `pid` now (VmRSS, bytes); 0 when it is gone."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss(pid: int) -> int:
    """Peak resident set of process `pid` since it started or since `reset_peak_rss` (VmHWM, bytes)."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> None:
    """Start `peak_rss(pid)` again from its RSS now (clear_refs 5); nothing when the process is gone."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def remove_group(group: str) -> None:
    """Move any process left in the group to its parent group and delete the group."""
    remove_group_dir(group_path(group))
