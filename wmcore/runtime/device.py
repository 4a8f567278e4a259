"""Device and thread selection.

Torch's default of one intra-op thread per *visible* core collapses (measured up
to 25x) when another process takes a core, so threads are sized to the cores
really available to this process: CPU affinity and the cgroup CPU quota, minus
the cores other workers of this job use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def available_cores() -> int:
    """Cores this process may really use: min(affinity, cgroup quota)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        p = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q.exists() and p.exists():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def configure_threads(requested: int = 0, reserved: int = 0) -> int:
    """Set torch intra-op threads: `requested`, or (0) the free cores minus `reserved`. Returns the count."""
    n = requested if requested > 0 else max(1, available_cores() - reserved)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` -> cuda when available else cpu; `cuda` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("base.device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
