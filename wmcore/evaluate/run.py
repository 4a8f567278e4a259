"""`wm evaluate`: calibrate thresholds on validation, measure the test split, write the reports.

One pass over each split keeps, per image, a histogram of its probabilities split by truth
(`threshold_histograms`, `evaluate.threshold_grid` bins) and its has-watermark score. That
is a few hundred bytes per image, yet gives exact pixel counts at every grid threshold, so:

1. val: each image is run through the native path and, when it is larger than
   `predict.global_side`, its global view, so every fusion rule is scored from the same two
   maps; the rule with the best pixel F1 is chosen (wmcore.evaluate.fusion; ties, within
   `evaluate.fusion_min_gain`, keep max).
   With the rule `wm predict` will apply (`predict.fusion`, "auto" = the chosen one), the pixel
   threshold maximising pixel F1 and the image-score threshold maximising
   `evaluate.image_objective` are chosen;
2. test, and test_heldout when `wm prepare` made it (fonts, phrase kinds, styles and backgrounds
   training never saw): both thresholds are applied unchanged; micro and per-image pixel metrics,
   image-level AUROC/AP/decisions and the false-positive area on clean images come from the same
   histograms. The false-positive area is reported over all clean images, clean text pages
   (manifest background_kind "page"), clean photos and clean images with scene text separately.

Outputs in `paths.evaluate_dir` (all atomic): metrics.json (per-rule val F1 under "fusion"),
pr_curve.json, pr_curve.png, training_curves.png (when history.json exists), overlays.png and
model.pt, the deployable weights with the calibrated thresholds and fusion rule in `meta`
(read by `wm predict`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.evaluate.fusion import FusionChoice, choose_rule, rule_maps
from wmcore.evaluate.plots import OverlayRow, pick_overlay_rows, plot_overlays, plot_pr_curves, plot_training_curves
from wmcore.evaluate.samples import HELDOUT_SPLIT, EvalSample, SampleError, load_split, read_sample
from wmcore.infer.working_scale import FUSION_RULES, resolve_rule
from wmcore.metrics import (
    average_precision,
    best_image_threshold,
    best_threshold,
    counts_at,
    decision_scores,
    image_score,
    positive_fraction,
    precision_recall_curve,
    roc_auc,
    scores_from_counts,
    threshold_histograms,
)
from wmcore.model.checkpoint import load_model, save_checkpoint
from wmcore.runtime.atomic import write_json
from wmcore.runtime.device import configure_threads
from wmcore.tracking.sink import NullLogger, RunLogger

log = logging.getLogger(__name__)

# list of (H, W, 3) uint8 RGB images -> list of (H, W) float32 watermark probabilities
ProbabilityFn = Callable[[list[np.ndarray]], list[np.ndarray]]
# list of (H, W, 3) uint8 RGB images -> per image {name: (H, W) float32 probabilities}
MapsFn = Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]]


# --------------------------------------------------------------------------- probabilities


def build_probability_fn(params: Params, checkpoint: Path, backend: str, fusion: str | None = None) -> ProbabilityFn:
    """The one place evaluation gets probabilities: the inference engine's predictor.

    Evaluation thereby measures exactly what `wm predict` runs: the same global view and tiling
    for large images (fused by `fusion`, a rule of FUSION_RULES; None = the predictor's own),
    batching and backend (torch, onnx, onnx-int8).
    """
    from wmcore.infer.predictor import get_predictor

    predictor = get_predictor(str(checkpoint), params, backend=backend)
    return lambda images: predictor.predict(images, fusion)


def build_rule_maps_fn(params: Params, checkpoint: Path, backend: str) -> MapsFn:
    """Per image, the probability map of every fusion rule, from one native and one global pass."""
    from wmcore.infer.predictor import get_predictor

    predictor = get_predictor(str(checkpoint), params, backend=backend)
    return lambda images: [rule_maps(native, wide) for native, wide in predictor.predict_paths(images)]


# --------------------------------------------------------------------------- one pass over a split


@dataclass
class SplitScores:
    """What one pass over a split keeps per scored image (N images); enough for every metric."""

    samples: list[EvalSample] = field(default_factory=list)
    hists: list[torch.Tensor] = field(default_factory=list)  # each (2, bins) int64: watermark / clean pixels
    scores: list[float] = field(default_factory=list)  # has-watermark image scores in [0, 1]
    has_watermark: list[bool] = field(default_factory=list)
    thumbnails: list[np.ndarray] = field(default_factory=list)  # (h, w) uint8 probabilities x 255, if kept
    skipped: list[str] = field(default_factory=list)  # "<id>: reason"
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) of each scored image, px

    def stacked_hists(self, bins: int) -> torch.Tensor:
        """(N, 2, bins) histograms ((0, 2, bins) for an empty split)."""
        return torch.stack(self.hists) if self.hists else torch.zeros(0, 2, bins, dtype=torch.long)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(has_watermark, scene_text) boolean arrays (N,)."""
        return np.array(self.has_watermark, bool), np.array([s.scene_text for s in self.samples], bool)

    def background_is(self, kind: str) -> np.ndarray:
        """(N,) bool: the image's manifest background_kind is `kind` ("page", "photo", "procedural")."""
        return np.array([s.background_kind == kind for s in self.samples], bool)


def _readable_batches(samples: list[EvalSample], crop: int, batch_size: int, result: SplitScores) -> Iterator[list]:
    """Batches of (sample, image, truth); unreadable samples are logged and recorded as skipped."""
    batch: list[tuple[EvalSample, np.ndarray, np.ndarray]] = []
    for sample in samples:
        try:
            batch.append((sample, *read_sample(sample, crop)))
        except SampleError as exc:
            log.warning("skipped %s", exc)
            result.skipped.append(str(exc))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def thumbnail(probs: np.ndarray, side: int) -> np.ndarray:
    """(h, w) uint8 copy of a probability map, long side at most `side` px (kept for overlays)."""
    im = Image.fromarray((np.clip(probs, 0, 1) * 255).astype(np.uint8))
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(im)


def score_split(
    samples: list[EvalSample],
    predict: ProbabilityFn,
    bins: int,
    batch_size: int,
    crop: int,
    thumb_side: int = 0,
    name: str = "",
) -> SplitScores:
    """Predict every sample once and keep its histogram, image score and (if thumb_side) thumbnail."""

    def maps(images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{"probs": probs} for probs in predict(images)]

    return score_maps(samples, maps, ("probs",), bins, batch_size, crop, thumb_side, name)["probs"]


def score_maps(
    samples: list[EvalSample],
    maps: MapsFn,
    names: tuple[str, ...],
    bins: int,
    batch_size: int,
    crop: int,
    thumb_side: int = 0,
    name: str = "",
) -> dict[str, SplitScores]:
    """Like score_split for several maps per image (e.g. one per fusion rule): {map name: its scores}.

    `maps` must return a map for every name in `names`; every SplitScores holds the same samples.
    """
    results = {n: SplitScores() for n in names}
    first = results[names[0]]  # collects the skipped samples (the same for every map)
    with tqdm(total=len(samples), desc=f"evaluate {name}".strip(), unit="img", mininterval=1.0) as bar:
        for batch in _readable_batches(samples, crop, batch_size, first):
            for (sample, _, truth), by_name in zip(batch, maps([image for _, image, _ in batch]), strict=True):
                # A crop can cut the mark out, so the cropped mask decides; otherwise the manifest does.
                label = sample.has_watermark if crop == 0 and sample.has_watermark is not None else bool(truth.any())
                for n in names:
                    _add_image(results[n], sample, truth, by_name[n], label, bins, thumb_side)
            bar.update(len(batch))
        bar.update(len(samples) - bar.n)
    for result in results.values():
        result.skipped = first.skipped
    return results


def _add_image(
    result: SplitScores,
    sample: EvalSample,
    truth: np.ndarray,
    probs: np.ndarray,
    label: bool,
    bins: int,
    thumb_side: int,
) -> None:
    """Append one image's histogram, score, label, size and (if thumb_side) thumbnail to `result`."""
    if probs.shape != truth.shape:
        raise WmError(f"predictor returned {probs.shape} probabilities for {sample.id} of {truth.shape} px")
    result.samples.append(sample)
    result.hists.append(threshold_histograms(torch.from_numpy(probs), torch.from_numpy(truth), bins))
    result.scores.append(image_score(probs))
    result.has_watermark.append(label)
    result.sizes.append(truth.shape)
    if thumb_side:
        result.thumbnails.append(thumbnail(probs, thumb_side))


# --------------------------------------------------------------------------- calibration and metrics


def calibrate_fusion(val_by_rule: dict[str, SplitScores], params: Params) -> tuple[FusionChoice, str]:
    """(calibrated fusion choice, rule `wm predict` applies with these params) from the val scores per rule.

    The applied rule is predict.fusion unless that is "auto" (then the chosen one); with
    predict.global_side 0 it is "tiles". The choice is logged with its reason.
    """
    bins, global_side = params.evaluate.threshold_grid, params.predict.global_side
    any_split = next(iter(val_by_rule.values()))
    n_larger = sum(max(size) > global_side for size in any_split.sizes) if global_side else 0
    totals = {rule: split.stacked_hists(bins).sum(0) for rule, split in val_by_rule.items()}
    choice = choose_rule(totals, len(any_split.samples), n_larger, global_side, params.evaluate.fusion_min_gain)
    applied = resolve_rule(params.predict.fusion, choice.rule, global_side)
    f1 = ", ".join(f"{r} {'-' if v is None else format(v, '.4f')}" for r, v in choice.f1.items())
    log.info("fusion rule %s (%s); val F1 per rule: %s; applied: %s", choice.rule, choice.reason, f1, applied)
    return choice, applied


def calibrate(val: SplitScores, params: Params) -> tuple[float, float]:
    """(pixel threshold, image threshold) chosen on validation; see the module docstring."""
    bins = params.evaluate.threshold_grid
    total = val.stacked_hists(bins).sum(0)
    if int(total[0].sum()) == 0:
        threshold = params.predict.threshold
        log.warning("validation has no watermark pixels: pixel threshold not calibrated, using %.3f", threshold)
    else:
        threshold, _ = best_threshold(total, interior=True)
    has_watermark, _ = val.labels()
    image_threshold, _ = best_image_threshold(np.array(val.scores), has_watermark, params.evaluate.image_objective)
    return threshold, image_threshold


def _number(value: float | None) -> float | None:
    """JSON-safe metric: rounded to 6 decimals, None for undefined (NaN) values."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), 6)


def _fp_area(counts: torch.Tensor, which: np.ndarray) -> float | None:
    """Share of pixels predicted positive over the images selected by `which`; None if none are."""
    return float(positive_fraction(counts[torch.from_numpy(which)].sum(0))) if which.any() else None


def split_metrics(split: SplitScores, threshold: float, image_threshold: float, bins: int) -> dict[str, Any]:
    """Flat metrics of one split at the given pixel and image thresholds (keys in metrics.json)."""
    counts = counts_at(split.stacked_hists(bins), threshold)  # (N, 4)
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
    return metrics


def image_f1(split: SplitScores, threshold: float, bins: int) -> np.ndarray:
    """Per-image pixel F1 (N,) at `threshold` (1.0 for a clean image with nothing predicted)."""
    return scores_from_counts(counts_at(split.stacked_hists(bins), threshold))["f1"].numpy()


# --------------------------------------------------------------------------- reports


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """`array` (uint8 or bool image) resized to size = (width, height)."""
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    im = Image.fromarray(array.astype(np.uint8) * 255 if array.dtype == bool else array)
    out = np.asarray(im.resize(size, resample))
    return out > 127 if array.dtype == bool else out


def overlay_rows(test: SplitScores, threshold: float, n: int, crop: int, bins: int) -> list[OverlayRow]:
    """Rows of overlays.png: the worst test images by image F1, then a spread (see pick_overlay_rows).

    The images and masks are read again (only these n), at the size of the kept probability thumbnails.
    """
    f1 = image_f1(test, threshold, bins)
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
    """Write metrics.json, pr_curve.json (test) and the PNGs into `out_dir`; returns the files written.

    `scored`: split name -> its scores ("val", "test", and "test_heldout" when present; one PR curve each).
    """
    bins, threshold, test = params.evaluate.threshold_grid, metrics["test"]["threshold"], scored["test"]
    curves = {name: precision_recall_curve(s.stacked_hists(bins).sum(0)) for name, s in scored.items()}
    test_m = metrics["test"]
    written = [out_dir / "metrics.json", out_dir / "pr_curve.json"]
    write_json(written[0], metrics)
    write_json(written[1], curves["test"])
    point = (threshold, test_m["precision"], test_m["recall"]) if test_m["precision"] is not None else None
    written.append(plot_pr_curves(curves, point, out_dir / "pr_curve.png"))
    history = load_history(Path(params.paths.train_dir))
    curves_png = plot_training_curves(history, out_dir / "training_curves.png") if history else None
    written += [curves_png] if curves_png else []
    if params.evaluate.n_overlay:
        rows = overlay_rows(test, threshold, params.evaluate.n_overlay, params.evaluate.crop, bins)
        written.append(plot_overlays(rows, out_dir / "overlays.png"))
    return written


def export_model(source: Path, path: Path, metrics: dict[str, Any], backend: str) -> Path:
    """Write the deployable weights: {model, model_args, meta} with the calibrated thresholds and fusion rule.

    Only plain values go into `meta`, so the file loads with torch.load(weights_only=True).
    """
    model, ckpt = load_model(source)
    test = metrics["test"]
    meta = {
        "threshold": test["threshold"],
        "image_threshold": test["image_threshold"],
        "fusion": metrics["fusion"]["rule"],  # read by predict.fusion "auto"
        "fusion_global_side": metrics["fusion"]["global_side"],
        "test_f1": test["f1"],
        "test_iou": test["iou"],
        "test_auroc": test["auroc"],
        "test_heldout_f1": metrics.get(HELDOUT_SPLIT, {}).get("f1"),
        "backend_evaluated": backend,
        "source_checkpoint": str(source),
        "source_epoch": ckpt.get("epoch"),
        "source_step": ckpt.get("step"),
    }
    save_checkpoint(path, {"model": model.state_dict(), "model_args": model.model_args(), "meta": meta})
    return path


# --------------------------------------------------------------------------- entry points


def log_to_run(run_logger: RunLogger, metrics: dict[str, Any], files: list[Path]) -> None:
    """Metrics as `<split>_<name>` (numbers only) and the report files as artifacts under evaluate/."""
    flat = {
        f"{split}_{key}": float(value)
        for split in ("val", "test", HELDOUT_SPLIT)
        if split in metrics
        for key, value in metrics[split].items()
        if isinstance(value, int | float)
    }
    fusion = metrics.get("fusion", {})
    flat.update({f"val_fusion_f1_{rule}": float(v) for rule, v in fusion.get("val_f1", {}).items() if v is not None})
    run_logger.log_metrics(flat)
    run_logger.set_tags({"backend": str(metrics["backend"]), "fusion": str(fusion.get("rule")),
                         "fusion_applied": str(fusion.get("applied"))})  # fmt: skip
    for path in files:
        run_logger.log_artifact(path, artifact_path="evaluate")


def _summary_table(metrics: dict[str, Any]) -> str:
    keys = (
        "f1",
        "precision",
        "recall",
        "iou",
        "mean_image_f1",
        "auroc",
        "ap",
        "clean_fp_area",
        "clean_page_fp_area",
        "clean_photo_fp_area",
        "n_images",
    )
    splits = [s for s in ("val", "test", HELDOUT_SPLIT) if s in metrics]
    lines = [f"{'metric':<20}" + "".join(f"{s:>14}" for s in splits)]
    for key in keys:
        cells = [metrics[s].get(key) for s in splits]
        lines.append(f"{key:<20}" + "".join(f"{'-' if c is None else format(c, '.4g'):>14}" for c in cells))
    return "\n".join(lines)


def score_heldout(params: Params, predict: ProbabilityFn) -> SplitScores | None:
    """Scores of the style-held-out split, or None when the prepared dataset has none (or none is readable)."""
    ev = params.evaluate
    samples = load_split(params.paths.prepared, HELDOUT_SPLIT, required=False)
    if not samples:
        log.info("no %s split in %s: only the ordinary test split is reported", HELDOUT_SPLIT, params.paths.prepared)
        return None
    scored = score_split(samples, predict, ev.threshold_grid, ev.batch_size, ev.crop, name=HELDOUT_SPLIT)
    if not scored.samples:
        log.warning(
            "%s: no readable %s image (%d skipped); not reported",
            params.paths.prepared,
            HELDOUT_SPLIT,
            len(scored.skipped),
        )
        return None
    return scored


def run_evaluation(
    params: Params, backend: str | None = None, checkpoint: str | None = None, run_logger: RunLogger | None = None
) -> dict[str, Any]:
    """Evaluate a checkpoint (default <paths.train_dir>/best.pt) and write the reports.

    Args:
        params: validated configuration (groups paths, evaluate, predict.threshold, base).
        backend: "torch", "onnx" or "onnx-int8"; None = evaluate.backend.
        checkpoint: checkpoint file to evaluate; None = <paths.train_dir>/best.pt.
        run_logger: where metrics and report files are logged (MLflow run); None = nowhere.
    Returns: the metrics.json content {"val": {...}, "test": {...}, "backend": str, "fusion": {...}}
        (fusion: the calibrated rule, per-rule val F1 and thresholds, the rule applied; see
        FusionChoice.as_metrics), plus "test_heldout": {...} (same keys, thresholds from val) when
        the prepared dataset has that split.
    """
    backend = backend or params.evaluate.backend
    source = Path(checkpoint) if checkpoint else Path(params.paths.train_dir) / "best.pt"
    if not source.is_file():
        raise WmError(f"{source}: checkpoint not found; run `wm train` first or pass --model PATH")
    configure_threads(params.base.threads)
    metrics, scored = score_candidate(params, source, backend)
    pretrained = Path(params.paths.pretrained) if params.paths.pretrained else None
    if (
        params.evaluate.compare_pretrained
        and pretrained
        and pretrained.is_file()
        and pretrained.resolve() != source.resolve()
    ):
        rival_metrics, rival_scored = score_pretrained(params, pretrained, backend)
        promotion = promotion_record(metrics, rival_metrics, source, pretrained)
        if promotion["promoted"] == "pretrained":
            metrics, scored, source = rival_metrics, rival_scored, pretrained
        metrics["promotion"] = promotion
        log.info("promotion: %s (test F1 %s %.4f vs pretrained %.4f)", promotion["promoted"], source.name,
                 promotion["candidate_test_f1"], promotion["pretrained_test_f1"])  # fmt: skip
    out_dir = Path(params.paths.evaluate_dir)
    files = write_reports(out_dir, metrics, scored, params)
    export_model(source, out_dir / "model.pt", metrics, backend)
    log_to_run(run_logger or NullLogger(), metrics, files)
    log.info("evaluation of %s (%s) -> %s\n%s", source, backend, out_dir, _summary_table(metrics))
    return metrics


def score_candidate(params: Params, source: Path, backend: str) -> tuple[dict[str, Any], dict[str, SplitScores]]:
    """Calibrate fusion rule and thresholds on val, then score test (and test_heldout) with them.

    Returns (metrics: {"val", "test", ["test_heldout"], "backend", "fusion"}, scored splits).
    """
    ev, bins = params.evaluate, params.evaluate.threshold_grid
    val_samples = load_split(params.paths.prepared, "val")
    val_maps = build_rule_maps_fn(params, source, backend)
    val_by_rule = score_maps(val_samples, val_maps, FUSION_RULES, bins, ev.batch_size, ev.crop, name="val")
    if not val_by_rule[FUSION_RULES[0]].samples:
        raise WmError(f"{params.paths.prepared}: no readable validation image to calibrate thresholds on")
    fusion, applied = calibrate_fusion(val_by_rule, params)
    val = val_by_rule[applied]
    threshold, image_threshold = calibrate(val, params)
    predict = build_probability_fn(params, source, backend, applied)
    scored = {"val": val, **score_test_splits(params, predict)}
    metrics: dict[str, Any] = {name: split_metrics(s, threshold, image_threshold, bins) for name, s in scored.items()}
    metrics["backend"] = backend
    metrics["fusion"] = {**fusion.as_metrics(), "applied": applied}
    return metrics, scored


def score_test_splits(params: Params, predict: ProbabilityFn) -> dict[str, SplitScores]:
    """test (required) and test_heldout (when prepared) scored with `predict`."""
    ev = params.evaluate
    thumb_side = ev.overlay_side if ev.n_overlay else 0
    test_samples = load_split(params.paths.prepared, "test")
    test = score_split(test_samples, predict, ev.threshold_grid, ev.batch_size, ev.crop, thumb_side, name="test")
    if not test.samples:
        raise WmError(f"{params.paths.prepared}: no readable test image")
    scored = {"test": test}
    heldout = score_heldout(params, predict)
    if heldout is not None:
        scored[HELDOUT_SPLIT] = heldout
    return scored


def score_pretrained(params: Params, source: Path, backend: str) -> tuple[dict[str, Any], dict[str, SplitScores]]:
    """The shipped model on test (and test_heldout) with the calibration it ships with (no val pass).

    Its thresholds and fusion rule were chosen on its own, larger validation split; reusing them
    halves the cost of the comparison that decides which model `make run` promotes.
    """
    from wmcore.infer.predictor import get_predictor

    # The predictor read the shipped meta with wm predict's rules (thresholds, fusion "auto");
    # build_probability_fn below gets the same cached predictor, so the weights load once.
    shipped = get_predictor(str(source), params, backend=backend)
    threshold, image_threshold, rule = shipped.threshold, shipped.image_threshold, shipped.fusion
    predict = build_probability_fn(params, source, backend, rule)
    scored = score_test_splits(params, predict)
    bins = params.evaluate.threshold_grid
    metrics: dict[str, Any] = {name: split_metrics(s, threshold, image_threshold, bins) for name, s in scored.items()}
    metrics["backend"] = backend
    metrics["fusion"] = {"rule": rule, "applied": rule, "global_side": params.predict.global_side,
                         "reason": "stored with the pretrained weights (calibrated on their validation split)"}  # fmt: skip
    return metrics, scored


def promotion_record(
    candidate: dict[str, Any], pretrained: dict[str, Any], source: Path, pretrained_path: Path
) -> dict[str, Any]:
    """Which model `wm evaluate` exports: the candidate only when its test F1 beats the pretrained one's."""
    cand_f1 = candidate["test"]["f1"] or 0.0
    pre_f1 = pretrained["test"]["f1"] or 0.0
    return {
        "promoted": "candidate" if cand_f1 > pre_f1 else "pretrained",
        "candidate": str(source),
        "pretrained": str(pretrained_path),
        "candidate_test_f1": cand_f1,
        "pretrained_test_f1": pre_f1,
        "candidate_test_heldout_f1": candidate.get(HELDOUT_SPLIT, {}).get("f1"),
        "pretrained_test_heldout_f1": pretrained.get(HELDOUT_SPLIT, {}).get("f1"),
    }


def evaluate_tracked(params: Params, backend: str | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """`wm evaluate` with tracking: run_evaluation inside an MLflow step run, then register the model.

    Same arguments as run_evaluation. The returned metrics gain "champion": True when the new
    registered version took the champion alias (False when it did not, or was not registered).
    """
    if not params.tracking.enabled:  # off: mlflow is not even imported (nor needed installed)
        return {**run_evaluation(params, backend=backend, checkpoint=checkpoint), "champion": False}
    from wmcore.tracking.mlflow_run import log_and_register_model, step_run

    with step_run("evaluate", params) as run_logger:
        metrics = run_evaluation(params, backend=backend, checkpoint=checkpoint, run_logger=run_logger)
        model_path = Path(params.paths.evaluate_dir) / "model.pt"
        metrics["champion"] = log_and_register_model(model_path, metrics["test"]["f1"], params, run_logger)
    return metrics
