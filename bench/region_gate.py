"""Gating each marked region by its own confidence, measured against gating the whole image.

`wm predict` empties an image's mask when its has-watermark score (mean of its top 0.1%
probabilities) is under the calibrated image threshold. That gate is global: a small, confident
corner label on a large photo shares the image's top k with background pixels and may be dropped
(bench/results/gate_scores: 27% of the test images with a mark under 0.5% of them), while a weak
texture blob on a photo whose score passes stays. A region gate keeps each 8-connected region of
the thresholded map only when the region itself is confident: its peak, its mean or the mean of its
16 strongest pixels reaches a cut.

For a base pixel threshold t and a region statistic, the mask at every cut c is "q >= c" with
q(x) = T(statistic of x's region) on marked pixels (0 elsewhere), T(s) = 1 - (1 - s)^(1/4) spreading
the scores near 1 over the threshold grid. Each (t, statistic) is one more map: the calibration `wm
evaluate` runs chooses the cut (as its pixel threshold) and the image threshold jointly on val within
the real-photo budgets, so the image gate stays available and may be calibrated away. Reported on
test, test_heldout and the never-trained real_test photos, with small-mark image recall; the plain row
must reproduce `wm evaluate`'s figures.

    .venv/bin/python bench/region_gate.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full --model models/wmdetect.pt --out bench/results/region_gate
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_variants import (  # noqa: E402
    EIGHT,
    PLAIN,
    calibrated_row,
    load_probe_params,
    parser,
    real_cell,
    score_variants,
)
from bench.gate_scores import small_mark_recall  # noqa: E402
from wmcore.config import Params  # noqa: E402
from wmcore.data.layout import HELDOUT_SPLIT  # noqa: E402
from wmcore.evaluate.score import SplitScores, build_probability_fn  # noqa: E402

STATS = ("max", "mean", "top16")
TOP = 16


def spread(s: np.ndarray) -> np.ndarray:
    """T(s) = 1 - (1 - s)^(1/4): monotone, T(0.99) = 0.68, T(0.999) = 0.82, T(0.9999) = 0.90."""
    return 1.0 - np.power(np.clip(1.0 - s, 0.0, 1.0), 0.25)


def inverse_spread(q: float) -> float:
    return 1.0 - (1.0 - q) ** 4


def region_stats(probs: np.ndarray, base: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels of the 8-connected regions of probs >= base, {statistic: value per label, index 0 unused})."""
    labels, n = ndimage.label(probs >= base, EIGHT)
    stats = {s: np.zeros(n + 1) for s in STATS}
    if n == 0:
        return labels, stats
    inside = labels > 0
    lab, val = labels[inside].astype(np.int64), probs[inside].astype(np.float64)
    np.maximum.at(stats["max"], lab, val)
    area = np.bincount(lab, minlength=n + 1)
    stats["mean"] = np.bincount(lab, val, minlength=n + 1) / np.maximum(area, 1)
    order = np.lexsort((-val, lab))  # by region, strongest first
    lab_o, val_o = lab[order], val[order]
    first = np.searchsorted(lab_o, lab_o, side="left")
    rank = np.arange(lab_o.size) - first
    top = rank < TOP
    stats["top16"] = np.bincount(lab_o[top], val_o[top], minlength=n + 1) / np.maximum(np.minimum(area, TOP), 1)
    return labels, stats


def region_maps(probs: np.ndarray, bases: list[float]) -> dict[str, np.ndarray]:
    """{variant: q} per (base threshold, statistic): q = T(statistic of the pixel's region), 0 off the mask."""
    out = {}
    for base in bases:
        labels, stats = region_stats(probs, base)
        for s in STATS:
            table = spread(stats[s]).astype(np.float32)
            table[0] = 0.0
            out[variant_name(base, s)] = table[labels]
    return out


def variant_name(base: float, stat: str) -> str:
    return f"region {stat}, t={base:.4f}"


def score_splits(params: Params, model: Path, bases: list[float], limit: int) -> dict[str, dict]:
    """{split: {variant: SplitScores}}: the plain map and one region map per (base, statistic), image scores plain."""
    names = (PLAIN, *(variant_name(b, s) for b in bases for s in STATS))
    predict = build_probability_fn(params, model, "torch")
    return score_variants(params, predict, names, lambda probs: region_maps(probs, bases), limit)


def variant_row(params: Params, splits: dict[str, SplitScores], variant: str) -> dict:
    cal, row, _ = calibrated_row(params, splits)
    bins = params.evaluate.threshold_grid
    return {"variant": variant, "calibration": cal.as_metrics(),
            "region_cut": None if variant == PLAIN else round(inverse_spread(cal.threshold), 6),
            "small_mark_image_recall": {n: small_mark_recall(splits[n], cal.image_threshold, bins)
                                        for n in ("val", "test") if n in splits}, **row}  # fmt: skip


def markdown(rows: list[dict], setup: str) -> str:
    lines = ["# Region gate against the image gate", "", setup, "",
             "| variant | cut (region statistic) / image threshold | val F1 | test F1 (P / R) | held-out F1 | "
             "test F1, marks < 0.5% | small-mark image recall (test) | real_val area / flagged | real_test area / flagged |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    for r in rows:
        c, t = r["calibration"], r.get("test", {})
        cut = f"{c['threshold']:.4f}" if r["region_cut"] is None else f"{r['region_cut']:.5f}"
        small = r["small_mark_image_recall"].get("test", {})
        lines.append(f"| {r['variant']} | {cut} / {c['image_threshold']:.5f} | {c['val_f1']:.4f} | "
                     f"{t.get('f1', 0):.4f} ({t.get('precision', 0):.3f} / {t.get('recall', 0):.3f}) | "
                     f"{r.get(HELDOUT_SPLIT, {}).get('f1') or 0:.4f} | {t.get('by_mark_area', {}).get('lt_0.5pct')} | "
                     f"{small.get('recall')} of {small.get('n_images')} | {real_cell(r, 'real_val')} | {real_cell(r, 'real_test')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--bases", type=float, nargs="+", default=[0.7083, 0.7708, 0.8333])
    args = ap.parse_args(argv)
    params = load_probe_params(args)
    load, start = os.getloadavg(), time.perf_counter()
    scored = score_splits(params, args.model, args.bases, args.limit)
    variants = list(next(iter(scored.values())))
    rows = [variant_row(params, {name: by[v] for name, by in scored.items()}, v) for v in variants]
    setup = (f"Model {args.model}, prepared {params.paths.prepared}, corpus {params.paths.corpus} (+ native views); "
             f"{sum(len(by[PLAIN].samples) for by in scored.values())} images scored once in "
             f"{time.perf_counter() - start:.0f} s ({os.cpu_count()} cores, load {load[0]:.2f} before). Each variant's "
             "cut and image threshold calibrated on val within the real-photo budgets "
             "(evaluate.max_real_fp_area / max_real_flagged); the cut is on the region statistic's grid through T.")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "region_gate.json").write_text(json.dumps({"setup": setup, "variants": rows}, indent=1) + "\n")
    (args.out / "region_gate.md").write_text(markdown(rows, setup))
    print((args.out / "region_gate.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
