"""Simple procedurally drawn logo icons (circle, camera, shield, star, aperture, play) for "logo + text" marks.

Each icon is an anti-aliased L coverage mask of a square side; `ICONS` maps a stable name to its
drawing function so a later held-out split can keep icons out of training by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import Image, ImageDraw

from wmcore.data.layer import supersampled

Painter = Callable[[ImageDraw.ImageDraw, float, float], None]  # (draw, side in big px, stroke in big px)


def _circle(d: ImageDraw.ImageDraw, n: float, w: float) -> None:
    d.ellipse((w / 2, w / 2, n - w / 2, n - w / 2), outline=255, width=round(w))
    c = n / 2
    d.ellipse((c - n * 0.18, c - n * 0.18, c + n * 0.18, c + n * 0.18), fill=255)


def _camera(d: ImageDraw.ImageDraw, n: float, w: float) -> None:
    d.rounded_rectangle((0, n * 0.25, n - 1, n * 0.9), radius=n * 0.12, fill=255)
    d.rectangle((n * 0.32, n * 0.12, n * 0.68, n * 0.3), fill=255)
    c, r = (n / 2, n * 0.575), n * 0.22
    d.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=0)
    r2 = r * 0.6
    d.ellipse((c[0] - r2, c[1] - r2, c[0] + r2, c[1] + r2), fill=255)


def _shield(d: ImageDraw.ImageDraw, n: float, w: float) -> None:
    outer = [(n * 0.5, 0), (n * 0.95, n * 0.15), (n * 0.88, n * 0.6), (n * 0.5, n), (n * 0.12, n * 0.6), (n * 0.05, n * 0.15)]
    d.polygon(outer, fill=255)
    inner = [(x * 0.7 + n * 0.15, y * 0.7 + n * 0.13) for x, y in outer]
    d.polygon(inner, fill=0)
    d.line([(n * 0.33, n * 0.5), (n * 0.46, n * 0.63), (n * 0.7, n * 0.36)], fill=255, width=round(w))


def _star(d: ImageDraw.ImageDraw, n: float, w: float) -> None:
    c, r_out, r_in = n / 2, n / 2, n * 0.2
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        ang = -math.pi / 2 + k * math.pi / 5
        pts.append((c + r * math.cos(ang), c + r * 1.05 * math.sin(ang) + n * 0.05))
    d.polygon(pts, fill=255)


def _aperture(d: ImageDraw.ImageDraw, n: float, w: float) -> None:
    d.ellipse((0, 0, n - 1, n - 1), fill=255)
    c = n / 2
    for k in range(6):
        a = k * math.pi / 3
        x, y = c + n * 0.3 * math.cos(a), c + n * 0.3 * math.sin(a)
        d.line([(c, c), (x + n * 0.2 * math.cos(a + 2), y + n * 0.2 * math.sin(a + 2))], fill=0, width=round(w * 0.7))
    d.ellipse((c - n * 0.14, c - n * 0.14, c + n * 0.14, c + n * 0.14), fill=0)


def _play(d: ImageDraw.ImageDraw, n: float, w: float) -> None:
    d.rounded_rectangle((0, n * 0.1, n - 1, n * 0.9), radius=n * 0.2, fill=255)
    d.polygon([(n * 0.4, n * 0.3), (n * 0.4, n * 0.7), (n * 0.72, n * 0.5)], fill=0)


ICONS: dict[str, Painter] = {
    "circle": _circle, "camera": _camera, "shield": _shield, "star": _star, "aperture": _aperture, "play": _play,
}


def draw_icon(name: str, side: int) -> Image.Image:
    """Icon `name` (one of ICONS) as an L coverage mask of `side` x `side` px."""
    painter = ICONS[name]
    side = max(6, side)
    return supersampled((side, side), lambda d, s: painter(d, side * s, max(1.0, side * s * 0.1)))
