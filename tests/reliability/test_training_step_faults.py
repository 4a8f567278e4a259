"""Faults inside a training step: a NaN batch, and out of memory (micro-batches cut, same images per step).

Out of memory is raised where the memory would run out, in the model's forward pass, as the
error type torch raises (torch.OutOfMemoryError) whenever a micro-batch is larger than what
"fits"; a CPU cannot be made to run out of memory on cue in a shared test process. The slow test
at the end makes the allocator really fail (an address-space limit in a child process).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import wmcore.train.loop as loop
from tests.fixtures import make_tiny_prepared
from tests.reliability.wm_process import REPO, process_env
from wmcore.config import LossParams, Params, merge, validate
from wmcore.errors import WmError
from wmcore.model import UNet
from wmcore.train.loss import SegmentationLoss
from wmcore.train.oom_backoff import MicroBatchBackoff, cut_micro_batches
from wmcore.train.steps import StepTools, train_step

CPU = torch.device("cpu")


def tiny_params(prepared: Path, tmp_path: Path, **train) -> Params:
    """2 epochs x 4 steps of 4 crops of 32 px (2 x 2 accumulated), UNet(4, depth 2), one thread."""
    tree = {
        "base": {"seed": 0, "threads": 1, "device": "cpu"},
        "paths": {"prepared": str(prepared), "train_dir": str(tmp_path / "train"), "cache_dir": str(tmp_path / "cache")},
        "model": {"arch": "unet", "depth": 2, "base_width": 4},
        "train": {"epochs": 2, "max_minutes": 0, "crop": 32, "batch_size": 2, "grad_accum_steps": 2,
                  "progressive": [], "steps_per_epoch": 4, "val_crop": 32, "val_batch_size": 2, "val_subset": 2},
    }  # fmt: skip
    return validate(merge(tree, {"train": train}))


# --------------------------------------------------------------------------- NaN batch


class PoisonedLoader:
    """The run's training loader, with NaN images in the batches whose (0-based) numbers are listed."""

    def __init__(self, loader, poisoned: set[int] | None) -> None:
        self.loader, self.poisoned, self.sampler = loader, poisoned, loader.sampler
        self.served = 0

    def __iter__(self):
        for x, y in self.loader:
            if self.poisoned is None or self.served in self.poisoned:
                x = torch.full_like(x, math.nan)
            self.served += 1
            yield x, y


def poison_loader(monkeypatch, poisoned: set[int] | None) -> None:
    real = loop.make_loader
    monkeypatch.setattr(loop, "make_loader", lambda *a, **k: PoisonedLoader(real(*a, **k), poisoned))


def test_a_nan_batch_is_skipped_and_counted_and_training_continues(tmp_path, monkeypatch, caplog):
    prepared = make_tiny_prepared(tmp_path / "prepared")
    poison_loader(monkeypatch, {2})  # a micro-batch of the second optimizer step
    with caplog.at_level(logging.WARNING, logger="wmcore"):
        summary = loop.run_training(tiny_params(prepared, tmp_path))
    assert summary["nonfinite_steps"] == 1 and summary["steps"] == 2 * 4 - 1
    assert "step 2: non-finite loss nan: update skipped (1 in a row)" in caplog.text
    last = torch.load(tmp_path / "train" / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_nan_batches_in_a_row_stop_the_run_without_a_broken_checkpoint(tmp_path, monkeypatch):
    prepared = make_tiny_prepared(tmp_path / "prepared")
    poison_loader(monkeypatch, None)  # every batch
    with pytest.raises(WmError, match=r"3 non-finite losses in a row \(train.max_nonfinite_steps = 3\)"):
        loop.run_training(tiny_params(prepared, tmp_path, max_nonfinite_steps=3))
    assert not (tmp_path / "train" / "last.pt").exists() and not (tmp_path / "train" / "best.pt").exists()


# --------------------------------------------------------------------------- out of memory


class FitsOnly(nn.Module):
    """`model`, but its forward pass runs out of memory on more than `images` images at once."""

    def __init__(self, model: nn.Module, images: int) -> None:
        super().__init__()
        self.model, self.images = model, images
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        if x.shape[0] > self.images:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0] * 64} MiB")
        return self.model(x)


def _tools(model: nn.Module) -> StepTools:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return StepTools(model, SegmentationLoss(LossParams()), optimizer, scaler, CPU)


