"""The prepared dataset as torch samples: (image, mask) tensors for training and evaluation.

Reads `<prepared>/manifest.jsonl` (written by `wm prepare`) and serves one split:

    image  float32 (3, H, W) in [0, 1]
    mask   float32 (1, H, W), 1 = watermark pixel

or, with `uint8` (loader.uint8_batches), the same values as uint8 (image 0-255, mask 0/1), a quarter
of the bytes through the loader's worker processes and the host-to-device copy; `as_float` turns a
batch of them into the float tensors above on the device that uses it.

Training views are random crops (reflect-padded when the image is smaller), random flips,
and with probability `multiscale_share` a crop of a randomly downscaled view of the image.
Evaluation views are deterministic centre crops, or the whole image when crop is 0/None.

Reproducibility: a training view is a function of (seed, epoch, index, repeat) only. The key
passed to `dataset[key]` carries the epoch (see `wmcore.data.loader.EpochSampler`), so the
same batches come out whatever the number of loader workers, whether they are persistent,
and whether the decoded-image cache is on (tested).

Unreadable samples are a logged skip, never a crash: files that fail a header check are left
out when the dataset is built; a sample that fails later, at decode, is replaced by the next
readable one (logged once).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wmcore.data.crops import centre_crop, random_crop, random_flips
from wmcore.data.decoded_cache import SampleDecodeError, SampleFiles, make_source
from wmcore.errors import WmError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SampleKey = int | tuple[int, ...]  # index, or (index, epoch) / (index, epoch, repeat)


def read_manifest(prepared_root: str | Path, split: str) -> tuple[list[dict[str, Any]], bytes]:
    """Manifest rows of `split` (in file order) and the raw manifest bytes (hashed by the cache)."""
    if split not in SPLITS:
        raise WmError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    path = Path(prepared_root) / "manifest.jsonl"
    if not path.is_file():
        raise WmError(f"{path}: manifest not found; run `wm prepare` first (or fix paths.prepared)")
    raw = path.read_bytes()
    rows = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if row["split"] == split:
                rows.append({"id": str(row["id"]), "image": row["image"], "mask": row["mask"]})
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise WmError(f"{path}:{number}: not a manifest row with split/id/image/mask ({exc})") from None
    return rows, raw


def probe_sample(root: Path, row: dict[str, Any]) -> SampleFiles | str:
    """Cheap header + checksum check of one sample's image and mask: SampleFiles, or why it is unusable."""
    image_path, mask_path = root / row["image"], root / row["mask"]
    try:
        sizes = []
        for path in (image_path, mask_path):
            with Image.open(path) as im:
                sizes.append(im.size)
                im.verify()  # checks the file's structure and CRCs without decoding pixels
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"unreadable ({exc})"
    if sizes[0] != sizes[1]:
        return f"image size {sizes[0]} != mask size {sizes[1]}"
    width, height = sizes[0]
    return SampleFiles(row["id"], image_path, mask_path, height, width)


def usable_samples(prepared_root: str | Path, split: str) -> tuple[list[SampleFiles], bytes]:
    """Samples of `split` that pass `probe_sample`, each skip logged; WmError if none is left."""
    root = Path(prepared_root)
    rows, raw = read_manifest(root, split)
    if not rows:
        raise WmError(
            f"{root / 'manifest.jsonl'}: split {split!r} is empty (no rows); rerun `wm prepare` "
            f"(prepare.n_{split} >= 1, or import shares that send images to it)"
        )
    samples, skipped = [], []
    for row in rows:
        probed = probe_sample(root, row)
        if isinstance(probed, str):
            skipped.append(row["id"])
            log.warning("%s split: skipping sample %s: %s", split, row["id"], probed)
        else:
            samples.append(probed)
    if skipped:
        log.warning("%s split: %d of %d samples skipped (unreadable)", split, len(skipped), len(rows))
    if not samples:
        raise WmError(f"{root / 'manifest.jsonl'}: split {split!r} has no readable samples; rerun `wm prepare`")
    return samples, raw


def to_tensors(image: np.ndarray, mask: np.ndarray, uint8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3) + (H, W) 0/255 -> float32 (3, H, W) in [0, 1] + float32 (1, H, W) 0/1.

    uint8: the same tensors left as uint8 (image 0-255, mask 0/1) for `as_float` to finish where the
    batch is used (loader.uint8_batches).
    """
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    y = torch.from_numpy(np.ascontiguousarray(mask > 127)[None])
    return (x, y.to(torch.uint8)) if uint8 else as_float(x, y)


def as_float(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] and 0/1 masks as float32 (from the uint8 of `to_tensors(..., uint8=True)`, on any
    device, keeping x's memory format); float32 input is returned as it is."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return x, y.float()  # the same tensor when it is float32 already


class WatermarkDataset(Dataset):
    """One split of the prepared dataset (see the module docstring for outputs and keys).

    Args:
        prepared_root: folder holding manifest.jsonl.
        split: "train", "val" or "test".
        crop: side of the square view, px; 0/None = whole image (evaluation only).
        train: random views (crop, multiscale, flips) instead of centre crops.
        cache: decoded-image cache, "none" | "ram" | "mmap" (`wmcore.data.decoded_cache`).
        cache_dir: folder of the mmap cache files (paths.cache_dir).
        multiscale_share: probability of a crop from a downscaled view (train only).
        seed: base seed of every random view.
        multiscale_min_scale: smallest downscale factor of a multiscale view.
        uint8: serve uint8 tensors (image 0-255, mask 0/1) for `as_float` on the device (loader.uint8_batches).
        resize: implementation of a multiscale view's resize, "pil" | "torch" (loader.multiscale_resize).
    """

    def __init__(
        self,
        prepared_root: str | Path,
        split: str,
        crop: int | None,
        train: bool,
        cache: str = "none",
        cache_dir: str | Path = ".cache/wmdetect",
        multiscale_share: float = 0.0,
        seed: int = 0,
        multiscale_min_scale: float = 0.5,
        uint8: bool = False,
        resize: str = "pil",
    ) -> None:
        if train and not crop:
            raise ValueError("a training dataset needs a crop size (train.crop or a progressive stage)")
        self.split, self.crop, self.train, self.seed = split, crop, train, seed
        self.multiscale_share, self.multiscale_min_scale, self.uint8 = multiscale_share, multiscale_min_scale, uint8
        self.resize = resize
        self.samples, manifest_bytes = usable_samples(prepared_root, split)
        self.source = make_source(cache, self.samples, cache_dir, split, manifest_bytes)
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch, repeat = (tuple(key) + (0, 0))[:3] if isinstance(key, tuple | list) else (key, 0, 0)
        image, mask = self._decoded(int(index))
        if self.train:
            rng = np.random.default_rng([self.seed, int(epoch), int(repeat), int(index)])
            image, mask = random_crop(image, mask, self.crop, rng, self.multiscale_share, self.multiscale_min_scale,
                                      self.resize)  # fmt: skip
            image, mask = random_flips(image, mask, rng)
        elif self.crop:
            image, mask = centre_crop(image, mask, self.crop)
        return to_tensors(image, mask, self.uint8)

    def _decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Arrays of sample `index`, or of the next decodable sample when it cannot be decoded."""
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            try:
                return self.source.get(candidate)
            except SampleDecodeError as exc:
                if candidate not in self._reported:
                    self._reported.add(candidate)
                    log.warning("%s split: skipping sample (using the next one instead): %s", self.split, exc)
        raise WmError(f"{self.split} split: no sample could be decoded; rerun `wm prepare`")
