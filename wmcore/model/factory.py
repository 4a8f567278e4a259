"""Build a model from the `model` params group, or rebuild one from a checkpoint's `model_args`."""

from __future__ import annotations

from torch import nn

from wmcore.model.text_unet import TextUNet
from wmcore.model.unet import UNet


def build_model(
    arch: str = "unet", in_channels: int = 3, base_width: int = 16, depth: int = 4, width: int = 64, edge: int = 0
) -> nn.Module:
    """The model the `model` params group describes (its fields as keyword arguments)."""
    if arch == "text_unet":
        return TextUNet(width=width, in_channels=in_channels, edge=edge)
    if arch != "unet":
        raise ValueError(f"model.arch: unknown architecture {arch!r}; use unet or text_unet")
    if edge:
        raise ValueError(f"model.edge: the edge head is a text_unet part; set it to 0 for arch unet (got {edge})")
    return UNet(in_channels=in_channels, base_width=base_width, depth=depth)


def model_from_args(model_args: dict) -> nn.Module:
    """Rebuild a model from a checkpoint's `model_args` (checkpoints from before `arch` existed are UNets)."""
    args = dict(model_args)
    return build_model(arch=str(args.pop("arch", "unet")), **args)
