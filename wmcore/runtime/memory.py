"""Memory monitoring and threshold-driven cleanup.

`MemoryMonitor` reads the current and peak memory of the device work runs on:
the CUDA caching allocator on GPU, the process RSS (and its peak) on CPU.
Cleanup (`gc.collect`, `torch.cuda.empty_cache`) runs only when usage crosses
the configured fraction of the device's capacity, never on a timer: collecting
on every step costs time and frees nothing when memory is not under pressure.
"""

from __future__ import annotations

import ctypes
import gc
import resource
from dataclasses import dataclass, field

import psutil
import torch

# How allocators word it: CUDA "out of memory"; torch's CPU allocator "can't allocate memory" or
# "not enough memory", C++ kernels "std::bad_alloc" (e.g. under a ulimit -v or a cgroup limit):
# plain RuntimeErrors.
OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "bad_alloc")


def is_oom_error(exc: BaseException) -> bool:
    """True for CUDA/host out-of-memory errors (and our own HostMemoryBudgetExceeded)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError, HostMemoryBudgetExceeded)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in OOM_MARKERS)


class HostMemoryBudgetExceeded(MemoryError):
    """A CPU batch would exceed the configured host memory budget (treated as OOM)."""


def process_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def process_peak_rss_mb() -> float:
    """Peak RSS (VmHWM) of this process since start or the last `reset_process_peak_rss()`."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, never reset


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters (malloc.h)


def set_malloc_mmap_threshold(kib: int, trim_kib: int = 0) -> bool:
    """Fix glibc's mmap threshold at `kib` KiB (trim threshold `trim_kib`, 0 = twice kib); 0 = leave glibc's default.

    By default glibc raises the threshold each time a large block is freed (up to 32 MiB), so later
    activations come from the heap, whose free holes it keeps: the peak RSS of the same inference
    then varies by +-15% run to run and sits ~25% above what is live. A fixed threshold gives every
    large tensor its own mapping, returned on free: a steady, lower peak, paid in page faults
    (measured in bench/results/infer-sizes). The other way, a 32 MiB threshold with a large trim
    threshold keeps freed activations in the heap: the next pass reuses its pages instead of
    faulting in fresh ones (TextUNet at 768x576 on 2 cores: 2.2 s -> 0.11 s per image, the first
    passes with glibc's default threshold). Returns False where there is no glibc (no-op).
    """
    if kib <= 0:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = (trim_kib or 2 * kib) * 1024
        return bool(libc.mallopt(M_MMAP_THRESHOLD, kib * 1024)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim))
    except (OSError, AttributeError):  # musl, macOS, Windows: no glibc mallopt
        return False


def reset_process_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryMonitor:
    """Current/peak memory on `device` and cleanup above `threshold` (fraction of capacity)."""

    device: torch.device
    threshold: float = 0.85
    cleanups: int = 0
    samples_mb: list[float] = field(default_factory=list)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def capacity_mb(self) -> float:
        if self.is_cuda:
            return torch.cuda.get_device_properties(self.device).total_memory / 2**20
        return psutil.virtual_memory().total / 2**20

    def used_mb(self) -> float:
        if self.is_cuda:
            return torch.cuda.memory_reserved(self.device) / 2**20
        return process_rss_mb()

    def peak_mb(self) -> float:
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return process_peak_rss_mb()

    def reset_peak(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_process_peak_rss()

    def usage_fraction(self) -> float:
        if self.is_cuda:
            free, total = torch.cuda.mem_get_info(self.device)
            return 1.0 - free / total
        vm = psutil.virtual_memory()
        return 1.0 - vm.available / vm.total

    def sample(self) -> float:
        used = self.used_mb()
        self.samples_mb.append(used)
        return used

    def maybe_cleanup(self) -> bool:
        """Collect garbage and release cached blocks only if usage is above the threshold."""
        if self.usage_fraction() < self.threshold:
            return False
        self.cleanup()
        return True

    def cleanup(self) -> None:
        gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()
        self.cleanups += 1

    def summary(self) -> dict[str, float]:
        mean = sum(self.samples_mb) / len(self.samples_mb) if self.samples_mb else self.used_mb()
        return {"mem_mean_mb": round(mean, 1), "mem_peak_mb": round(self.peak_mb(), 1), "cleanups": self.cleanups}
