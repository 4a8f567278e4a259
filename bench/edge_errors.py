"""Where a model's pixel errors are on a synthetic split: at mark edges or inside/outside marks.

For each watermarked image of the split, the model's map (as `wm predict` computes it) is cut at the
model's calibrated pixel threshold (or --threshold) and every false-positive pixel is binned by its
distance to the nearest mark pixel, every false-negative pixel by its distance to the nearest unmarked
pixel and by its ground-truth alpha (opacity). "F1 forgiving k px" drops the errors within k px of a
mark's edge: the most that placing edges better could gain. F1 by mark strength pools the images
whose mark's median alpha is faint, medium or strong. Pooled counts, as `wm evaluate` pools; no
image-level gate (every image's map is cut at the pixel threshold).

    .venv/bin/python bench/edge_errors.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full --model models/wmdetect.pt --images 200 --out bench/results/edge_errors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.config import load_params  # noqa: E402
from wmcore.evaluate.samples import load_split, read_sample  # noqa: E402
from wmcore.evaluate.score import build_probability_fn  # noqa: E402
from wmcore.metrics import scores_from_counts  # noqa: E402
from wmcore.model.checkpoint import load_checkpoint  # noqa: E402
from wmcore.runtime.device import configure_threads  # noqa: E402

DIST_EDGES = (0.0, 1.5, 2.5, 3.5, 6.5, 15.5, np.inf)  # Euclidean px: 1, 2, 3, 4-6, 7-15, more
DIST_NAMES = ("1", "2", "3", "4-6", "7-15", ">15")
ALPHA_EDGES = (0, 13, 26, 51, 77, 128, 192, 256)  # stored alpha (0..255): <5% is never a mark pixel
# A mark's strength: the median stored alpha of its mask pixels (opacity after outline, shadow and blur).
STRENGTHS = {"faint (<25%)": (0, 64), "medium (25-50%)": (64, 128), "strong (>=50%)": (128, 256)}


def scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Pooled pixel F1, precision and recall of these counts (wm evaluate's `scores_from_counts`), rounded."""
    values = scores_from_counts(torch.tensor([tp, fp, fn, 0.0]), empty_is_perfect=False)
    return {k: round(float(values[k]), 4) for k in ("f1", "precision", "recall")}


def error_profile(pred: np.ndarray, truth: np.ndarray, alpha: np.ndarray) -> dict[str, np.ndarray]:
    """Counts for one image: tp, fp and fn as scalars; fp_dist / fn_dist per DIST_EDGES bin; fn/gt per alpha bin."""
    fp, fn = pred & ~truth, ~pred & truth
    out_dist = ndimage.distance_transform_edt(~truth)  # an FP pixel's distance to the nearest mark pixel
    in_dist = ndimage.distance_transform_edt(truth)  # an FN pixel's distance to the nearest unmarked pixel
    return {
        "tp": np.array((pred & truth).sum()), "fp": np.array(fp.sum()), "fn": np.array(fn.sum()),
        "fp_dist": np.histogram(out_dist[fp], DIST_EDGES)[0], "fn_dist": np.histogram(in_dist[fn], DIST_EDGES)[0],
        "fn_alpha": np.histogram(alpha[fn], ALPHA_EDGES)[0], "gt_alpha": np.histogram(alpha[truth], ALPHA_EDGES)[0],
    }  # fmt: skip


def _shares(counts: np.ndarray, total: float) -> list[float]:
    return np.round(counts / max(total, 1.0), 4).tolist()


def summarise(total: dict[str, np.ndarray]) -> dict:
    tp, fp, fn = (float(total[k]) for k in ("tp", "fp", "fn"))
    forgiving = {}
    for k in (1, 2):
        kept_fp, kept_fn = total["fp_dist"][k:].sum(), total["fn_dist"][k:].sum()
        forgiving[f"{k}px"] = scores(tp, kept_fp, kept_fn)["f1"]
    alpha_bins = [f"{a}-{b - 1}" for a, b in zip(ALPHA_EDGES[:-1], ALPHA_EDGES[1:], strict=True)]
    return {
        **scores(tp, fp, fn),
        "f1_forgiving": forgiving,
        "fp_share_by_distance_px": dict(zip(DIST_NAMES, _shares(total["fp_dist"], fp), strict=True)),
        "fn_share_by_distance_px": dict(zip(DIST_NAMES, _shares(total["fn_dist"], fn), strict=True)),
        "fn_share_by_alpha": dict(zip(alpha_bins, _shares(total["fn_alpha"], fn), strict=True)),
        "miss_rate_by_alpha": dict(zip(alpha_bins, (total["fn_alpha"] / np.maximum(total["gt_alpha"], 1)).round(4).tolist(), strict=True)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--params-extra", action="append", default=[])
    ap.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=200, help="the split's first N watermarked images")
    ap.add_argument("--threshold", type=float, default=None, help="default: the model's calibrated threshold")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params, args.overrides, args.params_extra)
    configure_threads(params.base.threads)
    threshold = args.threshold
    if threshold is None:
        meta = load_checkpoint(args.model).get("meta") or {}
        if "threshold" not in meta:
            ap.error(f"{args.model} records no calibrated threshold (a training checkpoint?): pass --threshold")
        threshold = float(meta["threshold"])
    probabilities = build_probability_fn(params, Path(args.model), "torch")
    prepared = Path(params.paths.prepared)
    samples = [s for s in load_split(prepared, args.split) if s.has_watermark][: args.images]
    total: dict[str, np.ndarray] = {}
    by_strength = {name: np.zeros(4) for name in STRENGTHS}  # tp, fp, fn, images
    start = time.perf_counter()
    for sample in samples:
        image, truth = read_sample(sample)
        with Image.open(prepared / args.split / "alpha" / f"{sample.id}.png") as im:  # wm prepare's layout
            alpha = np.asarray(im)
        counts = error_profile(probabilities([image])[0] >= threshold, truth, alpha)
        total = {k: total.get(k, 0) + v for k, v in counts.items()}
        median = float(np.median(alpha[truth])) if truth.any() else 0.0
        name = next(n for n, (lo, hi) in STRENGTHS.items() if lo <= median < hi)
        by_strength[name] += (counts["tp"], counts["fp"], counts["fn"], 1)
    report = {"model": args.model, "split": args.split, "images": len(samples), "threshold": threshold,
              "prepared": str(prepared), "seconds": round(time.perf_counter() - start, 1), **summarise(total),
              "by_mark_strength": {n: {"images": int(c[3]), **{k: v for k, v in scores(*c[:3]).items() if k != "precision"}}
                                   for n, c in by_strength.items()}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = Path(args.model).parent.name if Path(args.model).name == "best.pt" else Path(args.model).stem
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
