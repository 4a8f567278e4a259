"""Reports: metrics of a scored split at the calibrated thresholds, metrics.json, curves, overlays, MLflow.

Metrics follow what `wm predict` writes: with predict.gate_masks the mask of an image scored below
the image threshold is empty, so its pixels count as predicted clean. For the corpus's real clean
photos every marked pixel is a false positive: `real_clean_metrics` gives the marked share of
their pixels (overall and per category) and how many photos got any mask.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wmcore.config import Params
from wmcore.data.layout import HELDOUT_SPLIT
from wmcore.evaluate.plots import OverlayRow, pick_overlay_rows, plot_overlays, plot_pr_curves, plot_training_curves
from wmcore.evaluate.samples import SampleError, read_sample
from wmcore.evaluate.score import NATIVE_TAG, REAL_SPLITS, SplitScores
from wmcore.metrics import (
    average_precision,
    counts_at,
    decision_scores,
    gate_counts,
    positive_fraction,
    precision_recall_curve,
    roc_auc,
    scores_from_counts,
)
from wmcore.runtime.atomic import write_json
from wmcore.tracking.sink import RunLogger

log = logging.getLogger(__name__)


def _number(value: float | None) -> float | None:
    """JSON-safe metric: rounded to 6 decimals, None for undefined (NaN) values."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 6)


def _fp_area(counts: torch.Tensor, which: np.ndarray) -> float | None:
    """Share of pixels predicted positive over the images selected by `which`; None if none are."""
    return float(positive_fraction(counts[torch.from_numpy(which)].sum(0))) if which.any() else None


def split_metrics(split: SplitScores, threshold: float, image_threshold: float, bins: int, gate: bool) -> dict[str, Any]:
    """Flat metrics of one split at the given pixel and image thresholds (keys in metrics.json).

    gate: masks of images scored below image_threshold are empty (predict.gate_masks), as `wm predict` writes them.
    """
    counts = image_counts(split, threshold, image_threshold, bins, gate)  # (N, 4)
    pixel = scores_from_counts(counts.sum(0))
    per_image = scores_from_counts(counts)
    has_watermark, scene_text = split.labels()
    scores = np.array(split.scores)
    decisions = decision_scores(scores, has_watermark, image_threshold)
    raw = {
        **{k: float(v) for k, v in pixel.items()},
        "mean_image_f1": float(per_image["f1"].mean()) if len(counts) else None,
        "mean_image_iou": float(per_image["iou"].mean()) if len(counts) else None,
        "auroc": roc_auc(scores, has_watermark),
        "ap": average_precision(scores, has_watermark),
        **{f"image_{k}": v for k, v in decisions.items()},
        "clean_fp_area": _fp_area(counts, ~has_watermark),
        "clean_page_fp_area": _fp_area(counts, ~has_watermark & split.background_is("page")),
        "clean_photo_fp_area": _fp_area(counts, ~has_watermark & split.background_is("photo")),
        "clean_scene_text_fp_area": _fp_area(counts, ~has_watermark & scene_text),
        "threshold": threshold,
        "image_threshold": image_threshold,
    }
    metrics = {k: _number(v) for k, v in raw.items()}
    metrics.update(
        n_images=len(counts),
        n_clean=int((~has_watermark).sum()),
        n_skipped=len(split.skipped),
        # how many images each clean false-positive area rests on (clean pages are rare: ~2% of samples)
        n_clean_page=int((~has_watermark & split.background_is("page")).sum()),
        n_clean_photo=int((~has_watermark & split.background_is("photo")).sum()),
    )
    by_tag = tag_metrics(split, counts)
    if by_tag:
        metrics["by_tag"] = by_tag
    metrics["by_mark_area"] = mark_area_metrics(counts)
    return metrics


