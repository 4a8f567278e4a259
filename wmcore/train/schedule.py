"""What changes over a training run: the learning rate and the progressive crop/batch stage.

Learning rate. A pure function of *progress* p in [0, 1]: linear warm-up from min_lr to the
peak over the first `warmup_fraction`, then

    cosine    min + (1 - min) * (1 + cos(pi q)) / 2      (q = progress after warm-up, 0..1)
    onecycle  min + (1 - min) * (1 - q)                  (Smith's triangle: linear down)
    constant  1

as a factor of the peak LR. Warm-up starts at min_lr rather than 0 so the first step is not
wasted. Progress is measured per optimizer step by `RunProgress`:

    p = max(steps done / steps planned, seconds spent / seconds budgeted)

Without a time budget this is the classic step schedule (deterministic: resume reproduces it).
With `train.max_minutes`, whichever runs out first drives the schedule: on a slow or shared
machine the time term dominates and the cosine reaches its minimum exactly when the budget
ends; on a fast one the planned epochs end first. No step-time estimate is needed, so
stages with different step costs (progressive crops) and a compile warm-up cannot skew it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from wmcore.config import ProgressiveStage, SchedulerParams


def lr_factor(progress: float, kind: str, warmup_fraction: float, min_lr_ratio: float) -> float:
    """LR as a fraction of the peak at `progress` in [0, 1] (clamped); see the module docstring."""
    p = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and p < warmup_fraction:
        return min_lr_ratio + (1.0 - min_lr_ratio) * p / warmup_fraction
    if kind == "constant":
        return 1.0
    q = (p - warmup_fraction) / max(1e-12, 1.0 - warmup_fraction)
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * q))
    if kind == "onecycle":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - q)
    raise ValueError(f"train.scheduler.kind: unknown schedule {kind!r}; use cosine, onecycle or constant")


@dataclass
class RunProgress:
    """Progress of a run in optimizer steps and wall-clock seconds (see the module docstring).

    Attributes:
        planned_steps: optimizer steps of all planned epochs.
        budget_s: wall-clock budget, s; 0 = none.
        reserve_s: seconds kept back at the end of the budget (the final validation).
        elapsed_before_s: seconds spent by earlier sessions of this run (resume).
    """

    planned_steps: int
    budget_s: float = 0.0
    reserve_s: float = 0.0
    elapsed_before_s: float = 0.0

    def __post_init__(self) -> None:
        self._started = time.perf_counter()

    def elapsed_s(self) -> float:
        return self.elapsed_before_s + time.perf_counter() - self._started

    def time_fraction(self) -> float:
        if self.budget_s <= 0:
            return 0.0
        return self.elapsed_s() / max(1e-9, self.budget_s - self.reserve_s)

    def fraction(self, steps_done: int) -> float:
        return max(steps_done / max(1, self.planned_steps), self.time_fraction())

    def out_of_time(self) -> bool:
        return self.budget_s > 0 and self.time_fraction() >= 1.0


class LRSchedule:
    """Sets the LR of every param group (times its `lr_scale`) from run progress; `state_dict` for checkpoints."""

    def __init__(self, optimizer, peak_lr: float, params: SchedulerParams) -> None:
        self.optimizer, self.peak_lr, self.params = optimizer, peak_lr, params
        self.last_lr = peak_lr * lr_factor(0.0, params.kind, params.warmup_fraction, params.min_lr_ratio)

    def update(self, progress: float) -> float:
        """Apply the LR for `progress` before an optimizer step; returns it."""
        p = self.params
        self.last_lr = self.peak_lr * lr_factor(progress, p.kind, p.warmup_fraction, p.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr * group.get("lr_scale", 1.0)
        return self.last_lr

    def state_dict(self) -> dict:
        return {"kind": self.params.kind, "peak_lr": self.peak_lr, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        self.last_lr = float(state.get("last_lr", self.last_lr))


@dataclass(frozen=True)
class Stage:
    """Crop side (px) and micro-batch size used for one epoch."""

    crop: int
    batch_size: int


def stage_epoch(epoch: int, progress: float, epochs: int) -> int:
    """The epoch whose progressive stage `epoch` uses: `epoch`, or later when the run is further on.

    Stages are planned in epochs (`until_epoch`). With a time budget a run may end after a few
    of its planned epochs; mapping its progress p in [0, 1] onto the plan (epoch 1 + floor(p x
    epochs)) walks it through every stage in proportion, so a budgeted run still ends on the
    large crops. Without a budget p = steps done / steps planned, which gives `epoch` back.
    """
    return min(epochs, max(epoch, 1 + int(progress * epochs)))


def stage_for_epoch(epoch: int, stages: list[ProgressiveStage], default: Stage) -> Stage:
    """The progressive stage of 1-based `epoch`: the first with epoch < until_epoch, else the last.

    With no stages (progressive training off) every epoch uses `default`.
    """
    if not stages:
        return default
    for stage in stages:
        if epoch < stage.until_epoch:
            return Stage(stage.crop, stage.batch_size)
    return Stage(stages[-1].crop, stages[-1].batch_size)
