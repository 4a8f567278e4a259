"""The OCR text detector as a watermark detector, scored exactly as `wm evaluate` scores our model.

A user's strongest alternative to wmdetect is a generic text detector: PP-OCRv4 det, shipped in the
`rapidocr-onnxruntime` wheel (Apache-2.0), run with its defaults. This scores it on our own splits
(synthetic val / test / test_heldout with their masks, and the corpus's real clean photos real_val /
real_test with their native views) with wmcore's scoring, calibration and metrics, so every figure
sits beside the same figure of our model (`--ours`, a `wm evaluate` metrics.json). Two ways to use it:

    boxes   its text boxes filled: every text it finds is taken for a watermark (how the hidden real
            set measured it); no calibration (threshold 0.5, no image gate)
    map     its per-pixel DB text probability (DB's shrunk text kernel, from which the boxes are
            grown by 1.6x: it covers a line's middle, not its glyphs' tops and bottoms), the pixel
            threshold and the image gate calibrated on
            val within the real-photo budgets exactly as `wm evaluate` calibrates ours (the
            detector's best showing under our rules)
    map_free   the same map calibrated on val alone, no real-photo budget (its best synthetic F1,
            whatever it marks on real photos)

One detector pass per image gives all three. Writes <out>/metrics.json ({"boxes": ..., "map": ..., ...}, each
`wm evaluate`'s per-split metrics with by_tag and by_mark_area) and <out>/README.md (the tables).

    .venv/bin/python bench/ocr_baseline.py --params-extra params-full.yaml --params-extra bench/ship-cpu.yaml \
        -S paths.prepared=data/prepared-full --ours results/evaluate-native/metrics.json \
        --out bench/results/ocr_baseline
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.config import Params, load_params  # noqa: E402
from wmcore.data.layout import HELDOUT_SPLIT  # noqa: E402
from wmcore.evaluate.calibrate import calibrate  # noqa: E402
from wmcore.evaluate.run import metrics_at  # noqa: E402
from wmcore.evaluate.score import SplitScores, evaluation_splits, score_maps  # noqa: E402

WAYS = ("boxes", "map")  # the detector's outputs per image
REPORTED = ("boxes", "map", "map_free")  # the ways they are used (see the module docstring)
# Tags shown in the README, grouped by the hidden real set's five sources they stand in for.
SOURCES = {
    "document stamps": ("stamp",),
    "AI-generator labels": ("phrase:ai_label", "corner_label"),
    "stock vendor marks": ("grid", "phrase:stock_word", "phrase:brand"),
    "photos with text marks": ("latin", "cjk", "phrase:handle", "phrase:url"),
    "faint centred logos": ("centered", "logo", "white"),
}


class OcrDetector:
    """PP-OCRv4 det with rapidocr's defaults; per image its filled boxes and its probability map, one pass."""

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR()
        det = self.engine.text_det
        infer = det.infer
        self.raw: np.ndarray | None = None

        def keep_raw(x: np.ndarray) -> Any:  # the DB probability map the boxes are drawn from
            out = infer(x)
            self.raw = out[0]
            return out

        det.infer = keep_raw

    def maps(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import cv2

        out = []
        for rgb in images:
            h, w = rgb.shape[:2]
            self.raw = None
            boxes, _ = self.engine(np.ascontiguousarray(rgb[..., ::-1]), use_det=True, use_cls=False, use_rec=False)
            filled = np.zeros((h, w), np.uint8)
            if boxes:
                cv2.fillPoly(filled, [np.asarray(b, np.int32) for b in boxes], 1)
            # rapidocr letterboxes only images under 31 px high or over 8:1 wide; ours are neither, so
            # the map covers the image resized (as its box coordinates are scaled back).
            prob = np.zeros((h, w), np.float32) if self.raw is None else cv2.resize(
                np.asarray(self.raw[0, 0], np.float32), (w, h), interpolation=cv2.INTER_LINEAR)  # fmt: skip
            out.append({"boxes": filled.astype(np.float32), "map": np.clip(prob, 0.0, 1.0)})
        return out


def score_all(params: Params, detector: OcrDetector, limit: int) -> tuple[dict[str, dict[str, SplitScores]], dict]:
    """{split: {way: scores}} for val, test, test_heldout, real_val, real_test; and seconds / images per split."""
    ev = params.evaluate
    scored, timing = {}, {}
    for name, (samples, crop) in evaluation_splits(params).items():
        samples = samples[:limit] if limit else samples
        if not samples:
            continue
        start = time.perf_counter()
        scored[name] = score_maps(samples, detector.maps, WAYS, ev.threshold_grid, ev.batch_size, crop, name=name)
        timing[name] = {"images": len(samples), "seconds": round(time.perf_counter() - start, 1)}
    return scored, timing


def way_metrics(params: Params, scored: dict[str, dict[str, SplitScores]], way: str) -> dict[str, Any]:
    """`wm evaluate`'s metrics of one way: boxes at 0.5 ungated, the map calibrated on val (+ real_val)."""
    by_split = {name: by_way["boxes" if way == "boxes" else "map"] for name, by_way in scored.items()}
    if way == "boxes":
        threshold, image_threshold, calibration = 0.5, 0.0, {"reason": "filled boxes: every found text, no gate"}
    else:
        cal = calibrate(by_split["val"], by_split.get("real_val") if way == "map" else None, params)
        threshold, image_threshold, calibration = cal.threshold, cal.image_threshold, cal.as_metrics()
    metrics = metrics_at(by_split, threshold, image_threshold, params)
    metrics["calibration"] = {**calibration, "threshold": threshold, "image_threshold": image_threshold}
    return metrics


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def report(result: dict[str, Any], ours: dict[str, Any] | None, ours_name: str) -> str:
    """The README: per split and per source-like tag, ours beside both ways of the OCR detector."""
    columns = [(ours_name, ours)] if ours else []
    columns += [(f"OCR {way}", result[way]) for way in REPORTED]
    head = "| | " + " | ".join(name for name, _ in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    lines = ["# The OCR text detector as a watermark detector, on our splits", "",
             f"PP-OCRv4 det (`rapidocr-onnxruntime` defaults), scored by `bench/ocr_baseline.py` with `wm evaluate`'s "
             f"scoring and metrics; ours: `{ours_name}`. {result['setup']}", "",
             "## Synthetic splits: pooled pixel F1 (precision / recall)", "", head, rule]  # fmt: skip
    for split in ("val", "test", HELDOUT_SPLIT):
        cells = [f"{_f(m.get(split, {}).get('f1'))} ({_f(m.get(split, {}).get('precision'), 2)} / "
                 f"{_f(m.get(split, {}).get('recall'), 2)})" for _, m in columns]  # fmt: skip
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines += ["", "## Real clean photos: false-positive area / photos flagged", "", head, rule]
    for split in ("real_val", "real_test"):
        cells = [f"{_pct(m.get(split, {}).get('fp_area'))} / {m.get(split, {}).get('n_flagged', '-')} of "
                 f"{m.get(split, {}).get('n_images', '-')}" for _, m in columns]  # fmt: skip
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    lines += ["", "## Test F1 by mark style, grouped by the hidden real set's sources they stand in for", "",
              "| source | tag (test images) | " + " | ".join(name for name, _ in columns) + " |",
              "|---|---|" + "---|" * len(columns)]  # fmt: skip
    for source, tags in SOURCES.items():
        for tag in tags:
            cells = [_f(m.get("test", {}).get("by_tag", {}).get(tag, {}).get("f1")) for _, m in columns]
            n = result["map"]["test"].get("by_tag", {}).get(tag, {}).get("n_images", "-")
            lines.append(f"| {source} | {tag} ({n}) | " + " | ".join(cells) + " |")
    lines += ["", "## Test F1 by mark area (share of its image)", "",
              "| mark area | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for bucket in result["map"]["test"].get("by_mark_area", {}):
        cells = [_f(m.get("test", {}).get("by_mark_area", {}).get(bucket, {}).get("f1")) for _, m in columns]
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    lines += [""] + [f"Calibration of `OCR {way}`: " + json.dumps(result[way]["calibration"]) for way in REPORTED[1:]]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--params-extra", action="append", default=[])
    ap.add_argument("-S", "--set", action="append", default=[], dest="overrides")
    ap.add_argument("--ours", type=Path, default=None, help="a `wm evaluate` metrics.json to set beside")
    ap.add_argument("--limit", type=int, default=0, help="first N images of each split (0 = all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params, args.overrides, args.params_extra)
    load = os.getloadavg()
    detector = OcrDetector()
    scored, timing = score_all(params, detector, args.limit)
    result: dict[str, Any] = {way: way_metrics(params, scored, way) for way in REPORTED}
    images = sum(t["images"] for t in timing.values())
    seconds = sum(t["seconds"] for t in timing.values())
    result["timing"] = {**timing, "s_per_image": round(seconds / max(images, 1), 3)}
    result["setup"] = (f"Prepared {params.paths.prepared}, corpus {params.paths.corpus} (+ native views "
                       f"{params.paths.corpus_native}); {images} images, {result['timing']['s_per_image']} s each "
                       f"(detector pass and scoring, {os.cpu_count()} cores, load {load[0]:.2f} before).")  # fmt: skip
    ours = json.loads(args.ours.read_text()) if args.ours else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "README.md").write_text(report(result, ours, str(args.ours) if args.ours else ""))
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