def tag_metrics(split: SplitScores, counts: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Pixel F1, precision and recall pooled over the images carrying each manifest tag (style or phrase kind).

    counts: the split's per-image counts (N, 4) at the reported thresholds. Where the images of a tag hold
    no watermark pixel (e.g. "clean") the scores are None. {} when no sample has tags (no manifest).
    """
    tags = sorted({t for s in split.samples for t in s.tags})
    return {tag: pooled_scores(counts, torch.tensor([tag in s.tags for s in split.samples])) for tag in tags}


def pooled_scores(counts: torch.Tensor, which: torch.Tensor) -> dict[str, Any]:
    """n_images and pixel F1, precision, recall pooled over the images `which` selects of per-image counts
    (N, 4); the scores are None where those images hold no watermark pixel."""
    pooled = counts[which].sum(0)
    has_truth = bool(pooled[0] + pooled[2] > 0)  # tp + fn: watermark pixels
    values = scores_from_counts(pooled, empty_is_perfect=False)
    return {"n_images": int(which.sum()),
            **{k: _number(float(values[k])) if has_truth else None for k in ("f1", "precision", "recall")}}


# Buckets of `by_mark_area`: a watermarked image's mark pixels as a share of its pixels (lower edges).
MARK_AREA_BUCKETS = (("lt_0.5pct", 0.0), ("0.5_2pct", 0.005), ("2_8pct", 0.02), ("ge_8pct", 0.08))


def mark_area_metrics(counts: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Pixel F1, precision and recall pooled over the watermarked images of each mark-area bucket.

    counts: per-image counts (N, 4) at the reported thresholds; a mark's area is its truth pixels
    (tp + fn, the same at every threshold) over the image's pixels. Small marks (an AI-generator
    label in a corner) and large ones (a tiled stock grid) are scored apart, so two splits of
    different mark sizes can be compared bucket by bucket. Clean images are in no bucket.
    """
    truth = (counts[:, 0] + counts[:, 2]).double()
    area = truth / counts.sum(1).double().clamp(min=1.0)
    edges = [low for _, low in MARK_AREA_BUCKETS[1:]] + [math.inf]
    return {name: pooled_scores(counts, (truth > 0) & (area >= low) & (area < high))
            for (name, low), high in zip(MARK_AREA_BUCKETS, edges, strict=True)}


def image_counts(split: SplitScores, threshold: float, image_threshold: float, bins: int, gate: bool) -> torch.Tensor:
    """Per-image counts (N, 4) at `threshold`, with the masks of images below image_threshold emptied if `gate`."""
    counts = counts_at(split.stacked_hists(bins), threshold)
    if not gate:
        return counts
    return gate_counts(counts, torch.from_numpy(np.array(split.scores) >= image_threshold))


def real_clean_metrics(split: SplitScores, threshold: float, image_threshold: float, bins: int, gate: bool) -> dict:
    """False positives on real clean photos: marked pixel share overall and per category, images marked."""
    counts = image_counts(split, threshold, image_threshold, bins, gate)
    marked = (counts[:, 0] + counts[:, 1]) > 0
    categories = sorted({s.background_kind or "?" for s in split.samples})
    kinds = np.array([s.background_kind or "?" for s in split.samples])
    return {
        "fp_area": _number(float(positive_fraction(counts.sum(0)))),
        "flagged_share": _number(float(marked.double().mean())) if len(counts) else None,
        "n_flagged": int(marked.sum()),
        "n_images": len(counts),
        "n_skipped": len(split.skipped),
        "fp_area_by_category": {c: _number(_fp_area(counts, kinds == c)) for c in categories},
        "flagged": sorted(s.id for s, m in zip(split.samples, marked.tolist(), strict=True) if m),
        **({"by_view": _by_view(split, counts, marked)} if any(NATIVE_TAG in s.tags for s in split.samples) else {}),
    }


def _by_view(split: SplitScores, counts: torch.Tensor, marked: torch.Tensor) -> dict[str, dict]:
    """Real clean figures of the stored copies (<= the corpus's long side) and the native views apart."""
    native = torch.tensor([NATIVE_TAG in s.tags for s in split.samples], dtype=torch.bool)
    return {
        view: {"n_images": int(keep.sum()), "fp_area": _number(_fp_area(counts, keep.numpy())),
               "n_flagged": int((marked & keep).sum())}
        for view, keep in (("stored", ~native), ("native", native))
    }  # fmt: skip


def image_f1(split: SplitScores, threshold: float, image_threshold: float, bins: int, gate: bool) -> np.ndarray:
    """Per-image pixel F1 (N,) at `threshold` (1.0 for a clean image with nothing predicted)."""
    return scores_from_counts(image_counts(split, threshold, image_threshold, bins, gate))["f1"].numpy()


# --------------------------------------------------------------------------- reports


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """`array` (uint8 or bool image) resized to size = (width, height)."""
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    im = Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == bool else array)
    out = np.asarray(im.resize(size, resample))
    return out > 127 if array.dtype == bool else out


