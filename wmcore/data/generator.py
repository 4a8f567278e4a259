"""One synthetic sample: background -> scene text -> watermark -> JPEG, with its ground truth.

`generate_sample(ctx, split, index)` is a pure function of (params, background catalog, split,
index): the random generator is seeded from (base.seed, split, index) and split into independent
streams per decision (size, background, scene text, watermark, JPEG), so a sample never depends on
the order or the process it is made in, and changing e.g. `jpeg_share` leaves backgrounds alone.

Ground truth: `alpha` is the watermark layer's own alpha (after opacity, outline, shadow and blur;
before JPEG), stored as round(alpha * 255). The binary mask is 255 exactly where that stored
8-bit alpha / 255 is above `prepare.mask_alpha_threshold` (default 0.05: a mark at under 5% opacity
changes a pixel by at most ~13 grey levels, below what we ask a detector to find), else 0.
Scene text is burned into the background first and is never in the alpha or the mask.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from wmcore.config import PrepareParams
from wmcore.data.backgrounds import BackgroundCatalog, augmented_crop, load_photo
from wmcore.data.compose import composite, jpeg_roundtrip, render_scene_text, strengthen, to_uint8
from wmcore.data.layer import MarkLayer
from wmcore.data.procedural import render_procedural
from wmcore.data.render import SECOND_MARK_STYLES, MarkContext, draw_style

# Aspect ratios (long:short) of generated samples: photo, screen and square formats.
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 5 / 4, 2.0)
MARK_TRIES = 3  # redraws when a mark is too faint even at full opacity, or fell outside the image
PAGE_STAMP_BOOST = 4.0  # document pages get rubber stamps ("CONFIDENTIAL") this many times more often


@dataclass
class GeneratorContext:
    """Everything a sample is made from: the prepare params, the base seed, the background catalog."""

    prepare: PrepareParams
    seed: int
    catalog: BackgroundCatalog


@dataclass
class Sample:
    """A generated sample: image (H, W, 3) uint8, alpha and mask (H, W) uint8, and its manifest facts."""

    image: np.ndarray
    alpha: np.ndarray
    mask: np.ndarray
    styles: list[str]
    source: str
    scene_text: bool
    scene_alpha: np.ndarray = field(repr=False)  # (H, W) float32: where opaque scene text was burned in (for tests)


def sample_streams(seed: int, split: str, index: int, n: int = 5) -> list[np.random.Generator]:
    """`n` independent generators for sample (split, index); crc32 keeps the split's code stable across runs."""
    root = np.random.SeedSequence([seed, zlib.crc32(split.encode()), index])
    return [np.random.default_rng(s) for s in root.spawn(n)]


def sample_size(rng: np.random.Generator, p: PrepareParams) -> tuple[int, int]:
    """(width, height): long side uniform in [min_side, max_side], a common aspect ratio, landscape or portrait."""
    long_side = int(rng.integers(p.min_side, p.max_side + 1))
    short_side = max(16, round(long_side / ASPECTS[int(rng.integers(len(ASPECTS)))]))
    return (long_side, short_side) if rng.random() < 0.65 else (short_side, long_side)


def make_background(rng: np.random.Generator, ctx: GeneratorContext, width: int, height: int) -> tuple[np.ndarray, str, bool]:
    """(RGB float32 (H, W, 3), source id, has text of its own): procedural for procedural_share, else a photo."""
    cat = ctx.catalog
    use_procedural = cat.procedural and (not cat.photos or rng.random() < ctx.prepare.procedural_share)
    if use_procedural:
        kind = cat.procedural[int(rng.integers(len(cat.procedural)))]
        img, has_text = render_procedural(kind, rng, width, height)
        return img, f"procedural:{kind}", has_text
    ref = cat.photos[int(rng.integers(len(cat.photos)))]
    img = augmented_crop(rng, load_photo(ref, ctx.prepare.max_background_side), ref, width, height)
    return img, ref.id, ref.has_text


def choose_style(rng: np.random.Generator, weights: dict[str, float], on_page: bool) -> str:
    """A style name drawn by `weights`; stamps are boosted on document backgrounds."""
    names = sorted(n for n, w in weights.items() if w > 0)
    w = np.array([weights[n] * (PAGE_STAMP_BOOST if on_page and n == "stamp" else 1.0) for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def draw_watermark(rng: np.random.Generator, p: PrepareParams, background: np.ndarray, on_page: bool) -> tuple[MarkLayer, list[str]]:
    """The watermark layer for `background` and its style tags; too-faint marks are strengthened or redrawn."""
    height, width = background.shape[:2]
    luma = float(background.mean())
    for attempt in range(MARK_TRIES):
        layer = MarkLayer(width, height)
        mark = MarkContext(rng, layer, (p.opacity_min, p.opacity_max), p.blur_share, luma, invert=attempt > 0)
        first = choose_style(rng, p.style_weights, on_page)
        tags = draw_style(mark, first)
        seconds = {n: p.style_weights.get(n, 0.0) for n in SECOND_MARK_STYLES if n != first}
        if any(seconds.values()) and rng.random() < p.multi_mark_share:
            tags += ["multi", *(t for t in draw_style(mark, choose_style(rng, seconds, False)) if t not in tags)]
        if strengthen(background, layer, p.min_contrast, p.mask_alpha_threshold) >= p.min_contrast:
            break
    return layer, tags


def generate_sample(ctx: GeneratorContext, split: str, index: int) -> Sample:
    """Sample `index` of `split` (deterministic; see the module docstring for the ground-truth rule)."""
    p = ctx.prepare
    size_rng, bg_rng, scene_rng, mark_rng, jpeg_rng = sample_streams(ctx.seed, split, index)
    width, height = sample_size(size_rng, p)
    background, source, has_text = make_background(bg_rng, ctx, width, height)
    scene_alpha = np.zeros((height, width), np.float32)
    scene = scene_rng.random() < p.scene_text_share
    if scene:
        scene_layer, _ = render_scene_text(scene_rng, width, height)
        background = composite(background, scene_layer)
        scene_alpha = scene_layer.alpha
    styles: list[str] = []
    layer = MarkLayer(width, height)
    if mark_rng.random() >= p.clean_share:
        on_page = has_text and source in ("procedural:page", "skimage:page")
        layer, styles = draw_watermark(mark_rng, p, background, on_page)
    image = to_uint8(composite(background, layer))
    if jpeg_rng.random() < p.jpeg_share:
        image = jpeg_roundtrip(image, int(jpeg_rng.integers(p.jpeg_quality_min, p.jpeg_quality_max + 1)))
        styles = [*styles, "jpeg"] if styles else ["clean", "jpeg"]
    alpha = to_uint8(layer.alpha)
    mask = np.where(alpha.astype(np.float32) / 255.0 > p.mask_alpha_threshold, 255, 0).astype(np.uint8)
    if not styles:
        styles = ["clean"]
    return Sample(image, alpha, mask, styles, source, bool(scene or has_text), scene_alpha)
