"""Cap the CPU of a process with a cgroup v1 CPU quota (emulates a slow edge device).

`apply_cpu_quota(0.1, "coinfer-edge")` creates /sys/fs/cgroup/cpu/<group>, sets
cfs_quota_us / cfs_period_us = 0.1 and moves the calling process into it. The period is the
shortest whose quota meets the kernel's 1 ms minimum (8 ms at 0.125 CPU), so a millisecond-scale
inference stalls for a few ms at a time instead of most of a 100 ms period. Needs root and
cgroup v1; `quota_support()` says why not, and callers then run unthrottled and say so.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000


def quota_support() -> str | None:
    """None when a CPU quota can be applied here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "not root"
    if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 CPU controller at {CPU_ROOT}"
    return None


def child_group(root: Path, group: str) -> Path:
    """The cgroup folder `group` under `root` (a plain name: no '/', not hidden); devices.memlimit's too."""
    if not group or "/" in group or group.startswith("."):
        raise ValueError(f"bad cgroup name {group!r}")
    return root / group


def group_path(group: str) -> Path:
    return child_group(CPU_ROOT, group)


def quota_period_us(cpus: float) -> int:
    """The shortest period whose quota is at least the kernel's 1 ms minimum (10 ms at most)."""
    return min(PERIOD_US, max(MIN_QUOTA_US, math.ceil(MIN_QUOTA_US / cpus)))


def set_group_quota(group: str, cpus: float) -> Path:
    """Create (or update) the cgroup with a quota of `cpus` CPUs; returns its path."""
    path = group_path(group)
    path.mkdir(exist_ok=True)
    period = quota_period_us(cpus)
    (path / "cpu.cfs_period_us").write_text(str(period))
    (path / "cpu.cfs_quota_us").write_text(str(max(MIN_QUOTA_US, int(cpus * period))))
    return path


def move_pid(group: str, pid: int) -> None:
    (group_path(group) / "cgroup.procs").write_text(str(pid))


def apply_cpu_quota(cpus: float, group: str) -> None:
    """Put the current process under a CPU quota of `cpus` CPUs (root only)."""
    reason = quota_support()
    if reason:
        raise PermissionError(f"cannot apply a CPU quota: {reason}")
    set_group_quota(group, cpus)
    move_pid(group, os.getpid())


def remove_group_dir(path: Path) -> None:
    """Move any process left in the cgroup folder `path` to its parent group and delete the folder (gone
    already: nothing to do); devices.memlimit's too."""
    if not path.exists():
        return
    for pid in (path / "cgroup.procs").read_text().split():
        try:
            (path.parent / "cgroup.procs").write_text(pid)
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def remove_group(group: str) -> None:
    """Move any process left in the group back to the root cgroup and delete the group."""
    remove_group_dir(group_path(group))


def current_quota() -> float | None:
    """The CPU quota (in CPUs) of the cgroup this process is in, None when unlimited."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if "cpu" in controllers.split(","):
                base = CPU_ROOT / rel.lstrip("/")
                quota = int((base / "cpu.cfs_quota_us").read_text())
                period = int((base / "cpu.cfs_period_us").read_text())
                return None if quota < 0 else quota / period
    except (OSError, ValueError):
        return None
    return None
