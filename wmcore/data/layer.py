"""Drawing primitives for watermarks: a full-image RGBA layer and the elements stamped into it.

A watermark is built as an `Element`: one or more `Part`s (a coverage mask in a local canvas, a
flat colour, an opacity), e.g. drop shadow, outline, fill. `MarkLayer.stamp` rotates every part of
an element by the same angle and composites them "over" each other into a premultiplied,
full-image layer. The layer's alpha is the watermark's ground truth: shadows and outlines are part
of the mark, so they are in it. Shapes are drawn supersampled, so edges are anti-aliased like text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

RGB = tuple[float, float, float]  # colour, each channel 0..1
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased like FreeType text


@dataclass
class Part:
    """A flat-colour piece of an element: `coverage` (mode L, 0..255) times `opacity` is its alpha."""

    coverage: Image.Image
    rgb: RGB
    opacity: float


@dataclass
class Element:
    """Parts drawn bottom to top in one local canvas (all parts have the same size)."""

    parts: list[Part] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.parts[0].coverage.size

    def blurred(self, radius: float) -> Element:
        """The same element with every part Gaussian-blurred by `radius` px (a slightly soft mark)."""
        if radius <= 0:
            return self
        blur = ImageFilter.GaussianBlur(radius)
        return Element([Part(p.coverage.filter(blur), p.rgb, p.opacity) for p in self.parts])


class MarkLayer:
    """A full-image watermark layer: `premul` (H, W, 3) colour*alpha and `alpha` (H, W), float32 0..1."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.premul = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), np.float32)

    def stamp(self, element: Element, center: tuple[float, float], angle: float = 0.0) -> None:
        """Composite `element` rotated by `angle` degrees (counter-clockwise) with its centre at `center` (x, y)."""
        for part in element.parts:
            cov = part.coverage
            if angle:
                cov = cov.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
            w, h = cov.size
            x0, y0 = round(center[0] - w / 2), round(center[1] - h / 2)
            self._over(np.asarray(cov, np.float32) * (part.opacity / 255.0), part.rgb, x0, y0)

    def _over(self, alpha: np.ndarray, rgb: RGB, x0: int, y0: int) -> None:
        """Porter-Duff "over" of a flat colour with `alpha` (h, w) placed at (x0, y0); clipped to the layer."""
        h, w = alpha.shape
        lx0, ly0 = max(0, -x0), max(0, -y0)
        gx0, gy0 = max(0, x0), max(0, y0)
        gx1, gy1 = min(self.width, x0 + w), min(self.height, y0 + h)
        if gx1 <= gx0 or gy1 <= gy0:
            return
        a = alpha[ly0 : ly0 + gy1 - gy0, lx0 : lx0 + gx1 - gx0]
        keep = 1.0 - a
        dst_a = self.alpha[gy0:gy1, gx0:gx1]
        dst_p = self.premul[gy0:gy1, gx0:gx1]
        dst_p *= keep[..., None]
        dst_p += a[..., None] * np.asarray(rgb, np.float32)
        dst_a *= keep
        dst_a += a

    def scale_opacity(self, factor: float) -> None:
        """Multiply the whole layer's alpha by `factor` (<= 1/max alpha keeps it valid)."""
        self.premul *= factor
        self.alpha *= factor


# --------------------------------------------------------------------------- coverage masks


def text_coverage(
    text: str, font: ImageFont.FreeTypeFont, pad: int = 0, stroke: int = 0, hollow: bool = False, align: str = "center"
) -> Image.Image:
    """Text (may be multi-line) as an L coverage mask with `pad` px free on each side.

    `stroke` > 0 thickens the glyphs by that many px; with `hollow` only the stroke ring is kept
    (outline-only letters).
    """
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    spacing = max(2, font.size // 5)
    box = probe.multiline_textbbox((0, 0), text, font=font, stroke_width=stroke, spacing=spacing, align=align)
    x0, y0, x1, y1 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    img = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), 0)
    draw = ImageDraw.Draw(img)
    draw.multiline_text(
        (pad - x0, pad - y0), text, font=font, fill=0 if hollow else 255, stroke_width=stroke, stroke_fill=255,
        spacing=spacing, align=align,
    )
    return img


def supersampled(size: tuple[int, int], draw_fn: Callable[[ImageDraw.ImageDraw, float], None]) -> Image.Image:
    """An L mask of `size` drawn by `draw_fn(draw, scale)` at SUPERSAMPLE x and reduced (anti-aliased)."""
    big = Image.new("L", (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE), 0)
    draw_fn(ImageDraw.Draw(big), float(SUPERSAMPLE))
    return big.reduce(SUPERSAMPLE)


def rounded_box(size: tuple[int, int], radius: float, inset: float = 0.0, width: float = 0.0) -> Image.Image:
    """A rounded rectangle filling `size` (less `inset` px); `width` > 0 draws only its border, px."""

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        box = (inset * s, inset * s, (size[0] - inset) * s - 1, (size[1] - inset) * s - 1)
        r = max(0.0, radius * s)
        if width > 0:
            d.rounded_rectangle(box, radius=r, outline=255, width=max(1, round(width * s)))
        else:
            d.rounded_rectangle(box, radius=r, fill=255)

    return supersampled(size, draw)


def pad_to(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` centred on an empty L canvas of `size` (so parts of one element line up)."""
    out = Image.new("L", size, 0)
    out.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    return out


def shifted(img: Image.Image, dx: int, dy: int) -> Image.Image:
    """`img` moved by (dx, dy) px inside the same canvas (content pushed out is lost)."""
    out = Image.new("L", img.size, 0)
    out.paste(img, (dx, dy))
    return out


def subtract(a: Image.Image, b: Image.Image) -> Image.Image:
    """Coverage `a` with `b` knocked out (e.g. a badge with the letters cut through it)."""
    arr = np.asarray(a, np.int16) - np.asarray(b, np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def multiply(a: Image.Image, factor: np.ndarray) -> Image.Image:
    """Coverage `a` times a 0..1 array of the same (h, w) (ink texture of a rubber stamp)."""
    arr = np.asarray(a, np.float32) * factor
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
