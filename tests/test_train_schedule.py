"""Learning-rate schedule values, time-budget progress and progressive stages."""

from __future__ import annotations

import time

import pytest
import torch

from wmcore.config import ConfigError, ProgressiveStage, SchedulerParams, validate
from wmcore.train.schedule import LRSchedule, RunProgress, Stage, lr_factor, stage_epoch, stage_for_epoch


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "constant"])
@pytest.mark.parametrize(("progress", "expected"), [(0.0, 0.1), (0.05, 0.55), (0.1, 1.0)])
def test_warm_up_is_linear_from_min_to_peak(kind, progress, expected):
    assert lr_factor(progress, kind, warmup_fraction=0.1, min_lr_ratio=0.1) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kind", "progress", "expected"),
    [
        ("cosine", 0.55, 0.55),  # half-way through the decay: (1 + min) / 2
        ("cosine", 1.0, 0.1),
        ("cosine", 0.325, 0.1 + 0.9 * 0.5 * (1 + 0.7071067811865476)),  # a quarter of the decay
        ("onecycle", 0.55, 0.55),
        ("onecycle", 0.325, 0.1 + 0.9 * 0.75),
        ("onecycle", 1.0, 0.1),
        ("constant", 0.7, 1.0),
        ("cosine", 1.5, 0.1),  # past the end: clamped
    ],
)
def test_decay_values(kind, progress, expected):
    assert lr_factor(progress, kind, warmup_fraction=0.1, min_lr_ratio=0.1) == pytest.approx(expected)


def test_no_warm_up_starts_at_peak():
    assert lr_factor(0.0, "cosine", 0.0, 0.02) == pytest.approx(1.0)


def test_schedule_sets_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1.0)
    schedule = LRSchedule(opt, 0.01, SchedulerParams(kind="cosine", warmup_fraction=0.5, min_lr_ratio=0.0))
    assert schedule.update(0.25) == pytest.approx(0.005)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.005])
    assert schedule.state_dict()["last_lr"] == pytest.approx(0.005)


def test_progress_takes_the_later_of_steps_and_time():
    steps_only = RunProgress(planned_steps=100)
    assert steps_only.fraction(25) == pytest.approx(0.25)
    assert not steps_only.out_of_time()
    budget = RunProgress(planned_steps=100, budget_s=10.0, elapsed_before_s=6.0)  # resumed after 6 s
    assert budget.fraction(0) == pytest.approx(0.6, abs=0.05)
    assert budget.fraction(90) == pytest.approx(0.9)
    budget.reserve_s = 4.0  # the final validation must fit: the budget for steps is 6 s
    assert budget.out_of_time()


def test_time_budget_runs_out():
    progress = RunProgress(planned_steps=10**9, budget_s=0.05)
    assert not progress.out_of_time()
    time.sleep(0.06)
    assert progress.out_of_time() and progress.fraction(0) >= 1.0


def test_stage_for_epoch_uses_until_epoch_then_the_last_stage():
    stages = [
        ProgressiveStage(until_epoch=3, crop=64, batch_size=8),
        ProgressiveStage(until_epoch=5, crop=128, batch_size=2),
    ]
    got = [stage_for_epoch(e, stages, Stage(256, 1)) for e in range(1, 7)]
    assert got == [Stage(64, 8)] * 2 + [Stage(128, 2)] * 4
    assert stage_for_epoch(1, [], Stage(256, 1)) == Stage(256, 1)


def test_stages_must_be_in_order():
    bad = [{"until_epoch": 5, "crop": 64, "batch_size": 2}, {"until_epoch": 5, "crop": 96, "batch_size": 2}]
    with pytest.raises(ConfigError, match="until_epoch must increase"):
        validate({"train": {"progressive": bad}})


@pytest.mark.parametrize(
    ("epoch", "progress", "epochs", "expected"),
    [
        (3, 0.0, 12, 3),  # no time budget: the epoch itself
        (2, 0.5, 12, 7),  # half the budget spent after 2 epochs: the stage planned for epoch 7
        (9, 0.5, 12, 9),  # never back to an earlier stage
        (4, 0.99, 12, 12),
        (4, 1.7, 12, 12),  # over budget: capped at the last planned epoch
    ],
)
def test_stage_epoch_follows_time_progress(epoch: int, progress: float, epochs: int, expected: int) -> None:
    assert stage_epoch(epoch, progress, epochs) == expected


def test_budgeted_run_reaches_the_last_progressive_stage() -> None:
    stages = [
        ProgressiveStage(until_epoch=10, crop=128, batch_size=8),
        ProgressiveStage(until_epoch=61, crop=384, batch_size=2),
    ]
    default = Stage(256, 4)
    # a 60-epoch plan cut by its time budget after epoch 5, 60% of the budget spent
    assert stage_for_epoch(5, stages, default) == Stage(128, 8)
    assert stage_for_epoch(stage_epoch(5, 0.6, 60), stages, default) == Stage(384, 2)
