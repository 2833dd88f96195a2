"""Torch CPU threads that hold up on a machine shared with other busy processes.

The modules that use torch import this one before `import torch`: it sets two OpenMP
variables, which torch's OpenMP runtime (its bundled libgomp) reads once, when torch
starts it. A value the user set wins; once torch is imported it is too late.

- `OMP_WAIT_POLICY=PASSIVE`: by default a waiting OpenMP thread spins on its core before
  it sleeps. Beside another busy process the spinning thread takes the core from the very
  thread it waits for: the benchmark's fine-tuning (2.2-2.6 s on an idle 2-core machine) took
  8.5-49 s beside one CPU-bound process, and 144 s with another busy neighbour. Passive
  threads sleep: 4-7 s beside it. The price is paid on an idle machine, where waking the
  threads makes the run 3.5-4.7 s (`benchmarks/training_overhead.py --loaded`).
- `OMP_NUM_THREADS`: one thread per CPU this process may really use, capped by the
  cgroup's CPU quota, which OpenMP ignores. In a cgroup granted 1 CPU on the 2-core
  machine, two threads took 27-35 s spinning and 4.5-6.5 s passive, one thread 3.8 s.
  Fewer threads when the machine is busy did not help once threads wait passively (beside
  one or two CPU-bound processes, one thread took about as long as two), so the count
  does not follow the load.

No torch here: the code location imports its modules without torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

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
        quota = _smallest_quota(self_and_ancestors(root, unified),
                                lambda d: parse_cpu_max((d / "cpu.max").read_text()))
        if quota is not None:
            return quota
    if cpu is not None:
        return _smallest_quota(self_and_ancestors(root / "cpu", cpu),
                               lambda d: parse_cfs_quota((d / "cpu.cfs_quota_us").read_text(),
                                                         (d / "cpu.cfs_period_us").read_text()))
    return None


def choose_thread_count(usable_cpus: int, cpu_quota: float | None) -> int:
    """Threads for `usable_cpus` CPUs (the affinity mask) under a CPU quota. A fractional
    quota rounds down: a thread that gets part of a core holds up the others at every
    parallel region."""
    if cpu_quota is not None:
        usable_cpus = min(usable_cpus, math.floor(cpu_quota))
    return max(1, usable_cpus)


def cpu_threads() -> int:
    """Threads for the CPUs this process may really use."""
    return choose_thread_count(len(os.sched_getaffinity(0)), cgroup_cpu_quota())


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", str(cpu_threads()))
