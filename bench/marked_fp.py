"""Where the false-positive pixels lie on real photos that carry a mark (the tool-marks sets), and what a region rule keeps.

The image gate hides a photo's weak false regions when the photo is clean, but a mark that opens the gate lets
every region through. On a small mark (an AI label of a few hundred pixels) those regions are most of the mask.
This probe builds the same marked set as bench/tool_marks.py (same photos, recipes and seed), runs `wm
predict`'s predictor at the model's calibrated thresholds and, on every photo whose gate opens, splits the
mask's 8-connected regions into those that touch the truth and those that do not ("false regions"). Reported:
the false-positive pixels in false regions and in the fringes of true ones; by the photo's corpus category;
the peak probability of false regions against that of true regions (pixel-weighted quantiles); and what share
of true and false pixels a region-peak cut c would keep (a rule is worth building only if some c keeps nearly
all true pixels and few false ones).

    .venv/bin/python bench/marked_fp.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        --model models/wmdetect.pt --photos real_val --recipes matplotlib_ai_label --out bench/results/ai_label/fp-real-val
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_variants import EIGHT, load_probe_params, parser, write_probe  # noqa: E402
from bench.tool_marks import ALL_RECIPES, build_set  # noqa: E402
from wmcore.evaluate.samples import EvalSample, read_sample  # noqa: E402
from wmcore.evaluate.score import real_clean_samples  # noqa: E402
from wmcore.infer.predictor import get_predictor  # noqa: E402
from wmcore.metrics.image import image_score  # noqa: E402

CUTS = (0.99, 0.995, 0.999, 0.9995, 0.9999)
QUANTILES = (10, 25, 50, 75, 90)


def regions(probs: np.ndarray, truth: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(pixels, of them on the truth, peak probability) of each 8-connected region of probs >= threshold."""
    labels, n = ndimage.label(probs >= threshold, EIGHT)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    on_truth = np.bincount(labels[truth], minlength=n + 1)[1:]
    peak = ndimage.maximum(probs, labels, index)
    return [(int(a), int(t), float(p)) for a, t, p in zip(area, on_truth, peak, strict=True)]


def weighted_quantiles(values: list[float], weights: list[int]) -> list[float]:
    """Quantiles (QUANTILES, %) of `values` where each counts `weights` times; [] without any."""
    if not values or sum(weights) == 0:
        return []
    order = np.argsort(values)
    v, w = np.asarray(values)[order], np.cumsum(np.asarray(weights)[order])
    return [round(float(v[np.searchsorted(w, q / 100 * w[-1])]), 5) for q in QUANTILES]


def summarise(rows: list[dict]) -> dict:
    """Totals over the gated-open marked photos' regions (rows: one per region, with the photo's category)."""
    true_px = sum(r["on_truth"] for r in rows)
    fringe = sum(r["pixels"] - r["on_truth"] for r in rows if r["on_truth"])
    false_rows = [r for r in rows if not r["on_truth"]]
    false_px = sum(r["pixels"] for r in false_rows)
    by_category = Counter()
    for r in false_rows:
        by_category[r["category"] or "-"] += r["pixels"]
    true_rows = [r for r in rows if r["on_truth"]]
    keep = {str(c): {"true": round(sum(r["on_truth"] for r in true_rows if r["peak"] >= c) / max(true_px, 1), 4),
                     "false": round(sum(r["pixels"] for r in false_rows if r["peak"] >= c) / max(false_px, 1), 4)}
            for c in CUTS}  # fmt: skip
    return {
        "true_pixels": true_px, "fringe_fp_pixels": fringe, "false_region_pixels": false_px,
        "false_share_of_fp": round(false_px / max(false_px + fringe, 1), 4),
        "false_pixels_by_category": {k: round(v / max(false_px, 1), 4) for k, v in by_category.most_common()},
        "false_region_peak_quantiles": weighted_quantiles([r["peak"] for r in false_rows], [r["pixels"] for r in false_rows]),
        "true_pixel_peak_quantiles": weighted_quantiles([r["peak"] for r in true_rows], [r["on_truth"] for r in true_rows]),
        "kept_by_peak_cut": keep,
    }  # fmt: skip


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = ["# False-positive pixels on marked real photos", "", result["setup"], "",
             f"- mark pixels found: {s['true_pixels']}; false-positive pixels: {s['false_region_pixels']} in regions "
             f"that touch no mark ({100 * s['false_share_of_fp']:.0f}%), {s['fringe_fp_pixels']} around marks",
             f"- regions that touch no mark, peak probability (pixel-weighted {QUANTILES} %): "
             f"{s['false_region_peak_quantiles']}; mark pixels' regions: {s['true_pixel_peak_quantiles']}",
             "- false-region pixels by the photo's category: "
             + ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["false_pixels_by_category"].items()),
             "", "| region peak cut | mark pixels kept | false-region pixels kept |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {c} | {k['true']:.3f} | {k['false']:.3f} |" for c, k in s["kept_by_peak_cut"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--photos", choices=("real_test", "real_val"), default="real_val")
    ap.add_argument("--recipes", nargs="+", choices=list(ALL_RECIPES), default=None)
    ap.add_argument("--work", type=Path, default=None, help="where the marked photos go (results/tool_marks/...)")
    args = ap.parse_args(argv)
    params = load_probe_params(args)
    photos = real_clean_samples(params.paths.corpus, args.photos, params.paths.corpus_native)
    photos = photos[: args.limit] if args.limit else photos
    work = args.work or Path("results/tool_marks") / (args.photos + "".join(f"-{r}" for r in args.recipes or ()))
    samples, _ = build_set(photos, work, params.prepare.mask_alpha_threshold, params.prepare.min_contrast,
                           recipes=args.recipes)  # fmt: skip
    predictor = get_predictor(str(args.model), params, backend="torch")
    load, start, rows, opened, marked = os.getloadavg(), time.perf_counter(), [], 0, 0
    for sample in samples:
        if sample.mask is None:
            continue
        marked += 1
        regions_of_photo = photo_regions(predictor, sample)
        rows += regions_of_photo
        opened += bool(regions_of_photo)
    setup = (f"{marked} marked {args.photos} photos ({', '.join(args.recipes or ['the five default recipes'])}; "
             f"{work}); model {args.model} at pixel / image threshold {predictor.threshold:.4f} / "
             f"{predictor.image_threshold:.5f}; {opened} of them pass the image gate with a region; "
             f"{time.perf_counter() - start:.0f} s on {os.cpu_count()} cores, load {load[0]:.2f} before")  # fmt: skip
    result = {"setup": setup, "summary": summarise(rows)}
    write_probe(args.out, "marked_fp", result, markdown(result))
    return 0


def photo_regions(predictor, sample: EvalSample) -> list[dict]:
    """The regions of one marked photo's mask, as `wm predict` writes it (none when the gate stays shut), each
    with the photo's corpus category (build_set keeps it on the sample)."""
    image, truth = read_sample(sample)
    probs = predictor.predict([image])[0]
    if image_score(probs) < predictor.image_threshold:
        return []
    return [{"sample": sample.id, "category": sample.background_kind, "pixels": a, "on_truth": t, "peak": p}
            for a, t, p in regions(probs, truth, predictor.threshold)]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
