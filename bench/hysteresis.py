"""Hysteresis thresholding of the probability map, measured against the single pixel threshold.

`wm predict` marks every pixel whose probability reaches the calibrated threshold. The shipped
model loses most synthetic F1 on the faint fringes of marks (bench/results/edge_errors: F1 0.76,
0.83 when errors within 1 px of a mark's edge are forgiven) and on stray specks. Hysteresis (the
Canny rule) marks the pixels at or above a low threshold that are connected (8-connected, through
pixels at or above it) to a seed at or above a high one: a stroke's fringe joins its stroke, a
weak speck with no strong pixel is dropped.

For a fixed high threshold h, the mask at every low threshold l <= h is "q >= l", where q(x) is the
highest grid level at which x still lies in a component holding a seed (q = p where p >= h). So
each h becomes one more probability map, and the calibration `wm evaluate` runs (pixel threshold =
the low one, image threshold, jointly on val within the real-photo budgets) applies unchanged; the
has-watermark score (the gate) stays the plain map's. Each h is reported on test, test_heldout and
the never-trained real_test photos; the plain row must reproduce `wm evaluate`'s figures.

    .venv/bin/python bench/hysteresis.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full --model models/wmdetect.pt --out bench/results/hysteresis
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

from bench.eval_variants import EIGHT, PLAIN, calibrated_row, load_probe_params, parser, real_cell, score_variants  # noqa: E402
from wmcore.config import Params  # noqa: E402
from wmcore.data.layout import HELDOUT_SPLIT  # noqa: E402
from wmcore.evaluate.score import SplitScores, build_probability_fn  # noqa: E402


def hysteresis_maps(probs: np.ndarray, highs: list[float], bins: int, lowest: float) -> dict[float, np.ndarray]:
    """{h: q} for each high threshold h: q >= l is exactly the hysteresis mask (low l, high h) at grid levels l.

    Grid levels k/(bins-1) from `lowest` up to h; q holds (k + 0.5)/(bins-1) where level k is the highest
    at which the pixel's component reaches h (inside bin k of threshold_histograms), p where p >= h, 0 elsewhere.
    """
    out = {h: np.where(probs >= h, probs, 0).astype(np.float32) for h in highs}
    top = max(highs)
    k_lo = int(np.ceil(lowest * (bins - 1)))
    for k in range(int(np.ceil(top * (bins - 1))) - 1, k_lo - 1, -1):
        level = k / (bins - 1)
        above = probs >= level
        if not above.any():
            continue
        labels, n = ndimage.label(above, EIGHT)
        peak = np.zeros(n + 1, np.float32)
        np.maximum.at(peak, labels.ravel(), probs.ravel())
        for h in highs:
            if level >= h:
                continue
            keep = peak >= h
            keep[0] = False
            grow = keep[labels] & (out[h] == 0)  # descending levels: a pixel keeps its highest level
            out[h][grow] = (k + 0.5) / (bins - 1)
    return out


def score_splits(params: Params, model: Path, highs: list[float], lowest: float, limit: int) -> dict[str, dict]:
    """{split: {variant: SplitScores}}: the plain map and one hysteresis map per high threshold, image scores plain."""
    names = tuple(f"hysteresis h={h:.4f}" for h in highs)

    def variants(probs: np.ndarray) -> dict[str, np.ndarray]:
        q = hysteresis_maps(probs, highs, params.evaluate.threshold_grid, lowest)
        return {n: q[h] for n, h in zip(names, highs, strict=True)}

    return score_variants(params, build_probability_fn(params, model, "torch"), (PLAIN, *names), variants, limit)


def variant_row(params: Params, splits: dict[str, SplitScores], variant: str) -> dict:
    cal, row, _ = calibrated_row(params, splits)
    return {"variant": variant, "calibration": cal.as_metrics(), **row}


def markdown(rows: list[dict], setup: str) -> str:
    lines = ["# Hysteresis thresholding against one pixel threshold", "", setup, "",
             "| variant | low (pixel) / image threshold | val F1 | test F1 (P / R) | held-out F1 | test F1, marks < 0.5% | "
             "real_val area / flagged | real_test area / flagged |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    for r in rows:
        c, t = r["calibration"], r.get("test", {})
        lines.append(f"| {r['variant']} | {c['threshold']:.4f} / {c['image_threshold']:.5f} | {c['val_f1']:.4f} | "
                     f"{t.get('f1', 0):.4f} ({t.get('precision', 0):.3f} / {t.get('recall', 0):.3f}) | "
                     f"{r.get(HELDOUT_SPLIT, {}).get('f1') or 0:.4f} | {t.get('by_mark_area', {}).get('lt_0.5pct')} | "
                     f"{real_cell(r, 'real_val')} | {real_cell(r, 'real_test')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--highs", type=float, nargs="+", default=[0.8125, 0.875, 0.9375, 0.9792])
    ap.add_argument("--lowest", type=float, default=0.25, help="lowest low threshold tried")
    args = ap.parse_args(argv)
    params = load_probe_params(args)
    load, start = os.getloadavg(), time.perf_counter()
    scored = score_splits(params, args.model, args.highs, args.lowest, args.limit)
    variants = list(next(iter(scored.values())))
    rows = [variant_row(params, {name: by[v] for name, by in scored.items()}, v) for v in variants]
    setup = (f"Model {args.model}, prepared {params.paths.prepared}, corpus {params.paths.corpus} (+ native views); "
             f"{sum(len(by[PLAIN].samples) for by in scored.values())} images scored once in "
             f"{time.perf_counter() - start:.0f} s ({os.cpu_count()} cores, load {load[0]:.2f} before). Low thresholds "
             f"from {args.lowest} on the {params.evaluate.threshold_grid}-step grid; each variant calibrated on val "
             "within the real-photo budgets (evaluate.max_real_fp_area / max_real_flagged).")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hysteresis.json").write_text(json.dumps({"setup": setup, "variants": rows}, indent=1) + "\n")
    (args.out / "hysteresis.md").write_text(markdown(rows, setup))
    print((args.out / "hysteresis.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
