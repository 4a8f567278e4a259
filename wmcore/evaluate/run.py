"""`wm evaluate`: calibrate on validation, measure the test splits and real clean photos, report, promote.

1. val (wmcore.evaluate.score): each image runs through the native path and, when it is larger
   than `predict.global_side`, its working view and native refinement, so every fusion rule is
   scored from the same passes; the rule with the best pixel F1 among evaluate.fusion_rules is
   chosen (wmcore.evaluate.calibrate; ties, within `evaluate.fusion_min_gain`, keep refine).
2. With that rule, the pixel and has-watermark thresholds are chosen together on val and on the
   corpus's real clean val photos (wmcore.evaluate.calibrate): best gated pixel F1 within the
   real-photo false-positive budgets. The real val photos go through the same passes; when some
   are larger than the working side (the native views, paths.corpus_native), every rule is
   calibrated so, and the rule is the one with the best val F1 within the budgets.
3. test, test_heldout (fonts, phrase kinds, styles and backgrounds training never saw) and the
   corpus's real clean test photos (never trained on, never calibrated on) are scored with both
   thresholds unchanged (wmcore.evaluate.report): pixel and image metrics, and the false-positive
   area on synthetic clean images and on real photos. test_heldout also says how many of its held-out
   names the model's training drew ("trained_on", from the checkpoint's meta["kept_out"]; null = unknown).
4. The shipped model is scored on the same test splits with its own calibration; the better one
   is exported (wmcore.evaluate.promote).

Outputs in `paths.evaluate_dir` (all atomic): metrics.json, pr_curve.json, pr_curve.png,
training_curves.png (when history.json exists), overlays.png and model.pt, the deployable weights
with the calibrated thresholds and fusion rule in `meta` (read by `wm predict`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wmcore.config import Params
from wmcore.data.fingerprint import DataFingerprint, split_fingerprint
from wmcore.data.kept_out import read_dataset_kept_out, trained_on
from wmcore.data.layout import HELDOUT_SPLIT
from wmcore.errors import WmError
from wmcore.evaluate.calibrate import calibrate_rule_and_thresholds
from wmcore.evaluate.promote import export_model, promotion_record
from wmcore.evaluate.report import log_to_run, real_clean_metrics, split_metrics, summary_table, write_reports
from wmcore.evaluate.samples import load_split
from wmcore.evaluate.score import (
    REAL_SPLITS,
    SplitScores,
    build_probability_fn,
    build_rule_maps_fn,
    score_maps,
    score_real_clean,
    score_real_clean_maps,
    score_test_splits,
)
from wmcore.infer.predictor import get_predictor
from wmcore.infer.working_scale import FUSION_RULES
from wmcore.metrics.promotion import Scores
from wmcore.runtime.device import configure_threads
from wmcore.tracking.sink import NullLogger, RunLogger

log = logging.getLogger(__name__)


def run_evaluation(
    params: Params, backend: str | None = None, checkpoint: str | None = None, run_logger: RunLogger | None = None
) -> dict[str, Any]:
    """Evaluate a checkpoint (default <paths.train_dir>/best.pt) and write the reports.

    Args:
        params: validated configuration (groups paths, evaluate, predict, base).
        backend: "torch", "onnx" or "onnx-int8"; None = evaluate.backend.
        checkpoint: checkpoint file to evaluate; None = <paths.train_dir>/best.pt.
        run_logger: where metrics and report files are logged (MLflow run); None = nowhere.
    Returns: the metrics.json content {"val": {...}, "test": {...}, "backend": str, "fusion": {...},
        "calibration": {...}} (fusion: the calibrated rule, per-rule val F1 and thresholds, the rule
        applied; calibration: the thresholds and their real-photo figures on val), plus
        "test_heldout" (same keys as test) when the prepared dataset has that split, "real_val" /
        "real_test" (false positives on the corpus's real clean photos) when the corpus is built,
        "promotion" when the shipped model was compared, and "source": the weights exported to model.pt.
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
        log.info("promotion: %s (test F1: %s %.4f, pretrained %s %.4f)", promotion["promoted"], source.name,
                 promotion["candidate_test_f1"], pretrained.name, promotion["pretrained_test_f1"])  # fmt: skip
        if promotion["promoted"] == "pretrained":
            metrics, scored, source = rival_metrics, rival_scored, pretrained
        metrics["promotion"] = promotion
    metrics["source"] = str(source)  # the weights exported to model.pt
    metrics["enlarge_below"] = params.predict.enlarge_below  # the thresholds hold for this value
    out_dir = Path(params.paths.evaluate_dir)
    files = write_reports(out_dir, metrics, scored, params)
    export_model(source, out_dir / "model.pt", metrics, backend)
    log_to_run(run_logger or NullLogger(), metrics, files)
    log.info("evaluation of %s (%s) -> %s\n%s", source, backend, out_dir, summary_table(metrics))
    return metrics


def score_candidate(params: Params, source: Path, backend: str) -> tuple[dict[str, Any], dict[str, SplitScores]]:
    """Calibrate the fusion rule and thresholds on val (and real val photos), then score the test splits.

    Returns (metrics: {"val", "test", ["test_heldout"], ["real_val", "real_test"], "backend",
    "fusion", "calibration"}, scored splits).
    """
    ev, bins = params.evaluate, params.evaluate.threshold_grid
    val_samples = load_split(params.paths.prepared, "val")
    val_maps = build_rule_maps_fn(params, source, backend)
    val_by_rule = score_maps(val_samples, val_maps, FUSION_RULES, bins, ev.batch_size, ev.crop, name="val")
    if not val_by_rule[FUSION_RULES[0]].samples:
        raise WmError(f"{params.paths.prepared}: no readable validation image to calibrate thresholds on")
    real_val_by_rule = score_real_clean_maps(params, val_maps, "real_val")
    fusion, applied, calibration = calibrate_rule_and_thresholds(val_by_rule, real_val_by_rule, params)
    predict = build_probability_fn(params, source, backend, applied)
    real_val = real_val_by_rule[applied] if real_val_by_rule else None
    log.info("thresholds: pixel %.4f, image %.4f (%s)", calibration.threshold, calibration.image_threshold,
             calibration.reason)  # fmt: skip
    scored = {"val": val_by_rule[applied], **score_test_splits(params, predict)}
    real = {"real_val": real_val, "real_test": score_real_clean(params, predict, "real_test")}
    scored.update({name: split for name, split in real.items() if split is not None})
    metrics = metrics_at(scored, calibration.threshold, calibration.image_threshold, params)
    # the predictor build_probability_fn used, from the cache: its meta without reading the checkpoint again
    note_heldout_lineage(metrics, params, get_predictor(str(source), params, backend=backend).meta, "candidate")
    metrics["backend"] = backend
    metrics["fusion"] = {**fusion.as_metrics(), "applied": applied}
    metrics["calibration"] = calibration.as_metrics()
    return metrics, scored


def metrics_at(scored: dict[str, SplitScores], threshold: float, image_threshold: float, params: Params) -> dict:
    """Every scored split's metrics at the given thresholds (real clean photos: their false positives)."""
    bins, gate = params.evaluate.threshold_grid, params.predict.gate_masks
    return {
        name: (real_clean_metrics if name in REAL_SPLITS else split_metrics)(split, threshold, image_threshold,
                                                                            bins, gate)
        for name, split in scored.items()
    }  # fmt: skip


def score_pretrained(params: Params, source: Path, backend: str) -> tuple[dict[str, Any], dict[str, SplitScores]]:
    """The shipped model on the test splits (and real test photos) with the calibration it ships with.

    Its thresholds and fusion rule were chosen on its own, larger validation split; reusing them
    halves the cost of the comparison that decides which model `make run` promotes.
    """
    # The predictor read the shipped meta with wm predict's rules (thresholds, fusion "auto");
    # build_probability_fn below gets the same cached predictor, so the weights load once.
    shipped = get_predictor(str(source), params, backend=backend)
    threshold, image_threshold, rule = shipped.threshold, shipped.image_threshold, shipped.fusion
    predict = build_probability_fn(params, source, backend, rule)
    scored = score_test_splits(params, predict)
    real_test = score_real_clean(params, predict, "real_test")
    if real_test is not None:
        scored["real_test"] = real_test
    metrics = metrics_at(scored, threshold, image_threshold, params)
    note_heldout_lineage(metrics, params, shipped.meta, "shipped model")
    metrics["backend"] = backend
    metrics["fusion"] = {"rule": rule, "applied": rule, "global_side": params.predict.global_side,
                         "reason": "stored with the pretrained weights (calibrated on their validation split)"}  # fmt: skip
    return metrics, scored


def note_heldout_lineage(metrics: dict[str, Any], params: Params, meta: dict[str, Any], who: str) -> None:
    """metrics["test_heldout"]["trained_on"]: per registry, how many of the split's held-out names the model's
    training drew (wmcore.data.kept_out, from its checkpoint's `meta`; None = it does not say); logged when not all
    zero."""
    if HELDOUT_SPLIT not in metrics:
        return
    heldout, why = read_dataset_kept_out(params.paths.prepared)
    seen = trained_on(heldout, meta.get("kept_out")) if heldout else None
    metrics[HELDOUT_SPLIT]["trained_on"] = seen
    if heldout is None:
        log.warning("%s: %s; cannot tell whether %s is held out for the %s", HELDOUT_SPLIT, why, HELDOUT_SPLIT, who)
    elif seen is None:
        log.warning("%s: the %s's checkpoint does not record what its training kept out (trained before that was "
                    "recorded, or warm-started from such weights): its %s F1 may count names it trained on",
                    HELDOUT_SPLIT, who, HELDOUT_SPLIT)  # fmt: skip
    elif any(seen.values()):
        log.warning("%s: the %s trained on %s of the names this split holds out: its F1 there is not a held-out "
                    "figure", HELDOUT_SPLIT, who, ", ".join(f"{n} {k}" for k, n in seen.items() if n))  # fmt: skip


def evaluate_tracked(params: Params, backend: str | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """`wm evaluate` with tracking: run_evaluation inside an MLflow step run, then register the model.

    Same arguments as run_evaluation. The returned metrics gain "champion": True when the new
    registered version took the champion alias (False when it did not, or was not registered).
    """
    if not params.tracking.enabled:  # off: mlflow is not even imported (nor needed installed)
        return {**run_evaluation(params, backend=backend, checkpoint=checkpoint), "champion": False}
    # deferred on purpose: mlflow takes seconds to import and need not be installed with tracking off
    from wmcore.tracking.mlflow_run import TEST_DATA_TAG, log_and_register_model, log_prepared_input, step_run

    prepared = Path(params.paths.prepared)
    with step_run("evaluate", params) as run_logger:
        metrics = run_evaluation(params, backend=backend, checkpoint=checkpoint, run_logger=run_logger)
        tags = {"promoted": metrics.get("promotion", {}).get("promoted", "candidate (no rival)"),
                "source": metrics["source"]}
        log_prepared_input(run_logger, prepared, "evaluation")
        if (test_data := _test_fingerprint(prepared)) is not None:
            tags.update({TEST_DATA_TAG: test_data.digest, "test_images": str(test_data.samples)})
        model_path = Path(params.paths.evaluate_dir) / "model.pt"
        metrics["champion"] = log_and_register_model(model_path, Scores.of(metrics), params, run_logger, tags)
    return metrics


def _test_fingerprint(prepared: Path) -> DataFingerprint | None:
    """The content fingerprint of the test split, or None (logged) for a dataset without a readable manifest."""
    try:
        return split_fingerprint(prepared, ("test",))
    except WmError as exc:
        log.warning("%s; the tracked model carries no test data fingerprint", exc)
        return None
