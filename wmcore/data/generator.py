"""One synthetic sample: background -> scene text -> watermark -> JPEG, with its ground truth.

`generate_sample(ctx, split, index)` is a pure function of (params, background catalog, held-out
plan, split, index): the random generator is seeded from (base.seed, split, index) and split into
independent streams per decision (size, background, scene text, watermark, JPEG), so a sample never
depends on the order or the process it is made in, and changing e.g. `jpeg_share` leaves backgrounds alone.

Ground truth: `alpha` is the watermark layer's own alpha (after opacity, outline, shadow and blur;
before JPEG), stored as round(alpha * 255). The binary mask is 255 exactly where that stored
8-bit alpha / 255 is above `prepare.mask_alpha_threshold` (default 0.05: a mark at under 5% opacity
changes a pixel by at most ~13 grey levels, below what we ask a detector to find), else 0.
Scene text is burned into the background first and is never in the alpha or the mask.

Style-held-out split: `plan_heldout` picks, from base.seed, a share (`prepare.heldout_style_share`)
of the fonts, phrase kinds, watermark styles, background photos and procedural kinds by name. The
train, val and test splits never draw a held-out item; the `test_heldout` split draws only held-out
items wherever a registry has any (for a script with no held-out face, a seen face draws it). So
test measures the training distribution and test_heldout generalization to what training never saw.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from wmcore.config import PrepareParams
from wmcore.data.backgrounds import (
    CORPUS_DOCUMENT,
    PAGE_BACKGROUNDS,
    BackgroundCatalog,
    HardNegative,
    PhotoRef,
    augmented_crop,
    background_kind,
    crop_around,
    hard_negative_view,
    is_page_background,
    load_photo,
    photo_view,
)
from wmcore.data.compose import composite, jpeg_roundtrip, render_scene_text, strengthen, to_uint8
from wmcore.data.fonts import available_faces, face_scope
from wmcore.data.layer import MarkLayer
from wmcore.data.layout import HELDOUT_SPLIT
from wmcore.data.phrases import PHRASE_KINDS, PhrasePolicy
from wmcore.data.procedural import render_procedural
from wmcore.data.render import SECOND_MARK_STYLES, MarkContext, draw_style

# Scripts training always needs a face for, whatever kinds are held out: AI labels, stamps and blocks
# may be Chinese ("sc"), and scene text and dates may carry CJK characters (drawn with an "sc" face).
ALWAYS_NEEDED_SCRIPTS = frozenset({"latin", "sc"})
# Aspect ratios (long:short) of generated samples: photo, screen and square formats.
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 5 / 4, 2.0)
MARK_TRIES = 3  # redraws when a mark is too faint even at full opacity, or fell outside the image
PAGE_STAMP_BOOST = 4.0  # document pages get rubber stamps ("CONFIDENTIAL") this many times more often


@dataclass(frozen=True)
class HeldoutPlan:
    """Names kept out of train/val/test and drawn by the test_heldout split (all empty: no held-out split)."""

    fonts: tuple[str, ...] = ()
    phrase_kinds: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    photos: tuple[str, ...] = ()
    procedural: tuple[str, ...] = ()

    def active(self) -> bool:
        return any((self.fonts, self.phrase_kinds, self.styles, self.photos, self.procedural))


@dataclass
class GeneratorContext:
    """Everything a sample is made from: the prepare params, the base seed, the background catalog, the held-out plan."""

    prepare: PrepareParams
    seed: int
    catalog: BackgroundCatalog
    heldout: HeldoutPlan = field(default_factory=HeldoutPlan)
    hard_negatives: tuple[HardNegative, ...] = ()  # mined regions of catalog photos (wm mine)


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
    fonts: list[str] = field(default_factory=list)  # sorted names of every face drawn (marks, scene text, page text)
    phrase_kinds: list[str] = field(default_factory=list)  # kinds of the watermark phrases, in drawing order
    background_kind: str = "photo"  # "photo", "page" (document / text page) or "procedural"
    hard_negative: bool = False  # the background is a photo cropped around a mined hard negative (wm mine)
    native_view: bool = False  # the background photo was cut from its native view (prepare.native_share)


# --------------------------------------------------------------------------- the held-out plan


def _registry_rng(seed: int, registry: str) -> np.random.Generator:
    """One stream per registry, so e.g. installing another photo never changes which fonts are held out."""
    return np.random.default_rng([seed, zlib.crc32(f"heldout:{registry}".encode())])


def hold_out(
    rng: np.random.Generator, names: Sequence[str], share: float, may_go: Callable[[list[str], str], bool] = lambda h, n: True
) -> tuple[str, ...]:
    """About `share` of `names` (at least one, always leaving one), in random order, each passing `may_go(held, name)`."""
    target = min(len(names) - 1, max(1, round(len(names) * share)))
    held: list[str] = []
    for i in rng.permutation(len(names)):
        if len(held) >= target:
            break
        if may_go(held, names[int(i)]):
            held.append(names[int(i)])
    return tuple(sorted(held))


def _font_may_go(held_kinds: tuple[str, ...]) -> Callable[[list[str], str], bool]:
    """A face may be held out only if every script training still needs keeps another, seen face."""
    needed = ALWAYS_NEEDED_SCRIPTS | {PHRASE_KINDS[k][0] for k in PHRASE_KINDS if k not in held_kinds}
    faces = available_faces()

    def may_go(held: list[str], name: str) -> bool:
        face = next(f for f in faces if f.name == name)
        gone = {*held, name}
        return all(any(s in f.scripts and f.name not in gone for f in faces) for s in face.scripts & needed)

    return may_go


def _page_may_go(catalog: BackgroundCatalog, held_procedural: tuple[str, ...]) -> Callable[[list[str], str], bool]:
    """A page photo may be held out only if training keeps another page background (its document negatives)."""
    pages = [r.id for r in catalog.photos if is_page_background(r.id)]
    pages += [f"procedural:{k}" for k in catalog.procedural if f"procedural:{k}" in PAGE_BACKGROUNDS and k not in held_procedural]
    return lambda held, name: not is_page_background(name) or len(set(pages) - {*held, name}) > 0


def plan_heldout(p: PrepareParams, seed: int, catalog: BackgroundCatalog) -> HeldoutPlan:
    """The held-out names for `prepare.heldout_style_share` (empty when it is 0 or `n_test_heldout` is 0).

    Deterministic in (seed, share, style weights, installed fonts, background catalog). Every registry
    keeps at least one item for training, and training never loses a needed kind: a CJK face goes only
    with the phrase kinds of its script, the last page background never goes.
    """
    share = p.heldout_style_share
    if share <= 0 or p.n_test_heldout == 0:
        return HeldoutPlan()
    styles = hold_out(_registry_rng(seed, "styles"), sorted(n for n, w in p.style_weights.items() if w > 0), share)
    kinds = hold_out(_registry_rng(seed, "phrase_kinds"), list(PHRASE_KINDS), share)
    fonts = hold_out(_registry_rng(seed, "fonts"), [f.name for f in available_faces()], share, _font_may_go(kinds))
    pages_in_photos = any(is_page_background(r.id) for r in catalog.photos)
    procedural = hold_out(
        _registry_rng(seed, "procedural"), catalog.procedural, share,
        lambda held, kind: f"procedural:{kind}" not in PAGE_BACKGROUNDS or pages_in_photos,
    )
    photos = hold_out(_registry_rng(seed, "photos"), [r.id for r in catalog.photos], share, _page_may_go(catalog, procedural))
    return HeldoutPlan(fonts, kinds, styles, photos, procedural)


# --------------------------------------------------------------------------- what one split draws from


@dataclass(frozen=True)
class DrawPool:
    """What the samples of one split may draw: backgrounds, style weights, phrase kinds and fonts."""

    photos: tuple[PhotoRef, ...]
    procedural: tuple[str, ...]
    style_weights: dict[str, float]
    hard_negatives: tuple[HardNegative, ...]  # those on this pool's photos
    phrases: PhrasePolicy
    held_out_fonts: frozenset[str]
    prefer_held_out: bool  # the held-out split: held-out items only, where a registry has any


def _pool(names: Sequence[str], held: Sequence[str], unseen: bool) -> list[str]:
    """Seen splits: the names not held out. The held-out split: the held-out names, or all if none is held out."""
    if unseen:
        return [n for n in names if n in held] or list(names)
    return [n for n in names if n not in held]


def draw_pool(ctx: GeneratorContext, split: str) -> DrawPool:
    """The pool of `split` under ctx.heldout (with an empty plan: everything, for every split)."""
    plan, cat, unseen = ctx.heldout, ctx.catalog, split == HELDOUT_SPLIT
    # Backgrounds pool photos and procedural kinds together: a held-out split with held-out procedural
    # kinds but no held-out photo draws only procedural backgrounds.
    photos = tuple(r for r in cat.photos if (r.id in plan.photos) == unseen)
    procedural = tuple(k for k in cat.procedural if (k in plan.procedural) == unseen)
    if unseen and not (photos or procedural):  # nothing held out: any background
        photos, procedural = tuple(cat.photos), tuple(cat.procedural)
    positive = sorted(n for n, w in ctx.prepare.style_weights.items() if w > 0)
    styles = _pool(positive, plan.styles, unseen)
    ids = {r.id for r in photos}
    hard = tuple(h for h in ctx.hard_negatives if h.ref.id in ids)
    return DrawPool(
        photos, procedural, {n: ctx.prepare.style_weights[n] for n in styles}, hard,
        PhrasePolicy(frozenset(plan.phrase_kinds), unseen), frozenset(plan.fonts), unseen,
    )


def sample_streams(seed: int, split: str, index: int, n: int = 5) -> list[np.random.Generator]:
    """`n` independent generators for sample (split, index); crc32 keeps the split's code stable across runs."""
    root = np.random.SeedSequence([seed, zlib.crc32(split.encode()), index])
    return [np.random.default_rng(s) for s in root.spawn(n)]


