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

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.config import Params, load_params  # noqa: E402
from wmcore.data.layout import HELDOUT_SPLIT  # noqa: E402
from wmcore.evaluate.calibrate import calibrate  # noqa: E402
from wmcore.evaluate.run import metrics_at  # noqa: E402
from wmcore.evaluate.score import SplitScores, build_probability_fn, evaluation_splits, score_maps  # noqa: E402
from wmcore.runtime.device import configure_threads  # noqa: E402

EIGHT = np.ones((3, 3), bool)
PLAIN = "plain (shipped)"


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
    ev = params.evaluate
    predict = build_probability_fn(params, model, "torch")
    names = (PLAIN, *(f"hysteresis h={h:.4f}" for h in highs))
    scored = {}
    for name, (split, crop) in evaluation_splits(params).items():
        split = split[:limit] if limit else split
        if not split:
            continue

        def maps(images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
            out = []
            for probs in predict(images):
                q = hysteresis_maps(probs, highs, ev.threshold_grid, lowest)
                out.append({PLAIN: probs, **{n: q[h] for n, h in zip(names[1:], highs, strict=True)}})
            return out

        by_variant = score_maps(split, maps, names, ev.threshold_grid, ev.batch_size, crop, name=name)
        plain_scores = by_variant[PLAIN].scores  # the gate reads the plain map, as wm predict would
        scored[name] = {n: dataclasses.replace(s, scores=plain_scores) for n, s in by_variant.items()}
    return scored


def variant_row(params: Params, splits: dict[str, SplitScores], variant: str) -> dict:
    cal = calibrate(splits["val"], splits.get("real_val"), params)
    metrics = metrics_at(splits, cal.threshold, cal.image_threshold, params)
    row = {"variant": variant, "calibration": cal.as_metrics()}
    for name, m in metrics.items():
        keys = ("fp_area", "n_flagged", "n_images") if name.startswith("real_") else (
            "f1", "precision", "recall", "image_recall", "clean_fp_area")  # fmt: skip
        row[name] = {k: m.get(k) for k in keys}
        if name == "test":
            row[name]["by_mark_area"] = {b: v.get("f1") for b, v in m.get("by_mark_area", {}).items()}
    return row


def markdown(rows: list[dict], setup: str) -> str:
    lines = ["# Hysteresis thresholding against one pixel threshold", "", setup, "",
             "| variant | low (pixel) / image threshold | val F1 | test F1 (P / R) | held-out F1 | test F1, marks < 0.5% | "
             "real_val area / flagged | real_test area / flagged |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def real(r: dict, name: str) -> str:
        m = r.get(name) or {}
        return f"{100 * (m.get('fp_area') or 0):.3f}% / {m.get('n_flagged')} of {m.get('n_images')}" if m else "-"

    for r in rows:
        c, t = r["calibration"], r.get("test", {})
        lines.append(f"| {r['variant']} | {c['threshold']:.4f} / {c['image_threshold']:.5f} | {c['val_f1']:.4f} | "
                     f"{t.get('f1', 0):.4f} ({t.get('precision', 0):.3f} / {t.get('recall', 0):.3f}) | "
                     f"{r.get(HELDOUT_SPLIT, {}).get('f1') or 0:.4f} | {t.get('by_mark_area', {}).get('lt_0.5pct')} | "
                     f"{real(r, 'real_val')} | {real(r, 'real_test')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--params-extra", action="append", default=[])
    ap.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--highs", type=float, nargs="+", default=[0.8125, 0.875, 0.9375, 0.9792])
    ap.add_argument("--lowest", type=float, default=0.25, help="lowest low threshold tried")
    ap.add_argument("--limit", type=int, default=0, help="first N images of each split (0 = all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params, args.overrides, args.params_extra)
    configure_threads(params.base.threads)
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
