"""Compositing: opaque scene text into the background, the watermark layer over it, JPEG re-compression.

Order matters for the ground truth: scene text (signs, subtitles, labels, document text) is part of
the background and is burned in BEFORE the watermark, so it never enters the watermark alpha. The
watermark layer is then composited "over" the background; its alpha (after opacity and blur,
before JPEG) is the ground truth. JPEG re-compression comes last, like an image re-saved online.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFont

from wmcore.data.fonts import faces_for, load_font
from wmcore.data.layer import Element, MarkLayer, Part, pad_to, rounded_box, text_coverage
from wmcore.data.phrases import make_scene_phrase
from wmcore.data.procedural import PAGE_WORDS

_SIGN_COLOURS = ((0.05, 0.4, 0.2), (0.1, 0.25, 0.6), (0.7, 0.1, 0.1), (0.95, 0.95, 0.92), (0.35, 0.2, 0.1), (0.1, 0.1, 0.1))


def composite(background: np.ndarray, layer: MarkLayer) -> np.ndarray:
    """`layer` over `background` (H, W, 3 float32 0..1): background * (1 - alpha) + premultiplied colour."""
    return background * (1.0 - layer.alpha[..., None]) + layer.premul


def mark_contrast(background: np.ndarray, layer: MarkLayer, threshold: float) -> float:
    """Mean |colour change| (0..1) the layer makes on its mask pixels (alpha > threshold); 0 if none."""
    inside = layer.alpha > threshold
    if not inside.any():
        return 0.0
    change = layer.premul[inside] - layer.alpha[inside][:, None] * background[inside]
    return float(np.abs(change).mean())


def strengthen(background: np.ndarray, layer: MarkLayer, min_contrast: float, threshold: float) -> float:
    """Raise a too-faint mark's opacity (as far as alpha 1 allows) so it changes the image by min_contrast.

    A mark nobody can see is label noise: the change the layer makes is linear in its opacity, so
    scaling alpha by min_contrast / contrast reaches the target exactly, unless alpha would pass 1.
    Returns the contrast after the change.
    """
    contrast = mark_contrast(background, layer, threshold)
    if 0.0 < contrast < min_contrast:
        factor = min(min_contrast / contrast, 1.0 / max(float(layer.alpha.max()), 1e-6))
        layer.scale_opacity(factor)
        contrast = mark_contrast(background, layer, threshold)
    return contrast


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (H, W, 3) image encoded as JPEG at `quality` and decoded again (blocking, ringing, chroma loss)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float 0..1 -> uint8 0..255, rounded."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- scene text


def _font(rng: np.random.Generator, script: str, px: int) -> ImageFont.FreeTypeFont:
    faces = faces_for(script) or faces_for("latin")
    return load_font(faces[int(rng.integers(len(faces)))], px)


Placement = tuple[str, Element, tuple[float, float], float]  # (kind, element, centre (x, y), angle in degrees)


def _sign(rng: np.random.Generator, width: int, height: int) -> Placement:
    """A flat sign plate (road sign, shop sign) with words on it."""
    phrase = make_scene_phrase(rng)
    px = max(9, round(min(width, height) * rng.uniform(0.04, 0.12)))
    text = text_coverage(phrase.text, _font(rng, phrase.script, px))
    box = (round(text.width + px * rng.uniform(0.6, 1.5)), round(text.height + px * rng.uniform(0.5, 1.0)))
    plate_rgb = _SIGN_COLOURS[int(rng.integers(len(_SIGN_COLOURS)))]
    ink = (0.05, 0.05, 0.05) if sum(plate_rgb) > 1.5 else (0.97, 0.97, 0.95)
    parts = [Part(rounded_box(box, radius=px * rng.uniform(0, 0.3)), plate_rgb, 1.0)]
    if rng.random() < 0.4:
        parts.append(Part(rounded_box(box, radius=px * 0.2, inset=px * 0.12, width=max(1.0, px * 0.06)), ink, 1.0))
    parts.append(Part(pad_to(text, box), ink, 1.0))
    return "sign", Element(parts), _spot(rng, width, height, box), float(rng.uniform(-6, 6))


def _subtitle(rng: np.random.Generator, width: int, height: int) -> Placement:
    """A caption or subtitle line: white/yellow words with a dark edge, or on a solid lower-third bar."""
    words = " ".join(make_scene_phrase(rng).text for _ in range(int(rng.integers(2, 5))))
    px = max(9, round(min(width, height) * rng.uniform(0.035, 0.07)))
    font = _font(rng, "sc" if any(ord(c) > 0x2E80 for c in words) else "latin", px)
    text = text_coverage(words, font, pad=4)
    y = height * rng.uniform(0.8, 0.92) if rng.random() < 0.8 else height * rng.uniform(0.08, 0.2)
    ink = (1.0, 1.0, 1.0) if rng.random() < 0.7 else (1.0, 0.9, 0.2)
    if rng.random() < 0.5:
        bar = (width + 8, round(text.height * 1.4))
        bar_rgb = tuple(float(c) for c in rng.uniform(0.0, 0.35, 3))
        parts = [Part(rounded_box(bar, radius=0), bar_rgb, 1.0), Part(pad_to(text, bar), ink, 1.0)]
        return "caption", Element(parts), (width / 2, y), 0.0
    edge = text_coverage(words, font, pad=4, stroke=max(1, px // 12))
    parts = [Part(edge, (0.0, 0.0, 0.0), 1.0), Part(pad_to(text, edge.size), ink, 1.0)]
    return "subtitle", Element(parts), (width / 2, y), 0.0


def _label(rng: np.random.Generator, width: int, height: int) -> Placement:
    """A small product label or price tag: dark words on a light card."""
    phrase = make_scene_phrase(rng)
    px = max(9, round(min(width, height) * rng.uniform(0.025, 0.05)))
    text = text_coverage(phrase.text, _font(rng, phrase.script, px))
    box = (text.width + px, text.height + px // 2 + 2)
    card = (float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.6, 1.0)))
    parts = [Part(rounded_box(box, radius=px * 0.15), card, 1.0), Part(pad_to(text, box), (0.08, 0.08, 0.1), 1.0)]
    return "label", Element(parts), _spot(rng, width, height, box), float(rng.uniform(-12, 12))


def _document(rng: np.random.Generator, width: int, height: int) -> Placement:
    """A block of ordinary document text, on a paper card or straight on the picture."""
    px = max(9, round(min(width, height) * rng.uniform(0.025, 0.045)))
    lines = [" ".join(PAGE_WORDS[int(i)] for i in rng.integers(len(PAGE_WORDS), size=int(rng.integers(3, 8))))
             for _ in range(int(rng.integers(2, 7)))]
    text = text_coverage("\n".join(lines), _font(rng, "latin", px), align="left")
    parts = [Part(text, (0.05, 0.05, 0.08), 1.0)]
    if rng.random() < 0.6:
        box = (text.width + 2 * px, text.height + 2 * px)
        parts = [Part(rounded_box(box, radius=2), (0.97, 0.96, 0.92), 1.0), Part(pad_to(text, box), parts[0].rgb, 1.0)]
    return "document", Element(parts), _spot(rng, width, height, parts[0].coverage.size), float(rng.uniform(-4, 4))


def _spot(rng: np.random.Generator, width: int, height: int, size: tuple[int, int]) -> tuple[float, float]:
    """A centre that keeps an element of `size` inside the image where it fits."""
    w, h = size
    x = rng.uniform(min(w / 2, width / 2), max(width - w / 2, width / 2))
    y = rng.uniform(min(h / 2, height / 2), max(height - h / 2, height / 2))
    return float(x), float(y)


SCENE_TEXT_KINDS = {"sign": _sign, "subtitle": _subtitle, "label": _label, "document": _document}


def render_scene_text(
    rng: np.random.Generator, width: int, height: int, kinds: Sequence[str] | None = None
) -> tuple[MarkLayer, list[str]]:
    """1-3 pieces of opaque scene text as a layer (alpha = where the scene text is) and their kinds.

    kinds: the SCENE_TEXT_KINDS drawn from (None: all). Burned into the background with `composite` before the
    watermark; never part of the mask.
    """
    layer = MarkLayer(width, height)
    names = sorted(kinds or SCENE_TEXT_KINDS)
    # Half the time as soft as a camera makes it: scene text is only as sharp as the rest of the photo.
    softness = float(rng.uniform(0.3, 0.8)) if rng.random() < 0.5 else 0.0
    drawn = []
    for _ in range(int(rng.integers(1, 4))):
        kind, element, center, angle = SCENE_TEXT_KINDS[names[int(rng.integers(len(names)))]](rng, width, height)
        layer.stamp(element.blurred(softness), center, angle)
        drawn.append(kind)
    return layer, drawn
