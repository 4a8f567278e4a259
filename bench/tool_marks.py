"""Watermarks made with the tools users make them with, on real photos training never saw: ours against OCR.

Every synthetic split is drawn by our own generator (wmcore.data.render): its compositing, its styles,
Pillow's text rasteriser. Users' marks come from other tools. This puts marks made by two of them on
the corpus's real_test photos (never a training background, never calibrated on), each photo once
clean and once marked, both saved as JPEG (quality 88-95) as a user's file is:

    opencv_centre       cv2.putText (a Hershey stroke font, LINE_AA) on a copy of the photo, blended
                        back with cv2.addWeighted at 25-60%: the recipe of most OpenCV watermark tutorials
    opencv_corner       one small cv2.putText line in a corner, a black offset shadow under white text
    opencv_tiled        cv2.putText repeated on a grid, turned -40..40 degrees with cv2.warpAffine and
                        alpha-blended at 15-35% (the tiled stock-photo look)
    matplotlib_gallery  matplotlib's gallery text watermark (centred, color='gray', alpha=0.5,
                        rotation=30) over the photo drawn with figimage, Agg renderer
    matplotlib_corner   a credit line in a corner, white with a black patheffects stroke, alpha 0.6-0.9

Text sizes follow the photo's size, but never below what a user reads (capitals of 12 px, matplotlib's
default 10 pt: a quarter of these photos are under 340 px on their short side). Hershey fonts are
stroke fonts no training sample used; matplotlib draws DejaVu Sans (a training font) through Agg
instead of Pillow. The truth mask is where the mark's own opacity (coverage x alpha,
rendered alone with the same calls) exceeds prepare.mask_alpha_threshold, as our labels are defined.
Both detectors run as users run them: ours is `wm predict`'s predictor at the model's calibrated
thresholds (no re-calibration: these photos are a test), the OCR detector (PP-OCRv4 det,
rapidocr-onnxruntime's defaults) its text boxes filled, as the hidden real set scored it. `--photos real_val` builds
the same from the calibration split's photos, to choose between models without touching real_test. Reported:
pooled pixel F1 / precision / recall, the share of marked photos with any mark pixel found, and on the
clean copies the false-positive area and photos flagged; per recipe. `--photos-dir DIR` takes the clean photos
from a folder instead (bench/real_fullres's originals at their packages' size), `--every-recipe` marks each photo
once per recipe, and `--recipes` picks the recipes drawn. Opt-in recipes: opencv_faint_centre (a light line at
8-20%, the listing photos' faint logo), matplotlib_ai_label (an AI generator's label, "豆包AI生成", "即梦AI",
"Made with AI", ..., white at 2-4% of the short side near a corner, Noto Sans CJK through Agg), and
matplotlib_opaque_credit (a credit line at full opacity, white or yellow with a black stroke or hard shadow).

    .venv/bin/python bench/tool_marks.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        --model models/wmdetect.pt --out bench/results/tool_marks
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_variants import load_probe_params, parser, write_probe  # noqa: E402
from bench.ocr_baseline import OcrDetector  # noqa: E402
from wmcore.config import Params  # noqa: E402
from wmcore.evaluate.report import image_counts, split_metrics  # noqa: E402
from wmcore.evaluate.samples import EvalSample, read_sample  # noqa: E402
from wmcore.evaluate.score import SplitScores, real_clean_samples, score_maps  # noqa: E402
from wmcore.infer.predictor import get_predictor  # noqa: E402
from wmcore.tune.trials import with_overrides  # noqa: E402

PHRASES = (
    "© 2026 Jane Doe", "SAMPLE", "PREVIEW", "www.lumen-stock.com", "@lens.and.light", "CONFIDENTIAL",
    "Photo: M. Rossi", "DRAFT", "Copyright Studio Nord", "DO NOT COPY", "shot by K. Tanaka", "FOR REVIEW ONLY",
    "alpinephoto.net", "PROOF", "© Hofmann Bilder", "mybakery.shop", "Property of ACME Corp", "@ana.v travels",
    "Licensed to client 0423", "Nordlicht Fotografie",
)  # fmt: skip
CV_FONTS = ("FONT_HERSHEY_SIMPLEX", "FONT_HERSHEY_DUPLEX", "FONT_HERSHEY_COMPLEX", "FONT_HERSHEY_TRIPLEX",
            "FONT_HERSHEY_SCRIPT_SIMPLEX", "FONT_HERSHEY_PLAIN")  # fmt: skip
COLOURS = ((255, 255, 255), (0, 0, 0), (128, 128, 128), (220, 220, 220))

# (rng, uint8 RGB photo) -> (uint8 RGB marked photo, float32 opacity of the mark in [0, 1])
Recipe = Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _ascii(text: str) -> str:
    return text.replace("©", "(c)")  # Hershey fonts draw ASCII only


def _cv_text(canvas: np.ndarray, text: str, origin: tuple[int, int], font: int, scale: float, colour: Any,
             thickness: int) -> None:  # fmt: skip
    import cv2

    cv2.putText(canvas, text, origin, font, scale, colour, thickness, cv2.LINE_AA)


MIN_TEXT_PX = 12  # no recipe draws text whose capitals are lower (OpenCV's scale 0.5 is about 11 px)
MIN_POINTS = 10.0  # matplotlib's default font size (14 px at 100 dpi)


def _cv_fit(text: str, font: int, width: float, thickness: int) -> float:
    """The cv2 font scale at which `text` is `width` px wide, or MIN_TEXT_PX high where that is smaller."""
    import cv2

    (w, h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    return max(width / max(w, 1), MIN_TEXT_PX / max(h, 1))


def _cv_line(rng: np.random.Generator, photo: np.ndarray, fonts: tuple[str, ...], thickness: tuple[float, float],
             width: tuple[float, float]) -> tuple[str, int, int, float, tuple[int, int], int]:  # fmt: skip
    """One OpenCV text line drawn at random: (text, font, thickness, scale, (width, height), baseline).

    thickness and width are ranges, as shares of the photo's short side and of its width.
    """
    import cv2

    h, w = photo.shape[:2]
    text, font = _ascii(str(rng.choice(PHRASES))), getattr(cv2, str(rng.choice(fonts)))
    px = max(1, round(min(h, w) * rng.uniform(*thickness)))
    scale = _cv_fit(text, font, w * rng.uniform(*width), px)
    size, base = cv2.getTextSize(text, font, scale, px)
    return text, font, px, scale, size, base


def _blend(photo: np.ndarray, colour: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    out = photo.astype(np.float32) * (1.0 - opacity[..., None]) + colour.astype(np.float32) * opacity[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def opencv_centre(rng: np.random.Generator, photo: np.ndarray, colours: tuple = COLOURS,
                  alpha: tuple[float, float] = (0.25, 0.6)) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """putText on a copy, addWeighted back: out = a * overlay + (1 - a) * photo, a drawn from `alpha`."""
    import cv2

    h, w = photo.shape[:2]
    text, font, thickness, scale, (tw, th), _ = _cv_line(rng, photo, CV_FONTS, (0.004, 0.012), (0.4, 0.8))
    origin = (int((w - tw) / 2 + rng.uniform(-0.1, 0.1) * w), int((h + th) / 2 + rng.uniform(-0.15, 0.15) * h))
    colour = tuple(int(c) for c in colours[rng.integers(len(colours))])
    a = float(rng.uniform(*alpha))
    overlay = photo.copy()
    _cv_text(overlay, text, origin, font, scale, colour, thickness)
    out = cv2.addWeighted(overlay, a, photo, 1.0 - a, 0)
    coverage = np.zeros((h, w), np.uint8)
    _cv_text(coverage, text, origin, font, scale, 255, thickness)
    return out, a * coverage.astype(np.float32) / 255.0


def opencv_corner(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A small line in a corner: a black shadow offset by ~1/15 of the text height, white text over it."""

    h, w = photo.shape[:2]
    text, font, thickness, scale, (tw, th), base = _cv_line(rng, photo, CV_FONTS[:4], (0.002, 0.005), (0.15, 0.35))
    margin = int(min(h, w) * rng.uniform(0.02, 0.05))
    x = margin if rng.random() < 0.35 else w - margin - tw
    y = h - margin - base if rng.random() < 0.75 else margin + th
    shift = max(1, round(th / 15))
    a = float(rng.uniform(0.6, 1.0))
    shadow, text_cov = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    _cv_text(shadow, text, (x + shift, y + shift), font, scale, 255, thickness)
    _cv_text(text_cov, text, (x, y), font, scale, 255, thickness)
    s, t = shadow.astype(np.float32) / 255.0, text_cov.astype(np.float32) / 255.0
    out = _blend(_blend(photo, np.zeros(3), a * s), np.full(3, 255.0), a * t)
    return out, a * (1.0 - (1.0 - s) * (1.0 - t))


