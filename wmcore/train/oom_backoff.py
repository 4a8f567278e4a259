"""Out-of-memory back-off for training: smaller micro-batches, same images per optimizer step.

When an optimizer step runs out of memory (CUDA, or the host allocator: `is_oom_error`), its
partial gradients are dropped and the same images are tried again cut into twice as many
micro-batches of half the size. Gradient accumulation over the pieces keeps the effective batch
(images per optimizer step), so the step count, the LR schedule and the data order do not change.
The cut stays for the rest of the run: memory that ran out once would run out again. With one
image per micro-batch there is nothing left to cut, and a WmError says which settings to lower.

Under DDP one rank cannot cut alone (the others would wait in its gradient all-reduce), so there
an out-of-memory step is an error too. Out of memory is expected in the forward and backward
passes; one inside the optimizer update itself (after an fp16 GradScaler unscaled) is not retried.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from wmcore.errors import WmError, one_line
from wmcore.runtime.memory import is_oom_error
from wmcore.train.steps import Batch, StepTools, restore_buffers, snapshot_buffers, train_step

log = logging.getLogger(__name__)


def cut_micro_batches(micro: Sequence[Batch], pieces: int) -> list[Batch]:
    """Each (x, y) of `micro` cut along the batch axis into up to `pieces` parts (no empty ones)."""
    if pieces == 1:
        return list(micro)
    out: list[Batch] = []
    for x, y in micro:
        parts = min(pieces, int(x.shape[0]))
        out += list(zip(torch.tensor_split(x, parts), torch.tensor_split(y, parts), strict=True))
    return out


class MicroBatchBackoff:
    """Runs optimizer steps, cutting micro-batches finer after each out-of-memory error.

    Attributes:
        pieces: every loader micro-batch is cut into this many parts (1 = as loaded); doubles per OOM.
        backoffs: out-of-memory errors recovered from so far.
    """

    def __init__(self) -> None:
        self.pieces = 1
        self.backoffs = 0

    def step(self, tools: StepTools, micro: Sequence[Batch]) -> dict[str, Any]:
        """`train_step` over `micro` (one optimizer step), retried with finer micro-batches on OOM."""
        while True:
            buffers = snapshot_buffers(tools.model)
            try:
                return train_step(tools, cut_micro_batches(micro, self.pieces))
            except (RuntimeError, MemoryError) as exc:
                if not is_oom_error(exc):
                    raise
                reason = one_line(exc, keep=1)
            # Outside the except block: the failed attempt's tensors (held by the traceback) are free now.
            # Undo what the pieces that did finish changed: their gradients and BatchNorm statistics.
            tools.optimizer.zero_grad(set_to_none=True)
            restore_buffers(buffers)
            self._back_off(micro, reason)

    def _back_off(self, micro: Sequence[Batch], reason: str) -> None:
        largest = max(int(x.shape[0]) for x, _ in micro)
        now = -(-largest // self.pieces)  # images in the largest micro-batch of the failed attempt
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise WmError(
                f"out of memory in a training step at micro-batch {now} ({reason}); under DDP lower "
                "train.batch_size and raise train.grad_accum_steps (same effective batch)"
            )
        if now <= 1:
            raise WmError(
                f"out of memory in a training step even at 1 image per micro-batch ({reason}); lower train.crop "
                "(or the progressive crops), model.base_width or model.depth"
            )
        self.pieces *= 2
        self.backoffs += 1
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning(
            "out of memory at micro-batch %d (%s); retrying the step as micro-batches of %d, "
            "accumulated to the same %d images per optimizer step",
            now,
            reason,
            -(-largest // self.pieces),
            sum(int(x.shape[0]) for x, _ in micro),
        )
