"""Evaluation samples: which images of a prepared split to score, and reading one image/mask pair.

The prepared layout (written by `wm prepare`) is

    <prepared>/manifest.jsonl                 one JSON line per sample: split, id, image, mask,
                                              has_watermark, scene_text, background_kind, ...
                                              (paths relative to <prepared>)
    <prepared>/<split>/images/<id>.png        RGB
    <prepared>/<split>/masks/<id>.png         L, 0 = clean, 255 = watermark

A split without manifest lines (an imported dataset, a hand-made folder) is read by listing
`<split>/images/` and pairing each file with `masks/<same stem>.png`. Unreadable lines and
files are logged and skipped, never a traceback.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wmcore.data.layout import PREPARED_IMAGE_SUFFIXES
from wmcore.errors import WmError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EvalSample:
    """One image of a split: its files and the image-level labels of the manifest."""

    id: str
    image: Path
    mask: Path | None  # None: a clean picture (every pixel is clean), e.g. the corpus's real photos
    has_watermark: bool | None = None  # None: not in a manifest, taken from the mask
    scene_text: bool = False  # opaque scene text (not a watermark) drawn on the image
    background_kind: str | None = None  # "photo", "page" (text page), "procedural", a corpus category; None: unknown
    tags: tuple[str, ...] = ()  # the manifest's styles and "phrase:<kind>" of its phrases (per-style metrics)


class SampleError(Exception):
    """One sample cannot be used (unreadable file, image/mask size mismatch); it is skipped."""


def _manifest_rows(manifest: Path, split: str) -> list[dict]:
    rows = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            log.warning("%s:%d: skipped, not valid JSON (%s)", manifest, number, exc.msg)
            continue
        if not isinstance(row, dict) or not {"id", "image", "mask"} <= row.keys():
            log.warning("%s:%d: skipped, a sample line needs keys id, image, mask", manifest, number)
            continue
        if row.get("split") == split:
            rows.append(row)
    return rows


def _from_manifest(prepared: Path, rows: list[dict]) -> list[EvalSample]:
    return [
        EvalSample(
            id=str(row["id"]),
            image=prepared / row["image"],
            mask=prepared / row["mask"],
            has_watermark=None if row.get("has_watermark") is None else bool(row["has_watermark"]),
            scene_text=bool(row.get("scene_text")),
            background_kind=row.get("background_kind") if isinstance(row.get("background_kind"), str) else None,
            tags=manifest_tags(row),
        )
        for row in rows
    ]


def manifest_tags(row: dict) -> tuple[str, ...]:
    """A manifest line's styles ("corner", "cjk", "jpeg", ...) and phrase kinds as "phrase:<kind>"; () if absent.

    Non-string entries (a hand-edited manifest) are ignored.
    """
    def strings(key: str) -> list[str]:
        value = row.get(key)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    return tuple(dict.fromkeys([*strings("styles"), *(f"phrase:{k}" for k in strings("phrase_kinds"))]))


def _from_folder(split_dir: Path) -> list[EvalSample]:
    images = sorted(p for p in (split_dir / "images").glob("*") if p.suffix.lower() in PREPARED_IMAGE_SUFFIXES)
    return [EvalSample(id=p.stem, image=p, mask=split_dir / "masks" / f"{p.stem}.png") for p in images]


def load_split(prepared: str | Path, split: str, required: bool = True) -> list[EvalSample]:
    """Samples of `split` ("val", "test" or "test_heldout") of the prepared dataset at `prepared`, in manifest order.

    Raises WmError naming the folder when the dataset is missing, or the split is missing or empty and
    `required` (an optional split that is absent gives []).
    """
    prepared = Path(prepared)
    if not prepared.is_dir():
        raise WmError(f"{prepared}: prepared dataset not found (paths.prepared); run `wm prepare` first")
    manifest = prepared / "manifest.jsonl"
    rows = _manifest_rows(manifest, split) if manifest.is_file() else []
    samples = _from_manifest(prepared, rows) if rows else _from_folder(prepared / split)
    if not samples and required:
        raise WmError(
            f"{prepared}: no '{split}' samples (no '{split}' lines in manifest.jsonl and no images in "
            f"{prepared / split / 'images'}); run `wm prepare` or check paths.prepared"
        )
    return samples


def centre_crop(array: np.ndarray, side: int) -> np.ndarray:
    """Centre crop of (H, W, ...) `array` to at most side x side px; side 0 = unchanged."""
    if side <= 0:
        return array
    h, w = array.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return array[top : top + side, left : left + side]


def read_sample(sample: EvalSample, crop: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 RGB and truth mask (H, W) bool of `sample`, centre-cropped to `crop` px.

    Any image mode (RGBA, gray, palette) is converted to RGB; a sample without a mask is all clean.
    Raises SampleError naming the file.
    """
    try:
        with Image.open(sample.image) as im:
            image = np.asarray(im.convert("RGB"))
        if sample.mask is None:
            return centre_crop(image, crop), centre_crop(np.zeros(image.shape[:2], bool), crop)
        with Image.open(sample.mask) as im:
            truth = np.asarray(im.convert("L")) > 127
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise SampleError(f"{sample.id}: unreadable image or mask ({exc})") from None
    if image.shape[:2] != truth.shape:
        raise SampleError(
            f"{sample.id}: image {sample.image} is {image.shape[1]}x{image.shape[0]} px but its mask "
            f"{sample.mask} is {truth.shape[1]}x{truth.shape[0]} px"
        )
    return centre_crop(image, crop), centre_crop(truth, crop)
