"""The CPUs this process may really use, for torch's threads and the landing's workers.

A container sees the node's CPUs (`os.cpu_count()`, and its affinity mask unless pinned);
its CPU limit is a cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), which neither shows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a cgroup v2 `cpu.max` ("<quota> <period>" in microseconds, quota
    "max" for none); None when there is no quota."""
    quota, period = text.split()
    return None if quota == "max" else int(quota) / int(period)


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """CPUs granted by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; None when the
    quota is -1 (none)."""
    quota = int(quota_text)
    return None if quota < 0 else quota / int(period_text)


def own_cgroups(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """(cgroup v2 path, cgroup v1 `cpu` controller path) of a process, from its
    /proc/<pid>/cgroup lines ("0::/path" for v2, "<n>:cpu,cpuacct:/path" for v1)."""
    unified = cpu = None
    for line in proc_self_cgroup.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            unified = path
        elif "cpu" in controllers.split(","):
            cpu = path
    return unified, cpu


def self_and_ancestors(mount: Path, cgroup_path: str) -> list[Path]:
    """The cgroup's directory under `mount` and those of its ancestors: each one's quota
    limits the process."""
    parts = Path(cgroup_path).relative_to("/").parts
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts) + 1)]


def _smallest_quota(directories: list[Path], read_quota: Callable[[Path], float | None]) -> float | None:
    quotas = []
    for directory in directories:
        try:
            quotas.append(read_quota(directory))
        except (OSError, ValueError):  # no such file (the root has no cpu.max), or unreadable
            pass
    return min((q for q in quotas if q is not None), default=None)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs this process's cgroups (v2, else v1) may use; None without a quota."""
    try:
        unified, cpu = own_cgroups(proc_self_cgroup.read_text())
    except OSError:
        return None
    if unified is not None:
        quota = _smallest_quota(self_and_ancestors(root, unified), lambda d: parse_cpu_max((d / "cpu.max").read_text()))
        if quota is not None:
            return quota
    if cpu is not None:
        return _smallest_quota(
            self_and_ancestors(root / "cpu", cpu),
            lambda d: parse_cfs_quota((d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text()),
        )
    return None


def choose_thread_count(usable_cpus: int, cpu_quota: float | None) -> int:
    """Workers or threads for `usable_cpus` CPUs (the affinity mask) under a CPU quota. A
    fractional quota rounds down: a thread that gets part of a core holds up the others at
    every parallel region."""
    if cpu_quota is not None:
        usable_cpus = min(usable_cpus, math.floor(cpu_quota))
    return max(1, usable_cpus)


def usable_cpus() -> int:
    """Whole CPUs this process may really use: its affinity mask, capped by its cgroups' CPU
    quota. `os.cpu_count()` is the node's count: in a pod limited to 2 CPUs on a 64-core
    node, 64 workers or threads would take turns on 2 CPUs."""
    return choose_thread_count(len(os.sched_getaffinity(0)), cgroup_cpu_quota())
