"""Procedural backgrounds: the hard negatives a text-mark detector fires on when it has not seen them.

Gradients, noise textures, skies with clouds, specular highlights and reflections, thin bright
rims and edges, screen-like UI panels and document pages with ordinary text. Each kind has a stable
name in `PROCEDURAL_KINDS`; `render_procedural(kind, rng, width, height)` returns an RGB float32
array (H, W, 3) in 0..1 and whether the picture holds text of its own (pages, UI labels).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wmcore.data.fonts import faces_for, load_font
from wmcore.data.phrases import make_scene_phrase

Array = np.ndarray


def fractal_noise(rng: np.random.Generator, width: int, height: int, octaves: int = 5, base: int = 3) -> Array:
    """Smooth value noise (H, W) float32 in 0..1: random grids of growing resolution, upsampled and summed."""
    out = np.zeros((height, width), np.float32)
    total = 0.0
    for k in range(octaves):
        cells = base * 2**k
        gw, gh = max(2, round(cells * width / max(width, height))), max(2, round(cells * height / max(width, height)))
        grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8), "L")
        weight = 0.55**k
        out += np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), np.float32) * weight
        total += weight * 255.0
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _random_colour(rng: np.random.Generator, light: tuple[float, float] = (0.0, 1.0)) -> Array:
    base = rng.random(3).astype(np.float32)
    lum = light[0] + (light[1] - light[0]) * rng.random()
    return np.clip(base * 0.5 + lum * 0.5, 0, 1).astype(np.float32)


def _linear_ramp(rng: np.random.Generator, width: int, height: int) -> Array:
    ang = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs * np.cos(ang) / width + ys * np.sin(ang) / height
    return (t - t.min()) / max(float(np.ptp(t)), 1e-6)


def _gradient(rng: np.random.Generator, width: int, height: int) -> Array:
    if rng.random() < 0.5:
        t = _linear_ramp(rng, width, height)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = np.hypot(xs - cx, ys - cy)
        t /= max(float(t.max()), 1e-6)
    a, b = _random_colour(rng), _random_colour(rng)
    img = a + (b - a) * t[..., None]
    return img + (rng.standard_normal((height, width, 1)).astype(np.float32) * 0.01)


def _noise_texture(rng: np.random.Generator, width: int, height: int) -> Array:
    n = fractal_noise(rng, width, height, octaves=int(rng.integers(3, 7)), base=int(rng.integers(2, 12)))
    if rng.random() < 0.4:  # marble / wood-like veins
        n = 0.5 + 0.5 * np.sin(n * rng.uniform(6, 20))
    a, b = _random_colour(rng), _random_colour(rng)
    grain = rng.standard_normal((height, width, 1)).astype(np.float32) * rng.uniform(0.0, 0.05)
    return a + (b - a) * n[..., None] + grain


def _sky(rng: np.random.Generator, width: int, height: int) -> Array:
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top = np.array([0.15, 0.35, 0.75], np.float32) * rng.uniform(0.7, 1.1)
    horizon = np.array([0.7, 0.82, 0.95], np.float32) * rng.uniform(0.85, 1.05)
    sky = top + (horizon - top) * ys
    sky = np.broadcast_to(sky, (height, width, 3)).copy()
    clouds = fractal_noise(rng, width, height, octaves=6, base=int(rng.integers(2, 5)))
    cover = rng.uniform(0.35, 0.7)
    amount = np.clip((clouds - cover) / (1 - cover) * 1.6, 0, 1)[..., None]
    sky = sky * (1 - amount) + np.float32(rng.uniform(0.85, 1.0)) * amount
    if rng.random() < 0.4:  # sun glare
        sky += _blob(rng, width, height, rng.uniform(0.05, 0.25))[..., None] * 0.8
    return sky


def _blob(rng: np.random.Generator, width: int, height: int, radius_frac: float, elong: float = 1.0) -> Array:
    """A soft Gaussian blob (H, W) 0..1 at a random spot, optionally stretched along a random axis."""
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    u = (xs - cx) * np.cos(ang) + (ys - cy) * np.sin(ang)
    v = -(xs - cx) * np.sin(ang) + (ys - cy) * np.cos(ang)
    r = radius_frac * max(width, height)
    return np.exp(-((u / (r * elong)) ** 2 + (v / r) ** 2))


def _specular(rng: np.random.Generator, width: int, height: int) -> Array:
    base = _gradient(rng, width, height) * rng.uniform(0.2, 0.6)
    for _ in range(int(rng.integers(1, 5))):
        spot = _blob(rng, width, height, rng.uniform(0.01, 0.08), elong=rng.uniform(1, 8))
        base += spot[..., None] * rng.uniform(0.6, 1.4)
    if rng.random() < 0.5:  # a blurred reflection band, like a window on glossy paint
        band = _blob(rng, width, height, rng.uniform(0.02, 0.06), elong=rng.uniform(8, 30))
        base += band[..., None] * rng.uniform(0.3, 0.8)
    return base


def _rims(rng: np.random.Generator, width: int, height: int) -> Array:
    base = _gradient(rng, width, height) * rng.uniform(0.05, 0.4)
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 9))):
        x0, y0 = rng.uniform(-width, width), rng.uniform(-height, height)
        w, h = rng.uniform(0.3, 2) * width, rng.uniform(0.3, 2) * height
        start = rng.uniform(0, 360)
        draw.arc((x0, y0, x0 + w, y0 + h), start, start + rng.uniform(20, 200), fill=int(rng.integers(150, 256)),
                 width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 4))):
        pts = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(2)]
        draw.line(pts, fill=int(rng.integers(150, 256)), width=int(rng.integers(1, 3)))
    edges = np.asarray(img, np.float32) / 255.0
    glow = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 5))), np.float32) / 255.0
    tint = _random_colour(rng, (0.7, 1.0))
    return base + (edges[..., None] + glow[..., None] * 0.8) * tint


def _ui_panels(rng: np.random.Generator, width: int, height: int) -> tuple[Array, bool]:
    dark = rng.random() < 0.4
    bg = (np.array([30, 32, 38]) if dark else np.array([242, 243, 246])) + rng.integers(-10, 11, 3)
    img = Image.new("RGB", (width, height), tuple(int(c) for c in bg))
    draw = ImageDraw.Draw(img)
    accent = tuple(int(c) for c in rng.integers(30, 230, 3))
    bar_h = int(height * rng.uniform(0.06, 0.12))
    draw.rectangle((0, 0, width, bar_h), fill=accent)
    face = faces_for("latin")[0] if faces_for("latin") else None
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(bar_h, height * 0.9)
        w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.05, 0.3) * height
        fill = tuple(int(c) for c in (bg + (25 if dark else -18)))
        draw.rounded_rectangle((x0, y0, x0 + w, y0 + h), radius=rng.uniform(2, 12), fill=fill)
        if face is not None and h > 14:
            word = make_scene_phrase(rng)
            # a CJK word in a Latin face would be drawn as empty boxes ("tofu"), which no real screen shows
            script_face = (faces_for(word.script) or [face])[0]
            font = load_font(script_face, int(min(h * 0.35, 18)))
            ink = (220, 220, 225) if dark else (40, 40, 48)
            draw.text((x0 + 6, y0 + 4), word.text.split()[0], font=font, fill=ink)
    return np.asarray(img, np.float32) / 255.0, face is not None


PAGE_WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "that", "with", "on", "as", "by", "this", "are", "be",
    "from", "at", "or", "an", "it", "which", "results", "method", "data", "model", "figure", "table",
    "section", "report", "analysis", "value", "shown", "time", "first", "two", "used", "each", "between",
    "more",
)


def _page(rng: np.random.Generator, width: int, height: int) -> tuple[Array, bool]:
    paper = np.array([250, 248, 240]) - rng.integers(0, 25, 3)
    img = Image.new("RGB", (width, height), tuple(int(c) for c in paper))
    draw = ImageDraw.Draw(img)
    faces = faces_for("latin")
    if not faces:
        return np.asarray(img, np.float32) / 255.0, False
    face = faces[int(rng.integers(len(faces)))]
    size = max(7, int(min(width, height) * rng.uniform(0.022, 0.045)))
    font = load_font(face, size)
    margin, y = int(width * rng.uniform(0.05, 0.12)), int(height * rng.uniform(0.04, 0.1))
    ink = tuple(int(c) for c in rng.integers(0, 60, 3))
    while y < height - size:
        if rng.random() < 0.08:  # paragraph break
            y += size
            continue
        words = [PAGE_WORDS[int(i)] for i in rng.integers(len(PAGE_WORDS), size=int(rng.integers(4, 16)))]
        draw.text((margin, y), " ".join(words), font=font, fill=ink)
        y += int(size * rng.uniform(1.3, 1.7))
    arr = np.asarray(img, np.float32) / 255.0
    # Scanned/photographed paper: soft shading and grain.
    shade = 1.0 - 0.12 * _linear_ramp(rng, width, height)[..., None] * rng.random()
    return arr * shade + rng.standard_normal((height, width, 1)).astype(np.float32) * 0.01, True


def _no_text(fn: Callable[[np.random.Generator, int, int], Array]) -> Callable[..., tuple[Array, bool]]:
    return lambda rng, w, h: (fn(rng, w, h), False)


PROCEDURAL_KINDS: dict[str, Callable[[np.random.Generator, int, int], tuple[Array, bool]]] = {
    "gradient": _no_text(_gradient),
    "noise": _no_text(_noise_texture),
    "sky": _no_text(_sky),
    "specular": _no_text(_specular),
    "rims": _no_text(_rims),
    "ui": _ui_panels,
    "page": _page,
}


def render_procedural(kind: str, rng: np.random.Generator, width: int, height: int) -> tuple[Array, bool]:
    """Background `kind` as RGB float32 (height, width, 3) in 0..1, and whether it carries text of its own."""
    img, has_text = PROCEDURAL_KINDS[kind](rng, width, height)
    return np.clip(img, 0.0, 1.0).astype(np.float32), has_text