def _micro(n_batches: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(size, 3, 16, 16, generator=g), (torch.rand(size, 1, 16, 16, generator=g) < 0.3).float())
            for _ in range(n_batches)]  # fmt: skip


@pytest.mark.parametrize(("batch", "fits", "pieces"), [(8, 4, 2), (8, 2, 4), (8, 1, 8), (6, 2, 4)])
def test_oom_cuts_micro_batches_and_keeps_the_images_per_step(batch, fits, pieces, caplog):
    torch.manual_seed(0)
    reference = UNet(base_width=4, depth=2)
    limited = FitsOnly(UNet(base_width=4, depth=2), fits)
    limited.model.load_state_dict(reference.state_dict())
    micro = _micro(2, batch)
    backoff = MicroBatchBackoff()
    with caplog.at_level(logging.WARNING, logger="wmcore"):
        result = backoff.step(_tools(limited), micro)
    assert not result["skipped"] and backoff.pieces == pieces
    assert sum(b for b in limited.batches if b <= fits) == 2 * batch  # every image seen once by the step that counted
    expected = train_step(_tools(reference), cut_micro_batches(micro, pieces))  # the same step, cut by hand
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    for a, b in zip(limited.model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7), "the step must equal accumulation over the cut micro-batches"
    assert f"accumulated to the same {2 * batch} images per optimizer step" in caplog.text


def test_oom_at_one_image_is_a_clear_error_and_other_errors_pass_through():
    model = FitsOnly(UNet(base_width=4, depth=2), 0)
    with pytest.raises(WmError, match=r"even at 1 image per micro-batch .*lower train.crop"):
        MicroBatchBackoff().step(_tools(model), _micro(1, 4))

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    broken = Broken()
    broken.w = nn.Parameter(torch.zeros(1))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        MicroBatchBackoff().step(_tools(broken), _micro(1, 4))


def limit_training_batches(place):
    """place_model, then make the model's training forward run out of memory above 1 image."""

    def placed(model, switches, device):
        model = place(model, switches, device)
        forward = model.forward

        def limited(x):
            if model.training and x.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(x)

        model.forward = limited
        return model

    return placed


def test_oom_in_the_training_loop_keeps_the_schedule(tmp_path, monkeypatch):
    prepared = make_tiny_prepared(tmp_path / "prepared")
    free = loop.run_training(tiny_params(prepared, tmp_path / "free"))
    monkeypatch.setattr(loop, "place_model", limit_training_batches(loop.place_model))
    tight = loop.run_training(tiny_params(prepared, tmp_path / "tight"))
    assert (tight["steps"], tight["epochs"]) == (free["steps"], free["epochs"]) == (8, 2)
    history = json.loads((tmp_path / "tight" / "train" / "history.json").read_text())
    assert [(e["step"], e["batch_size"]) for e in history["epochs"]] == [(4, 2), (8, 2)]  # loader batch unchanged


# --------------------------------------------------------------------------- a real allocator failure

REAL_OOM_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import psutil
    import wmcore.train.loop as loop
    from wmcore.config import validate

    params = validate(json.loads(sys.argv[1]))
    headroom_mb = float(sys.argv[2])
    train_epoch = loop.train_epoch

    def limited(run, epoch):
        # The limit applies to the training steps only: validation and checkpoints run free.
        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + int(headroom_mb * 2**20), resource.RLIM_INFINITY))
        try:
            return train_epoch(run, epoch)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    loop.train_epoch = limited
    print(json.dumps(loop.run_training(params)))
    """
)


@pytest.mark.slow
def test_real_host_oom_backs_off_under_an_address_space_limit(tmp_path):
    """crop 256 x batch 8 needs ~300 MiB more than crop 256 x batch 4; the limit allows ~200 MiB."""
    prepared = make_tiny_prepared(tmp_path / "prepared", n_train=8, n_val=1, n_test=1, size=(256, 256))
    params = tiny_params(prepared, tmp_path, crop=256, batch_size=8, grad_accum_steps=1, steps_per_epoch=2,
                         epochs=1, val_subset=1, val_batch_size=1)  # fmt: skip
    env = process_env(tmp_path, MALLOC_MMAP_THRESHOLD_="65536")  # big blocks are unmapped when freed
    done = subprocess.run([sys.executable, "-c", REAL_OOM_SCRIPT, json.dumps(params.model_dump(mode="json")), "200"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "can't allocate memory" in done.stderr and "accumulated to the same 8 images" in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 2
