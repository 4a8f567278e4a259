"""Model size: parameter count and multiply-accumulate FLOPs per image."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, height: int, width: int, in_channels: int = 3) -> int:
    """FLOPs (2 x MACs) of one forward pass on a (1, C, H, W) image, from conv hooks."""
    total = 0

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += 2 * k * out.numel()
        elif isinstance(mod, nn.ConvTranspose2d):
            inp = _inp[0]
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels
            total += 2 * k * inp.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, in_channels, height, width))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