def sample_size(rng: np.random.Generator, p: PrepareParams) -> tuple[int, int]:
    """(width, height): long side uniform in [min_side, max_side], a common aspect ratio, landscape or portrait."""
    long_side = int(rng.integers(p.min_side, p.max_side + 1))
    short_side = max(16, round(long_side / ASPECTS[int(rng.integers(len(ASPECTS)))]))
    return (long_side, short_side) if rng.random() < 0.65 else (short_side, long_side)


def make_background(
    rng: np.random.Generator, pool: DrawPool, p: PrepareParams, width: int, height: int
) -> tuple[np.ndarray, str, bool, bool, bool]:
    """(RGB float32 (H, W, 3), source id, has text of its own, cropped around a hard negative, cut from a native
    view): procedural for
    procedural_share, else a photo; a photo is cropped around a hard negative for prepare.hard_negative_share
    of them (when there are any), and from its native view for prepare.native_share of draws of a photo
    that has one (camera detail instead of the stored 768 px copy)."""
    use_procedural = pool.procedural and (not pool.photos or rng.random() < p.procedural_share)
    if use_procedural:
        kind = pool.procedural[int(rng.integers(len(pool.procedural)))]
        img, has_text = render_procedural(kind, rng, width, height)
        return img, f"procedural:{kind}", has_text, False, False
    if pool.hard_negatives and rng.random() < p.hard_negative_share:  # no draw without mined regions: same data
        hard = hard_negative_view(rng, pool.hard_negatives[int(rng.integers(len(pool.hard_negatives)))], p.native_share)
        img = crop_around(rng, load_photo(hard.ref, p.max_background_side), hard, width, height)
        return img, hard.ref.id, hard.ref.has_text, True, hard.ref.path == hard.ref.native
    ref = photo_view(rng, pool.photos[int(rng.integers(len(pool.photos)))], p.native_share)
    img = augmented_crop(rng, load_photo(ref, p.max_background_side), ref, width, height)
    return img, ref.id, ref.has_text, False, ref.path == ref.native


