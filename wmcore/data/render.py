"""Watermark styles: each draws one kind of visible text mark into a full-image `MarkLayer`.

`STYLES` maps a stable style name to its drawing function; `prepare.style_weights` sets how often
each is drawn, and the style-held-out split (see generator.py) keeps styles, phrase kinds
(`phrases.PHRASE_KINDS`, through `MarkContext.phrases`) and fonts (`fonts.face_scope`) out of training
by name. A style function draws with `MarkContext` (random generator, layer, opacity range, colour
choice, size helpers) and returns its tags (style name first, then modifiers such as "rotated",
"outline", "shadow", "blur", the colour and the script), which the manifest records.

Sizes are drawn relative to the image (fractions of its short side or width), so a large image gets
a realistically small corner mark. Fonts: `fonts.py`; phrases: `phrases.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wmcore.data.fonts import FontFace, faces_for, load_font
from wmcore.data.icons import ICONS, draw_icon
from wmcore.data.layer import (
    RGB,
    Element,
    MarkLayer,
    Part,
    multiply,
    pad_to,
    rounded_box,
    shifted,
    subtract,
    text_coverage,
)
from wmcore.data.phrases import (
    NO_HOLDOUT,
    Phrase,
    PhrasePolicy,
    make_ai_label,
    make_block,
    make_phrase,
    make_stamp_phrase,
)
from wmcore.data.procedural import fractal_noise

MIN_FONT_PX = 9  # below this FreeType text is an unreadable smudge: no real watermark is that small
_STAMP_INKS: tuple[RGB, ...] = ((0.78, 0.08, 0.08), (0.1, 0.2, 0.65), (0.45, 0.1, 0.55), (0.1, 0.1, 0.1), (0.1, 0.45, 0.2))
_BADGE_COLOURS: tuple[RGB, ...] = ((0.85, 0.1, 0.1), (0.95, 0.5, 0.05), (0.1, 0.4, 0.85), (0.1, 0.6, 0.3), (0.2, 0.2, 0.2))


@dataclass
class MarkContext:
    """What a style needs: randomness, the target layer, the opacity range and the background's brightness."""

    rng: np.random.Generator
    layer: MarkLayer
    opacity_range: tuple[float, float]
    blur_share: float
    bg_luma: float  # mean luminance of the background, 0..1 (light marks are less likely on bright images)
    invert: bool = False  # second try after a too-faint mark: pick the colour against the background
    tags: list[str] = field(default_factory=list)
    phrases: PhrasePolicy = NO_HOLDOUT  # which phrase kinds this split may draw (held-out split rule)
    drawn: list[Phrase] = field(default_factory=list)  # every phrase drawn into the layer (for the manifest)

    @property
    def short(self) -> int:
        return min(self.layer.width, self.layer.height)

    def uniform(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def opacity(self, lo: float = 0.0, hi: float = 1.0) -> float:
        """An opacity from the configured range, restricted to its [lo, hi] part (0..1 of the range)."""
        a, b = self.opacity_range
        return a + (b - a) * self.uniform(lo, hi)

    def colour(self) -> RGB:
        """A mark colour: mostly white, else black, grey or a hue; tagged with its name."""
        names = ["white", "black", "grey", "colour"]
        weights = np.array([0.5, 0.17, 0.13, 0.2])
        if self.invert:
            weights = np.array([1.0, 0, 0, 0]) if self.bg_luma < 0.5 else np.array([0, 1.0, 0, 0])
        elif self.bg_luma > 0.7:
            weights[0] *= 0.4
        elif self.bg_luma < 0.3:
            weights[1] *= 0.3
        name = names[int(self.rng.choice(4, p=weights / weights.sum()))]
        self.tags.append(name)
        if name == "white":
            return (1.0, 1.0, 1.0)
        if name == "black":
            return (0.0, 0.0, 0.0)
        if name == "grey":
            g = self.uniform(0.45, 0.8)
            return (g, g, g)
        return _saturated(self.rng)

    def phrase(self, kinds: tuple[str, ...] = ()) -> Phrase:
        """A watermark phrase of one of `kinds` (uniform; none = any kind by frequency) within `phrases`; recorded."""
        wanted = str(self.rng.choice(list(kinds))) if kinds else None
        return self.keep(make_phrase(self.rng, wanted, self.phrases))

    def keep(self, phrase: Phrase) -> Phrase:
        """Record `phrase` as drawn into this layer and return it."""
        self.drawn.append(phrase)
        return phrase

    def angle(self, p_rotated: float, lo: float, hi: float) -> float:
        """0 degrees, or with probability `p_rotated` a signed angle of lo..hi degrees (tagged "rotated")."""
        if not self.chance(p_rotated):
            return 0.0
        self.tags.append("rotated")
        return self.uniform(lo, hi) * (1 if self.chance(0.5) else -1)


def _saturated(rng: np.random.Generator) -> RGB:
    hue = rng.random() * 6
    k = np.array([5, 3, 1], np.float32)
    rgb = 1 - np.clip(np.minimum(np.mod(k + hue, 6), 4 - np.mod(k + hue, 6)), 0, 1) * rng.uniform(0.6, 0.95)
    return tuple(float(c) * float(rng.uniform(0.7, 1.0)) for c in rgb)  # type: ignore[return-value]


def _contrast_of(rgb: RGB) -> RGB:
    return (0.0, 0.0, 0.0) if sum(rgb) / 3 > 0.5 else (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- text helpers


def pick_face(ctx: MarkContext, phrase: Phrase, bold: float = 0.5) -> FontFace:
    """A face that can draw `phrase` (bold with probability `bold`, where the script has bold faces)."""
    faces = faces_for(phrase.script, bold_only=ctx.chance(bold))
    if not faces:
        faces = faces_for(phrase.script) or faces_for("latin")
    face = faces[int(ctx.rng.integers(len(faces)))]
    ctx.tags.append("latin" if phrase.script == "latin" else "cjk")
    return face


def font_for_width(face: FontFace, text: str, width: float, max_height: float) -> int:
    """Font size (px) that makes `text` about `width` px wide, at most `max_height` px per line, >= MIN_FONT_PX."""
    probe = text_coverage(text, load_font(face, 100))
    lines = text.count("\n") + 1
    size = min(100 * width / max(probe.width, 1), 100 * max_height * lines / max(probe.height, 1))
    return max(MIN_FONT_PX, int(size))


def relative_px(ctx: MarkContext, face: FontFace, text: str, lo: float, hi: float, max_width: float) -> int:
    """Font size: a fraction lo..hi of the image's short side, shrunk until `text` spans at most `max_width` of its width."""
    px = ctx.short * ctx.uniform(lo, hi)
    return max(MIN_FONT_PX, round(min(px, font_for_width(face, text, ctx.layer.width * max_width, float("inf")))))


def decorated_text(ctx: MarkContext, text: str, font_px: int, face: FontFace, rgb: RGB, hollow: bool = False) -> Element:
    """Text as an element: maybe a contrasting outline and/or a drop shadow (both part of the mark), maybe blurred."""
    font = load_font(face, font_px)
    stroke = max(1, round(font_px * ctx.uniform(0.03, 0.07)))
    outline = not hollow and ctx.chance(0.25)
    shadow = ctx.chance(0.3)
    offset = max(1, round(font_px * ctx.uniform(0.03, 0.08)))
    pad = stroke + 2 * offset + 4
    fill = text_coverage(text, font, pad, stroke=stroke if hollow else 0, hollow=hollow)
    parts: list[Part] = []
    if shadow:
        ctx.tags.append("shadow")
        soft = fill.filter(_gauss(offset * ctx.uniform(0.3, 1.0)))
        parts.append(Part(shifted(soft, offset, offset), (0.0, 0.0, 0.0), ctx.uniform(0.45, 0.8)))
    if outline:
        ctx.tags.append("outline")
        ring = text_coverage(text, font, pad, stroke=stroke)
        parts.append(Part(ring, _contrast_of(rgb), ctx.uniform(0.6, 1.0)))
    parts.append(Part(fill, rgb, 1.0))
    return maybe_blur(ctx, stacked(parts), font_px)


def stacked(parts: list[Part]) -> Element:
    """`parts` (first drawn first) centred on one canvas as large as the largest of them."""
    size = (max(p.coverage.width for p in parts), max(p.coverage.height for p in parts))
    return Element([Part(pad_to(p.coverage, size), p.rgb, p.opacity) for p in parts])


def _gauss(radius: float) -> ImageFilter.GaussianBlur:
    return ImageFilter.GaussianBlur(max(0.3, radius))


def maybe_blur(ctx: MarkContext, element: Element, font_px: int) -> Element:
    """With probability blur_share a slight blur (never more than a tenth of the letter size)."""
    if not ctx.chance(ctx.blur_share):
        return element
    ctx.tags.append("blur")
    return element.blurred(min(ctx.uniform(0.4, 1.4), font_px / 10))


def with_opacity(element: Element, opacity: float) -> Element:
    """The element with every part's opacity multiplied by `opacity` (the mark's overall opacity)."""
    return Element([Part(p.coverage, p.rgb, p.opacity * opacity) for p in element.parts])


def corner_center(ctx: MarkContext, size: tuple[int, int], corners: str = "tl tr bl br") -> tuple[float, float]:
    """Centre (x, y) that puts an element of `size` into a random corner with a small margin."""
    w, h = size
    corner = ctx.rng.choice(corners.split())
    margin = ctx.short * ctx.uniform(0.015, 0.06)
    x = margin + w / 2 if corner[1] == "l" else ctx.layer.width - margin - w / 2
    y = margin + h / 2 if corner[0] == "t" else ctx.layer.height - margin - h / 2
    return x, y


def near_center(ctx: MarkContext, jitter: float = 0.15) -> tuple[float, float]:
    w, h = ctx.layer.width, ctx.layer.height
    return w / 2 + w * ctx.uniform(-jitter, jitter), h / 2 + h * ctx.uniform(-jitter, jitter)


# --------------------------------------------------------------------------- styles


def style_centered(ctx: MarkContext) -> None:
    """One large phrase near the centre, often rotated (the classic "SAMPLE" / "© Name" mark)."""
    phrase = ctx.phrase()
    face = pick_face(ctx, phrase)
    px = font_for_width(face, phrase.text, ctx.layer.width * ctx.uniform(0.3, 0.9), ctx.short * 0.35)
    element = decorated_text(ctx, phrase.text, px, face, ctx.colour())
    ctx.layer.stamp(with_opacity(element, ctx.opacity()), near_center(ctx), ctx.angle(0.5, 10, 45))


def style_corner(ctx: MarkContext) -> None:
    """A small phrase (copyright, URL, handle, brand) in a corner."""
    phrase = ctx.phrase(("copyright", "url", "handle", "brand", "date", "cjk_sc"))
    face = pick_face(ctx, phrase)
    px = relative_px(ctx, face, phrase.text, 0.025, 0.07, max_width=0.8)
    element = decorated_text(ctx, phrase.text, px, face, ctx.colour())
    ctx.layer.stamp(with_opacity(element, ctx.opacity(0.3, 1.0)), corner_center(ctx, element.size), ctx.angle(0.1, 2, 10))


def style_corner_label(ctx: MarkContext) -> None:
    """A small AI-content label ("AI生成", "XX AI生成"), plain or in a rounded pill."""
    phrase = ctx.keep(make_ai_label(ctx.rng))
    face = pick_face(ctx, phrase, bold=0.3)
    px = relative_px(ctx, face, phrase.text, 0.028, 0.06, max_width=0.7)
    if not ctx.chance(0.5):
        element = decorated_text(ctx, phrase.text, px, face, ctx.colour())
        ctx.layer.stamp(with_opacity(element, ctx.opacity(0.5, 1.0)), corner_center(ctx, element.size, "tl tr bl br br"))
        return
    ctx.tags.append("pill")
    text = text_coverage(phrase.text, load_font(face, px))
    box = (round(text.width + px * 0.9), round(text.height + px * 0.6))
    pill_rgb = (0.0, 0.0, 0.0) if ctx.chance(0.6) else (1.0, 1.0, 1.0)
    pill = rounded_box(box, radius=box[1] / 2 * ctx.uniform(0.4, 1.0))
    parts = [Part(pill, pill_rgb, ctx.uniform(0.35, 0.7)), Part(pad_to(text, box), _contrast_of(pill_rgb), ctx.uniform(0.85, 1.0))]
    element = with_opacity(Element(parts), ctx.opacity(0.6, 1.0))
    ctx.layer.stamp(element, corner_center(ctx, box, "tl tr bl br br"))


def _tiled(element: Element, side: int, step: tuple[int, int], stagger: float) -> Element:
    """Every part of `element` repeated on a `side` x `side` canvas every `step` (dx, dy) px, rows shifted by `stagger`."""
    parts = []
    for part in element.parts:
        canvas = Image.new("L", (side, side), 0)
        for row, y in enumerate(range(-step[1], side, step[1])):
            shift = int(step[0] * stagger * (row % 2))
            for x in range(-step[0] + shift, side, step[0]):
                canvas.paste(part.coverage, (x, y))
        parts.append(Part(canvas, part.rgb, part.opacity))
    return Element(parts)


def style_tiled(ctx: MarkContext) -> None:
    """A phrase repeated in staggered diagonal rows over the whole image (stock-photo protection)."""
    phrase = ctx.phrase()
    face = pick_face(ctx, phrase)
    px = relative_px(ctx, face, phrase.text, 0.035, 0.1, max_width=0.7)
    element = decorated_text(ctx, phrase.text, px, face, ctx.colour())
    w, h = element.size
    step = (round(w * ctx.uniform(1.15, 2.0)), round(h * ctx.uniform(1.8, 4.5)))
    side = int(np.hypot(ctx.layer.width, ctx.layer.height)) + 2 * max(step)
    tiled = _tiled(element, side, step, ctx.uniform(0.0, 0.6))
    angle = ctx.angle(0.85, 15, 45)
    ctx.layer.stamp(with_opacity(tiled, ctx.opacity(0.0, 0.6)), near_center(ctx, 0.05), angle)


def style_grid(ctx: MarkContext) -> None:
    """Stock-photo grid: thin crossing lines with a small brand repeated in the cells, maybe a big centre brand."""
    rgb = ctx.colour()
    phrase = ctx.phrase(("brand", "url", "stock_word", "cjk_sc"))
    face = pick_face(ctx, phrase, bold=0.7)
    px = relative_px(ctx, face, phrase.text, 0.025, 0.05, max_width=0.4)
    word = text_coverage(phrase.text, load_font(face, px))
    # Cells wide enough for the word with air around it, and never fewer than ~2 per image side.
    cell_w = max(round(word.width * ctx.uniform(1.3, 2.0)), round(ctx.short * ctx.uniform(0.2, 0.4)))
    cell_h = max(round(word.height * 3), round(cell_w * ctx.uniform(0.5, 1.0)))
    side = int(np.hypot(ctx.layer.width, ctx.layer.height)) + 2 * cell_w
    lines = Image.new("L", (side, side), 0)
    words = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(lines)
    width = 1 if ctx.chance(0.7) else 2
    for x in range(0, side, cell_w):
        draw.line([(x, 0), (x, side)], fill=255, width=width)
    for y in range(0, side, cell_h):
        draw.line([(0, y), (side, y)], fill=255, width=width)
        for x in range(0, side, cell_w):
            words.paste(word, (x + (cell_w - word.width) // 2, y + (cell_h - word.height) // 2))
    grid = Element([Part(lines, rgb, ctx.uniform(0.4, 0.9)), Part(words, rgb, 1.0)])
    ctx.layer.stamp(with_opacity(grid, ctx.opacity(0.0, 0.6)), near_center(ctx, 0.05), ctx.angle(0.8, 20, 45))
    if ctx.chance(0.5):
        big_px = font_for_width(face, phrase.text, ctx.layer.width * 0.6, ctx.short * 0.3)
        big = decorated_text(ctx, phrase.text, big_px, face, rgb)
        ctx.layer.stamp(with_opacity(big, ctx.opacity(0.2, 0.8)), near_center(ctx, 0.05))


def style_logo(ctx: MarkContext) -> None:
    """A simple icon (circle, camera, shield, star, ...) beside or above a brand, large centred or small in a corner."""
    phrase = ctx.phrase(("brand", "url", "cjk_sc", "handle"))
    face = pick_face(ctx, phrase, bold=0.6)
    small = ctx.chance(0.5)
    px = relative_px(ctx, face, phrase.text, *((0.03, 0.06) if small else (0.06, 0.14)), max_width=0.65)
    text = text_coverage(phrase.text, load_font(face, px))
    icon_name = str(ctx.rng.choice(sorted(ICONS)))
    icon = draw_icon(icon_name, round(text.height * ctx.uniform(1.1, 1.7)))
    ctx.tags.append(f"icon:{icon_name}")
    gap = max(2, icon.width // 4)
    if ctx.chance(0.7):  # icon left of the words
        canvas = Image.new("L", (icon.width + gap + text.width, max(icon.height, text.height)), 0)
        canvas.paste(icon, (0, (canvas.height - icon.height) // 2))
        canvas.paste(text, (icon.width + gap, (canvas.height - text.height) // 2))
    else:  # icon above the words
        canvas = Image.new("L", (max(icon.width, text.width), icon.height + gap + text.height), 0)
        canvas.paste(icon, ((canvas.width - icon.width) // 2, 0))
        canvas.paste(text, ((canvas.width - text.width) // 2, icon.height + gap))
    element = _with_shadow(ctx, canvas, ctx.colour(), px)
    center = corner_center(ctx, element.size) if small else near_center(ctx)
    ctx.layer.stamp(with_opacity(element, ctx.opacity(0.2, 1.0)), center, ctx.angle(0.2, 5, 30))


def _with_shadow(ctx: MarkContext, coverage: Image.Image, rgb: RGB, font_px: int) -> Element:
    """A ready coverage as an element, maybe with a soft drop shadow (part of the mark), maybe blurred."""
    offset = max(1, round(font_px * 0.06))
    fill = pad_to(coverage, (coverage.width + 4 * offset + 4, coverage.height + 4 * offset + 4))
    parts = [Part(fill, rgb, 1.0)]
    if ctx.chance(0.3):
        ctx.tags.append("shadow")
        parts.insert(0, Part(shifted(fill.filter(_gauss(offset * 0.7)), offset, offset), (0.0, 0.0, 0.0), ctx.uniform(0.4, 0.8)))
    return maybe_blur(ctx, Element(parts), font_px)


def style_hollow(ctx: MarkContext) -> None:
    """Outline-only (hollow) letters, large, often diagonal."""
    phrase = ctx.phrase(("stock_word", "brand", "cjk_sc", "copyright"))
    face = pick_face(ctx, phrase, bold=0.8)
    px = font_for_width(face, phrase.text, ctx.layer.width * ctx.uniform(0.4, 0.9), ctx.short * 0.4)
    element = decorated_text(ctx, phrase.text, px, face, ctx.colour(), hollow=True)
    ctx.layer.stamp(with_opacity(element, ctx.opacity(0.3, 1.0)), near_center(ctx), ctx.angle(0.6, 15, 45))


def _ink_texture(ctx: MarkContext, size: tuple[int, int]) -> np.ndarray:
    """A 0..1 (h, w) factor with soft gaps, like uneven rubber-stamp ink."""
    noise = fractal_noise(ctx.rng, size[0], size[1], octaves=5, base=int(ctx.rng.integers(4, 10)))
    cut = ctx.uniform(0.1, 0.35)
    return np.clip((noise - cut) / 0.2, 0.25, 1.0)


def style_stamp(ctx: MarkContext) -> None:
    """A bordered rubber stamp ("CONFIDENTIAL", "DO NOT COPY", "机密"), often hollow, tilted, uneven ink."""
    phrase = ctx.keep(make_stamp_phrase(ctx.rng))
    face = pick_face(ctx, phrase, bold=0.9)
    px = font_for_width(face, phrase.text, ctx.layer.width * ctx.uniform(0.25, 0.6), ctx.short * 0.25)
    hollow = ctx.chance(0.3)
    stroke = max(1, round(px * 0.05))
    text = text_coverage(phrase.text, load_font(face, px), stroke=stroke if hollow else 0, hollow=hollow)
    margin = round(px * ctx.uniform(0.25, 0.5))
    box = (text.width + 2 * margin, text.height + 2 * margin)
    border_w = max(1.5, px * ctx.uniform(0.06, 0.12))
    cover = rounded_box(box, radius=px * ctx.uniform(0.0, 0.4), width=border_w)
    if ctx.chance(0.4):  # double border
        inner = rounded_box(box, radius=px * 0.2, inset=border_w * 2, width=max(1.0, border_w / 2.5))
        cover = Image.fromarray(np.maximum(np.asarray(cover), np.asarray(inner)), "L")
    cover = Image.fromarray(np.maximum(np.asarray(cover), np.asarray(pad_to(text, box))), "L")
    cover = multiply(cover, _ink_texture(ctx, box))
    ctx.tags += ["hollow"] if hollow else []
    ink = _STAMP_INKS[int(ctx.rng.integers(len(_STAMP_INKS)))]
    ctx.tags.append("ink")
    element = maybe_blur(ctx, Element([Part(pad_to(cover, (box[0] + 4, box[1] + 4)), ink, 1.0)]), px)
    ctx.layer.stamp(with_opacity(element, ctx.opacity(0.4, 1.0)), near_center(ctx, 0.25), ctx.angle(0.85, 4, 30))


def style_badge(ctx: MarkContext) -> None:
    """A coloured badge (pill, box or corner ribbon) with the word knocked out or in white on it."""
    phrase = ctx.phrase(("stock_word", "brand", "cjk_sc", "cjk_jp"))
    face = pick_face(ctx, phrase, bold=0.9)
    px = relative_px(ctx, face, phrase.text, 0.035, 0.08, max_width=0.7)
    text = text_coverage(phrase.text, load_font(face, px))
    ribbon = ctx.chance(0.3)
    height = round(text.height + px * ctx.uniform(0.4, 0.8))
    # A ribbon is a band across a corner: its centre sits `inset` px from the corner along the diagonal,
    # far enough in that the words fit between the two image edges it crosses.
    inset = text.width / 2.3 + height * 0.6
    width = round(2 * inset * 1.4142 + 2 * height) if ribbon else round(text.width + px * ctx.uniform(0.6, 1.4))
    plate = rounded_box((width, height), radius=0 if ribbon else height * ctx.uniform(0.0, 0.5))
    letters = pad_to(text, (width, height))
    colour = _BADGE_COLOURS[int(ctx.rng.integers(len(_BADGE_COLOURS)))]
    ctx.tags.append("colour")
    if ctx.chance(0.4):
        ctx.tags.append("knockout")
        parts = [Part(subtract(plate, letters), colour, 1.0)]
    else:
        parts = [Part(plate, colour, 1.0), Part(letters, (1.0, 1.0, 1.0), 1.0)]
    element = with_opacity(maybe_blur(ctx, Element(parts), px), ctx.opacity(0.5, 1.0))
    if ribbon:
        ctx.tags.append("ribbon")
        left = ctx.chance(0.5)
        center = (inset if left else ctx.layer.width - inset, inset)
        ctx.layer.stamp(element, center, 45.0 if left else -45.0)
        return
    center = corner_center(ctx, (width, height)) if ctx.chance(0.6) else near_center(ctx, 0.3)
    ctx.layer.stamp(element, center, ctx.angle(0.2, 3, 20))


def style_emboss(ctx: MarkContext) -> None:
    """Embossed / bevelled text: a light edge up-left, a dark edge down-right, a faint fill."""
    phrase = ctx.phrase()
    face = pick_face(ctx, phrase, bold=0.9)
    px = font_for_width(face, phrase.text, ctx.layer.width * ctx.uniform(0.35, 0.9), ctx.short * 0.35)
    d = max(1, round(px * ctx.uniform(0.025, 0.05)))
    fill = text_coverage(phrase.text, load_font(face, px), pad=2 * d + 2)
    grey = ctx.uniform(0.4, 1.0)
    parts = [
        Part(shifted(fill, -d, -d), (1.0, 1.0, 1.0), ctx.uniform(0.5, 0.9)),
        Part(shifted(fill, d, d), (0.0, 0.0, 0.0), ctx.uniform(0.4, 0.8)),
        Part(fill, (grey, grey, grey), ctx.uniform(0.1, 0.35)),
    ]
    element = maybe_blur(ctx, Element(parts), px)
    ctx.tags.append("bevel")
    ctx.layer.stamp(with_opacity(element, ctx.opacity(0.3, 1.0)), near_center(ctx), ctx.angle(0.4, 10, 40))


def style_multiline(ctx: MarkContext) -> None:
    """A 2-4 line block ("© 2026 Name" / "www.site.com" / ...), centred or small in a corner."""
    block = ctx.keep(make_block(ctx.rng, int(ctx.rng.integers(2, 5)), ctx.phrases))
    face = pick_face(ctx, block)
    small = ctx.chance(0.5)
    if small:
        px = relative_px(ctx, face, block.text, 0.025, 0.05, max_width=0.6)
    else:
        px = font_for_width(face, block.text, ctx.layer.width * ctx.uniform(0.3, 0.7), ctx.short * 0.15)
    element = decorated_text(ctx, block.text, px, face, ctx.colour())
    center = corner_center(ctx, element.size) if small else near_center(ctx)
    ctx.layer.stamp(with_opacity(element, ctx.opacity(0.3, 1.0)), center, ctx.angle(0.25, 5, 35))


_CREDIT_INKS: tuple[RGB, ...] = ((1.0, 1.0, 1.0), (1.0, 0.88, 0.2))


def style_credit(ctx: MarkContext) -> None:
    """A burned-in credit line: opaque white or yellow text with a black stroke or hard shadow along the bottom.

    Its opacity (0.85-1) ignores prepare.opacity_min/max on purpose: a credit, handle or meme caption is
    drawn at full strength, and raising opacity_max for it would make every other style stronger too
    (phase 14 lost faint tiled grids that way, bench/results/phase14/)."""
    phrase = ctx.phrase(("copyright", "handle", "url", "brand", "cjk_sc"))
    face = pick_face(ctx, phrase, bold=0.6)
    px = relative_px(ctx, face, phrase.text, 0.025, 0.06, max_width=0.85)
    font = load_font(face, px)
    if ctx.chance(0.8):
        rgb = _CREDIT_INKS[0] if ctx.chance(0.8) else _CREDIT_INKS[1]
        ctx.tags.append("white" if rgb == _CREDIT_INKS[0] else "colour")
    else:
        rgb = ctx.colour()
    offset = max(1, round(px * ctx.uniform(0.05, 0.1)))
    pad = 2 * offset + max(2, px // 6) + 4
    fill = text_coverage(phrase.text, font, pad)
    parts: list[Part] = []
    edge = ctx.rng.random()
    if edge < 0.5:
        ctx.tags.append("outline")
        stroke = max(1, round(px * ctx.uniform(0.06, 0.12)))
        parts.append(Part(text_coverage(phrase.text, font, pad, stroke=stroke), _contrast_of(rgb), ctx.uniform(0.85, 1.0)))
    elif edge < 0.85:
        ctx.tags.append("shadow")
        hard = fill if ctx.chance(0.6) else fill.filter(_gauss(offset * 0.4))
        parts.append(Part(shifted(hard, offset, offset), _contrast_of(rgb), ctx.uniform(0.6, 1.0)))
    parts.append(Part(fill, rgb, 1.0))
    element = maybe_blur(ctx, stacked(parts), px)
    w, h = element.size
    margin = ctx.short * ctx.uniform(0.01, 0.05)
    bottom = ctx.chance(0.85)
    y = ctx.layer.height - margin - h / 2 if bottom else margin + h / 2
    where = ctx.rng.random()
    x = margin + w / 2 if where < 0.35 else ctx.layer.width - margin - w / 2 if where < 0.7 else ctx.layer.width / 2
    ctx.layer.stamp(with_opacity(element, ctx.uniform(0.85, 1.0)), (x, y), 0.0)


STYLES: dict[str, Callable[[MarkContext], None]] = {
    "centered": style_centered,
    "corner": style_corner,
    "corner_label": style_corner_label,
    "tiled": style_tiled,
    "grid": style_grid,
    "logo": style_logo,
    "hollow": style_hollow,
    "stamp": style_stamp,
    "badge": style_badge,
    "emboss": style_emboss,
    "multiline": style_multiline,
    "credit": style_credit,
}
# Small marks that may join a first mark on the same image (e.g. a tiled mark plus a corner URL).
SECOND_MARK_STYLES = ("corner", "corner_label", "logo", "badge")


def draw_style(ctx: MarkContext, name: str) -> list[str]:
    """Draw style `name` into ctx.layer; returns its tags (style name first, then modifiers)."""
    ctx.tags = []
    STYLES[name](ctx)
    seen: list[str] = []
    for tag in [name, *ctx.tags]:
        if tag not in seen:
            seen.append(tag)
    return seen
