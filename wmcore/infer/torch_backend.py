"""PyTorch inference backend: uint8 tiles in, float32 probabilities out.

Optimizations are switches on one code path (naive = all off): channels_last
(NHWC input needs no transpose copy: the uint8 batch is already NHWC), autocast
fp16/bf16 on CUDA only (measured slower on this CPU), pinned host memory and
non_blocking copies on CUDA, and `torch.inference_mode`.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from wmcore.infer.batching import check_budget
from wmcore.runtime.device import autocast_dtype


def estimate_batch_mb(n: int, height: int, width: int, activation_channels: int) -> float:
    """Rough peak activation memory of a forward pass on an (n, 3, height, width) batch, MB.

    `activation_channels`: float32 values per input pixel alive at the peak (the model's
    `activation_channels`; a UNet's skips hold ~2 * base_width at full resolution and its last
    decoder stage ~4 * base_width more).
    """
    return n * height * width * 4 * activation_channels / 2**20


class TorchBackend:
    """Runs a segmentation model (UNet or TextUNet) on batches of tiles.

    Args:
        model: the model (moved to `device`, eval mode).
        device: torch device.
        channels_last, amp, non_blocking: optimization switches (see params.predict).
        precision: autocast dtype name when amp is on (params.base.precision).
        host_memory_budget_mb: CPU only: a batch estimated above it raises HostMemoryBudgetExceeded.
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        channels_last: bool = True,
        amp: bool = False,
        precision: str = "fp32",
        non_blocking: bool = True,
        host_memory_budget_mb: float = 0.0,
    ) -> None:
        self.device, self.channels_last = device, channels_last
        self.activation_channels, self.multiple = model.activation_channels, model.multiple
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device, memory_format=fmt)
        cuda = device.type == "cuda"
        self.amp_dtype = autocast_dtype(precision) if amp and cuda and precision != "fp32" else None
        self.non_blocking = non_blocking and cuda
        self.budget_mb = 0.0 if cuda else host_memory_budget_mb

    def estimate_mb(self, n: int, height: int, width: int) -> float:
        return estimate_batch_mb(n, height, width, self.activation_channels)

    @torch.inference_mode()
    def run(self, tiles: np.ndarray) -> np.ndarray:
        """tiles: uint8 (N, h, w, 3) -> float32 probabilities (N, h, w) in [0, 1]."""
        n, h, w = tiles.shape[:3]
        check_budget(self.estimate_mb(n, h, w), self.budget_mb)
        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.non_blocking:
            x = x.pin_memory()
        # NHWC bytes viewed as NCHW are channels_last strides: no copy; naive mode makes it contiguous.
        x = x.to(self.device, non_blocking=self.non_blocking).permute(0, 3, 1, 2).float().div_(255.0)
        if not self.channels_last:
            x = x.contiguous()
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        with autocast:
            logits = self.model(x)
        return torch.sigmoid(logits.float())[:, 0].cpu().numpy()
