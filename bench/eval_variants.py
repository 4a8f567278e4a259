"""What the evaluation-split probes share: their command line, one scoring pass per split with variant maps,
and a variant's row calibrated as `wm evaluate` calibrates.

bench/gate_scores.py, bench/hysteresis.py, bench/region_gate.py, bench/group_calibration.py and
bench/upscale.py each score the splits `wm evaluate` scores (`evaluation_splits`) with the shipped
predictor, derive variants of its probability maps (or of its image score), calibrate each variant on val
within the real-photo budgets and report test, test_heldout and real_test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wmcore.config import Params, load_params
from wmcore.evaluate.calibrate import Calibration, calibrate
from wmcore.evaluate.run import metrics_at
from wmcore.evaluate.score import ProbabilityFn, SplitScores, evaluation_splits, score_maps
from wmcore.runtime.device import configure_threads

PLAIN = "plain (shipped)"  # the predictor's own map, the variant every probe compares against
EIGHT = np.ones((3, 3), bool)  # 8-connectivity, as wm predict's regions
REAL_KEYS = ("fp_area", "n_flagged", "n_images")
SPLIT_KEYS = ("f1", "precision", "recall", "image_recall", "clean_fp_area")

# (H, W) float32 probabilities -> {variant name: map of the same size} (PLAIN is added by score_variants)
VariantMaps = Callable[[np.ndarray], dict[str, np.ndarray]]


def parser(description: str) -> argparse.ArgumentParser:
    """--params, --params-extra, -S, --model, --limit, --out: a probe adds its own options to this."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--params-extra", action="append", default=[])
    ap.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=0, help="first N images of each split (0 = all)")
    ap.add_argument("--out", type=Path, required=True)
    return ap


def write_probe(out: Path, stem: str, result: dict, text: str) -> None:
    """A probe's result as out/STEM.json and its table as out/STEM.md, the table printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(text)
    print(text)


def load_probe_params(args: argparse.Namespace) -> Params:
    """The params the command line names, with torch's threads set as the pipeline sets them."""
    params = load_params(args.params, args.overrides, args.params_extra)
    configure_threads(params.base.threads)
    return params


def score_variants(
    params: Params, predict: ProbabilityFn, names: tuple[str, ...], variants: VariantMaps | None, limit: int
) -> dict[str, dict[str, SplitScores]]:
    """{split: {variant: SplitScores}} from one pass of `predict` over every evaluation split.

    names: PLAIN first, then the names `variants` returns (none without it). Every variant keeps the plain
    map's image scores: the gate reads the plain map, as `wm predict` does.
    """
    ev = params.evaluate

    def maps(images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{PLAIN: probs, **(variants(probs) if variants else {})} for probs in predict(images)]

    scored = {}
    for name, (split, crop) in evaluation_splits(params).items():
        split = split[:limit] if limit else split
        if split:
            by_variant = score_maps(split, maps, names, ev.threshold_grid, ev.batch_size, crop, name=name)
            plain_scores = by_variant[PLAIN].scores
            scored[name] = {n: dataclasses.replace(s, scores=plain_scores) for n, s in by_variant.items()}
    return scored


def calibrated_row(params: Params, splits: dict[str, SplitScores], split_keys: tuple[str, ...] = SPLIT_KEYS
                   ) -> tuple[Calibration, dict, dict]:  # fmt: skip
    """(calibration on val and real_val, {split: its figures at it}, metrics_at's full metrics).

    Real splits keep REAL_KEYS, the others `split_keys`; test adds its F1 by mark area.
    """
    cal = calibrate(splits["val"], splits.get("real_val"), params)
    metrics = metrics_at(splits, cal.threshold, cal.image_threshold, params)
    row = {name: {k: m.get(k) for k in (REAL_KEYS if name.startswith("real_") else split_keys)}
           for name, m in metrics.items()}  # fmt: skip
    if "test" in metrics:
        row["test"]["by_mark_area"] = {b: v.get("f1") for b, v in metrics["test"].get("by_mark_area", {}).items()}
    return cal, row, metrics


def real_cell(row: dict, name: str, decimals: int = 3) -> str:
    """'0.124% / 5 of 139' for a real split's figures in `row`, '-' without them."""
    m = row.get(name) or {}
    return f"{100 * (m.get('fp_area') or 0):.{decimals}f}% / {m.get('n_flagged')} of {m.get('n_images')}" if m else "-"
