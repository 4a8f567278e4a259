"""The same credit line drawn six ways on real photos: what its opacity and its dark edge do to detection.

On every photo of a real split, one credit line (a phrase of bench/tool_marks.py, white, 2.5-5% of the short side,
along the bottom: in a corner or centred) is drawn by matplotlib six times, at the same place and size: at alpha
0.6-0.9 (drawn once per photo) or fully opaque, each plain, with a black stroke (patheffects.withStroke) or with a
dark drop shadow. Only the rendering changes between variants, so differences in what the model finds are its
response to opacity and edges. The truth is the mark's own opacity above prepare.mask_alpha_threshold (stroke and
shadow included), as our labels are defined; a variant too faint to change its pixels (white on white) is left out.
Reported per variant, with the model at its calibrated thresholds: marked photos with a mark pixel found (ungated,
and gated as `wm predict` writes masks), pooled pixel recall and pooled pixel F1 (gated, false pixels anywhere in
the photo count).

    .venv/bin/python bench/overlay_edges.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        --model models/wmdetect.pt --photos real_val --out bench/results/opaque/edges-real-val
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_variants import load_probe_params, parser, write_probe  # noqa: E402
from bench.tool_marks import BOTTOM_X, PHRASES, _mpl_recipe, bottom_place, change, mpl_points  # noqa: E402
from wmcore.evaluate.samples import read_sample  # noqa: E402
from wmcore.evaluate.score import real_clean_samples  # noqa: E402
from wmcore.infer.predictor import get_predictor  # noqa: E402
from wmcore.metrics.image import image_score  # noqa: E402

EDGES = ("plain", "stroke", "shadow")
VARIANTS = tuple(f"{edge}, {opacity}" for opacity in ("alpha 0.6-0.9", "opaque") for edge in EDGES)


def credit_draws(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, Callable[[Any], None]]:
    """{variant: draw(fig)} of one credit line: one phrase, size, place and alpha, six renderings."""
    from matplotlib import patheffects

    text, alpha = str(rng.choice(PHRASES)), float(rng.uniform(0.6, 0.9))
    points = mpl_points(rng, shape, (0.025, 0.05))
    place = bottom_place(rng)
    effects = {
        "plain": None,
        "stroke": [patheffects.withStroke(linewidth=max(1.0, points / 8), foreground="black")],
        "shadow": [patheffects.withSimplePatchShadow(offset=(1.5, -1.5), shadow_rgbFace="black", alpha=0.6),
                   patheffects.Normal()],
    }  # fmt: skip

    def make(edge: str, a: float) -> Callable[[Any], None]:
        def draw(fig: Any) -> None:
            fig.text(BOTTOM_X[place], 0.04, text, fontsize=points, color="white", alpha=a, ha=place, va="bottom",
                     path_effects=effects[edge])  # fmt: skip

        return draw

    return {f"{edge}, {name}": make(edge, a) for name, a in (("alpha 0.6-0.9", alpha), ("opaque", 1.0)) for edge in EDGES}


def tally(counts: dict[str, list[int]], variant: str, probs: np.ndarray, truth: np.ndarray, threshold: float,
          image_threshold: float) -> None:  # fmt: skip
    """Add one marked photo to `counts[variant]` = [photos, found ungated, found gated, tp, fp, fn] (gated pixels)."""
    hit = probs >= threshold
    opened = image_score(probs) >= image_threshold
    found = bool((hit & truth).any())
    kept = hit if opened else np.zeros_like(hit)
    c = counts.setdefault(variant, [0] * 6)
    c[0] += 1
    c[1] += found
    c[2] += found and opened
    c[3] += int((kept & truth).sum())
    c[4] += int((kept & ~truth).sum())
    c[5] += int((~kept & truth).sum())


def rows(counts: dict[str, list[int]]) -> dict[str, dict]:
    out = {}
    for v in VARIANTS:
        n, ungated, gated, tp, fp, fn = counts.get(v, [0] * 6)
        out[v] = {"photos": n, "found_ungated": round(ungated / max(n, 1), 4), "found_gated": round(gated / max(n, 1), 4),
                  "recall": round(tp / max(tp + fn, 1), 4), "f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4)}  # fmt: skip
    return out


def markdown(result: dict) -> str:
    lines = ["# One credit line drawn six ways on real photos", "", result["setup"], "",
             "| rendering | photos | found (ungated) | found (gated) | pixel recall | pixel F1 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for v, r in result["variants"].items():
        lines.append(f"| {v} | {r['photos']} | {r['found_ungated']:.2f} | {r['found_gated']:.2f} | {r['recall']:.3f} | "
                     f"{r['f1']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--photos", choices=("real_test", "real_val"), default="real_val")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    params = load_probe_params(args)
    photos = real_clean_samples(params.paths.corpus, args.photos, params.paths.corpus_native)
    photos = photos[: args.limit] if args.limit else photos
    predictor = get_predictor(str(args.model), params, backend="torch")
    mask_alpha, min_contrast = params.prepare.mask_alpha_threshold, params.prepare.min_contrast
    rng, counts, left_out = np.random.default_rng(args.seed), {}, 0
    load, start = os.getloadavg(), time.perf_counter()
    for sample in photos:
        photo, _ = read_sample(sample)
        for variant, draw in credit_draws(rng, photo.shape).items():
            marked, opacity = _mpl_recipe(photo, draw)
            truth = opacity > mask_alpha
            if change(photo, marked, truth) < min_contrast:
                left_out += 1
                continue
            tally(counts, variant, predictor.predict([marked])[0], truth, predictor.threshold, predictor.image_threshold)
    setup = (f"{len(photos)} {args.photos} photos, seed {args.seed}; model {args.model} at pixel / image threshold "
             f"{predictor.threshold:.4f} / {predictor.image_threshold:.5f}; {left_out} drawings too faint left out; "
             f"{time.perf_counter() - start:.0f} s on {os.cpu_count()} cores, load {load[0]:.2f} before")  # fmt: skip
    result = {"setup": setup, "variants": rows(counts)}
    write_probe(args.out, "overlay_edges", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
