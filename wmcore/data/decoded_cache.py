"""Decoded-image sources for the dataset: decode on every read, a RAM cache, or a shared memmap.

PNG decoding is the main cost of loading a training sample, and a sample is read once per
epoch. The three sources return identical uint8 arrays, so switching the cache never changes
a batch:

    DecodeSource  decode the PNG files on every read (no memory held).
    RamSource     decode once per process and keep the arrays in a dict (each loader worker
                  holds its own copy: right for workers = 0, the CPU default).
    MmapSource    decode once into one uint8 file per split under the cache folder, keyed by
                  the manifest hash; every process maps the same file, so loader workers share
                  one copy through the page cache. Built under a file lock, written atomically.

A source's `get(i)` returns (image (H, W, 3) uint8, mask (H, W) uint8 0/255) or raises
`SampleDecodeError` for a sample that cannot be decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock
from PIL import Image

from wmcore.runtime.atomic import atomic_open, write_json
from wmcore.runtime.device import available_cores

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the memmap layout changes: old files are then never read


class SampleDecodeError(Exception):
    """One sample's image or mask could not be decoded (the message names the file)."""


@dataclass(frozen=True)
class SampleFiles:
    """The files of one prepared sample and its size from the image header, px."""

    id: str
    image: Path
    mask: Path
    height: int
    width: int


def decode_pair(sample: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
    """Decode image (H, W, 3) uint8 RGB and mask (H, W) uint8; raise SampleDecodeError if unreadable."""
    try:
        with Image.open(sample.image) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(sample.mask) as im:
            mask = np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleDecodeError(f"{sample.id}: cannot decode {sample.image} / {sample.mask}: {exc}") from None
    if image.shape[:2] != mask.shape:
        raise SampleDecodeError(f"{sample.id}: image {image.shape[:2]} and mask {mask.shape} differ in size")
    return image, mask


class ImageSource(Protocol):
    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class DecodeSource:
    """Decode on every read."""

    def __init__(self, samples: list[SampleFiles]) -> None:
        self.samples = samples

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return decode_pair(self.samples[index])


class RamSource:
    """Decode once per process; keep the arrays (read-only) in a dict."""

    def __init__(self, samples: list[SampleFiles]) -> None:
        self.samples = samples
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self._arrays.get(index)
        if pair is None:
            pair = decode_pair(self.samples[index])
            for array in pair:
                array.setflags(write=False)  # a view handed out must never alter the cached copy
            self._arrays[index] = pair
        return pair


class MmapSource:
    """One uint8 file per split: image bytes then mask bytes of every sample, plus a JSON index."""

    def __init__(self, samples: list[SampleFiles], cache_dir: str | Path, split: str, key: str) -> None:
        self.samples = samples
        stem = Path(cache_dir) / "decoded" / f"{split}-{key[:16]}"
        self.data_path, self.index_path = stem.with_suffix(".u8"), stem.with_suffix(".json")
        self._index: list[dict[str, Any]] | None = None
        self._data: np.ndarray | None = None  # opened lazily in each process (memmaps are not pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}

    def build(self) -> None:
        """Decode every sample into the cache file once; other processes wait on the lock."""
        self.data_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.index_path) + ".lock"):
            if self.index_path.is_file() and self.data_path.is_file():
                return
            log.info("building decoded-image cache %s (%d samples)", self.data_path, len(self.samples))
            index = self._write_data()
            write_json(self.index_path, {"format": CACHE_FORMAT, "samples": index})

    def _write_data(self) -> list[dict[str, Any]]:
        """Decode on every free core (PIL releases the GIL while decoding), write in sample order.

        Chunks of a few samples per thread bound the decoded images held at once; serially, the
        8,000 images of the full profile took minutes before the first training step.
        """
        index, offset = [], 0
        threads = available_cores()
        with atomic_open(self.data_path, "wb") as fh, ThreadPoolExecutor(threads) as pool:
            for start in range(0, len(self.samples), 4 * threads):
                chunk = self.samples[start : start + 4 * threads]
                for sample, decoded in zip(chunk, pool.map(_decode_or_error, chunk), strict=True):
                    if isinstance(decoded, SampleDecodeError):
                        log.warning("skipping sample: %s", decoded)
                        index.append({"id": sample.id, "ok": False})
                        continue
                    image, mask = decoded
                    fh.write(np.ascontiguousarray(image).tobytes())
                    fh.write(np.ascontiguousarray(mask).tobytes())
                    h, w = mask.shape
                    index.append({"id": sample.id, "ok": True, "offset": offset, "height": h, "width": w})
                    offset += h * w * 4
        return index

    def _open(self) -> None:
        with open(self.index_path, encoding="utf-8") as fh:
            self._index = json.load(fh)["samples"]
        size = os.path.getsize(self.data_path)
        self._data = (
            np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)
        )

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:
            self._open()
        entry = self._index[index]
        if not entry["ok"]:
            raise SampleDecodeError(f"{entry['id']}: could not be decoded when the cache was built")
        h, w, start = entry["height"], entry["width"], entry["offset"]
        image = self._data[start : start + h * w * 3].reshape(h, w, 3)
        mask = self._data[start + h * w * 3 : start + h * w * 4].reshape(h, w)
        return image, mask


def _decode_or_error(sample: SampleFiles) -> tuple[np.ndarray, np.ndarray] | SampleDecodeError:
    try:
        return decode_pair(sample)
    except SampleDecodeError as exc:
        return exc


def cache_key(manifest_bytes: bytes, split: str, samples: list[SampleFiles]) -> str:
    """Hash of the manifest, the split and the usable samples: a changed dataset gets a new file."""
    digest = hashlib.sha256(f"format={CACHE_FORMAT};split={split};".encode())
    digest.update(manifest_bytes)
    digest.update(";".join(s.id for s in samples).encode())
    return digest.hexdigest()


def make_source(
    kind: str, samples: list[SampleFiles], cache_dir: str | Path, split: str, manifest_bytes: bytes
) -> ImageSource:
    """The source for loader.cache = kind ("none", "ram", "mmap"); an mmap file is built here."""
    if kind == "none":
        return DecodeSource(samples)
    if kind == "ram":
        return RamSource(samples)
    if kind == "mmap":
        source = MmapSource(samples, cache_dir, split, cache_key(manifest_bytes, split, samples))
        source.build()
        return source
    raise ValueError(f"loader.cache: unknown cache kind {kind!r}; use none, ram or mmap")
