"""UNet model, its construction from params, and size information."""

from wmcore.model.info import count_flops, count_parameters
from wmcore.model.unet import UNet, build_model

__all__ = ["UNet", "build_model", "count_flops", "count_parameters"]