def overlay_rows(
    test: SplitScores, threshold: float, image_threshold: float, n: int, crop: int, bins: int, gate: bool
) -> list[OverlayRow]:
    """Rows of overlays.png: the worst test images by image F1, then a spread (see pick_overlay_rows).

    The images and masks are read again (only these n), at the size of the kept probability thumbnails.
    """
    f1 = image_f1(test, threshold, image_threshold, bins, gate)
    rows = []
    for i in pick_overlay_rows(f1, n):
        probs = test.thumbnails[i]
        try:
            image, truth = read_sample(test.samples[i], crop)
        except SampleError as exc:  # changed on disk since it was scored
            log.warning("overlay skipped %s", exc)
            continue
        size = (probs.shape[1], probs.shape[0])
        title = f"{test.samples[i].id}  F1 {f1[i]:.2f}  score {test.scores[i]:.2f}"
        rows.append(
            OverlayRow(_resize(image, size), _resize(truth, size, nearest=True), probs / 255.0, threshold, title)
        )
    return rows


def load_history(train_dir: Path) -> dict[str, Any] | None:
    """Training's history.json, or None (logged) when it is missing or unreadable."""
    path = train_dir / "history.json"
    if not path.is_file():
        log.info("no %s: training_curves.png not drawn", path)
        return None
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); training_curves.png not drawn", path, exc)
        return None
    return history if isinstance(history, dict) else None


def write_reports(out_dir: Path, metrics: dict[str, Any], scored: dict[str, SplitScores], params: Params) -> list[Path]:
    """Write metrics.json, pr_curve.json (test), scores.json and the PNGs into `out_dir`; returns the files written.

    `scored`: split name -> its scores ("val", "test", and "test_heldout" when present; one PR curve each;
    real clean splits have no watermark pixel, hence no curve).
    """
    bins, threshold, test = params.evaluate.threshold_grid, metrics["test"]["threshold"], scored["test"]
    curves = {name: precision_recall_curve(s.stacked_hists(bins).sum(0)) for name, s in scored.items()
              if name not in REAL_SPLITS}  # fmt: skip
    test_m = metrics["test"]
    written = [out_dir / "metrics.json", out_dir / "pr_curve.json", out_dir / "scores.json"]
    write_json(written[0], metrics)
    write_json(written[1], curves["test"])
    write_json(written[2], scores(metrics))
    point = (threshold, test_m["precision"], test_m["recall"]) if test_m["precision"] is not None else None
    written.append(plot_pr_curves(curves, point, out_dir / "pr_curve.png"))
    history = load_history(Path(params.paths.train_dir))
    curves_png = plot_training_curves(history, out_dir / "training_curves.png") if history else None
    written += [curves_png] if curves_png else []
    if params.evaluate.n_overlay:
        rows = overlay_rows(test, threshold, test_m["image_threshold"], params.evaluate.n_overlay,
                            params.evaluate.crop, bins, params.predict.gate_masks)  # fmt: skip
        written.append(plot_overlays(rows, out_dir / "overlays.png"))
    return written