def choose_style(rng: np.random.Generator, weights: dict[str, float], on_page: bool) -> str:
    """A style name drawn by `weights`; stamps are boosted on document backgrounds."""
    names = sorted(n for n, w in weights.items() if w > 0)
    w = np.array([weights[n] * (PAGE_STAMP_BOOST if on_page and n == "stamp" else 1.0) for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def draw_watermark(
    rng: np.random.Generator, p: PrepareParams, pool: DrawPool, background: np.ndarray, on_page: bool
) -> tuple[MarkLayer, list[str], list[str]]:
    """The watermark layer for `background`, its style tags and its phrase kinds; too-faint marks are strengthened or redrawn."""
    height, width = background.shape[:2]
    luma = float(background.mean())
    weights = pool.style_weights
    for attempt in range(MARK_TRIES):
        layer = MarkLayer(width, height)
        mark = MarkContext(rng, layer, (p.opacity_min, p.opacity_max), p.blur_share, luma, invert=attempt > 0,
                           phrases=pool.phrases)
        first = choose_style(rng, weights, on_page)
        tags = draw_style(mark, first)
        seconds = {n: weights.get(n, 0.0) for n in SECOND_MARK_STYLES if n != first}
        if any(seconds.values()) and rng.random() < p.multi_mark_share:
            tags += ["multi", *(t for t in draw_style(mark, choose_style(rng, seconds, False)) if t not in tags)]
        if strengthen(background, layer, p.min_contrast, p.mask_alpha_threshold) >= p.min_contrast:
            break
    return layer, tags, [k for phrase in mark.drawn for k in phrase.kinds()]


def generate_sample(ctx: GeneratorContext, split: str, index: int) -> Sample:
    """Sample `index` of `split` (deterministic; see the module docstring for the ground-truth and held-out rules)."""
    pool = draw_pool(ctx, split)
    with face_scope(pool.held_out_fonts, pool.prefer_held_out) as fonts_used:
        sample = _compose_sample(ctx.prepare, pool, sample_streams(ctx.seed, split, index))
    sample.fonts = sorted(fonts_used)
    return sample


def _compose_sample(p: PrepareParams, pool: DrawPool, streams: list[np.random.Generator]) -> Sample:
    """Background, scene text, watermark and JPEG of one sample from its five random streams."""
    size_rng, bg_rng, scene_rng, mark_rng, jpeg_rng = streams
    width, height = sample_size(size_rng, p)
    background, source, has_text, hard_negative, native_view = make_background(bg_rng, pool, p, width, height)
    scene_alpha = np.zeros((height, width), np.float32)
    scene = scene_rng.random() < p.scene_text_share
    if scene:
        scene_layer, _ = render_scene_text(scene_rng, width, height, p.scene_text_kinds)
        background = composite(background, scene_layer)
        scene_alpha = scene_layer.alpha
    styles: list[str] = []
    kinds: list[str] = []
    layer = MarkLayer(width, height)
    if mark_rng.random() >= p.clean_share:
        on_page = has_text and (source in ("procedural:page", "skimage:page") or source.startswith(CORPUS_DOCUMENT))
        layer, styles, kinds = draw_watermark(mark_rng, p, pool, background, on_page)
    image = to_uint8(composite(background, layer))
    if jpeg_rng.random() < p.jpeg_share:
        image = jpeg_roundtrip(image, int(jpeg_rng.integers(p.jpeg_quality_min, p.jpeg_quality_max + 1)))
        styles = [*styles, "jpeg"] if styles else ["clean", "jpeg"]
    alpha = to_uint8(layer.alpha)
    mask = np.where(alpha.astype(np.float32) / 255.0 > p.mask_alpha_threshold, 255, 0).astype(np.uint8)
    if not styles:
        styles = ["clean"]
    return Sample(image, alpha, mask, styles, source, bool(scene or has_text), scene_alpha,
                  phrase_kinds=kinds, background_kind=background_kind(source), hard_negative=hard_negative,
                  native_view=native_view)
