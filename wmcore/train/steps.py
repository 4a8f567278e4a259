"""The two steps of the training loop: one optimizer step and one validation pass.

`train_step` = accumulate gradients over N micro-batches (loss / N; under DDP the gradient
all-reduce runs only on the last micro-batch) -> skip if the loss is not finite -> unscale and
clip -> optimizer step -> zero_grad(set_to_none). `validation_step` accumulates confusion
counts and threshold histograms on the device and reads them back once at the end (under DDP
each rank validates its share and the counts are summed over ranks first).
Both take a `StepTools` bundle so the loop can switch precision, memory format and model
(eager or compiled) without the steps knowing which.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from wmcore.data.dataset import as_float
from wmcore.metrics import best_threshold, confusion_counts, scores_from_counts, threshold_histograms
from wmcore.train.distributed import sum_across_ranks

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepTools:
    """What a step needs besides data. `model` may be compiled / DDP-wrapped; the steps do not care.

    Attributes:
        device: where the step runs.
        amp_dtype: autocast dtype when `amp` is on.
        amp: run forward passes under torch.autocast.
        channels_last: move inputs to NHWC (the model must have been converted too).
        grad_clip: max global gradient norm; 0 = no clipping.
    """

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype = torch.float32
    amp: bool = False
    channels_last: bool = False
    grad_clip: float = 0.0

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def to_device(self, batch: Batch) -> Batch:
        x, y = batch
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.device, non_blocking=True, memory_format=fmt)
        return as_float(x, y.to(self.device, non_blocking=True))  # uint8 batches become float here, on the device


def _no_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync() on all but the last micro-batch (the all-reduce is paid once per step)."""
    ddp = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    if last or not isinstance(ddp, DistributedDataParallel) or not dist.is_initialized():
        return contextlib.nullcontext()
    return ddp.no_sync()


def accumulate_gradients(tools: StepTools, micro_batches: Sequence[Batch]) -> torch.Tensor:
    """Backward of sum_i loss_i / N over N micro-batches; returns that loss (detached, on device)."""
    n = len(micro_batches)
    total = torch.zeros((), device=tools.device)
    for i, batch in enumerate(micro_batches):
        x, y = tools.to_device(batch)
        with _no_sync(tools.model, last=i == n - 1):
            with tools.autocast():
                loss = tools.loss_fn(tools.model(x), y) / n
            tools.scaler.scale(loss).backward()
        total += loss.detach()
    return total


def clip_gradients(tools: StepTools) -> float | None:
    """Unscale (fp16) and clip the global gradient norm to grad_clip; returns the norm before clipping."""
    if tools.grad_clip <= 0:
        return None
    tools.scaler.unscale_(tools.optimizer)
    params = [p for group in tools.optimizer.param_groups for p in group["params"]]
    return float(torch.nn.utils.clip_grad_norm_(params, tools.grad_clip))


def snapshot_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) pairs of the model's buffers (BatchNorm running statistics: a few KiB)."""
    return [(b, b.detach().clone()) for b in model.buffers()]


def restore_buffers(snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buffer, saved in snapshot:
            buffer.copy_(saved)


def train_step(tools: StepTools, micro_batches: Sequence[Batch]) -> dict[str, float | bool | None]:
    """One optimizer step over `micro_batches`; returns {"loss", "grad_norm", "skipped"} (plain numbers).

    A non-finite loss (or, without a GradScaler, a non-finite gradient norm) skips the update:
    the caller counts skips and stops the run after too many in a row. A skipped step changes
    nothing: the BatchNorm running statistics its forward passes updated (with NaN, for a NaN
    batch) are put back too. With fp16 a GradScaler already skips steps whose gradients overflow
    and lowers its scale, so those are not skips.
    """
    buffers = snapshot_buffers(tools.model)
    total = accumulate_gradients(tools, micro_batches)
    if dist.is_available() and dist.is_initialized():  # every rank must take the same skip decision
        dist.all_reduce(total)
        total /= dist.get_world_size()
    loss = float(total)  # one host sync per optimizer step
    scaled = tools.scaler.is_enabled()
    if not math.isfinite(loss):
        if scaled:  # lower the scale as an overflowing step would, without stepping
            tools.scaler.update(tools.scaler.get_scale() * tools.scaler.get_backoff_factor())
        tools.optimizer.zero_grad(set_to_none=True)
        restore_buffers(buffers)
        return {"loss": loss, "grad_norm": None, "skipped": True}
    norm = clip_gradients(tools)
    if norm is not None and not math.isfinite(norm) and not scaled:
        tools.optimizer.zero_grad(set_to_none=True)
        restore_buffers(buffers)
        return {"loss": loss, "grad_norm": norm, "skipped": True}
    tools.scaler.step(tools.optimizer)
    tools.scaler.update()
    tools.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "grad_norm": norm, "skipped": False}


@torch.inference_mode()
def validation_step(tools: StepTools, batches: Iterable[Batch], bins: int = 256) -> dict[str, float]:
    """Loss, F1@0.5, best-threshold F1 and IoU@0.5 over `batches`, model in eval mode.

    Counts and histograms stay on the device until the end (one transfer per validation).
    Under DDP `batches` is this rank's share; counts, histograms, loss and images are summed
    over ranks (one all-reduce each for integers and the loss), so every rank returns the
    scores of the whole validation set.
    Returns {"val_loss", "val_f1", "val_f1_best", "val_threshold", "val_iou", "val_images"}.
    """
    model = tools.model
    was_training = model.training
    model.eval()
    counts = torch.zeros(4, dtype=torch.long, device=tools.device)
    hist = torch.zeros(2, bins, dtype=torch.long, device=tools.device)
    loss_sum, images = torch.zeros((), device=tools.device), 0
    try:
        for batch in batches:
            x, y = tools.to_device(batch)
            with tools.autocast():
                logits = model(x)
            loss_sum += tools.loss_fn(logits, y) * x.shape[0]
            images += x.shape[0]
            probs, truth = torch.sigmoid(logits.float()), y > 0.5
            counts += confusion_counts(probs >= 0.5, truth)
            hist += threshold_histograms(probs, truth, bins)
    finally:
        model.train(was_training)
    totals = sum_across_ranks(torch.cat([counts, hist.flatten(), counts.new_tensor([images])])).cpu()
    counts, hist, images = totals[:4], totals[4:-1].view(2, bins), int(totals[-1])
    loss_sum = sum_across_ranks(loss_sum)
    scores = scores_from_counts(counts)
    threshold, f1_best = best_threshold(hist) if hist[0].sum() > 0 else (0.5, float(scores["f1"]))
    return {
        "val_loss": float(loss_sum) / max(1, images),
        "val_f1": float(scores["f1"]),
        "val_f1_best": f1_best,
        "val_threshold": threshold,
        "val_iou": float(scores["iou"]),
        "val_images": images,
    }