def opencv_tiled(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A grid of putText lines on a canvas twice the photo's diagonal, turned with warpAffine, blended at 15-35%."""
    import cv2

    h, w = photo.shape[:2]
    text, font, thickness, scale, (tw, th), _ = _cv_line(rng, photo, CV_FONTS[:4], (0.003, 0.007), (0.2, 0.35))
    side = int(np.hypot(h, w)) + 2 * tw
    canvas = np.zeros((side, side), np.uint8)
    step_x, step_y = int(tw * rng.uniform(1.3, 1.8)), int(th * rng.uniform(3.0, 5.0))
    for row, y in enumerate(range(th, side, step_y)):
        for x in range(-(row % 2) * step_x // 2, side, step_x):
            _cv_text(canvas, text, (x, y), font, scale, 255, thickness)
    turn = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-40, 40)), 1.0)
    turn[:, 2] -= ((side - w) / 2, (side - h) / 2)  # the turned canvas's centre on the photo's
    coverage = cv2.warpAffine(canvas, turn, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    a = float(rng.uniform(0.15, 0.35))
    colour = np.array(COLOURS[rng.integers(len(COLOURS))], np.float32)
    return _blend(photo, colour, a * coverage), a * coverage


def _mpl_render(photo: np.ndarray | None, size: tuple[int, int], draw: Callable[[Any], None]) -> np.ndarray:
    """RGBA uint8 of a figure of exactly `size` (h, w) px: the photo by figimage (or transparent), then `draw(fig)`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = size
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)
    if photo is not None:
        fig.figimage(photo, xo=0, yo=0, origin="upper")
    draw(fig)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def _mpl_recipe(photo: np.ndarray, draw: Callable[[Any], None]) -> tuple[np.ndarray, np.ndarray]:
    size = photo.shape[:2]
    out = _mpl_render(photo, size, draw)[..., :3]
    opacity = _mpl_render(None, size, draw)[..., 3].astype(np.float32) / 255.0
    return out, opacity


def mpl_points(rng: np.random.Generator, shape: tuple[int, ...], share: tuple[float, float]) -> float:
    """A text size in points for a share (drawn from `share`) of the photo's short side, never under matplotlib's
    default (100 dpi: 1 pt = 100/72 px)."""
    return max(min(shape[:2]) * rng.uniform(*share) * 0.72, MIN_POINTS)


BOTTOM_X = {"right": 0.97, "left": 0.03, "center": 0.5}  # figure x of a bottom line's anchor, by its alignment


def bottom_place(rng: np.random.Generator) -> str:
    """Where a credit along the bottom sits: right (45%), left (25%) or centred (30%); its x is BOTTOM_X[place]."""
    return str(rng.choice(list(BOTTOM_X), p=[0.45, 0.25, 0.3]))


def matplotlib_gallery(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """matplotlib's gallery "Text watermark": centred gray text at alpha 0.5, turned 30 degrees."""
    text = str(rng.choice(PHRASES))
    points = mpl_points(rng, photo.shape, (0.06, 0.12))

    def draw(fig: Any) -> None:
        fig.text(0.5, 0.5, text, fontsize=points, color="gray", alpha=0.5, ha="center", va="center", rotation=30)

    return _mpl_recipe(photo, draw)


def matplotlib_corner(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A credit line in a bottom corner: white text, black stroke (patheffects), alpha 0.6-0.9."""
    from matplotlib import patheffects

    text, alpha = str(rng.choice(PHRASES)), float(rng.uniform(0.6, 0.9))
    points = mpl_points(rng, photo.shape, (0.025, 0.05))
    right = bool(rng.random() < 0.7)
    stroke = [patheffects.withStroke(linewidth=max(1.0, points / 8), foreground="black")]

    def draw(fig: Any) -> None:
        fig.text(0.97 if right else 0.03, 0.03, text, fontsize=points, color="white", alpha=alpha,
                 ha="right" if right else "left", va="bottom", path_effects=stroke)  # fmt: skip

    return _mpl_recipe(photo, draw)


AI_LABELS = ("AI生成", "豆包AI生成", "即梦AI", "元宝 AI生成", "百度 AI生成", "LibLibAI", "通义万相 AI生成", "由AI生成",
             "AI-generated", "Made with AI", "Imagined with AI", "可灵AI 生成")  # fmt: skip


def _cjk_font() -> Any:
    """Noto Sans CJK (the noto-cjk-sans-otc wheel) for matplotlib, which rasterises it through Agg, not Pillow."""
    import noto_cjk_sans_otc
    from matplotlib.font_manager import FontProperties

    return FontProperties(fname=str(noto_cjk_sans_otc.FONT_PATH))


def matplotlib_ai_label(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An AI generator's content label: small white CJK or Latin text (2-4% of the short side) near a corner,
    mostly bottom right, alpha 0.5-0.9, half with a soft dark shadow (patheffects)."""
    from matplotlib import patheffects

    text, alpha = str(rng.choice(AI_LABELS)), float(rng.uniform(0.5, 0.9))
    points = mpl_points(rng, photo.shape, (0.02, 0.04))
    h, w = photo.shape[:2]
    mx, my = (float(rng.uniform(0.015, 0.04)) * min(h, w) / side for side in (w, h))
    corner = str(rng.choice(["bottom right", "bottom left", "top left", "top right"], p=[0.7, 0.1, 0.1, 0.1]))
    right, top = "right" in corner, "top" in corner
    effects = [patheffects.withSimplePatchShadow(offset=(1, -1), shadow_rgbFace="black", alpha=0.35)]
    shadow = bool(rng.random() < 0.5)
    font = _cjk_font()

    def draw(fig: Any) -> None:
        fig.text(1 - mx if right else mx, 1 - my if top else my, text, fontproperties=font, fontsize=points,
                 color="white", alpha=alpha, ha="right" if right else "left", va="top" if top else "bottom",
                 path_effects=effects if shadow else None)  # fmt: skip

    return _mpl_recipe(photo, draw)


def matplotlib_opaque_credit(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A burned-in credit or handle: opaque white (or yellow) text with a black stroke or a hard drop shadow, in a
    bottom corner or at the bottom centre (the meme-caption and Instagram-credit look)."""
    from matplotlib import patheffects

    text = str(rng.choice(PHRASES))
    points = mpl_points(rng, photo.shape, (0.025, 0.05))
    place = bottom_place(rng)
    colour = "white" if rng.random() < 0.8 else "#ffe033"
    if rng.random() < 0.5:
        effects = [patheffects.withStroke(linewidth=max(1.5, points / 7), foreground="black")]
    else:
        shift = max(1.0, points / 12)
        effects = [patheffects.withSimplePatchShadow(offset=(shift, -shift), shadow_rgbFace="black", alpha=0.8),
                   patheffects.Normal()]  # fmt: skip
    def draw(fig: Any) -> None:
        fig.text(BOTTOM_X[place], 0.03, text, fontsize=points, color=colour, ha=place, va="bottom", path_effects=effects)

    return _mpl_recipe(photo, draw)


def opencv_faint_centre(rng: np.random.Generator, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A listing site's logo line: white or light grey putText in the centre, addWeighted at 8-20% (barely there)."""
    return opencv_centre(rng, photo, COLOURS[::3], (0.08, 0.2))


RECIPES: dict[str, Recipe] = {
    "opencv_centre": opencv_centre,
    "opencv_corner": opencv_corner,
    "opencv_tiled": opencv_tiled,
    "matplotlib_gallery": matplotlib_gallery,
    "matplotlib_corner": matplotlib_corner,
}
# Drawn only when asked (--recipes): the default set and its figures stay those of the five above.
EXTRA_RECIPES: dict[str, Recipe] = {
    "opencv_faint_centre": opencv_faint_centre,
    "matplotlib_ai_label": matplotlib_ai_label,
    "matplotlib_opaque_credit": matplotlib_opaque_credit,
}
ALL_RECIPES = {**RECIPES, **EXTRA_RECIPES}


def change(photo: np.ndarray, marked: np.ndarray, mask: np.ndarray) -> float:
    """Mean |colour change| (0..1) the mark made on its mask pixels; 0 without any (wmcore's mark_contrast)."""
    if not mask.any():
        return 0.0
    return float(np.abs(marked[mask].astype(np.float32) - photo[mask].astype(np.float32)).mean() / 255.0)


def build_set(photos: list[EvalSample], out: Path, mask_alpha: float, min_contrast: float, seed: int = 0,
              draws: int = 8, every_recipe: bool = False, recipes: list[str] | None = None
              ) -> tuple[list[EvalSample], int]:  # fmt: skip
    """Each photo saved clean and marked (recipe i mod n of `recipes`, default the five of RECIPES; every one
    with `every_recipe`) as JPEG, with the truth mask: (the samples, marks dropped).

    A mark that changes its mask pixels by less than `min_contrast` on average (white on a white page) is
    label noise, as the generator treats it (wmcore.data.compose.strengthen): it is drawn again, and after
    `draws` faint draws that copy is left out.
    """
    rng = np.random.default_rng(seed)
    cycle = recipes or list(RECIPES)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    samples, dropped = [], 0
    for i, photo_sample in enumerate(photos):
        photo, _ = read_sample(photo_sample)
        names = list(cycle) if every_recipe else [cycle[i % len(cycle)]]
        quality = int(rng.integers(88, 96))
        clean_path = out / "images" / f"{i:04d}-clean.jpg"
        Image.fromarray(photo).save(clean_path, quality=quality)
        kind = photo_sample.background_kind
        samples.append(EvalSample(f"{i:04d}-clean", clean_path, None, False, background_kind=kind, tags=("clean",)))
        for name in names:
            for _ in range(draws):
                marked, opacity = ALL_RECIPES[name](rng, photo)
                mask = opacity > mask_alpha
                if change(photo, marked, mask) >= min_contrast:
                    break
            else:
                dropped += 1
                continue
            marked_path, mask_path = out / "images" / f"{i:04d}-{name}.jpg", out / "masks" / f"{i:04d}-{name}.png"
            Image.fromarray(marked).save(marked_path, quality=quality)
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(mask_path)
            samples.append(EvalSample(f"{i:04d}-{name}", marked_path, mask_path, True, background_kind=kind,
                                      tags=(name,)))  # fmt: skip
    return samples, dropped


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def folder_photos(folder: Path) -> list[EvalSample]:
    """Every image under `folder` (sorted) as a clean sample; its corpus category from a sibling
    `<folder>.index.json` (bench/real_fullres's index: rows with "original" and "category") when there is one."""
    index = folder.with_name(folder.name + ".index.json")
    kinds = {row["original"]: row.get("category") for row in json.loads(index.read_text())} if index.is_file() else {}
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    return [EvalSample(f"{folder.name}:{f.name}", f, None, False, background_kind=kinds.get(f.name)) for f in files]


SMALL = 400  # short side (px) under which a photo counts as small (a quarter of real_test's are under 340)
LARGE = 1536  # long side (px) over which a photo counts as large: its working view (768 px) halves it or more
SCREENS = {"screenshot", "document"}  # corpus categories whose pictures are mostly UI or page text


def _share(found: torch.Tensor, which: torch.Tensor) -> str:
    return f"{float(found[which].double().mean()):.2f} of {int(which.sum())}" if which.any() else "-"


def detector_row(split: SplitScores, threshold: float, image_threshold: float, bins: int, gate: bool) -> dict:
    """Pooled and per-recipe figures of one detector at its operating point."""
    m = split_metrics(split, threshold, image_threshold, bins, gate)
    counts = image_counts(split, threshold, image_threshold, bins, gate)
    tags = [s.tags[0] for s in split.samples]
    found = counts[:, 0] > 0  # any mark pixel found (tp)
    clean = torch.tensor([t == "clean" for t in tags])
    flagged = (counts[:, 1] > 0) & clean
    row = {k: m.get(k) for k in ("f1", "precision", "recall", "clean_fp_area", "threshold", "image_threshold")}
    row["marked_found"] = round(float(found[~clean].double().mean()), 4)
    row["clean_flagged"] = f"{int(flagged.sum())} of {int(clean.sum())}"
    marked = ~clean
    short = torch.tensor([min(hw) for hw in split.sizes])
    long = torch.tensor([max(hw) for hw in split.sizes])
    screens = torch.tensor([s.background_kind in SCREENS for s in split.samples])
    row["found_by_photo"] = {
        f"short side < {SMALL} px": _share(found, marked & (short < SMALL)),
        f"short side >= {SMALL} px": _share(found, marked & (short >= SMALL)),
        f"long side > {LARGE} px": _share(found, marked & (long > LARGE)),
        "screenshots and pages": _share(found, marked & screens),
        "other pictures": _share(found, marked & ~screens),
        f"other pictures, short side < {SMALL} px": _share(found, marked & ~screens & (short < SMALL)),
        f"other pictures, short side >= {SMALL} px": _share(found, marked & ~screens & (short >= SMALL)),
    }
    row["by_recipe"] = {}
    for name in ALL_RECIPES:
        which = torch.tensor([t == name for t in tags])
        if which.any():
            row["by_recipe"][name] = {**{k: v for k, v in m["by_tag"][name].items()},
                                      "found": round(float(found[which].double().mean()), 4)}  # fmt: skip
    return row


def score_ours(params: Params, model: Path, samples: list[EvalSample], enlarge_below: int | None = None
               ) -> tuple[dict, dict, float]:  # fmt: skip
    """(its row as `wm predict` writes masks, the same maps without the image gate, seconds).

    enlarge_below: run with this predict.enlarge_below instead of params' (at the model's thresholds, however
    they were calibrated).
    """
    if enlarge_below is not None:
        params = with_overrides(params, {"predict.enlarge_below": enlarge_below})
    predictor = get_predictor(str(model), params, backend="torch")
    ev = params.evaluate
    start = time.perf_counter()
    split = score_maps(samples, lambda ims: [{"p": p} for p in predictor.predict(ims)], ("p",), ev.threshold_grid,
                       ev.batch_size, 0, name="ours")["p"]  # fmt: skip
    seconds = time.perf_counter() - start
    rows = (detector_row(split, predictor.threshold, predictor.image_threshold, ev.threshold_grid, gate)
            for gate in (params.predict.gate_masks, False))  # fmt: skip
    return *rows, seconds


def score_ocr(params: Params, samples: list[EvalSample]) -> tuple[dict, float]:
    detector, ev = OcrDetector(), params.evaluate
    start = time.perf_counter()
    split = score_maps(samples, detector.maps, ("boxes",), ev.threshold_grid, ev.batch_size, 0, name="ocr")["boxes"]
    seconds = time.perf_counter() - start
    return detector_row(split, 0.5, 0.0, ev.threshold_grid, False), seconds


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Marks made with OpenCV and matplotlib on real photos never trained on", "", result["setup"], "",
             "| detector | pixel F1 (P / R) | marked photos with a mark pixel found | clean copies: area / flagged |",
             "|---|---|---|---|"]  # fmt: skip
    for name, r in result["detectors"].items():
        lines.append(f"| {name} | {r['f1']:.3f} ({r['precision']:.2f} / {r['recall']:.2f}) | {r['marked_found']:.3f} | "
                     f"{100 * r['clean_fp_area']:.2f}% / {r['clean_flagged']} |")  # fmt: skip
    names = list(result["detectors"])
    lines += ["", "Per recipe: pixel F1 (P / R), found", "",
              "| recipe (photos) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for recipe in ALL_RECIPES:
        if all(recipe not in r["by_recipe"] for r in result["detectors"].values()):
            continue
        cells, n = [], 0
        for name in names:
            r = result["detectors"][name]["by_recipe"].get(recipe)
            if r is None:
                cells.append("-")
                continue
            n = r["n_images"]
            cells.append(f"{r['f1'] or 0:.3f} ({r['precision'] or 0:.2f} / {r['recall'] or 0:.2f}), {r['found']:.2f}")
        lines.append(f"| {recipe} ({n}) | " + " | ".join(cells) + " |")
    lines += ["", "Marked photos with a mark pixel found, by photo", "",
              "| photos | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for group in next(iter(result["detectors"].values()))["found_by_photo"]:
        lines.append(f"| {group} | " + " | ".join(result["detectors"][n]["found_by_photo"][group] for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--no-ocr", action="store_true", help="score ours only")
    ap.add_argument("--upscale-below", type=int, default=0,
                    help="also score ours with predict.enlarge_below N (photos whose short side is under N px "
                         "enlarged to N first), at the model's thresholds")
    ap.add_argument("--photos", choices=("real_test", "real_val"), default="real_test",
                    help="real_val (the calibration split) to choose between models, real_test to report")  # fmt: skip
    ap.add_argument("--photos-dir", type=Path, default=None,
                    help="the clean photos are every image in this folder instead (e.g. bench/real_fullres's "
                         "originals at their packages' size, data/real-fullres/val)")
    ap.add_argument("--every-recipe", action="store_true", help="mark each photo once with every recipe")
    ap.add_argument("--recipes", nargs="+", choices=list(ALL_RECIPES), default=None,
                    help=f"the recipes drawn (default: the five of RECIPES; extra: {', '.join(EXTRA_RECIPES)})")
    ap.add_argument("--work", type=Path, default=None, help="where the marked photos go (results/tool_marks/PHOTOS)")
    args = ap.parse_args(argv)
    params = load_probe_params(args)
    if args.photos_dir is not None:
        source = f"{args.photos_dir.parent.name}-{args.photos_dir.name}"
        photos, described = folder_photos(args.photos_dir), f"pictures of {args.photos_dir}"
    else:
        source = args.photos
        photos = real_clean_samples(params.paths.corpus, args.photos, params.paths.corpus_native)
        described = f"{args.photos} photos of {params.paths.corpus} (+ native views)"
    suffix = ("-every" if args.every_recipe else "") + "".join(f"-{r}" for r in args.recipes or ())
    args.work = args.work or Path("results/tool_marks") / (source + suffix)
    photos = photos[: args.limit] if args.limit else photos
    load = os.getloadavg()
    samples, dropped = build_set(photos, args.work, params.prepare.mask_alpha_threshold, params.prepare.min_contrast,
                                 every_recipe=args.every_recipe, recipes=args.recipes)  # fmt: skip
    detectors, timing = {}, {}
    ours, ungated, timing["ours"] = score_ours(params, args.model, samples)
    detectors[f"ours ({args.model})"], detectors["ours, no image gate"] = ours, ungated
    if args.upscale_below:
        name = f"ours, photos under {args.upscale_below} px enlarged to it (same thresholds)"
        detectors[name], _, timing["ours_upscaled"] = score_ours(params, args.model, samples, args.upscale_below)
    if not args.no_ocr:
        detectors["OCR boxes (PP-OCRv4 det)"], timing["ocr"] = score_ocr(params, samples)
    setup = (f"{len(photos)} {described}, each clean and marked {'by every recipe' if args.every_recipe else 'once'} "
             f"({len(samples)} JPEGs in {args.work}; {dropped} marks too faint in 8 draws left out); "
             f"{os.cpu_count()} cores, load {load[0]:.2f} before; "
             + ", ".join(f"{k} {v / len(samples):.3f} s per image" for k, v in timing.items())
             + ". Ours at its calibrated thresholds, gated as `wm predict` writes masks; OCR boxes filled, ungated.")
    result = {"setup": setup, "faint_marks_left_out": dropped, "detectors": detectors}
    write_probe(args.out, "tool_marks", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
