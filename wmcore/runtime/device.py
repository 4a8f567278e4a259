"""Device and thread selection.

Torch's default of one intra-op thread per *visible* core collapses (measured up
to 25x) when another process takes a core, so threads are sized to the cores
really available to this process: CPU affinity and the cgroup CPU quota (v1 or
v2, of this process's own cgroup and its parents), minus the cores other
processes of this job use (loader workers, Dask workers, DDP ranks: the
callers pass them as `reserved`). `cores_busy_elsewhere` measures what other
processes take right now; `wm tune` and `bench/suite.py` use it to show the
effect and to warn when a measurement runs on a busy machine.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cores() -> int:
    """Cores this process may really use: min(affinity, cgroup quota), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPU quota of this process in cores (quota / period), the smallest along its cgroup path; None = no limit.

    A limit can sit on any ancestor of the process's cgroup (systemd slices, Kubernetes pods),
    so every level from the process's own cgroup up to `root` is read, for v2 (cpu.max) and
    v1 (cpu.cfs_quota_us / cpu.cfs_period_us).
    """
    limits = [q for d in _cgroup_dirs(root, proc_cgroup) if (q := _quota_of(d)) is not None]
    return min(limits) if limits else None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """Folders holding this process's CPU controller files: its own cgroup, its parents, and `root`."""
    rel_paths: list[str] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            _hid, controllers, rel = line.split(":", 2)
            if controllers == "" or "cpu" in controllers.split(","):
                rel_paths.append(rel)
    except (OSError, ValueError):
        pass
    dirs: list[Path] = []
    for base in (root, root / "cpu", root / "cpu,cpuacct"):
        for rel in rel_paths or ["/"]:
            node = base / rel.lstrip("/")
            while True:  # the cgroup itself, then each parent up to `base`
                if node not in dirs:
                    dirs.append(node)
                if node == base or base not in node.parents:
                    break
                node = node.parent
    return dirs


def _quota_of(folder: Path) -> float | None:
    """Cores allowed by the CPU controller files in `folder`; None = unlimited or no such files."""
    try:
        v2 = folder / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q, p = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def thread_count(requested: int, reserved: int, cores: int) -> int:
    """Torch threads: `requested` when > 0, else `cores` minus `reserved` (cores of this job's other processes), >= 1."""
    if requested > 0:
        return requested
    return max(1, cores - max(0, reserved))


def configure_threads(requested: int = 0, reserved: int = 0) -> int:
    """Set torch intra-op threads: `requested`, or (0) the free cores minus `reserved`. Returns the count.

    `reserved`: cores other busy processes of this job take on this machine (DataLoader or
    decoding workers, other DDP ranks or Dask workers); they would otherwise fight torch's
    threads for the same cores.
    """
    n = thread_count(requested, reserved, available_cores())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def cores_busy_elsewhere(sample_s: float = 0.3) -> float:
    """Cores that other processes kept busy over the next `sample_s` seconds (0.0 = a quiet machine).

    Machine-wide CPU time minus this process's own, in cores; a snapshot, so callers use it to
    warn or to show contention, never to size threads silently.
    """
    import time

    import psutil

    me = psutil.Process()
    before_all, before_me = psutil.cpu_times(), me.cpu_times()
    time.sleep(sample_s)
    after_all, after_me = psutil.cpu_times(), me.cpu_times()
    busy = (_busy_seconds(after_all) - _busy_seconds(before_all)) - (
        (after_me.user + after_me.system) - (before_me.user + before_me.system)
    )
    return round(max(0.0, busy / sample_s), 2)


def _busy_seconds(times) -> float:
    """CPU seconds spent not idle (idle and iowait are waiting) in a psutil cpu_times record."""
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda when available else cpu; `cuda` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("base.device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
