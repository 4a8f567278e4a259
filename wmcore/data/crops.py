"""Geometric views of one (image, mask) pair: random training crops, centre crops, flips.

Functions of uint8 arrays: image (H, W, 3), mask (H, W) with 0/255 (a downscaled view is resized by
PIL or by torch's uint8 kernel, `loader.multiscale_resize`). Every random
choice comes from the `numpy.random.Generator` passed in, so a view is a function of that
generator's seed alone (the dataset seeds it from (seed, epoch, index)). Images smaller than
the crop are reflect-padded; image and mask are padded the same way, so labels stay aligned.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Pair = tuple[np.ndarray, np.ndarray]
RESIZERS = ("pil", "torch")  # loader.multiscale_resize


def pad_to(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> Pair:
    """Reflect-pad both arrays (evenly on both sides) to at least (height, width)."""
    h, w = mask.shape
    dh, dw = max(0, height - h), max(0, width - w)
    if not dh and not dw:
        return image, mask
    pads = ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2))
    return np.pad(image, (*pads, (0, 0)), mode="reflect"), np.pad(mask, pads, mode="reflect")


def centre_crop(image: np.ndarray, mask: np.ndarray, crop: int) -> Pair:
    """The central crop x crop window (padded first when the image is smaller)."""
    image, mask = pad_to(image, mask, crop, crop)
    h, w = mask.shape
    y, x = (h - crop) // 2, (w - crop) // 2
    return image[y : y + crop, x : x + crop], mask[y : y + crop, x : x + crop]


def _resize_torch(array: np.ndarray, side: int) -> np.ndarray:
    """torch's antialiased bilinear resize of a uint8 (H, W[, C]) array (its uint8 kernel; within 2 grey
    levels of PIL's, about 2x faster on one core)."""
    x = torch.from_numpy(np.ascontiguousarray(array))
    x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]  # HWC memory read as channels-last NCHW
    small = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
    return small.permute(1, 2, 0).numpy() if array.ndim == 3 else small[0].numpy()


def _resize_pair(image: np.ndarray, mask: np.ndarray, side: int, resize: str = "pil") -> Pair:
    """Antialiased bilinear resize to side x side (PIL's or torch's, `RESIZERS`); the mask is re-binarised
    at 50 %."""
    if resize == "torch":
        small, small_mask = _resize_torch(image, side), _resize_torch(mask, side)
    else:
        size = (side, side)
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        small_mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.BILINEAR))
    return small, np.where(small_mask >= 128, 255, 0).astype(np.uint8)


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    multiscale_share: float = 0.0,
    min_scale: float = 0.5,
    resize: str = "pil",
) -> Pair:
    """A random crop x crop view; with probability `multiscale_share` from a downscaled image.

    A downscaled view by factor s in [min_scale, 1) is taken as a (crop / s)-sided window of the
    full image resized to crop: the same pixels as downscaling the whole image first, for the
    cost of resizing one window. s never goes below crop / min(H, W) (the window must fit), so
    images too small to downscale give a plain crop. `resize` picks the resize implementation
    (`RESIZERS`; the random draws are the same for both).
    """
    h, w = mask.shape
    lowest = max(min_scale, crop / min(h, w))
    if rng.random() < multiscale_share and lowest < 1.0:
        window = min(min(h, w), round(crop / rng.uniform(lowest, 1.0)))
        y, x = int(rng.integers(0, h - window + 1)), int(rng.integers(0, w - window + 1))
        return _resize_pair(image[y : y + window, x : x + window], mask[y : y + window, x : x + window], crop, resize)
    image, mask = pad_to(image, mask, crop, crop)
    h, w = mask.shape
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return image[y : y + crop, x : x + crop], mask[y : y + crop, x : x + crop]


def random_flips(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Horizontal and vertical flips, each with probability 1/2 (views, no copy)."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    return image, mask
