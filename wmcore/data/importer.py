"""Import an existing watermark dataset laid out as `images/` + `masks/` (CLWD / LVW style).

Pairs share a file stem (any image extension on either side). Each pair is validated: both files
decode, sizes match, and the mask is binary (0/255 or 0/1) or soft (0..255). A soft mask is kept as
the alpha and binarised by `prepare.mask_alpha_threshold`, like generated samples. Bad pairs are
skipped, each with a warning naming the file and the reason, and listed in stats.json; the rest go
to train/val/test by a hash of the name, so a pair always lands in the same split whatever else is
in the folder. An `images/` folder without any image is an error (a wrong import_dir, most likely).
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from wmcore.config import PrepareParams
from wmcore.data.layout import PHOTO_SUFFIXES
from wmcore.errors import WmError

log = logging.getLogger(__name__)

Row = dict
# (split, id, image (H, W, 3) uint8, alpha (H, W) uint8, mask (H, W) uint8, manifest facts) -> manifest row
WritePair = Callable[[str, str, np.ndarray, np.ndarray, np.ndarray, dict], Row]


def split_of(name: str, val_share: float, test_share: float) -> str:
    """Deterministic split of an imported pair from the SHA-256 of its name (stable across runs and machines)."""
    u = int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return "test" if u < test_share else "val" if u < test_share + val_share else "train"


def import_id(stem: str) -> str:
    """A file-system-safe, unique sample id for an imported stem: "imp_<safe stem>_<crc32>"."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:40]
    return f"imp_{safe}_{zlib.crc32(stem.encode('utf-8')):08x}"


def _index_folder(folder: Path, skipped: list[dict[str, str]], what: str) -> dict[str, Path]:
    """{stem: file} of the image files in `folder`; a second file with the same stem is skipped."""
    found: dict[str, Path] = {}
    for path in sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES):
        if path.stem in found:
            skipped.append({"name": path.name, "path": str(path),
                            "reason": f"duplicate {what} stem (already have {found[path.stem].name})"})
        else:
            found[path.stem] = path
    return found


def _decode(path: Path, mode: str) -> tuple[np.ndarray | None, str]:
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "L" and im.mode in ("RGBA", "LA", "PA"):
                im = im.getchannel("A") if _alpha_only(im) else im.convert("L")
            return np.asarray(im.convert(mode)), ""
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _alpha_only(im: Image.Image) -> bool:
    """A mask saved as a transparent PNG (colour channels empty, mark in alpha)."""
    return not np.asarray(im.convert("RGB")).any()


def mask_to_alpha(mask: np.ndarray) -> tuple[np.ndarray, str]:
    """A decoded L mask as 0..255 alpha and its kind: "binary" (0/255), "binary01" (0/1, scaled) or "soft"."""
    values = np.unique(mask)
    if np.isin(values, (0, 1)).all() and values.max(initial=0) == 1:
        return (mask * 255).astype(np.uint8), "binary01"
    if np.isin(values, (0, 255)).all():
        return mask.astype(np.uint8), "binary"
    return mask.astype(np.uint8), "soft"


def import_folders(p: PrepareParams) -> tuple[Path, Path]:
    """(images/, masks/) of `p.import_dir`; raises WmError naming the folder that is missing."""
    root = Path(p.import_dir or "").expanduser()
    for folder in (root / "images", root / "masks"):
        if not folder.is_dir():
            raise WmError(f"prepare.import_dir: {folder}: not found; expected {root}/images/ and {root}/masks/ with matching stems")
    if not any(f.suffix.lower() in PHOTO_SUFFIXES for f in (root / "images").iterdir()):
        raise WmError(f"prepare.import_dir: {root / 'images'}: holds no images ({' '.join(sorted(PHOTO_SUFFIXES))}); "
                      "fill it or set prepare.import_dir: null")
    return root / "images", root / "masks"


def import_dataset(p: PrepareParams, write_pair: WritePair) -> tuple[list[Row], dict]:
    """Validate and import every pair of `p.import_dir`; returns (manifest rows, report for stats.json).

    Raises WmError naming the folder when `images/` or `masks/` is missing.
    """
    images_dir, masks_dir = import_folders(p)
    root = images_dir.parent
    skipped: list[dict[str, str]] = []
    images = _index_folder(images_dir, skipped, "image")
    masks = _index_folder(masks_dir, skipped, "mask")
    skipped += [{"name": masks[s].name, "path": str(masks[s]), "reason": "mask without an image"}
                for s in sorted(set(masks) - set(images))]
    rows: list[Row] = []
    kinds: dict[str, int] = {}
    for stem, image_path in images.items():
        row, why, kind = _import_pair(stem, image_path, masks.get(stem), p, write_pair)
        if row is None:
            skipped.append({"name": image_path.name, "path": str(image_path), "reason": why})
            continue
        rows.append(row)
        kinds[kind] = kinds.get(kind, 0) + 1
    for skip in skipped:
        log.warning("prepare.import_dir: skipped %s: %s", skip["path"], skip["reason"])
    if images and not rows:
        log.warning("prepare.import_dir: none of the %d images of %s could be imported (reasons above)", len(images), root)
    per_split = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    report = {"dir": str(root), "found": len(images), "imported": len(rows), "per_split": per_split,
              "mask_kinds": kinds, "skipped": skipped}
    return rows, report


def _import_pair(
    stem: str, image_path: Path, mask_path: Path | None, p: PrepareParams, write_pair: WritePair
) -> tuple[Row | None, str, str]:
    """One pair -> (row, "", mask kind), or (None, why it was skipped, "")."""
    if mask_path is None:
        return None, "no mask with this stem in masks/", ""
    image, err = _decode(image_path, "RGB")
    if image is None:
        return None, f"corrupt image: {err}", ""
    mask, err = _decode(mask_path, "L")
    if mask is None:
        return None, f"corrupt mask {mask_path.name}: {err}", ""
    if mask.shape != image.shape[:2]:
        ih, iw = image.shape[:2]
        return None, f"size mismatch: image {iw}x{ih}, mask {mask.shape[1]}x{mask.shape[0]}", ""
    alpha, kind = mask_to_alpha(mask)
    binary = np.where(alpha.astype(np.float32) / 255.0 > p.mask_alpha_threshold, 255, 0).astype(np.uint8)
    split = split_of(stem, p.import_val_share, p.import_test_share)
    facts = {"styles": ["imported"], "source": f"import:{Path(p.import_dir or '').expanduser().name}", "scene_text": False}
    return write_pair(split, import_id(stem), image, alpha, binary, facts), "", kind
