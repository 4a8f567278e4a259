"""Tiny prepared datasets for tests: the on-disk layout `wm prepare` writes, made in milliseconds.

`make_tiny_prepared(root)` writes

    <root>/{train,val,test}/images/<id>.png   RGB background with a semi-transparent mark
    <root>/{train,val,test}/masks/<id>.png    L, 255 where the mark's alpha > 0.05, else 0
    <root>/{train,val,test}/alpha/<id>.png    L, the mark's alpha 0..255
    <root>/manifest.jsonl                     one JSON line per sample (fields below)

Backgrounds are smooth colour gradients plus noise; marks are filled rectangles and short
texts drawn with PIL's default font at a random opacity. Every third sample has no mark, so
clean images are covered too. Everything depends only on `seed`: the same call writes the same
bytes, which tests of determinism and caching rely on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SPLITS = ("train", "val", "test")
WORDS = ("SAMPLE", "stock", "(c) wm", "PROOF", "draft")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: a random two-colour gradient plus Gaussian noise."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, width)[None, :, None] * np.ones((height, 1, 1))
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _mark_alpha(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 alpha of one watermark: a rectangle or a word, at a random opacity."""
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    opacity = int(rng.integers(90, 230))
    if rng.random() < 0.5:
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(4, height // 3))
        draw.rectangle((x0, y0, x1, y1), fill=opacity)
    else:
        font = ImageFont.load_default(size=int(rng.integers(12, max(13, height // 4))))
        xy = (int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2)))
        draw.text(xy, str(rng.choice(WORDS)), fill=opacity, font=font)
    return np.asarray(layer)


def _write_sample(root: Path, split: str, sample_id: str, rng: np.random.Generator, size: tuple[int, int]) -> dict:
    height, width = size
    background = _background(rng, height, width)
    has_mark = int(sample_id.rsplit("-", 1)[1]) % 3 != 2
    alpha = _mark_alpha(rng, height, width) if has_mark else np.zeros((height, width), np.uint8)
    colour = rng.uniform(0, 255, 3)
    a = alpha[..., None].astype(np.float64) / 255.0
    image = np.clip(background * (1 - a) + colour * a, 0, 255).astype(np.uint8)
    mask = np.where(alpha > round(0.05 * 255), 255, 0).astype(np.uint8)
    rel = {kind: f"{split}/{kind}/{sample_id}.png" for kind in ("images", "masks", "alpha")}
    for kind, array, mode in (("images", image, "RGB"), ("masks", mask, "L"), ("alpha", alpha, "L")):
        path = root / rel[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array, mode).save(path)
    return {
        "split": split,
        "id": sample_id,
        "image": rel["images"],
        "mask": rel["masks"],
        "alpha": rel["alpha"],
        "sha256": hashlib.sha256((root / rel["images"]).read_bytes()).hexdigest(),
        "width": width,
        "height": height,
        "wm_fraction": float((mask > 0).mean()),
        "has_watermark": bool(mask.any()),
        "styles": ["fixture"] if has_mark else [],
        "source": "fixture",
        "scene_text": False,
    }


def make_tiny_prepared(
    root: str | Path,
    n_train: int = 8,
    n_val: int = 4,
    n_test: int = 4,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> Path:
    """Write a tiny prepared dataset under `root` and return `root`.

    Args:
        root: folder to write into (created).
        n_train, n_val, n_test: samples per split.
        size: (height, width) of every sample, px.
        seed: everything written depends only on it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for split_index, (split, count) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True)):
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            rows.append(_write_sample(root, split, f"{split}-{i:04d}", rng, size))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def make_tiny_checkpoint(path: Path, meta: dict | None = None, seed: int = 0) -> Path:
    """Save an untrained UNet(base_width=4, depth=2) as a safe checkpoint at `path`; returns `path`."""
    import torch

    from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint
    from wmcore.model.unet import UNet

    torch.manual_seed(seed)
    net = UNet(base_width=4, depth=2).eval()
    save_checkpoint(path, checkpoint_dict(net, meta or {}))
    return path


def evaluate_params(root: Path, prepared: Path, **evaluate: object):
    """CPU params for `run_evaluation` on `prepared`, outputs under `root`, tracking off (evaluate group overridable)."""
    from wmcore.config import validate

    return validate(
        {
            "base": {"threads": 1, "device": "cpu"},
            "paths": {
                "prepared": str(prepared),
                "train_dir": str(root / "train"),
                "evaluate_dir": str(root / "evaluate"),
                "cache_dir": str(root / "cache"),
                "corpus": str(root / "corpus"),  # none: the repo's real photos are not scored here
                "corpus_native": str(root / "corpus-native"),
            },
            "evaluate": {"n_overlay": 3, **evaluate},
            "tracking": {"enabled": False},
        }
    )


def write_random_checkpoint(path: Path, epoch: int = 2) -> Path:
    """An untrained UNet(base_width=4, depth=2) as a training checkpoint (with `epoch`) at `path`."""
    import torch

    from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint
    from wmcore.model.unet import UNet

    torch.manual_seed(0)
    model = UNet(base_width=4, depth=2)
    save_checkpoint(path, checkpoint_dict(model, epoch=epoch))
    return path
