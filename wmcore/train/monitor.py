"""Throughput and resource monitor of the training loop.

A step's time runs from the end of the previous optimizer step to the end of this one, so
it includes waiting for data. Throughput is reported twice: `images_per_s` over steady
state (the first `warmup_steps` of the run left out: they pay for torch.compile, allocator
growth and cache filling) and `images_per_s_all` over every step; `take_epoch` gives one epoch's
own step seconds and images (history.json's epoch rows: the loop's rate per crop stage). Memory is the CUDA
allocator peak on GPU and the process peak RSS on CPU (`wmcore.runtime.memory`); cleanup
runs only above the configured usage fraction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil

from wmcore.runtime.memory import MemoryMonitor


@dataclass
class StepMonitor:
    """Per-step timing plus memory/CPU samples at log points.

    Attributes:
        memory: device memory monitor (peak, cleanup threshold).
        warmup_steps: first optimizer steps of the run excluded from steady-state throughput.
    """

    memory: MemoryMonitor
    warmup_steps: int = 2
    steps: int = 0
    _last_end: float = field(default_factory=time.perf_counter)
    _window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # seconds, images, steps
    _steady: list[float] = field(default_factory=lambda: [0.0, 0.0])  # seconds, images
    _all: list[float] = field(default_factory=lambda: [0.0, 0.0])
    _epoch: list[float] = field(default_factory=lambda: [0.0, 0.0])  # seconds, images since take_epoch

    def __post_init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # first call only starts the measurement

    def restart_clock(self) -> None:
        """Call when steps resume after other work (validation, loader creation)."""
        self._last_end = time.perf_counter()

    def step_done(self, images: int) -> float:
        """Record one optimizer step of `images` images; returns its duration, s."""
        now = time.perf_counter()
        seconds, self._last_end = now - self._last_end, now
        self.steps += 1
        for acc in (self._window, self._all, self._epoch) + ((self._steady,) if self.steps > self.warmup_steps else ()):
            acc[0] += seconds
            acc[1] += images
        self._window[2] += 1
        return seconds

    def log_point(self) -> dict[str, float]:
        """Metrics since the last log point (step time, images/s) plus memory and CPU now."""
        seconds, images, steps = self._window
        self._window[:] = [0.0, 0.0, 0.0]
        self.memory.sample()
        cleaned = self.memory.maybe_cleanup()
        return {
            "step_s": seconds / max(1.0, steps),
            "images_per_s": images / seconds if seconds > 0 else 0.0,
            "peak_mem_mb": self.memory.peak_mb(),
            "mem_mb": self.memory.samples_mb[-1],
            "cpu_percent": self._process.cpu_percent(None),
            "cleanup": float(cleaned),
        }

    def take_epoch(self) -> tuple[float, int]:
        """Step seconds and images since the last call (one epoch's steps: data waits in, validation out)."""
        seconds, images = self._epoch
        self._epoch[:] = [0.0, 0.0]
        return seconds, int(images)

    def images_per_s(self) -> float:
        """Steady-state throughput (all steps when the run was shorter than the warm-up)."""
        seconds, images = self._steady if self._steady[0] > 0 else self._all
        return images / seconds if seconds > 0 else 0.0

    def summary(self) -> dict[str, float]:
        seconds, images = self._all
        return {
            "images_per_s": round(self.images_per_s(), 3),
            "images_per_s_all": round(images / seconds, 3) if seconds > 0 else 0.0,
            "mean_step_s": round(seconds / max(1, self.steps), 4),
            "train_step_seconds": round(seconds, 2),
            **self.memory.summary(),
        }
