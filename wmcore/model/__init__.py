"""Segmentation models (UNet, TextUNet), their construction from params or checkpoints, and size information."""

from wmcore.model.factory import build_model, model_from_args
from wmcore.model.info import count_flops, count_parameters
from wmcore.model.text_unet import TextUNet
from wmcore.model.unet import UNet

__all__ = ["TextUNet", "UNet", "build_model", "count_flops", "count_parameters", "model_from_args"]
