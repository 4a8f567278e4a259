"""Which has-watermark score should gate the masks: the top-k share it averages, measured.

`wm predict` empties the mask of an image whose has-watermark score (the mean of its top 0.1%
probabilities, at least 16 px: `wmcore.metrics.image_score`) is under the calibrated image
threshold. A mark smaller than that share of its image (a small corner AI label: on a 1024x768
photo 0.1% is 786 px) cannot fill the top k alone, so background pixels pull its score down and
the gate may drop it. This scores a model once on every split and keeps, per image, the score
under several top-k rules (and corner rules that let a corner window's evidence gate at a lower
confidence, where AI generators print their labels); each rule is then calibrated as `wm evaluate` calibrates (pixel and
image thresholds jointly on val within the real-photo budgets, the model's own fusion rule) and
reported on test, test_heldout and the never-trained real_test photos, with test F1 by mark area
and the image recall of small marks. The shipped rule's row must reproduce `wm evaluate`'s figures.

    .venv/bin/python bench/gate_scores.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full --model models/wmdetect.pt --out bench/results/gate_scores
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_variants import calibrated_row, load_probe_params, parser, real_cell  # noqa: E402
from wmcore.config import Params  # noqa: E402
from wmcore.data.layout import HELDOUT_SPLIT  # noqa: E402
from wmcore.evaluate.score import SplitScores, build_probability_fn, evaluation_splits, score_split  # noqa: E402
from wmcore.metrics import image_score  # noqa: E402


def corner_score(probs: np.ndarray, window: float) -> float:
    """The shipped score (top 0.1%, at least 16 px) of the most confident of the four corner windows.

    A window spans `window` of the image's height and width from a corner, where AI generators and
    stock vendors print their small labels (and where the generator's corner styles put them).
    """
    h, w = probs.shape
    wh, ww = max(1, round(h * window)), max(1, round(w * window))
    corners = (probs[:wh, :ww], probs[:wh, w - ww:], probs[h - wh:, :ww], probs[h - wh:, w - ww:])
    return max(image_score(c) for c in corners)


def corner_lifted(probs: np.ndarray, window: float, lift: float) -> float:
    """max(shipped score, corner score lifted towards 1): 1 - (1 - s) * lift, so corner evidence gates at a
    lower confidence than evidence elsewhere (lift 0.2: a corner at 0.985 counts as 0.997 does)."""
    return max(image_score(probs), 1.0 - (1.0 - corner_score(probs, window)) * lift)


# name -> (H, W) probabilities -> has-watermark score; "top 0.1%" is what wm predict ships.
RULES: dict[str, Callable[[np.ndarray], float]] = {
    "top 0.1% (shipped)": partial(image_score, top_fraction=0.001, min_pixels=16),
    "top 0.03%": partial(image_score, top_fraction=0.0003, min_pixels=16),
    "top 0.01%": partial(image_score, top_fraction=0.0001, min_pixels=16),
    "top 256 px": partial(image_score, top_fraction=0.0, min_pixels=256),
    "top 64 px": partial(image_score, top_fraction=0.0, min_pixels=64),
    "corners 1/3, lift 0.5": partial(corner_lifted, window=1 / 3, lift=0.5),
    "corners 1/3, lift 0.2": partial(corner_lifted, window=1 / 3, lift=0.2),
    "corners 1/3, lift 0.05": partial(corner_lifted, window=1 / 3, lift=0.05),
    "corners 1/4, lift 0.2": partial(corner_lifted, window=1 / 4, lift=0.2),
}


def score_splits(params: Params, model: Path, limit: int) -> tuple[dict[str, SplitScores], dict[str, dict[str, list]]]:
    """Every split scored once; beside it, per rule, the image scores in the order of the scored samples."""
    ev = params.evaluate
    predict = build_probability_fn(params, model, "torch")
    scored, alt = {}, {}
    for name, (split, crop) in evaluation_splits(params).items():
        split = split[:limit] if limit else split
        if not split:
            continue
        alt[name] = {rule: [] for rule in RULES}

        def keeping(images: list[np.ndarray], into: dict[str, list] = alt[name]) -> list[np.ndarray]:
            maps = predict(images)
            for probs in maps:  # score_split keeps every returned map, in order
                for rule, score in RULES.items():
                    into[rule].append(score(probs))
            return maps

        scored[name] = score_split(split, keeping, ev.threshold_grid, ev.batch_size, crop, name=name)
    return scored, alt


def small_mark_recall(split: SplitScores, image_threshold: float, bins: int, below: float = 0.005) -> dict[str, Any]:
    """Image recall (score >= image_threshold) of the watermarked images whose mark covers < `below` of them."""
    hists = split.stacked_hists(bins)
    mark_share = hists[:, 0].sum(1).double() / hists.sum((1, 2)).double()
    small = (mark_share > 0) & (mark_share < below)
    kept = np.array(split.scores)[small.numpy()] >= image_threshold
    return {"n_images": int(small.sum()), "recall": round(float(kept.mean()), 4) if kept.size else None}


def rule_row(params: Params, scored: dict[str, SplitScores], alt: dict[str, dict[str, list]], rule: str) -> dict:
    splits = {name: dataclasses.replace(split, scores=alt[name][rule]) for name, split in scored.items()}
    keys = ("f1", "precision", "recall", "image_recall", "image_precision", "clean_fp_area")
    cal, row, metrics = calibrated_row(params, splits, keys)
    bins = params.evaluate.threshold_grid
    if "test" in row:
        by_tag = metrics["test"].get("by_tag", {})
        row["test"]["by_tag"] = {t: by_tag.get(t, {}).get("f1") for t in ("corner_label", "white", "centered")}
    return {"rule": rule, "calibration": cal.as_metrics(), "small_mark_image_recall": {
        name: small_mark_recall(splits[name], cal.image_threshold, bins) for name in ("val", "test") if name in splits},
        **row}  # fmt: skip


def markdown(rows: list[dict], setup: str) -> str:
    lines = ["# Gate scores: which top-k share the has-watermark score averages", "", setup, "",
             "| rule | pixel / image threshold | val F1 | test F1 | held-out F1 | test image recall | test F1, marks < 0.5% | "
             "small-mark image recall (test) | real_val area / flagged | real_test area / flagged |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    for r in rows:
        c, t = r["calibration"], r.get("test", {})
        small = r["small_mark_image_recall"].get("test", {})
        lines.append(f"| {r['rule']} | {c['threshold']:.4f} / {c['image_threshold']:.5f} | {c['val_f1']:.4f} | "
                     f"{t.get('f1', 0):.4f} | {r.get(HELDOUT_SPLIT, {}).get('f1') or 0:.4f} | {t.get('image_recall')} | "
                     f"{t.get('by_mark_area', {}).get('lt_0.5pct')} | {small.get('recall')} of {small.get('n_images')} | "
                     f"{real_cell(r, 'real_val', 2)} | {real_cell(r, 'real_test', 2)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    params = load_probe_params(args)
    load, start = os.getloadavg(), time.perf_counter()
    scored, alt = score_splits(params, args.model, args.limit)
    rows = [rule_row(params, scored, alt, rule) for rule in RULES]
    setup = (f"Model {args.model}, prepared {params.paths.prepared}, corpus {params.paths.corpus} (+ native views); "
             f"{sum(len(s.samples) for s in scored.values())} images scored once in "
             f"{time.perf_counter() - start:.0f} s ({os.cpu_count()} cores, load {load[0]:.2f} before). Each rule "
             "calibrated on val within the real-photo budgets (evaluate.max_real_fp_area / max_real_flagged).")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gate_scores.json").write_text(json.dumps({"setup": setup, "rules": rows}, indent=1) + "\n")
    (args.out / "README.md").write_text(markdown(rows, setup))
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