def mlflow_key(name: str) -> str:
    """`name` with the characters MLflow refuses in metric keys (":" of "icon:star", ...) made "_"."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers of metrics.json as MLflow metrics grouped by split: `val/f1`, `test/fp_area`, `real_test/fp_area`, ..."""
    flat = {
        f"{split}/{key}": float(value)
        for split in ("val", "test", HELDOUT_SPLIT, *REAL_SPLITS)
        if split in metrics
        for key, value in metrics[split].items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    flat.update({f"{split}/tag_f1/{mlflow_key(tag)}": float(m["f1"])
                 for split in ("test", HELDOUT_SPLIT) if split in metrics
                 for tag, m in metrics[split].get("by_tag", {}).items() if m["f1"] is not None})  # fmt: skip
    flat.update({f"{split}/area_f1/{bucket}": float(m["f1"])
                 for split in ("val", "test", HELDOUT_SPLIT) if split in metrics
                 for bucket, m in metrics[split].get("by_mark_area", {}).items() if m["f1"] is not None})  # fmt: skip
    flat.update({f"{split}/{view}_{key}": float(m[key])
                 for split in REAL_SPLITS if split in metrics
                 for view, m in metrics[split].get("by_view", {}).items()
                 for key in ("fp_area", "n_flagged") if m[key] is not None})  # fmt: skip
    fusion = metrics.get("fusion", {})
    trained_on = metrics.get(HELDOUT_SPLIT, {}).get("trained_on") or {}  # held-out names the model trained on
    flat.update({f"{HELDOUT_SPLIT}/trained_on/{registry}": float(n) for registry, n in trained_on.items()})
    flat.update({f"val/fusion_f1_{rule}": float(v) for rule, v in fusion.get("val_f1", {}).items() if v is not None})
    promotion = metrics.get("promotion", {})  # both models' scores, the loser's too
    flat.update({f"promotion/{key}": float(value) for key, value in promotion.items()
                 if isinstance(value, int | float) and not isinstance(value, bool)})  # fmt: skip
    return flat


# The figures of scores.json (DVC's metrics file of the stage, what `dvc exp show` compares): split -> keys.
SCORES = {
    "val": ("f1",),
    "test": ("f1", "iou", "ap", "clean_fp_area"),
    HELDOUT_SPLIT: ("f1",),
    "real_test": ("fp_area", "flagged_share"),
    "promotion": ("candidate_test_f1", "pretrained_test_f1"),
}


def scores(metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The few numbers of metrics.json that people compare across experiments (scores.json)."""
    return {split: {key: metrics[split].get(key) for key in keys} for split, keys in SCORES.items() if split in metrics}


def log_to_run(run_logger: RunLogger, metrics: dict[str, Any], files: list[Path]) -> None:
    """Metrics grouped by split (`flat_metrics`) and the report files as artifacts under evaluate/."""
    run_logger.log_metrics(flat_metrics(metrics))
    fusion = metrics.get("fusion", {})
    promotion = metrics.get("promotion", {})
    run_logger.set_tags({"backend": str(metrics["backend"]), "fusion": str(fusion.get("rule")),
                         "fusion_applied": str(fusion.get("applied")),
                         "promoted": str(promotion.get("promoted", "candidate (no rival)")),
                         "source": str(metrics.get("source"))})  # fmt: skip
    for path in files:
        run_logger.log_artifact(path, artifact_path="evaluate")


def summary_table(metrics: dict[str, Any]) -> str:
    """The console table of `wm evaluate`: synthetic splits' pixel and image metrics, then real clean photos."""
    keys = ("f1", "precision", "recall", "iou", "mean_image_f1", "auroc", "ap", "clean_fp_area",
            "clean_page_fp_area", "clean_photo_fp_area", "n_images")  # fmt: skip
    splits = [s for s in ("val", "test", HELDOUT_SPLIT) if s in metrics]
    lines = [f"{'metric':<20}" + "".join(f"{s:>14}" for s in splits)]
    for key in keys:
        cells = [metrics[s].get(key) for s in splits]
        lines.append(f"{key:<20}" + "".join(f"{'-' if c is None else format(c, '.4g'):>14}" for c in cells))
    weakest = sorted((m["f1"], tag, m["n_images"]) for tag, m in metrics["test"].get("by_tag", {}).items()
                     if m["f1"] is not None and m["n_images"] >= 10)[:5]  # fmt: skip
    if weakest:
        lines.append("weakest test tags   " + ", ".join(f"{tag} {f1:.3f} ({n})" for f1, tag, n in weakest))
    for split in (s for s in ("test", HELDOUT_SPLIT) if s in metrics and metrics[s].get("by_mark_area")):
        cells = [f"{bucket} {'-' if m['f1'] is None else format(m['f1'], '.3f')} ({m['n_images']})"
                 for bucket, m in metrics[split]["by_mark_area"].items()]  # fmt: skip
        lines.append(f"{split} F1 by mark area: " + ", ".join(cells))
    for split in (s for s in REAL_SPLITS if s in metrics):
        m = metrics[split]
        line = f"{split:<20} fp_area {m['fp_area']:.4g}, marked {m['n_flagged']} of {m['n_images']} photos"
        if (native := m.get("by_view", {}).get("native")) and native["n_images"]:
            line += (f" (native views: fp_area {native['fp_area']:.4g}, marked {native['n_flagged']} of "
                     f"{native['n_images']})")
        lines.append(line)
    return "\n".join(lines)
